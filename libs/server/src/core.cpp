#include "core.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <utility>

#include "mxvoip/proto/errors.hpp"

namespace mxvoip::server {

using proto::MatrixError;
namespace errcode = proto::errcode;

Core::Core(const Config& config, store::Store& store, asio::thread_pool& blocking, Clock clock)
    : config_(config),
      store_(store),
      writer_(store,
              [this](bool available, const std::string& why) { on_store_health(available, why); }),
      blocking_(blocking),
      clock_(std::move(clock)) {}

Core::~Core() {
    stop_feed();
    writer_.stop();
}

MatrixError Core::unavailable() {
    return MatrixError(503, errcode::unknown,
                       "The server's database is unavailable; try again shortly", 1000);
}

void Core::on_store_health(bool available, const std::string& why) {
    if (!available) {
        unavailable_since_ = clock_();
        spdlog::error(
            "the database is unavailable ({}); writes wait for it and new requests get 503 "
            "until it is back",
            why);
    } else {
        spdlog::info("the database is back after {} ms; the writes that waited are committed",
                     clock_() - unavailable_since_);
    }
}

void Core::start_at(StreamId max_stream) {
    std::lock_guard lock(mu);
    visible_ = max_stream;
}

namespace {
std::string what(std::exception_ptr e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        return ex.what();
    } catch (...) {
    }
    return "unknown error";
}

// What a request is told of a write that was not stored.
std::exception_ptr not_stored() {
    return std::make_exception_ptr(MatrixError(
        503, errcode::unknown, "The server could not store this request; try again", 1000));
}
}  // namespace

void Core::failed(std::exception_ptr e) {
    // Only the first failure is the cause; the writer fails everything after it.
    fatal("a database write failed: " + what(e));
}

void Core::fatal(const std::string& why) {
    std::call_once(fatal_once_, [&] {
        spdlog::critical("{}; the server stops", why);
        if (on_fatal_) on_fatal_(why);
    });
}

std::vector<store::ChangeRecord> Core::changes_of(const std::vector<store::Mutation>& mutations) {
    std::vector<store::ChangeRecord> out;
    auto add = [&](const char* kind, const std::string& key) {
        if (key.empty()) return;
        for (const auto& c : out)
            if (c.kind == kind && c.key == key) return;
        out.push_back({0, kind, key});
    };
    for (const auto& m : mutations) {
        if (const auto* p = std::get_if<store::PutPusher>(&m)) add("pusher", p->pusher.user_id);
        if (const auto* p = std::get_if<store::DeletePusher>(&m)) add("pusher", p->user_id);
    }
    return out;
}

void Core::put_changes(store::Txn& txn, const std::vector<store::ChangeRecord>& changes,
                       StreamId first) {
    for (std::size_t i = 0; i < changes.size(); ++i) {
        store::ChangeRecord c = changes[i];
        c.stream = first + static_cast<StreamId>(i);
        txn.write(store::PutChange{std::move(c)});
    }
}

Decision Core::decision_of(std::vector<store::Mutation> mutations) const {
    Decision d;
    auto changes = shared() ? changes_of(mutations) : std::vector<store::ChangeRecord>{};
    d.mutations = std::move(mutations);
    d.streams = changes.size();
    if (!changes.empty())
        d.decide = [changes = std::move(changes)](store::Txn& txn, StreamId first) {
            put_changes(txn, changes, first);
        };
    return d;
}

void Core::submit_decision_locked(Decision d, std::function<void(std::exception_ptr)> done) {
    // The positions the transaction that committed gave it (each attempt takes its own);
    // written and read on the writer's thread.
    auto taken = std::make_shared<StreamId>(0);
    const auto streams = static_cast<StreamId>(d.streams);
    store::Write write{std::move(d.mutations),
                       [decide = std::move(d.decide), taken](store::Txn& txn, StreamId first) {
                           *taken = first;
                           if (decide) decide(txn, first);
                       },
                       d.streams, std::move(d.rooms), std::move(d.users)};
    writer_.submit(
        std::move(write),
        [this, done = std::move(done), taken, streams, applied = std::move(d.applied),
         settled = std::move(d.settled)](std::exception_ptr failure, std::exception_ptr refusal) {
            const StreamId first = *taken;
            const StreamId last = streams ? first + streams - 1 : 0;
            std::exception_ptr result;
            if (failure) {
                failed(failure);
                result = not_stored();
            } else if (refusal) {
                result = refusal;
                try {
                    std::rethrow_exception(refusal);
                } catch (const MatrixError&) {
                } catch (...) {
                    // Not a decision but a fault of a statement: the transaction went on without
                    // this write.
                    spdlog::error("a write was not stored: {}", what(refusal));
                    result = not_stored();
                }
                publish(last, {});  // its positions stay unused
            } else {
                std::lock_guard lock(mu);
                auto wake = applied ? applied(first) : std::vector<std::string>{};
                publish_locked(last, wake);
            }
            {
                std::lock_guard lock(mu);
                if (settled) settled();
                if (shared() && !result && last > visible_ && !feed_stopped_) {
                    pending_done_.emplace(last, [done, result] { done(result); });
                    return;
                }
            }
            done(result);
        });
}

