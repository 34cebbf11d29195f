#pragma once

// What every module of the homeserver shares: the configuration, the store and its
// group-commit writer, the lock over the in-memory model, stream positions, and the parked
// /syncs that commits wake.
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "events.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/server/config.hpp"
#include "mxvoip/store/store.hpp"
#include "mxvoip/store/writer.hpp"

namespace mxvoip::server {

namespace asio = boost::asio;

// A write decided inside its database transaction (Core::transact: commit, then apply).
struct Decision {
    // Written first, in the decision's savepoint: refused with it.
    std::vector<store::Mutation> mutations;
    // Stream positions the write takes (`first` is handed to `decide` and `applied`): taken in
    // its transaction (store::Write::streams), consecutive, and ascending in the order the
    // writes were submitted, so the visible position, the last committed one, never passes a
    // write still in flight. A refused write leaves them unused, and none is handed out again.
    std::size_t streams = 0;
    // The rooms it appends to or decides about (store::Write::rooms).
    std::vector<std::string> rooms;
    // The users whose data beyond rooms it decides on (store::Write::users).
    std::vector<std::string> users;
    // Runs on the writer's thread (if set), in a savepoint of its own, reading and writing
    // through the transaction; throws a MatrixError to refuse, and then nothing it wrote stays. It
    // may run more than once (a transaction made again after an outage), so it sets what it
    // reports, never adds to it.
    std::function<void(store::Txn&, StreamId first)> decide;
    // Under `mu`, once the transaction committed: feeds the caches (they learn only of what
    // committed) and returns whose parked /syncs to wake. Given the first position.
    std::function<std::vector<std::string>(StreamId first)> applied;
    // Under `mu`, once the write's outcome is known, whatever it is (after `applied`), and
    // before anything waiting for a later write is completed.
    std::function<void()> settled;
};

// A /sync parked until something relevant is committed or its timeout passes.
struct Waiter {
    explicit Waiter(asio::any_io_executor ex) : timer(ex) {}
    asio::steady_timer timer;
};

// One lock, `mu`, guards the whole in-memory model: every module's state, stream allocation
// and the parked /syncs. The modules are boundaries of ownership, not of locking: a request
// that reads or changes several of them (a profile change appends member events, a /sync reads
// rooms, account data and to-device queues) sees one consistent model. Functions named
// *_locked expect the caller to hold it.
class Core {
  public:
    using Clock = std::function<std::int64_t()>;  // unix milliseconds

    Core(const Config& config, store::Store& store, asio::thread_pool& blocking, Clock clock);
    ~Core();

    const Config& config() const { return config_; }
    store::Store& store() { return store_; }
    asio::thread_pool& blocking() { return blocking_; }
    std::int64_t now_ms() const { return clock_(); }

    mutable std::mutex mu;

    // Everything up to here is committed and may be served. Positions are taken by the
    // writes themselves, in their transactions (Decision::streams).
    StreamId visible_locked() const { return visible_; }
    void start_at(StreamId max_stream);

    // A database shared with other processes (Store::listen): the visible position is the
    // safe position (store::ChangeListener), and what the others commit reaches the caches
    // through the change feed, read by one thread (start_feed) in stream order up to it, each
    // change given to the handlers of its kind under the lock before the position moves past
    // it. What this process commits is applied by its own decisions, as with one process, but
    // becomes visible (and wakes its /syncs) only once the safe position passes it.
    bool shared() const { return listener_ != nullptr; }
    // Called under the lock with each change of that kind another process made (`event`: the
    // room event, for "event" changes); adds whose parked /syncs to wake.
    using ChangeHandler =
        std::function<void(const store::ChangeRecord&, const store::EventRecord* event,
                           std::vector<std::string>& wake)>;
    void on_change(const std::string& kind, ChangeHandler f) {
        change_handlers_[kind].push_back(std::move(f));
    }
    // Whether the caches are being fed what another process made (under the lock): work that
    // is done once for the whole deployment, such as sending a push, is left to the process
    // that committed the change.
    bool feeding_locked() const { return feeding_; }
    // How many processes share the database (1 when it is not shared), counted by the feed
    // every few seconds: the rate limiters divide their limits by it.
    const std::atomic<int>& processes() const { return processes_; }
    // Shares the database through `listener`; the start position is its safe position, read
    // before the modules load, so that what commits after they read is fed to them.
    void share(std::unique_ptr<store::ChangeListener> listener);
    void start_feed();
    void stop_feed();

