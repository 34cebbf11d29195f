#include "filter.hpp"

#include <algorithm>

#include "mxvoip/proto/errors.hpp"

namespace mxvoip::server {

namespace json = boost::json;
using proto::MatrixError;
namespace errcode = proto::errcode;

namespace {

[[noreturn]] void bad(std::string_view what) {
    throw MatrixError(400, errcode::bad_json, "Invalid filter: " + std::string(what));
}

std::vector<std::string> strings(const json::value& v, std::string_view key) {
    if (!v.is_array()) bad(std::string(key) + " must be a list of strings");
    std::vector<std::string> out;
    for (const auto& s : v.get_array()) {
        if (!s.is_string()) bad(std::string(key) + " must be a list of strings");
        out.emplace_back(s.get_string());
    }
    return out;
}

const json::object* sub(const json::object& o, std::string_view key) {
    const auto* v = o.if_contains(key);
    if (!v || v->is_null()) return nullptr;
    if (!v->is_object()) bad(std::string(key) + " must be an object");
    return &v->get_object();
}

std::optional<bool> boolean(const json::object& o, std::string_view key) {
    const auto* v = o.if_contains(key);
    if (!v || v->is_null()) return std::nullopt;
    if (!v->is_bool()) bad(std::string(key) + " must be a boolean");
    return v->get_bool();
}

bool any_glob(const std::vector<std::string>& patterns, std::string_view text) {
    return std::any_of(patterns.begin(), patterns.end(),
                       [&](const std::string& p) { return glob_match(p, text); });
}

bool any_equal(const std::vector<std::string>& values, std::string_view text) {
    return std::find(values.begin(), values.end(), text) != values.end();
}

}  // namespace

bool glob_match(std::string_view p, std::string_view t) {
    // Iterative matching with one backtrack point: linear in practice, never exponential.
    std::size_t pi = 0, ti = 0, star = std::string_view::npos, mark = 0;
    while (ti < t.size()) {
        if (pi < p.size() && p[pi] == '*') {
            star = pi++;
            mark = ti;
        } else if (pi < p.size() && p[pi] == t[ti]) {
            ++pi;
            ++ti;
        } else if (star != std::string_view::npos) {
            pi = star + 1;
            ti = ++mark;
        } else {
            return false;
        }
    }
    while (pi < p.size() && p[pi] == '*') ++pi;
    return pi == p.size();
}

EventFilter EventFilter::parse(const json::object& o) {
    EventFilter f;
    for (const auto& kv : o) {
        const auto key = kv.key();
        const auto& v = kv.value();
        if (v.is_null()) continue;
        if (key == "types")
            f.types = strings(v, key);
        else if (key == "senders")
            f.senders = strings(v, key);
        else if (key == "rooms")
            f.rooms = strings(v, key);
        else if (key == "not_types")
            f.not_types = strings(v, key);
        else if (key == "not_senders")
            f.not_senders = strings(v, key);
        else if (key == "not_rooms")
            f.not_rooms = strings(v, key);
        else if (key == "limit") {
            if (!v.is_int64() && !v.is_uint64()) bad("limit must be an integer");
            auto n = v.is_int64() ? v.get_int64() : static_cast<std::int64_t>(v.get_uint64());
            if (n < 0) bad("limit must not be negative");
            f.limit = static_cast<int>(std::min<std::int64_t>(n, 1000));
        }
    }
    f.contains_url = boolean(o, "contains_url");
    f.lazy_load_members = boolean(o, "lazy_load_members").value_or(false);
    f.include_redundant_members = boolean(o, "include_redundant_members").value_or(false);
    return f;
}

bool EventFilter::allows_type(std::string_view type) const {
    if (any_glob(not_types, type)) return false;
    return !types || any_glob(*types, type);
}

bool EventFilter::allows_sender(std::string_view sender) const {
    if (any_equal(not_senders, sender)) return false;
    return !senders || any_equal(*senders, sender);
}

bool EventFilter::allows_room(std::string_view room_id) const {
    if (any_equal(not_rooms, room_id)) return false;
    return !rooms || any_equal(*rooms, room_id);
}

bool EventFilter::allows(std::string_view type, std::string_view sender, std::string_view room_id,
                         std::string_view content) const {
    if (!allows_type(type) || !allows_sender(sender) || !allows_room(room_id)) return false;
    if (contains_url) {
        bool has = false;
        if (auto v = json::parse(content); v.is_object())
            if (const auto* url = v.get_object().if_contains("url")) has = url->is_string();
        if (has != *contains_url) return false;
    }
    return true;
}

SyncFilter SyncFilter::parse(const json::object& o) {
    SyncFilter f;
    if (const auto* p = sub(o, "presence")) f.presence = EventFilter::parse(*p);
    if (const auto* a = sub(o, "account_data")) f.account_data = EventFilter::parse(*a);
    if (const auto* fmt = o.if_contains("event_format"); fmt && !fmt->is_null()) {
        if (!fmt->is_string() ||
            (fmt->get_string() != "client" && fmt->get_string() != "federation"))
            bad("event_format must be client or federation");
        f.client_format = fmt->get_string() == "client";
    }
    if (const auto* room = sub(o, "room")) {
        f.room_rooms = EventFilter::parse(*room);
        f.room_rooms.limit.reset();
        f.include_leave = boolean(*room, "include_leave").value_or(false);
        if (const auto* t = sub(*room, "timeline")) f.timeline = EventFilter::parse(*t);
        if (const auto* s = sub(*room, "state")) f.state = EventFilter::parse(*s);
        if (const auto* e = sub(*room, "ephemeral")) f.ephemeral = EventFilter::parse(*e);
        if (const auto* a = sub(*room, "account_data"))
            f.room_account_data = EventFilter::parse(*a);
    }
    return f;
}

}  // namespace mxvoip::server
