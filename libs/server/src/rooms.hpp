#pragma once

// Rooms and their events: creation, membership, messages and state, the auth rules that admit
// them (auth_rules.hpp) and the history visibility rules that govern who reads them
// (visibility.hpp), and redactions (redaction.hpp). Owns every room's current state and recent
// events, each local user's memberships, the transaction ids of sent events, and the local
// room aliases.
#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <set>
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
    asio::awaitable<Response> get_context(Request&);
    asio::awaitable<Response> redact(Request&);

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
    // Called under the lock when createRoom has built a room, with its request body.
    using Created =
        std::function<void(const Room&, const boost::json::object& body, PendingWrite&)>;
    void on_created(Created f) { created_.push_back(std::move(f)); }
    // Called under the lock with the redacted form of an event, for whoever holds the event.
    using Redacted = std::function<void(const Room&, const EventPtr& redacted)>;
    void on_redacted(Redacted f) { redacted_.push_back(std::move(f)); }

    // Local room aliases: the room an alias names, or nullptr.
    const store::RoomAliasRecord* alias_locked(const std::string& alias) const;
    // A new alias: 409 M_UNKNOWN when it is taken, 400 M_LIMIT_EXCEEDED past
    // limits.aliases_per_room.
    void put_alias_locked(store::RoomAliasRecord alias, PendingWrite& w);
    void delete_alias_locked(const std::string& alias, PendingWrite& w);
    std::vector<std::string> aliases_of_locked(const std::string& room_id) const;
    // 400 M_INVALID_PARAM for what is not an alias of this server.
    void require_local_alias(const std::string& alias) const;

  private:
    void apply_locked(Room& room, const EventPtr& ev);
    // The room's event in memory (its state or recent window), or nullptr.
    EventPtr find_event_locked(const Room& room, const std::string& event_id) const;
    // Replaces `target` everywhere it is held and stored by its redacted form.
    void apply_redaction_locked(Room& room, const Event& target, const EventPtr& redaction,
                                PendingWrite& w);
    // Before the device's first request with a transaction id since start: the ids of what
    // it sent before are read back from the store (without the lock), so that a retry of a
    // request a restart cut off gets the first answer.
    void recall_txns(const Session& s);
    // The answer to a retried transaction (PUT /send, /redact), or nothing for a new one.
    std::optional<Response> retried_locked(const std::string& device, const std::string& txn_key);
    // An m.room.canonical_alias may name only aliases that point at the room: M_BAD_ALIAS.
    void check_canonical_alias_locked(const Room& room, const NewEvent& ev) const;
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
    std::vector<Created> created_;
    std::vector<Redacted> redacted_;
    std::unordered_map<std::string, store::RoomAliasRecord> aliases_;         // by alias
    std::unordered_map<std::string, std::set<std::string>> aliases_by_room_;  // by room id
};

}  // namespace mxvoip::server
