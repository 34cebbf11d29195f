#pragma once

#include "mxvoip/store/store.hpp"

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

namespace mxvoip::store {

// Group commit: one thread drains every submission waiting at that moment into a single
// transaction, so concurrent requests share one fsync. Completions run on the writer thread,
// in submission order, after the transaction is durable (or failed: then each gets the error),
// and then the store is told (Store::settled).
//
// While the database is unavailable (StoreUnavailable: connection lost, database restarting,
// disk full) the batch is kept and applied again with back-off until it commits: nothing
// submitted is dropped, and what waits for it waits. Store::apply makes a second application
// of a batch that did commit (the outcome was unknown) a no-op. When stopping, one more
// attempt is made, and if it fails too the batch fails.
//
// Any other failure is final: the submissions after a failed transaction may depend on what
// it would have written, so they fail with the same error instead of being applied, and so
// does every later one. The owner is expected to stop.
class GroupCommitWriter {
  public:
    using Done = std::function<void(std::exception_ptr)>;
    // A Write's completion: `failure` as for Done; `refusal` what its decision threw (the
    // transaction committed without it).
    using Decided = std::function<void(std::exception_ptr failure, std::exception_ptr refusal)>;
    // Told on the writer's thread when the database becomes unavailable (with why) and when a
    // batch commits again after that (`why` empty).
    using Health = std::function<void(bool available, const std::string& why)>;

    explicit GroupCommitWriter(Store& store, Health on_health = {});
    ~GroupCommitWriter();
    GroupCommitWriter(const GroupCommitWriter&) = delete;
    GroupCommitWriter& operator=(const GroupCommitWriter&) = delete;

    // Queues `mutations` and returns their sequence number (1, 2, ...): every submission with a
    // smaller number commits in the same or an earlier transaction.
    std::uint64_t submit(std::vector<Mutation> mutations, Done done);
    // Queues a write with a decision (Store::transact); the same order and sequence numbers.
    // After an outage the decision runs again in the transaction that commits.
    std::uint64_t submit(Write write, Decided done);

    // The sequence number of the latest submission, and of the latest durable one.
    std::uint64_t submitted() const;
    std::uint64_t durable() const;
    // The latest submission when it is not durable yet (one look, under one lock).
    std::optional<std::uint64_t> pending() const;
    // False from a batch's failure for want of the database until a batch commits again.
    bool available() const { return !unavailable_.load(std::memory_order_relaxed); }

    // Calls `done` once every submission up to `seq` is durable (at once if that is already
    // so), or with the error that stopped the writer. Runs on the caller's or the writer's
    // thread, after the completions of the transaction that made `seq` durable.
    void when_durable(std::uint64_t seq, Done done);

    // Commits everything already submitted, then stops the thread. Idempotent.
    void stop();

    struct Stats {
        std::uint64_t transactions = 0;
        std::uint64_t submissions = 0;
        std::uint64_t retries = 0;  // attempts made again after StoreUnavailable
    };
    Stats stats() const;

  private:
    struct Pending {
        std::uint64_t seq = 0;
        Write write;
        Decided done;
    };
    void run();
    // Applies `batch`, again with back-off while the database is unavailable; the final error.
    // `refused` receives what each write's decision threw.
    std::exception_ptr commit(std::span<const Write> batch,
                              std::vector<std::exception_ptr>& refused);
    void set_available(bool available, const std::string& why);

    Store& store_;
    Health on_health_;
    std::atomic<bool> unavailable_{false};
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::vector<Pending> queue_;
    std::multimap<std::uint64_t, Done> waiting_;  // when_durable callbacks by sequence number
    std::uint64_t submitted_ = 0;
    std::uint64_t durable_ = 0;
    std::exception_ptr failure_;  // the first failed transaction's error, then for everything
    bool stopping_ = false;
    Stats stats_;
    std::thread thread_;
};

}  // namespace mxvoip::store
