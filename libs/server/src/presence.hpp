#pragma once

// Presence: whether each user is online, unavailable (idle) or offline, with their status
// message, as PUT/GET /presence/{userId}/status and /sync's `presence` show it to the users
// who share a room with them.
//
// What a user chose (PUT, or /sync's set_presence) meets what they do: a user whose /syncs
// stopped more than kSyncGoneMs ago is offline, one who sent nothing for kIdleMs is
// unavailable, and sending an event makes an idle user online again. A change is a decision
// (Core::transact): it takes a stream position and is stored with the status message
// (PutPresence), and others see it once it committed; one timer, running while anyone is not
// offline, applies the timeouts.
//
// Held: every user not offline (read at start: who was present when the server stopped) and
// every user whose presence changed, or who synced or set it, since the start; past kHeld
// users the older half of those not present goes, and the horizon moves up to them. Any other
// user's presence changed at or before the horizon and is read from the store when needed:
// for an initial /sync, an incremental one since before the horizon, or GET .../status.
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "accounts.hpp"
#include "core.hpp"
#include "filter.hpp"
#include "http_types.hpp"
#include "rooms.hpp"

namespace mxvoip::server {

class Presence {
  public:
    static constexpr std::int64_t kSyncGoneMs = 30'000;
    static constexpr std::int64_t kIdleMs = 5 * 60'000;
    static constexpr std::int64_t kCurrentlyActiveMs = 60'000;
    static constexpr std::size_t kMaxStatusBytes = 1024;
    static constexpr std::size_t kHeld = 100'000;  // users held, at most, before a trim

    Presence(Core& core, Accounts& accounts, Rooms& rooms);

    void load(store::Snapshot& snap);
    void start(asio::any_io_executor ex);
    void stop();

    asio::awaitable<Response> put_status(Request&);
    asio::awaitable<Response> get_status(Request&);

    // A /sync of `user` begins, asking to be `set_presence` (online, unavailable or offline:
    // the last leaves presence as it is); its change, if any, is submitted.
    void sync_started_locked(const std::string& user, const std::string& set_presence);
    void sync_ended_locked(const std::string& user);
    // Appends the m.presence events `user` is to see: of the users sharing a joined room with
    // them and their own, changed in (since, upto], or all known when `initial`; of the
    // senders `filter` allows, when there is one. Reads those not held from the store when
    // `initial` or `since` is before the horizon: StoreUnavailable when the database cannot be
    // reached.
    bool render_locked(std::string& out, const std::string& user, StreamId since, StreamId upto,
                       bool initial, const EventFilter* filter = nullptr) const;

  private:
    struct State {
        // What others see: the last change committed.
        std::string presence = "offline";
        std::string status_msg;
        StreamId stream = 0;
        // What the last change submitted makes it (the same as the above when none is in
        // flight): what the next change is compared with.
        std::string wanted = "offline";
        std::string wanted_status;
        int in_flight = 0;
        std::string chosen = "online";  // what the user asked for last
        std::int64_t last_active = 0;   // unix ms of their last action; 0: none known
        std::int64_t last_sync = 0;     // when their last /sync began or ended
        int syncing = 0;                // /syncs running now
    };

    // Makes `presence` (and `status`, when given) what others see, when it differs from what
    // the last change made it or `force`: returns the decision that stores it, or nothing.
    std::optional<Decision> change_locked(const std::string& user, State& st,
                                          const std::string& presence,
                                          std::optional<std::string> status = std::nullopt,
                                          bool force = false);
    void appended_locked(const EventPtr& ev);
    // The user's state, read from the store (and held) when it is not held: StoreUnavailable
    // when the database cannot be reached.
    State& state_locked(const std::string& user);
    static State from_record(const store::PresenceRecord& p);
    // Past kHeld users, the older half of those the timer and no change or /sync needs go.
    void trim_locked();
    // Who sees the user's presence: the user and whoever shares a joined room with them.
    std::vector<std::string> audience_locked(const std::string& user) const;
    void arm_locked();
    void tick();
    void append_event(std::string& out, const std::string& user, const State& st,
                      std::int64_t now) const;

    Core& core_;
    Accounts& accounts_;
    Rooms& rooms_;
    std::unordered_map<std::string, State> users_;
    // A user not held changed their presence at or before it (the start's position, then the
    // newest a trim let go).
    StreamId horizon_ = 0;
    std::unordered_set<std::string> present_;  // not offline: what the timer looks at
    std::optional<asio::steady_timer> timer_;
    bool armed_ = false;
    bool stopped_ = false;
};

}  // namespace mxvoip::server
