#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/json.hpp>

#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "http_types.hpp"
#include "mxvoip/server/config.hpp"
#include "mxvoip/server/crypto.hpp"
#include "mxvoip/server/rate_limiter.hpp"
#include "mxvoip/store/store.hpp"
#include "mxvoip/store/writer.hpp"
#include "visibility.hpp"

namespace mxvoip::server {

namespace json = boost::json;
namespace asio = boost::asio;
using store::StreamId;

// A room event as held in memory: the stored record, immutable once created, shared between
// the room's state map, its recent-timeline window and responses being built. Its `json` is the
// client format without "unsigned" and starts with {"content":.
struct Event : store::EventRecord {
    std::size_t content_len = 0;  // json.substr(11, content_len) is the content

    std::string_view content() const { return std::string_view(json).substr(11, content_len); }
};
using EventPtr = std::shared_ptr<const Event>;

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
    static PowerLevels parse(const json::object& content);
};

struct Room {
    std::string id;
    std::string version;
    std::map<std::pair<std::string, std::string>, EventPtr> state;
    std::unordered_map<std::string, std::string> membership;  // user id -> membership
    PowerLevels power;
    bool has_power_levels = false;
    std::string creator;
    std::string join_rule = "invite";
    std::string guest_access = "forbidden";
    RoomHistory history;          // what the history visibility rules read
    std::deque<EventPtr> recent;  // newest events, stream order
    StreamId evicted_upto = 0;    // newest stream of this room that is no longer in `recent`

    const std::string& membership_of(const std::string& user) const;
    EventPtr state_event(const std::string& type, const std::string& key) const;
};

struct RoomMembership {
    std::string membership;
    StreamId stream = 0;
};

struct AccountData {
    StreamId stream = 0;
    std::string content;
};

struct ToDeviceMessage {
    StreamId stream = 0;
    std::string message;
};

struct User {
    store::UserRecord record;
    std::unordered_map<std::string, RoomMembership> rooms;
    std::map<std::pair<std::string, std::string>, AccountData> account_data;  // (room or "", type)
    std::unordered_map<std::string, std::deque<ToDeviceMessage>> to_device;   // by device
    std::vector<std::string> filters;
};

// Event ids look like room-v4 ids ("$" + 43 url-safe base64 characters) and are opaque to
// clients; the first 8 of their 32 bytes are the event's stream position, the rest random.
// That lets the store find an event by id without an index on ids.
std::string new_event_id(StreamId stream);
std::optional<StreamId> event_id_stream(std::string_view event_id);

// Stream tokens ("s<stream>", the position just after that event) for since, next_batch,
// prev_batch and /messages. A malformed token is M_INVALID_PARAM.
std::string make_token(StreamId s);
StreamId parse_token(const std::string& token);

// A /sync parked until something relevant is committed or its timeout passes.
struct Waiter {
    explicit Waiter(asio::any_io_executor ex) : timer(ex) {}
    asio::steady_timer timer;
};

// Which rate limit a route's requests count against (the configuration's rc_*).
enum class RateClass {
    none,
    message,       // rc_message, per user: every write
    login,         // rc_login, per address
    registration,  // rc_registration, per address: checked here, counted once one completes
    turn,          // rc_turn, per user
};

// The homeserver: in-memory model (source of truth for reads, rebuilt from the store at
// start), auth rules and every request handler. One mutex guards the model; writes are
// decided under it, persisted by the group-commit writer, and become visible to /sync in
// stream order once committed.
class Homeserver {
  public:
    using Clock = std::function<std::int64_t()>;  // unix milliseconds

    Homeserver(const Config& config, store::Store& store, asio::thread_pool& blocking, Clock clock);
    ~Homeserver();