void Core::transact_locked(Decision&& decision) {
    submit_decision_locked(std::move(decision), [](std::exception_ptr result) {
        if (!result) return;
        try {
            std::rethrow_exception(result);
        } catch (const std::exception& e) {
            spdlog::warn("a write the server made by itself was not stored: {}", e.what());
        }
    });
}

asio::awaitable<void> Core::transact(Decision&& decision) {
    auto init = [this](auto handler, Decision d) {
        // As in durable(): a graceful shutdown waits for the outcome and the response.
        auto ex = asio::prefer(asio::get_associated_executor(handler),
                               asio::execution::outstanding_work.tracked);
        auto shared = std::make_shared<decltype(handler)>(std::move(handler));
        std::lock_guard lock(mu);
        submit_decision_locked(std::move(d), [shared, ex](std::exception_ptr result) {
            asio::post(ex, [shared, result]() mutable { (*shared)(result); });
        });
    };
    return asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr)>(
        init, asio::use_awaitable, std::move(decision));
}

asio::awaitable<void> Core::durable(std::uint64_t seq) {
    auto init = [this](auto handler, std::uint64_t seq) {
        // The executor is held with outstanding work, so a graceful shutdown waits for the
        // commit and the response instead of letting the I/O threads return under it.
        auto ex = asio::prefer(asio::get_associated_executor(handler),
                               asio::execution::outstanding_work.tracked);
        auto shared = std::make_shared<decltype(handler)>(std::move(handler));
        writer_.when_durable(seq, [shared, ex](std::exception_ptr e) {
            // What could not be stored is never confirmed: the client may retry once the
            // server is back.
            if (e) e = not_stored();
            asio::post(ex, [shared, e]() mutable { (*shared)(e); });
        });
    };
    return asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr)>(
        init, asio::use_awaitable, seq);
}

void Core::publish(StreamId upto, const std::vector<std::string>& wake) {
    std::lock_guard lock(mu);
    publish_locked(upto, wake);
}

void Core::publish_locked(StreamId upto, const std::vector<std::string>& wake) {
    if (upto <= visible_) return wake_locked(wake);
    if (shared()) {
        // The feed moves the visible position, once no process has anything below it in
        // flight.
        if (wake.empty()) return;
        auto& later = pending_wakes_[upto];
        later.insert(later.end(), wake.begin(), wake.end());
        return;
    }
    advance_locked(upto);
    wake_locked(wake);
}

void Core::advance_locked(StreamId upto) {
    if (upto <= visible_) return;
    visible_ = upto;
    for (const auto& f : visible_listeners_) f(visible_);
    while (!pending_wakes_.empty() && pending_wakes_.begin()->first <= visible_) {
        wake_locked(pending_wakes_.begin()->second);
        pending_wakes_.erase(pending_wakes_.begin());
    }
    while (!pending_done_.empty() && pending_done_.begin()->first <= visible_) {
        auto done = std::move(pending_done_.begin()->second);
        pending_done_.erase(pending_done_.begin());
        done();
    }
}

void Core::share(std::unique_ptr<store::ChangeListener> listener) {
    StreamId safe = listener->safe_position();
    // Nothing after it is pruned while this process lives.
    listener->fed(safe);
    listener_ = std::move(listener);
    std::lock_guard lock(mu);
    visible_ = safe;
}

void Core::start_feed() {
    if (listener_ && !feed_.joinable()) feed_ = std::thread([this] { feed(); });
}

void Core::stop_feed() {
    if (!listener_) return;
    listener_->stop();
    if (feed_.joinable()) feed_.join();
    // Stored, if not yet visible: told so, rather than never; and so are the writes that
    // commit from now on (a request in flight when the shutdown began must end, or the
    // process never exits).
    std::lock_guard lock(mu);
    feed_stopped_ = true;
    for (auto& [_, done] : std::exchange(pending_done_, {})) done();
}

