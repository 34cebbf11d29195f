#pragma once

// Rooms and their events: creation, membership, messages and state, the auth rules that admit
// them (auth_rules.hpp) and the history visibility rules that govern who reads them
// (visibility.hpp), and redactions (redaction.hpp). Owns the rooms (a bounded cache of their
// current state, history and recent events, read from the store when first needed), each
// local user's memberships and the transaction ids of sent events. The local room aliases
// are not held: each use reads them from the store (Directory writes them).
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "accounts.hpp"
#include "core.hpp"
#include "http_types.hpp"
#include "lru_cache.hpp"
#include "reads_in_flight.hpp"
#include "room.hpp"
#include "txn_ids.hpp"

namespace mxvoip::server {

// A local user's membership of a room, and the stream position of the event that made it.
struct RoomMembership {
    std::string membership;
    StreamId stream = 0;
};
using Memberships = std::unordered_map<std::string, RoomMembership>;  // by room id

// One event a request asks to append to a room.
struct Append {
    std::string room_id;
    std::string sender;
    NewEvent ev;
    // The device (Session::device_key) and client transaction id that sent it, if any.
    std::string txn_device_key;
    std::string txn_id;
    // A membership change of someone else that only applies to a member of the room (a
    // kick: joined or invited) or only to someone banned (an unban); empty: no such rule.
    std::string target_must_be;
};

// Room events written together, decided in their transaction (Rooms::append).
struct RoomWrite {
    std::vector<Append> events;
    // Each event is decided on its own: one the rules refuse is left out (a new display name
    // in every joined room) instead of refusing the whole write.
    bool each_on_its_own = false;
    // createRoom: the room that the first event, its m.room.create, makes.
    std::optional<store::RoomRecord> create;
    // A redaction: the event that the write's one event redacts.
    EventPtr redacts;
    // Written with the events, and refused with them.
    std::vector<store::Mutation> mutations;
    // What the other processes sharing the database must learn of the mutations (kind and
    // key; each takes a position after the events'). Nothing when the database is not shared.
    std::vector<store::ChangeRecord> changes;
    // Under the lock, once the write committed, before its events reach the rooms: what the
    // mutations change in another module's cache.
    std::function<void()> applied;
};

class Rooms {
  public:
    Rooms(Core& core, Accounts& accounts);
    // Rooms held past `caches.rooms` are let go on this executor, where no caller holds one.
    void start(asio::any_io_executor ex);

    asio::awaitable<Response> create_room(Request&);
    asio::awaitable<Response> invite(Request&);
    asio::awaitable<Response> join(Request&);
    asio::awaitable<Response> leave(Request&);
    asio::awaitable<Response> kick(Request&);
    asio::awaitable<Response> ban(Request&);
    asio::awaitable<Response> unban(Request&);
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

