#include "mxvoip/proto/json.hpp"

#include "mxvoip/proto/errors.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace mxvoip::proto {
namespace {

// Depth-first check of the number range; iterative so hostile nesting cannot blow the stack
// (the parser already bounds depth, this keeps the check itself cheap and flat). An integer
// literal too large for 64 bits comes out of the parser as a double: doubles past the range
// are refused too, so no integer escapes the check by being larger still.
bool integers_in_range(const json::value& root) {
    std::vector<const json::value*> todo{&root};
    while (!todo.empty()) {
        const json::value* v = todo.back();
        todo.pop_back();
        switch (v->kind()) {
            case json::kind::int64:
                if (v->get_int64() > kMaxSafeInteger || v->get_int64() < -kMaxSafeInteger)
                    return false;
                break;
            case json::kind::uint64:
                if (v->get_uint64() > static_cast<std::uint64_t>(kMaxSafeInteger)) return false;
                break;
            case json::kind::double_:
                if (!(std::fabs(v->get_double()) <= static_cast<double>(kMaxSafeInteger)))
                    return false;
                break;
            case json::kind::array:
                for (const auto& e : v->get_array()) todo.push_back(&e);
                break;
            case json::kind::object:
                for (const auto& kv : v->get_object()) todo.push_back(&kv.value());
                break;
            default:
                break;
        }
    }
    return true;
}

[[noreturn]] void bad_type(std::string_view key, const char* want) {
    throw MatrixError(400, errcode::bad_json, "'" + std::string(key) + "' must be " + want);
}

}  // namespace

bool is_valid_utf8(std::string_view text) {
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    const auto* end = p + text.size();
    while (p < end) {
        unsigned char c = *p;
        if (c < 0x80) {
            ++p;
            continue;
        }
        // The length of the sequence, and the range of its second byte (RFC 3629's table).
        int len = 0;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0) lo = 0xA0;  // overlong
            if (c == 0xED) hi = 0x9F;  // surrogates
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0) lo = 0x90;  // overlong
            if (c == 0xF4) hi = 0x8F;  // past U+10FFFF
        } else {
            return false;
        }
        if (end - p < len || p[1] < lo || p[1] > hi) return false;
        for (int i = 2; i < len; ++i)
            if ((p[i] & 0xC0) != 0x80) return false;
        p += len;
    }
    return true;
}

json::value parse_json(std::string_view text) {
    json::parse_options opts;
    opts.max_depth = 64;
    opts.allow_invalid_utf8 = false;
    std::error_code ec;
    json::value v = json::parse(text, ec, {}, opts);
    if (ec) throw MatrixError(400, errcode::not_json, "Content not JSON: " + ec.message());
    if (!integers_in_range(v))
        throw MatrixError(400, errcode::bad_json, "Number out of range (+-(2^53-1))");
    return v;
}

json::object parse_json_object(std::string_view text) {
    json::value v = parse_json(text);
    if (!v.is_object()) throw MatrixError(400, errcode::bad_json, "Content must be a JSON object");
    return std::move(v.get_object());
}

std::optional<std::string_view> opt_string(const json::object& obj, std::string_view key) {
    auto it = obj.find(key);
    if (it == obj.end() || it->value().is_null()) return std::nullopt;
    if (!it->value().is_string()) bad_type(key, "a string");
    std::string_view s = it->value().get_string();
    // A field read as text goes into text columns and logs, where a NUL cannot go (PostgreSQL
    // refuses it; C strings end at it). Content kept as JSON keeps its "\u0000" escapes.
    if (s.find('\0') != std::string_view::npos)
        throw MatrixError(400, errcode::bad_json, "'" + std::string(key) + "' contains a NUL");
    return s;
}

std::string_view req_string(const json::object& obj, std::string_view key) {
    auto v = opt_string(obj, key);
    if (!v) throw MatrixError(400, errcode::missing_param, "Missing '" + std::string(key) + "'");
    return *v;
}

std::optional<bool> opt_bool(const json::object& obj, std::string_view key) {
    auto it = obj.find(key);
    if (it == obj.end() || it->value().is_null()) return std::nullopt;
    if (!it->value().is_bool()) bad_type(key, "a boolean");
    return it->value().get_bool();
}

std::optional<std::int64_t> opt_int(const json::object& obj, std::string_view key) {
    auto it = obj.find(key);
    if (it == obj.end() || it->value().is_null()) return std::nullopt;
    if (it->value().is_int64()) return it->value().get_int64();
    if (it->value().is_uint64()) return static_cast<std::int64_t>(it->value().get_uint64());
    bad_type(key, "an integer");
}

const json::object* opt_object(const json::object& obj, std::string_view key) {
    auto it = obj.find(key);
    if (it == obj.end() || it->value().is_null()) return nullptr;
    if (!it->value().is_object()) bad_type(key, "an object");
    return &it->value().get_object();
}

const json::array* opt_array(const json::object& obj, std::string_view key) {
    auto it = obj.find(key);
    if (it == obj.end() || it->value().is_null()) return nullptr;
    if (!it->value().is_array()) bad_type(key, "an array");
    return &it->value().get_array();
}

namespace {

void append_canonical(std::string& out, const json::value& v) {
    switch (v.kind()) {
        case json::kind::object: {
            const auto& obj = v.get_object();
            std::vector<const json::key_value_pair*> members;
            members.reserve(obj.size());
            for (const auto& kv : obj) members.push_back(&kv);
            // Byte order of UTF-8 is code point order.
            std::sort(members.begin(), members.end(),
                      [](const auto* a, const auto* b) { return a->key() < b->key(); });
            out += '{';
            for (std::size_t i = 0; i < members.size(); ++i) {
                if (i) out += ',';
                out += json::serialize(json::string_view(members[i]->key()));
                out += ':';
                append_canonical(out, members[i]->value());
            }
            out += '}';
            return;
        }
        case json::kind::array: {
            out += '[';
            bool first = true;
            for (const auto& item : v.get_array()) {
                if (!first) out += ',';
                first = false;
                append_canonical(out, item);
            }
            out += ']';
            return;
        }
        default:
            out += json::serialize(v);
    }
}

}  // namespace

std::string canonical_json(const json::value& v) {
    std::string out;
    append_canonical(out, v);
    return out;
}

}  // namespace mxvoip::proto