void Core::feed() {
    using Woken = store::ChangeListener::Woken;
    StreamId fed = 0;
    {
        std::lock_guard lock(mu);
        fed = visible_;
    }
    // Woken by every commit; the timeout also catches a process that died with positions in
    // flight (no one tells of that) and a notification lost with the connection.
    // At most kFeedChunk positions a round: a process that fell far behind catches up in
    // bounded reads, one after the other without waiting.
    constexpr StreamId kFeedChunk = 1000;
    bool behind = false;
    using std::chrono::milliseconds;
    constexpr auto kCountEvery = std::chrono::seconds(5);
    std::chrono::steady_clock::time_point counted{};
    for (;;) {
        const Woken woken = listener_->wait(behind ? milliseconds(0) : milliseconds(1000));
        if (woken == Woken::stopped) return;
        if (woken == Woken::lost) {
            // Changes it never applied are gone: what it holds may be stale for good. A
            // supervisor starts it again, from what the database holds.
            return fatal(
                "this process was out of touch with the database for longer than "
                "database.feed_grace (" +
                std::to_string(config_.database.feed_grace_s) +
                " s) while the others went on, and the changes it missed were pruned");
        }
        std::vector<store::ChangeRecord> changes;
        std::vector<store::EventRecord> events;
        StreamId safe = 0;
        behind = false;
        try {
            if (auto now = std::chrono::steady_clock::now(); now - counted >= kCountEvery) {
                const int live = std::max(1, listener_->live_instances());
                if (live != processes_.exchange(live))
                    spdlog::info(
                        "{} processes share the database; each holds 1/{} of the rate "
                        "limits",
                        live, live);
                // And what it fed, so that the changes every process fed are pruned.
                listener_->fed(fed);
                counted = now;
            }
            safe = listener_->safe_position();
            if (feed_down_.exchange(false))
                spdlog::info("the change feed reads the database again");
            if (safe <= fed) continue;
            if (safe - fed > kFeedChunk) {
                safe = fed + kFeedChunk;
                behind = true;
            }
            changes = store_.changes(fed, safe);
            bool any_event = std::any_of(changes.begin(), changes.end(),
                                         [](const auto& c) { return c.kind == "event"; });
            if (any_event) events = store_.events_between(fed, safe);
        } catch (const std::exception& e) {
            // Unavailable: the next round tries again from where this one started.
            if (!feed_down_.exchange(true))
                spdlog::error(
                    "the change feed cannot read the database ({}); new requests get 503 until "
                    "it can",
                    e.what());
            behind = false;
            continue;
        }
        std::unordered_map<StreamId, const store::EventRecord*> by_stream;
        for (const auto& e : events) by_stream.emplace(e.stream, &e);
        std::lock_guard lock(mu);
        std::vector<std::string> wake;
        for (const auto& c : changes) {
            auto it = change_handlers_.find(c.kind);
            if (it == change_handlers_.end()) continue;
            const store::EventRecord* event = nullptr;
            if (c.kind == "event") {
                auto e = by_stream.find(c.stream);
                if (e == by_stream.end()) continue;  // not an event after all
                event = e->second;
            }
            feeding_ = true;
            struct Fed {
                bool& feeding;
                ~Fed() { feeding = false; }
            } fed_guard{feeding_};
            for (const auto& h : it->second) h(c, event, wake);
        }
        advance_locked(safe);
        wake_locked(wake);
        fed = safe;
    }
}

void Core::wake_locked(const std::vector<std::string>& wake) {
    for (const auto& user : wake) {
        auto it = waiters_.find(user);
        if (it == waiters_.end()) continue;
        for (auto& w : it->second) asio::post(w->timer.get_executor(), [w] { w->timer.cancel(); });
        waiters_.erase(it);
    }
}

std::shared_ptr<Waiter> Core::park_locked(const std::string& user, asio::any_io_executor ex) {
    if (shutting_down_) return nullptr;
    auto& parked = waiters_[user];
    if (parked.size() >= config_.limits.syncs_per_user)
        throw MatrixError(429, errcode::limit_exceeded,
                          "Too many /sync requests of this user are waiting "
                          "(limits.syncs_per_user: " +
                              std::to_string(config_.limits.syncs_per_user) + ")",
                          1000);
    auto waiter = std::make_shared<Waiter>(std::move(ex));
    parked.push_back(waiter);
    return waiter;
}

void Core::unpark_locked(const std::string& user, const std::shared_ptr<Waiter>& w) {
    if (auto it = waiters_.find(user); it != waiters_.end()) {
        std::erase(it->second, w);
        if (it->second.empty()) waiters_.erase(it);
    }
}

void Core::repark_locked(const std::string& user, std::shared_ptr<Waiter> w) {
    waiters_[user].push_back(std::move(w));
}

void Core::wake_all() {
    std::lock_guard lock(mu);
    shutting_down_ = true;
    for (auto& [_, list] : waiters_)
        for (auto& w : list) asio::post(w->timer.get_executor(), [w] { w->timer.cancel(); });
    waiters_.clear();
}

}  // namespace mxvoip::server
