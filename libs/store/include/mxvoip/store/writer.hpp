#pragma once

#include "mxvoip/store/store.hpp"

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mxvoip::store {

// Group commit: one thread drains every submission waiting at that moment into a single
// transaction, so concurrent requests share one fsync. Completions run on the writer thread,
// in submission order, after the transaction is durable (or failed: then each gets the error).
class GroupCommitWriter {
  public:
    using Done = std::function<void(std::exception_ptr)>;

    explicit GroupCommitWriter(Store& store);
    ~GroupCommitWriter();
    GroupCommitWriter(const GroupCommitWriter&) = delete;
    GroupCommitWriter& operator=(const GroupCommitWriter&) = delete;

    void submit(std::vector<Mutation> mutations, Done done);

    // Commits everything already submitted, then stops the thread. Idempotent.
    void stop();

    struct Stats {
        std::uint64_t transactions = 0;
        std::uint64_t submissions = 0;
    };
    Stats stats() const;

  private:
    struct Pending {
        std::vector<Mutation> mutations;
        Done done;
    };
    void run();

    Store& store_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::vector<Pending> queue_;
    bool stopping_ = false;
    Stats stats_;
    std::thread thread_;
};

}  // namespace mxvoip::store
