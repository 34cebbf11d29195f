// The strict JSON reader and the UTF-8 check: parse_json never throws anything but a
// MatrixError, and is_valid_utf8 agrees with Boost.JSON's own validation of a string.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/json.hpp"

namespace {
bool has_double(const boost::json::value& v) {
    if (v.is_double()) return true;
    if (const auto* a = v.if_array())
        for (const auto& e : *a)
            if (has_double(e)) return true;
    if (const auto* o = v.if_object())
        for (const auto& kv : *o)
            if (has_double(kv.value())) return true;
    return false;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        auto v = mxvoip::proto::parse_json(text);
        // What was accepted serializes to JSON that is accepted again, as the same value when
        // it holds no fractions. (A double may come back one unit in the last place away:
        // Boost.JSON 1.81 does not round every decimal correctly. The server keeps floats
        // only where it stores the text it first wrote, never reading and writing it again.)
        auto again = mxvoip::proto::parse_json(mxvoip::proto::to_string(v));
        if (!has_double(v) && again != v) std::abort();
    } catch (const mxvoip::proto::MatrixError&) {
    }
    // As a JSON string's body (quotes, backslashes and control characters aside, which JSON
    // escapes), the text is valid exactly when it is UTF-8.
    bool plain = true;
    for (unsigned char c : text) plain = plain && c >= 0x20 && c != '"' && c != '\\';
    if (plain) {
        boost::system::error_code ec;
        boost::json::parse("\"" + std::string(text) + "\"", ec);
        if (!ec != mxvoip::proto::is_valid_utf8(text)) std::abort();
    }
    return 0;
}
