#pragma once

// Rooms and their events: creation, membership, messages and state, the auth rules that admit
// them (auth_rules.hpp) and the history visibility rules that govern who reads them
// (visibility.hpp). Owns every room's current state and recent events, each local user's
// memberships, and the transaction ids of sent events.
#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "accounts.hpp"
#include "core.hpp"
#include "http_types.hpp"
#include "room.hpp"
#include "txn_ids.hpp"

namespace mxvoip::server {

// A local user's membership of a room, and the stream position of the event that made it.
struct RoomMembership {
    std::string membership;
    StreamId stream = 0;
};
using Memberships = std::unordered_map<std::string, RoomMembership>;  // by room id

class Rooms {
  public:
    Rooms(Core& core, Accounts& accounts);

    void load(store::Snapshot& snap);

    asio::awaitable<Response> create_room(Request&);
    asio::awaitable<Response> invite(Request&);
    asio::awaitable<Response> join(Request&);
    asio::awaitable<Response> leave(Request&);
    asio::awaitable<Response> joined_rooms(Request&);
    asio::awaitable<Response> send_event(Request&);
    asio::awaitable<Response> put_state(Request&);
    asio::awaitable<Response> get_state_event(Request&);
    asio::awaitable<Response> get_state(Request&);
    asio::awaitable<Response> get_members(Request&);
    asio::awaitable<Response> get_messages(Request&);
    asio::awaitable<Response> get_event(Request&);

    const Room* find_locked(const std::string& room_id) const;
    template <typename F>
    void for_each_room_locked(F&& f) const {
        for (const auto& [id, room] : rooms_) f(room);
    }
    // The user's rooms (an empty map for a user with none).
    const Memberships& memberships_locked(const std::string& user_id) const;
    // Checks the auth rules, assigns the next stream position, applies the event to the model
    // and adds its mutation to `w`. `creating` is createRoom's m.room.create, the one event no
    // auth rule admits.
    EventPtr append_event_locked(Room& room, const std::string& sender, NewEvent ev,
                                 PendingWrite& w, const std::string& txn_device_key = {},
                                 const std::string& txn_id = {}, bool creating = false);
    Room& room_or_throw_locked(const std::string& room_id);
    // Called under the lock for every event appended, after the room applied it, with the
    // write it is part of.
    using Appended = std::function<void(const Room&, const EventPtr&, PendingWrite&)>;
    void on_appended(Appended f) { appended_.push_back(std::move(f)); }

  private:
    void apply_locked(Room& room, const EventPtr& ev);
    // Who reads a room's events (each then checked with RoomHistory::may_see): anyone who
    // ever had a membership in it, and everyone when it is world readable; 403 otherwise.
    void require_reader_locked(const Room& room, const std::string& user) const;
    // Up to where `user` reads the room's state: nothing for the current state (members, and
    // anyone in a world-readable room), the position of their leave or ban for former
    // members; 403 for anyone else.
    std::optional<StreamId> state_horizon_locked(const Room& room, const std::string& user) const;
    asio::awaitable<Response> membership_change(Request& req, const std::string& room_id,
                                                const std::string& target,
                                                const std::string& membership,
                                                boost::json::object& extra);

    Core& core_;
    Accounts& accounts_;
    std::unordered_map<std::string, Room> rooms_;
    std::unordered_map<std::string, Memberships> memberships_;  // by local user id
    TxnIds txns_;  // event ids by device, room id + '\n' + txn id
    std::vector<Appended> appended_;
};

}  // namespace mxvoip::server
