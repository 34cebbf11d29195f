#pragma once

#include "mxvoip/store/store.hpp"

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

namespace mxvoip::store {

// Group commit: one thread drains every submission waiting at that moment into a single
// transaction, so concurrent requests share one fsync. Completions run on the writer thread,
// in submission order, after the transaction is durable (or failed: then each gets the error).
//
// A failure is final: the submissions after a failed transaction may depend on what it would
// have written, so they fail with the same error instead of being applied, and so does every
// later one. The owner is expected to stop.
class GroupCommitWriter {
  public:
    using Done = std::function<void(std::exception_ptr)>;

    explicit GroupCommitWriter(Store& store);
    ~GroupCommitWriter();
    GroupCommitWriter(const GroupCommitWriter&) = delete;
    GroupCommitWriter& operator=(const GroupCommitWriter&) = delete;

    // Queues `mutations` and returns their sequence number (1, 2, ...): every submission with a
    // smaller number commits in the same or an earlier transaction.
    std::uint64_t submit(std::vector<Mutation> mutations, Done done);

    // The sequence number of the latest submission, and of the latest durable one.
    std::uint64_t submitted() const;
    std::uint64_t durable() const;
    // The latest submission when it is not durable yet (one look, under one lock).
    std::optional<std::uint64_t> pending() const;

    // Calls `done` once every submission up to `seq` is durable (at once if that is already
    // so), or with the error that stopped the writer. Runs on the caller's or the writer's
    // thread, after the completions of the transaction that made `seq` durable.
    void when_durable(std::uint64_t seq, Done done);

    // Commits everything already submitted, then stops the thread. Idempotent.
    void stop();

    struct Stats {
        std::uint64_t transactions = 0;
        std::uint64_t submissions = 0;
    };
    Stats stats() const;

  private:
    struct Pending {
        std::uint64_t seq = 0;
        std::vector<Mutation> mutations;
        Done done;
    };
    void run();

    Store& store_;
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
