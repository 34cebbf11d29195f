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

namespace {

using proto::MatrixError;
namespace errcode = proto::errcode;

std::optional<MatrixError> refuse(unsigned status, const char* code, std::string message) {
    return MatrixError(status, code, message);
}

std::optional<MatrixError> member_refusal(const RoomState& room, const std::string& sender,
                                          bool sender_is_guest, const NewEvent& ev) {
    if (!ev.state_key)
        return refuse(400, errcode::bad_json,
                      "m.room.member is a state event: send it with a state_key");
    const std::string& target = *ev.state_key;
    if (!proto::parse_user_id(target))
        return refuse(400, errcode::bad_json, "state_key of m.room.member must be a user id");
    auto it = ev.content.find("membership");
    if (it == ev.content.end() || !it->value().is_string())
        return refuse(400, errcode::bad_json, "m.room.member needs a 'membership'");
    const std::string m(it->value().get_string());
    const std::string& sender_m = room.membership_of(sender);
    const std::string& target_m = room.membership_of(target);
    const auto& pl = room.power;
    if (m == "join") {
        if (sender != target)
            return refuse(403, errcode::forbidden, "Cannot force another user to join");
        if (target_m == "ban")
            return refuse(403, errcode::forbidden, "You are banned from this room");
        if (target_m != "join" && sender_is_guest && room.guest_access != "can_join")
            return refuse(403, errcode::guest_access_forbidden,
                          "Guests cannot join this room (m.room.guest_access)");
        if (target_m == "join" || target_m == "invite" || room.join_rule == "public") return {};
        // The creator's own join directly after m.room.create.
        if (room.membership.empty() && sender == room.creator) return {};
        return refuse(403, errcode::forbidden, "You are not invited to this room.");
    }
    if (m == "invite") {
        if (sender_m != "join") return refuse(403, errcode::forbidden, "You are not in this room");
        if (target_m == "join")
            return refuse(403, errcode::forbidden, target + " is already in the room.");
        if (target_m == "ban")
            return refuse(403, errcode::forbidden, target + " is banned from the room");
        if (pl.user_level(sender) < pl.invite)
            return refuse(403, errcode::forbidden, "You don't have permission to invite users");
        return {};
    }
    if (m == "leave") {
        if (sender == target) {
            if (target_m == "join" || target_m == "invite" || target_m == "knock") return {};
            return refuse(403, errcode::forbidden, "You are not in this room");
        }
        if (sender_m != "join") return refuse(403, errcode::forbidden, "You are not in this room");
        if (target_m == "ban" ? pl.user_level(sender) < pl.ban : pl.user_level(sender) < pl.kick)
            return refuse(403, errcode::forbidden, "You don't have permission to remove " + target);
        if (pl.user_level(sender) <= pl.user_level(target))
            return refuse(403, errcode::forbidden,
                          "Your power level is not above " + target + "'s");
        return {};
    }
    if (m == "ban") {
        if (sender_m != "join") return refuse(403, errcode::forbidden, "You are not in this room");
        if (pl.user_level(sender) < pl.ban || pl.user_level(sender) <= pl.user_level(target))
            return refuse(403, errcode::forbidden, "You don't have permission to ban " + target);
        return {};
    }
    return refuse(400, errcode::bad_json, "Unknown membership '" + m + "'");
}

}  // namespace

std::optional<MatrixError> event_auth_refusal(const RoomState& room, const std::string& sender,
                                              bool sender_is_guest, const NewEvent& ev) {
    if (ev.type == "m.room.create")
        return refuse(403, errcode::forbidden, "m.room.create can only be sent by createRoom");
    if (ev.type == "m.room.member") return member_refusal(room, sender, sender_is_guest, ev);
    const bool is_state = ev.state_key.has_value();
    if (room.membership_of(sender) != "join")
        return refuse(403, errcode::forbidden, "User " + sender + " not in room " + room.id);
    const std::int64_t have = room.power.user_level(sender);
    const std::int64_t need = room.power.event_level(ev.type, is_state);
    if (have < need)
        return refuse(403, errcode::forbidden,
                      "You don't have permission to post " + ev.type + " (needs power " +
                          std::to_string(need) + ", you have " + std::to_string(have) + ")");
    // A state key that starts with '@' belongs to that user alone.
    if (is_state && !ev.state_key->empty() && ev.state_key->front() == '@' &&
        *ev.state_key != sender)
        return refuse(403, errcode::forbidden, "That state key belongs to another user");
    if (ev.type == "m.room.power_levels") {
        std::optional<json::object> current;
        if (EventPtr pl_event = room.state_event("m.room.power_levels", ""))
            current = json::parse(pl_event->content()).as_object();
        if (auto why = power_levels_change_refusal(current ? &*current : nullptr, ev.content,
                                                   sender, have, room.integer_levels_only()))
            return refuse(403, errcode::forbidden, *why);
    }
    return {};
}

}  // namespace mxvoip::server
