#include "room.hpp"

#include <charconv>

namespace mxvoip::server {

namespace json = boost::json;

namespace {

const std::string kNoMembership = "leave";

std::int64_t int_or(const json::object& obj, std::string_view key, std::int64_t fallback) {
    auto it = obj.find(key);
    if (it == obj.end()) return fallback;
    if (it->value().is_int64()) return it->value().get_int64();
    if (it->value().is_uint64()) return static_cast<std::int64_t>(it->value().get_uint64());
    if (it->value().is_string()) {  // old rooms carry levels as strings
        try {
            return std::stoll(std::string(it->value().get_string()));
        } catch (...) {
        }
    }
    return fallback;
}

std::string string_or(const json::object& obj, std::string_view key, const char* fallback) {
    auto it = obj.find(key);
    return it != obj.end() && it->value().is_string() ? std::string(it->value().get_string())
                                                      : std::string(fallback);
}

}  // namespace

std::int64_t PowerLevels::user_level(const std::string& user) const {
    auto it = users.find(user);
    return it == users.end() ? users_default : it->second;
}

std::int64_t PowerLevels::event_level(const std::string& type, bool is_state) const {
    auto it = events.find(type);
    if (it != events.end()) return it->second;
    return is_state ? state_default : events_default;
}

PowerLevels PowerLevels::parse(const json::object& c) {
    PowerLevels p;
    p.users_default = int_or(c, "users_default", 0);
    p.events_default = int_or(c, "events_default", 0);
    p.state_default = int_or(c, "state_default", 50);
    p.invite = int_or(c, "invite", 0);
    p.kick = int_or(c, "kick", 50);
    p.ban = int_or(c, "ban", 50);
    p.redact = int_or(c, "redact", 50);
    if (auto it = c.find("users"); it != c.end() && it->value().is_object())
        for (const auto& kv : it->value().get_object())
            p.users[std::string(kv.key())] = int_or(it->value().get_object(), kv.key(), 0);
    if (auto it = c.find("events"); it != c.end() && it->value().is_object())
        for (const auto& kv : it->value().get_object())
            p.events[std::string(kv.key())] = int_or(it->value().get_object(), kv.key(), 0);
    return p;
}

const std::string& RoomState::membership_of(const std::string& user) const {
    auto it = membership.find(user);
    return it == membership.end() ? kNoMembership : it->second;
}

EventPtr RoomState::state_event(const std::string& type, const std::string& key) const {
    auto it = state.find({type, key});
    return it == state.end() ? nullptr : it->second;
}

bool RoomState::integer_levels_only() const {
    int v = 0;
    std::from_chars(version.data(), version.data() + version.size(), v);
    return v >= 10;
}

void RoomState::apply_state(const EventPtr& ev) {
    if (!ev->state_key) return;
    state[{ev->type, *ev->state_key}] = ev;
    const bool derived = ev->type == "m.room.member" || ev->type == "m.room.power_levels" ||
                         ev->type == "m.room.join_rules" || ev->type == "m.room.create" ||
                         ev->type == "m.room.history_visibility" ||
                         ev->type == "m.room.guest_access";
    if (!derived) return;
    json::object content;
    if (auto v = json::parse(ev->content()); v.is_object()) content = std::move(v.get_object());
    const std::string& key = *ev->state_key;
    if (ev->type == "m.room.member") {
        membership[key] = string_or(content, "membership", "leave");
    } else if (ev->type == "m.room.power_levels") {
        power = PowerLevels::parse(content);
        has_power_levels = true;
    } else if (ev->type == "m.room.join_rules") {
        join_rule = string_or(content, "join_rule", "invite");
    } else if (ev->type == "m.room.guest_access" && key.empty()) {
        guest_access = string_or(content, "guest_access", "forbidden");
    } else if (ev->type == "m.room.history_visibility" && key.empty()) {
        history_visibility = string_or(content, "history_visibility", "");
    } else if (ev->type == "m.room.create") {
        creator = ev->sender;
        // Before power levels exist, the creator has 100 (auth rules, "no power levels").
        if (!has_power_levels) power.users[ev->sender] = 100;
    }
}

void Room::apply_state(const EventPtr& ev) {
    RoomState::apply_state(ev);
    if (!ev->state_key) return;
    if (ev->type == "m.room.member") {
        history.record_membership(*ev->state_key, ev->stream, membership_of(*ev->state_key));
    } else if (ev->type == "m.room.history_visibility" && ev->state_key->empty()) {
        history.record_visibility(ev->stream, history_visibility);
    }
}

void Room::add_to_timeline(const EventPtr& ev) {
    recent.push_back(ev);
    while (recent.size() > kTimelineWindow) {
        evicted_upto = recent.front()->stream;
        recent.pop_front();
    }
}

}  // namespace mxvoip::server
