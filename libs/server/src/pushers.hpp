#pragma once

// Pushers and push delivery: where a user's devices want notifications (GET /pushers,
// POST /pushers/set), and the delivery of every notifying event (Notifications decides which)
// to each pusher's HTTP push gateway as POST /_matrix/push/v1/notify, the payload Sygnal
// takes.
//
// A notification is queued once its event is committed (Core::on_visible), one queue per
// pusher, delivered in order, one request at a time; a failed delivery is retried with
// exponential back-off (push.retry_initial_ms doubling to push.retry_max_ms); a queue holds at
// most push.queue_per_pusher, dropping the oldest; a gateway that answers `rejected` for the
// pushkey removes the pusher. Queues are in memory: what waits at shutdown is not sent.
//
// A user's pushers are read from the store when an event first notifies them (those of an
// event's whole audience in one read) or a request asks, and held per user (caches.pushers),
// none included. On a shared database a change names the user whose pushers another process
// changed, and the process that committed an event sends its notifications: each push leaves
// once, not once per process.
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/json.hpp>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "accounts.hpp"
#include "core.hpp"
#include "http_types.hpp"
#include "lru_cache.hpp"
#include "notifications.hpp"
#include "rooms.hpp"

namespace mxvoip::server {

class Pushers {
  public:
    Pushers(Core& core, Accounts& accounts, Notifications& notifications);
    ~Pushers();

    // Deliveries run on `ex`; until start() they only queue. stop() ends them for good.
    void start(asio::any_io_executor ex);
    void stop();

    asio::awaitable<Response> get_pushers(Request&);
    asio::awaitable<Response> set_pusher(Request&);

  private:
    using Key = std::tuple<std::string, std::string, std::string>;  // user, app id, pushkey
    using AppKey = std::pair<std::string, std::string>;             // app id, pushkey
    struct Pusher {
        std::string device_id;
        boost::json::object shown;  // as GET /pushers shows it
        std::string url;
        bool event_id_only = false;
        std::int64_t created_ts = 0;
    };
    using UserPushers = std::map<AppKey, Pusher>;
    struct Pending {
        StreamId stream = 0;
        Key key;
        std::string url;
        std::string body;
    };
    struct Queue {
        std::string url;                            // the pusher's gateway, as last set
        std::deque<std::string> bodies;             // notify request bodies, oldest first
        bool running = false;                       // a delivery loop owns it
        std::size_t dropped = 0;                    // since the last delivery
        std::shared_ptr<asio::steady_timer> timer;  // the back-off wait, on the strand
        std::function<void()> cancel;               // aborts the request in flight (strand)
    };
    struct Outcome {
        bool delivered = false;
        bool retry = false;  // worth trying again later
        bool rejected = false;
        std::string error;
    };

    void notify_locked(const std::string& user, const Room& room, const EventPtr& ev,
                       const push::Outcome& outcome);
    void visible_locked(StreamId visible);
    // The user's pushers, read from the store when not held: StoreUnavailable when the
    // database cannot be reached.
    const UserPushers& pushers_locked(const std::string& user);
    // Reads the pushers of those users not held in one store read, for what runs after a
    // commit: a user whose read fails stays not held (logged).
    void preload_or_skip_locked(const std::vector<std::string>& users);
    // The pushers of that app and pushkey, whoever's, that this process holds, queues or is
    // about to queue for.
    std::vector<Key> holders_locked(const std::string& app_id, const std::string& pushkey);
    // A pusher removed by a committed write: its queue and notifications go with it.
    void removed_locked(const Key& key);
    void drop_queue_locked(const Key& key);
    // Another process changed the user's pushers: those held are let go, and any this process
    // queues for are checked against the store.
    void reload_locked(const std::string& user);
    static std::optional<Pusher> from_record(const store::PusherRecord& p);
    asio::awaitable<void> deliver(Key key);
    asio::awaitable<Outcome> post(const std::string& url, const std::string& body,
                                  const std::string& pushkey, Queue& queue);

    Core& core_;
    Accounts& accounts_;
    Notifications& notifications_;
    // Each user's pushers that were read (caches.pushers users), least recently used out; only
    // ever read under the lock, so no read is overtaken by a change.
    LruCache<std::string, UserPushers> pushers_;
    std::map<Key, Queue> queues_;
    // Notifications whose event is not visible yet, in stream order.
    std::deque<Pending> pending_;
    std::optional<asio::strand<asio::any_io_executor>> strand_;
    // The TLS client context, made on the strand when the first https gateway is reached:
    // the system's CA certificates are not read by a server that pushes nothing (read at
    // start, they took most of it under ASan, seconds on a loaded machine).
    asio::ssl::context& tls();
    std::unique_ptr<asio::ssl::context> tls_;
    bool stopped_ = false;
};

}  // namespace mxvoip::server