    // A decision that writes `mutations` as they are and, on a shared database, the change
    // rows that tell the other processes of them (changes_of), at positions of its own. The
    // caller adds what it locks, checks and applies.
    Decision decision_of(std::vector<store::Mutation> mutations) const;
    // The change rows (positions left 0) that name what `mutations` change in the caches of
    // other processes, for the mutations that carry no stream position of their own.
    static std::vector<store::ChangeRecord> changes_of(
        const std::vector<store::Mutation>& mutations);
    // Writes `changes` in the transaction, at consecutive positions from `first`.
    static void put_changes(store::Txn& txn, const std::vector<store::ChangeRecord>& changes,
                            StreamId first);
    // Completes once write `seq` and all before it are durable; throws 503 M_UNKNOWN when
    // they never will be. Returns an awaitable without being a coroutine itself (GCC 12
    // coroutine bugs): a co_await expression holds no non-trivial temporaries.
    asio::awaitable<void> durable(std::uint64_t seq);
    // Submits a write decided inside its transaction. Completes once it committed and was
    // applied, or throws the decision's refusal, or 503 M_UNKNOWN when the write could not be
    // stored. Takes the lock to submit. Not a coroutine (see durable()).
    asio::awaitable<void> transact(Decision&& decision);
    // The same for a write nobody waits for (a timer's, or one made after another committed):
    // submitted under the caller's lock; a refusal or failure is logged.
    void transact_locked(Decision&& decision);
    // The sequence number of the latest write submitted: durable() of it completes once every
    // write submitted so far settled.
    std::uint64_t submitted() const { return writer_.submitted(); }
    // The newest write not yet durable, if any.
    std::optional<std::uint64_t> unsettled() const { return writer_.pending(); }
    // False while the database is unavailable: from a write that failed for want of it until
    // that write commits (the writer keeps trying), and on a shared database while the change
    // feed cannot read it (an idle process learns of an outage within a second, and its
    // /health says so). Requests that need the database are refused with unavailable()
    // meanwhile; what was submitted before waits.
    bool store_available() const {
        return writer_.available() && !feed_down_.load(std::memory_order_relaxed);
    }
    // 503 M_UNKNOWN with Retry-After: the database cannot be reached.
    static proto::MatrixError unavailable();
    void stop_writer() { writer_.stop(); }
    // Called once, with the reason, when the model can no longer be trusted (a commit failed;
    // changes this process never fed were pruned).
    void on_fatal(std::function<void(const std::string&)> f) { on_fatal_ = std::move(f); }

    // Parks a /sync of `user`; nullptr when the server is shutting down. 429 when the user
    // already has limits.syncs_per_user waiting.
    std::shared_ptr<Waiter> park_locked(const std::string& user, asio::any_io_executor ex);
    void unpark_locked(const std::string& user, const std::shared_ptr<Waiter>& w);
    // Parks `w` again after a wake-up it ignores (counted against the limit when first parked).
    void repark_locked(const std::string& user, std::shared_ptr<Waiter> w);
    bool shutting_down_locked() const { return shutting_down_; }
    // Called under the lock whenever the visible position moves forward (what was committed
    // may now be acted on outside the server: push notifications).
    void on_visible(std::function<void(StreamId)> f) { visible_listeners_.push_back(std::move(f)); }
    // Wakes every parked /sync (used on shutdown).
    void wake_all();

  private:
    // Takes the decision's positions and submits it; `done` gets its outcome (null: applied)
    // on the writer's thread, after `applied` and `settled`.
    void submit_decision_locked(Decision d, std::function<void(std::exception_ptr)> done);
    void publish(StreamId upto, const std::vector<std::string>& wake);
    void publish_locked(StreamId upto, const std::vector<std::string>& wake);
    void wake_locked(const std::vector<std::string>& users);
    // Moves the visible position to `upto` and wakes what waited for it.
    void advance_locked(StreamId upto);
    void feed();
    // A write failed for good: the first such failure stops the server.
    void failed(std::exception_ptr e);
    // The model can no longer be trusted: the first call stops the server, with this reason.
    void fatal(const std::string& why);
    void on_store_health(bool available, const std::string& why);

    const Config& config_;
    store::Store& store_;
    store::GroupCommitWriter writer_;
    asio::thread_pool& blocking_;
    Clock clock_;
    std::function<void(const std::string&)> on_fatal_;
    bool feeding_ = false;  // under mu: change handlers are running
    std::atomic<int> processes_{1};
    std::atomic<bool> feed_down_{false};  // the feed's last read failed
    std::once_flag fatal_once_;
    std::int64_t unavailable_since_ = 0;  // writer thread only

    StreamId visible_ = 0;
    std::unique_ptr<store::ChangeListener> listener_;
    std::thread feed_;
    std::unordered_map<std::string, std::vector<ChangeHandler>> change_handlers_;
    // Shared: whose /syncs to wake once the visible position reaches a position.
    std::map<StreamId, std::vector<std::string>> pending_wakes_;
    // Shared database: the outcomes of this process's decisions, told once the visible
    // position passes their positions, so that what a client was told is stored, it can read
    // here at once (a receipt for the message it just sent).
    std::multimap<StreamId, std::function<void()>> pending_done_;
    bool feed_stopped_ = false;  // nothing will pass them now: told at once
    std::unordered_map<std::string, std::vector<std::shared_ptr<Waiter>>> waiters_;
    std::vector<std::function<void(StreamId)>> visible_listeners_;
    bool shutting_down_ = false;
};

}  // namespace mxvoip::server