    // Called once, with the reason, when a commit fails: the model can no longer be trusted.
    void on_fatal(std::function<void(const std::string&)> f) { on_fatal_ = std::move(f); }
    // A response leaves only once every write it may reflect is durable: the sequence number
    // of the newest write not yet durable, to wait for with durable() before answering.
    std::optional<std::uint64_t> unsettled() const;
    // Completes once write `seq` and all before it are durable; throws 503 M_UNKNOWN when
    // they never will be. Returns an awaitable without being a coroutine itself (GCC 12
    // coroutine bugs): a co_await expression holds no non-trivial temporaries.
    asio::awaitable<void> durable(std::uint64_t seq);
    // Wakes every parked /sync (used on shutdown).
    void wake_all();
    void stop_writer();

    std::optional<Session> authenticate(const std::string& token) const;
    // Takes one action of `rate` for the request's user or address; 429 M_LIMIT_EXCEEDED with
    // retry_after_ms when the limit is reached.
    void rate_limit(RateClass rate, const Request& req);
    std::int64_t now_ms() const { return clock_(); }
    const Config& config() const { return config_; }

    // Handlers.
    asio::awaitable<Response> versions(Request&);
    asio::awaitable<Response> well_known(Request&);
    asio::awaitable<Response> capabilities(Request&);
    asio::awaitable<Response> login_flows(Request&);
    asio::awaitable<Response> login(Request&);
    asio::awaitable<Response> logout(Request&);
    asio::awaitable<Response> logout_all(Request&);
    asio::awaitable<Response> whoami(Request&);
    asio::awaitable<Response> register_account(Request&);
    asio::awaitable<Response> register_available(Request&);
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
    asio::awaitable<Response> sync(Request&);
    asio::awaitable<Response> post_filter(Request&);
    asio::awaitable<Response> get_filter(Request&);
    asio::awaitable<Response> push_rules(Request&);
    asio::awaitable<Response> get_account_data(Request&);
    asio::awaitable<Response> put_account_data(Request&);
    asio::awaitable<Response> get_profile(Request&);
    asio::awaitable<Response> get_profile_field(Request&);
    asio::awaitable<Response> put_profile_field(Request&);
    asio::awaitable<Response> send_to_device(Request&);
    asio::awaitable<Response> turn_server(Request&);

    // Used by `mxvoip-server user add`: creates an account directly in the store.
    static void add_user_offline(store::Store& store, const Config& config,
                                 const std::string& user_id, const std::string& password);

  private:
    struct PendingWrite {
        std::vector<store::Mutation> mutations;
        StreamId max_stream = 0;
        std::vector<std::string> wake;  // users whose /sync should wake once committed

        static PendingWrite of(store::Mutation m, StreamId stream = 0,
                               std::vector<std::string> wake = {}) {
            PendingWrite w;
            w.mutations.push_back(std::move(m));
            w.max_stream = stream;
            w.wake = std::move(wake);
            return w;
        }
    };
    struct TxnEntry {
        std::string event_id;
        StreamId stream = 0;
        std::int64_t ts = 0;
    };
    struct NewEvent {
        std::string type;
        std::optional<std::string> state_key;
        json::object content;
    };

    void load();
    // Queues the write for the group commit; returns its sequence number for durable().
    std::uint64_t submit_locked(PendingWrite write);
    // Takes the lock to submit, then waits as durable() does.
    asio::awaitable<void> commit(PendingWrite&& write);
    void publish(StreamId max_stream, const std::vector<std::string>& wake);

    // Checks auth rules, assigns the next stream id, applies the event to the model and adds
    // its mutation to `w`. Caller holds mu_. `creating` is createRoom's m.room.create, the one
    // event no auth rule admits.
    EventPtr append_event_locked(Room& room, const std::string& sender, NewEvent ev,
                                 PendingWrite& w, const std::string& txn_device_key = {},
                                 const std::string& txn_id = {}, bool creating = false);
    void check_auth_locked(const Room& room, const std::string& sender, const NewEvent& ev) const;
    void apply_event_locked(Room& room, const EventPtr& ev);
    void add_to_timeline_locked(Room& room, const EventPtr& ev);
    void wake_room_locked(const Room& room, const EventPtr& ev,
                          std::vector<std::string>& wake) const;
    void rebuild_room_state_locked(Room& room, const EventPtr& ev);