    // The room, read from the store if it is not held (throws StoreUnavailable when the
    // database cannot be reached); nullptr when there is no such room. What it returns stays
    // valid while the caller holds the lock.
    const Room* find_locked(const std::string& room_id) const;
    // Reads the rooms not held from the store without the lock (StoreUnavailable when the
    // database cannot be reached), so that the find_locked that follows finds them held.
    void preload(const std::vector<std::string>& room_ids) const;
    // As find_locked, for what cannot answer 503 (timers, what runs after a commit): nullptr
    // also when the room is not held and the database cannot be reached (logged).
    const Room* find_or_skip_locked(const std::string& room_id) const noexcept;
    // Whether the room exists (read when it is not held: StoreUnavailable when it cannot be).
    bool exists_locked(const std::string& room_id) const { return find_locked(room_id) != nullptr; }
    // The rooms anyone may join or read (join rule public, or history world readable): those
    // whose members the user directory searches. Read from the store: call it without the
    // lock (StoreUnavailable when the database cannot be reached).
    std::vector<std::string> open_rooms() const { return core_.store().open_rooms(); }
    // The user's rooms (an empty map for a user with none, and for a remote user), read from
    // the store under the lock when they are not held: StoreUnavailable when the database
    // cannot be reached. The reference stays good until the lock is released.
    const Memberships& memberships_locked(const std::string& user_id) const;
    // As memberships_locked, for what cannot answer 503 (timers, what runs after a commit):
    // none also when they are not held and the database cannot be reached (logged).
    const Memberships& memberships_or_skip_locked(const std::string& user_id) const noexcept;
    // Reads the users' memberships not held from the store without the lock (call it
    // without; StoreUnavailable when the database cannot be reached), so that what follows
    // under the lock finds them held.
    void preload_memberships(const std::vector<std::string>& user_ids) const;
    // As preload_memberships for one user, holding them until the result is let go: a /sync
    // keeps its user's so, and what commits meanwhile reaches them.
    std::shared_ptr<const void> hold_memberships(const std::string& user_id) const;
    // Appends events: decided in their transaction (Core::transact) against the rooms as
    // committed and as the writes before them in the same transaction left them (the auth
    // rules, the replaced state), stored, and only then applied to the rooms held here.
    // Returns the events appended, in order; throws the refusal (nothing is appended) or 503.
    // A coroutine taking its argument by reference: the caller's object must outlive it.
    asio::awaitable<std::vector<EventPtr>> append(RoomWrite& write);
    Room& room_or_throw_locked(const std::string& room_id);
    // Called under the lock for every event appended, once it committed and the room applied
    // it (what a listener stores in turn is a write of its own: Core::transact_locked).
    using Appended = std::function<void(const Room&, const EventPtr&)>;
    void on_appended(Appended f) { appended_.push_back(std::move(f)); }
    // Called under the lock as createRoom's write is made, with the new room's id and the
    // request body: what a module adds to `write` (its mutations, its `applied` chained to the
    // one there) is written with the room, or not at all.
    using Creating = std::function<void(const std::string& room_id, const boost::json::object& body,
                                        RoomWrite& write)>;
    void on_creating(Creating f) { creating_.push_back(std::move(f)); }
    // Called under the lock with the redacted form of an event, for whoever holds the event.
    using Redacted = std::function<void(const Room&, const EventPtr& redacted)>;
    void on_redacted(Redacted f) { redacted_.push_back(std::move(f)); }

    // 400 M_INVALID_PARAM for what is not an alias of this server.
    void require_local_alias(const std::string& alias) const;

