#pragma once

// A room as the server holds it: its current state and what the auth rules, the history
// visibility rules and /sync read from it. Pure data and pure updates; the Rooms module owns
// the rooms and decides what is appended.
#include <boost/json.hpp>

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

#include "events.hpp"
#include "visibility.hpp"

namespace mxvoip::server {

struct PowerLevels {
    std::unordered_map<std::string, std::int64_t> users;
    std::unordered_map<std::string, std::int64_t> events;
    std::int64_t users_default = 0;
    std::int64_t events_default = 0;
    std::int64_t state_default = 50;
    std::int64_t invite = 0;
    std::int64_t kick = 50;
    std::int64_t ban = 50;
    std::int64_t redact = 50;

    std::int64_t user_level(const std::string& user) const;
    std::int64_t event_level(const std::string& type, bool is_state) const;
    static PowerLevels parse(const boost::json::object& content);
};

// An event a client asks for, before the auth rules and a stream position.
struct NewEvent {
    std::string type;
    std::optional<std::string> state_key;
    boost::json::object content;
};

// What the auth rules read of a room: its current state and what is derived from it. A
// write decided in its transaction works on a copy of this (Rooms), so it is cheap to copy
// compared with the room's history.
struct RoomState {
    std::string id;
    std::string version;
    std::map<std::pair<std::string, std::string>, EventPtr> state;
    std::unordered_map<std::string, std::string> membership;  // user id -> membership
    PowerLevels power;
    bool has_power_levels = false;
    std::string creator;
    std::string join_rule = "invite";
    std::string guest_access = "forbidden";
    // content.history_visibility of the current m.room.history_visibility ("" when none).
    std::string history_visibility;

    const std::string& membership_of(const std::string& user) const;
    EventPtr state_event(const std::string& type, const std::string& key) const;
    // Room versions before 10 allow power levels written as strings of an integer.
    bool integer_levels_only() const;

    // A state event becomes current state, and what is derived from it follows.
    void apply_state(const EventPtr& ev);
    // Whether anyone may join or read the room: its join rule public, or its history world
    // readable (the rooms whose members the user directory searches).
    bool open() const { return join_rule == "public" || history_visibility == "world_readable"; }
};

// A room as the server holds it for readers: its state, the history visibility rules' record
// and the newest events.
struct Room : RoomState {
    // The newest events of a room kept in memory for /sync; older ones come from the store.
    static constexpr std::size_t kTimelineWindow = 50;

    RoomHistory history;          // what the history visibility rules read
    std::deque<EventPtr> recent;  // newest events, stream order
    StreamId evicted_upto = 0;    // newest stream of this room that is no longer in `recent`
    // Read from the store when it was first needed, with every event up to here: one of them
    // applied again (committed before the room was read, applied after) changes nothing.
    StreamId loaded_upto = 0;
    // Writes submitted and not yet settled: while there are any, the room stays in memory
    // (their decisions and their applied step find it there).
    int writes_in_flight = 0;
    // The room's newest event held: read with it, or applied since.
    StreamId last_event = 0;
    // A decision found an event of another process that this room does not hold yet (a
    // shared database): it is read again before it is used or applied to.
    bool stale = false;

    // As RoomState::apply_state, and the history visibility record follows.
    void apply_state(const EventPtr& ev);
    // Any event joins the recent window (the oldest leaves it).
    void add_to_timeline(const EventPtr& ev);
};

}  // namespace mxvoip::server