    Room& room_or_throw(const std::string& room_id);
    // Who reads a room's events (each then checked with RoomHistory::may_see): anyone who
    // ever had a membership in it, and everyone when it is world readable; 403 otherwise.
    void require_reader_locked(const Room& room, const std::string& user) const;
    // Up to where `user` reads the room's state: nothing for the current state (members, and
    // anyone in a world-readable room), the position of their leave or ban for former
    // members; 403 for anyone else.
    std::optional<StreamId> state_horizon_locked(const Room& room, const std::string& user) const;
    asio::awaitable<Response> membership_change(Request& req, const std::string& room_id,
                                                const std::string& target,
                                                const std::string& membership, json::object& extra);
    asio::awaitable<Response> issue_login(const std::string& user_id,
                                          const std::optional<std::string>& device_id,
                                          const std::string& display_name, bool is_guest);
    // The hash a login for an unknown user is checked against (made on first use, at the
    // configured cost). On the blocking pool only.
    const std::string& unknown_user_hash();
    void check_user_path(const Request& req, std::size_t index) const;

    // Sync support.
    struct SyncFilter {
        int timeline_limit = 10;
        bool include_leave = false;
    };
    SyncFilter resolve_filter_locked(const User& user, const Request& req) const;
    bool build_sync_locked(const Session& s, StreamId since, bool initial, const SyncFilter& f,
                           bool full_state, std::string& out);
    bool only_own_echo_locked(const Session& s, StreamId since) const;
    void render_event(std::string& out, const Event& ev, const std::string& device_key) const;
    // An event read from the store, rendered as stored plus its age.
    void render_record(std::string& out, const store::EventRecord& r) const;
    // The room's events in (since, upto] that `s` may see, at most the filter's limit.
    void render_timeline_locked(std::string& out, const Room& room, const Session& s,
                                StreamId since, StreamId upto, const SyncFilter& f, bool& limited,
                                StreamId& first_stream);
    void render_state(std::string& out, const Room& room, StreamId upto, StreamId before_stream,
                      const std::string& device_key) const;

    const Config& config_;
    store::Store& store_;
    store::GroupCommitWriter writer_;
    asio::thread_pool& blocking_;
    Clock clock_;
    HashCost hash_cost_;
    std::once_flag unknown_user_hash_once_;
    std::string unknown_user_hash_;
    std::function<void(const std::string&)> on_fatal_;
    std::once_flag fatal_once_;

    RateLimiter rc_message_;
    RateLimiter rc_login_;
    RateLimiter rc_login_account_;
    RateLimiter rc_login_failed_;
    RateLimiter rc_registration_;
    RateLimiter rc_turn_;
    std::string turn_uris_json_;  // the configured URIs, serialised once

    mutable std::mutex mu_;
    StreamId next_stream_ = 1;
    StreamId visible_ = 0;
    std::unordered_map<std::string, Session> tokens_;  // sha256 hex -> session
    std::unordered_map<std::string, User> users_;
    std::unordered_map<std::string, Room> rooms_;
    std::unordered_map<std::string, TxnEntry> txns_;
    std::deque<std::pair<std::int64_t, std::string>> txn_order_;
    // sendToDevice transactions of the last 24 hours, oldest first in the deque.
    std::unordered_set<std::string> to_device_txns_;
    std::deque<std::pair<std::int64_t, std::string>> to_device_txn_order_;
    std::unordered_map<std::string, std::vector<std::shared_ptr<Waiter>>> waiters_;
    std::uint64_t next_guest_ = 0;
    bool shutting_down_ = false;
};

}  // namespace mxvoip::server
