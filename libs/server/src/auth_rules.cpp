#include "auth_rules.hpp"

#include <charconv>
#include <set>

#include "mxvoip/proto/ids.hpp"
#include "mxvoip/proto/json.hpp"

namespace mxvoip::server {

namespace json = boost::json;

namespace {

constexpr const char* kTopLevels[] = {"users_default", "events_default", "state_default", "ban",
                                      "kick",          "redact",         "invite"};

// A power level as written in content: an integer, or (before room version 10) a string of
// one.
std::optional<std::int64_t> level_of(const json::value& v, bool integers_only) {
    if (v.is_int64()) return v.get_int64();
    if (v.is_uint64() && v.get_uint64() <= static_cast<std::uint64_t>(proto::kMaxSafeInteger))
        return static_cast<std::int64_t>(v.get_uint64());
    if (integers_only || !v.is_string()) return std::nullopt;
    std::string_view s = v.get_string();
    std::int64_t out = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    if (ec != std::errc() || end != s.data() + s.size() || s.empty()) return std::nullopt;
    return out;
}

// The levels of one place in the content (the top level, or its "users", "events" or
// "notifications" object), by key. Levels already checked by well_formed.
std::optional<std::int64_t> entry(const json::object* o, std::string_view key, bool integers_only) {
    if (!o) return std::nullopt;
    const json::value* v = o->if_contains(key);
    return v ? level_of(*v, integers_only) : std::nullopt;
}

const json::object* section(const json::object* content, std::string_view key) {
    if (!content) return nullptr;
    const json::value* v = content->if_contains(key);
    return v ? v->if_object() : nullptr;
}

std::optional<std::string> well_formed(const json::object& next, bool integers_only) {
    for (const char* key : kTopLevels)
        if (const json::value* v = next.if_contains(key); v && !level_of(*v, integers_only))
            return std::string(key) + " must be an integer";
    for (const char* key : {"users", "events", "notifications"}) {
        const json::value* v = next.if_contains(key);
        if (!v) continue;
        if (!v->is_object()) return std::string(key) + " must be an object";
        for (const auto& [k, level] : v->get_object()) {
            if (!level_of(level, integers_only))
                return std::string(key) + "." + std::string(k) + " must be an integer";
            if (std::string_view(key) == "users" && !proto::parse_user_id(k))
                return "users." + std::string(k) + " is not a user id";
        }
    }
    return std::nullopt;
}

}  // namespace

std::optional<std::string> power_levels_change_refusal(const json::object* current,
                                                       const json::object& next,
                                                       const std::string& sender,
                                                       std::int64_t sender_level,
                                                       bool integers_only) {
    if (auto bad = well_formed(next, integers_only)) return bad;
    if (!current) return std::nullopt;  // the room's first power levels

    // One key of one place: refused if it is added, changed or removed while its old or new
    // value is above the sender's level (rules c, d, e).
    auto check = [&](const json::object* before, const json::object* after, std::string_view key,
                     const std::string& name) -> std::optional<std::string> {
        auto old_level = entry(before, key, integers_only);
        auto new_level = entry(after, key, integers_only);
        if (old_level == new_level) return std::nullopt;
        if ((old_level && *old_level > sender_level) || (new_level && *new_level > sender_level))
            return "You cannot change " + name + " beyond your own power level (" +
                   std::to_string(sender_level) + ")";
        return std::nullopt;
    };
    for (const char* key : kTopLevels)
        if (auto refusal = check(current, &next, key, key)) return refusal;
    for (const char* place : {"events", "notifications"}) {
        const json::object* before = section(current, place);
        const json::object* after = section(&next, place);
        std::set<std::string> keys;
        for (const json::object* o : {before, after})
            if (o)
                for (const auto& kv : *o) keys.insert(std::string(kv.key()));
        for (const auto& key : keys)
            if (auto refusal = check(before, after, key, std::string(place) + "." + key))
                return refusal;
    }
    // Users (rules f, g): another user's level may be changed or removed only from below the
    // sender's own; nobody may be raised above it.
    const json::object* before = section(current, "users");
    const json::object* after = section(&next, "users");
    std::set<std::string> users;
    for (const json::object* o : {before, after})
        if (o)
            for (const auto& kv : *o) users.insert(std::string(kv.key()));
    for (const auto& user : users) {
        auto old_level = entry(before, user, integers_only);
        auto new_level = entry(after, user, integers_only);
        if (old_level == new_level) continue;
        if (user != sender && old_level && *old_level >= sender_level)
            return "You cannot change the power level of " + user + ", which is not below your own";
        if (new_level && *new_level > sender_level)
            return "You cannot give " + user + " a power level above your own";
    }
    return std::nullopt;
}

}  // namespace mxvoip::server