  private:
    struct Decided;
    // A RoomWrite's decision, run on the writer's thread in the transaction.
    void decide(const RoomWrite& write, store::Txn& txn, StreamId first, Decided& out);
    // Once the transaction committed: the rooms held here follow. Under the lock.
    std::vector<std::string> applied_locked(const RoomWrite& write, const Decided& out);
    // A new event of `room` at `stream`, checked against the auth rules (`creating`:
    // createRoom's m.room.create, the one event no auth rule admits).
    EventPtr build_event_locked(const RoomState& room, const Append& a, StreamId stream,
                                bool creating, store::Txn& txn) const;
    // The room as the decisions of the current transaction see it: what the writes decided
    // before in it left, else as committed: as held, or, on a shared database when another
    // process appended to it what is not held yet, as read from the database (and the room
    // held is read again before it is used). Writer's thread, under the lock.
    const RoomState* decided_state_locked(const std::string& room_id, store::Txn& txn);
    // 403 when a kick's target is not in the room or an unban's is not banned
    // (Append::target_must_be).
    static void check_target(const RoomState& room, const std::string& target,
                             const std::string& must_be);
    // The room held, or read from the store and held (StoreUnavailable when it cannot be);
    // nullptr when there is no such room.
    Room* get_locked(const std::string& room_id) const;
    // Holds a room read from the store.
    Room& hold_locked(store::RoomLoad&& loaded) const;
    static Room build_room(store::RoomLoad&& loaded);
    // Reads a stale room again, in place (Room::stale).
    void refresh_locked(Room& room) const;
    // Lets rooms go past the cache's capacity, later, on the executor (never under a caller
    // that holds a room).
    void trim_later_locked() const;
    // A committed event joins its room (unless the room was read after it committed: then
    // it is there already) and, a member event, its target's memberships.
    void apply_locked(Room& room, const EventPtr& ev);
    // A member event's target's memberships follow it, unless they know a later one.
    void membership_changed_locked(const EventPtr& ev);
    // A committed event of this process or another: applied, the listeners told; adds whose
    // /syncs learn of it.
    void appended_locked(Room& room, const EventPtr& ev, std::vector<std::string>& wake);
    // The redacted form of an event replaces it wherever the room holds it.
    void redacted_locked(Room& room, const EventPtr& redacted);
    // An event another process committed (Core::on_change).
    void fed_locked(store::EventRecord record, std::vector<std::string>& wake);
    // A state event becomes the room's current state.
    void apply_state_locked(Room& room, const EventPtr& ev);
    // The room's event in memory (its state or recent window), or nullptr.
    EventPtr find_event_locked(const Room& room, const std::string& event_id) const;
    // `target` as `redaction` leaves it, in a room of that version.
    static EventPtr redacted_form(const std::string& version, const Event& target,
                                  const EventPtr& redaction);
    // Before the device's first request with a transaction id since start: the ids of what
    // it sent before are read back from the store (without the lock), so that a retry of a
    // request a restart cut off gets the first answer.
    void recall_txns(const Session& s);
    // The answer to a retried transaction (PUT /send, /redact), or nothing for a new one.
    std::optional<Response> retried_locked(const std::string& device, const std::string& txn_key);
    // The answer to a retried transaction, or nothing when this request is the first with
    // it: then the id is claimed (TxnIds::claim) until the write that carries it (its events'
    // txn_id) settled, and a retry meanwhile waits for that.
    asio::awaitable<std::optional<Response>> claim_txn(const std::string& device,
                                                       const std::string& txn_key);
    // An m.room.canonical_alias may name only aliases that point at the room, as the
    // transaction finds them (a new room's alias is written in it): M_BAD_ALIAS.
    static void check_canonical_alias(const RoomState& room, const NewEvent& ev, store::Txn& txn);
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
                                                boost::json::object& extra,
                                                const std::string& target_must_be);
    // /kick, /ban and /unban: {user_id, reason}.
    asio::awaitable<Response> moderate(Request& req, const std::string& membership,
                                       const std::string& target_must_be);

    Core& core_;
    Accounts& accounts_;
    // The rooms held, least recently used first to go, never one with a write in flight. An
    // entry's address never changes while it is held; one goes only in trim_later_locked's
    // handler, so a Room* taken under the lock stays good until the lock is released.
    mutable LruCache<std::string, Room> rooms_;
    mutable bool trim_pending_ = false;
    std::optional<asio::any_io_executor> trims_;
    // Each local user's memberships that were read (caches.memberships), let go as rooms are:
    // in trim_later_locked's handler, never one a /sync holds.
    using HeldMemberships = std::shared_ptr<Memberships>;
    mutable LruCache<std::string, HeldMemberships> memberships_;
    mutable ReadsInFlight<std::string> memberships_loading_;  // by user id
    // The rooms read without the lock (preload), and the events applied to them meanwhile.
    mutable ReadsInFlight<std::string> rooms_loading_;  // by room id
    static Memberships fold_memberships(std::vector<store::HistoryRecord> events);
    TxnIds txns_;  // event ids by device, room id + '\n' + txn id
    // What the decisions of the writer's current transaction made of the rooms they changed
    // (writer's thread only; dropped when a new transaction begins).
    std::unordered_map<std::string, std::shared_ptr<RoomState>> staged_;
    std::uint64_t staged_txn_ = 0;
    // The rooms whose newest event the current transaction compared with the one held.
    std::set<std::string> checked_;
    std::vector<Appended> appended_;
    std::vector<Creating> creating_;
    std::vector<Redacted> redacted_;
};

}  // namespace mxvoip::server
