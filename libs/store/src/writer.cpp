#include "mxvoip/store/writer.hpp"

#include <algorithm>
#include <chrono>

namespace mxvoip::store {

namespace {
constexpr std::size_t kMaxBatch = 4096;
constexpr std::chrono::milliseconds kFirstRetry{50};
constexpr std::chrono::milliseconds kMaxRetry{2000};
}  // namespace

GroupCommitWriter::GroupCommitWriter(Store& store, Health on_health)
    : store_(store), on_health_(std::move(on_health)), thread_([this] { run(); }) {}

GroupCommitWriter::~GroupCommitWriter() {
    stop();
}

std::uint64_t GroupCommitWriter::submit(std::vector<Mutation> mutations, Done done) {
    return submit(Write{std::move(mutations), {}},
                  [done = std::move(done)](std::exception_ptr failure, std::exception_ptr) {
                      done(failure);
                  });
}

std::uint64_t GroupCommitWriter::submit(Write write, Decided done) {
    std::exception_ptr failed;
    std::uint64_t seq = 0;
    {
        std::lock_guard lock(mu_);
        seq = ++submitted_;
        if (failure_)
            failed = failure_;
        else if (stopping_)
            failed = std::make_exception_ptr(StoreError("the store is shutting down"));
        else
            queue_.push_back({seq, std::move(write), std::move(done)});
    }
    if (failed)
        done(failed, nullptr);
    else
        cv_.notify_one();
    return seq;
}

std::uint64_t GroupCommitWriter::submitted() const {
    std::lock_guard lock(mu_);
    return submitted_;
}

std::uint64_t GroupCommitWriter::durable() const {
    std::lock_guard lock(mu_);
    return durable_;
}

std::optional<std::uint64_t> GroupCommitWriter::pending() const {
    std::lock_guard lock(mu_);
    if (durable_ >= submitted_) return std::nullopt;
    return submitted_;
}

void GroupCommitWriter::when_durable(std::uint64_t seq, Done done) {
    std::exception_ptr error;
    {
        std::lock_guard lock(mu_);
        if (seq > durable_ && !failure_) {
            waiting_.emplace(seq, std::move(done));
            return;
        }
        if (seq > durable_) error = failure_;
    }
    done(error);
}

void GroupCommitWriter::stop() {
    {
        std::lock_guard lock(mu_);
        stopping_ = true;
    }
    cv_.notify_one();
    if (thread_.joinable()) thread_.join();
}

GroupCommitWriter::Stats GroupCommitWriter::stats() const {
    std::lock_guard lock(mu_);
    return stats_;
}

void GroupCommitWriter::run() {
    std::vector<Pending> batch;
    std::vector<Write> writes;
    std::vector<std::exception_ptr> refused;
    std::vector<Done> ready;
    for (;;) {
        std::uint64_t last = 0;  // the sequence number of the batch's last submission
        std::exception_ptr failed_before;
        {
            std::unique_lock lock(mu_);
            cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
            if (queue_.empty()) break;  // stopping and drained
            if (queue_.size() <= kMaxBatch) {
                batch.swap(queue_);
            } else {
                batch.assign(std::make_move_iterator(queue_.begin()),
                             std::make_move_iterator(queue_.begin() + kMaxBatch));
                queue_.erase(queue_.begin(), queue_.begin() + kMaxBatch);
            }
            last = batch.back().seq;
            failed_before = failure_;
            stats_.transactions++;
            stats_.submissions += batch.size();
        }
        std::exception_ptr error = failed_before;
        refused.assign(batch.size(), nullptr);
        if (!error) {
            writes.clear();
            for (auto& p : batch) writes.push_back(std::move(p.write));
            error = commit(writes, refused);
        }
        for (std::size_t i = 0; i < batch.size(); ++i)
            batch[i].done(error, error ? nullptr : refused[i]);
        batch.clear();
        if (!error) {
            bool more = false;
            {
                std::lock_guard lock(mu_);
                more = !queue_.empty();  // only this thread takes from it: it is next
            }
            store_.settled(more);
        }
        {
            std::lock_guard lock(mu_);
            if (error) {
                failure_ = error;
                for (auto& [_, d] : waiting_) ready.push_back(std::move(d));
                waiting_.clear();
            } else {
                durable_ = last;
                auto end = waiting_.upper_bound(last);
                for (auto it = waiting_.begin(); it != end; ++it)
                    ready.push_back(std::move(it->second));
                waiting_.erase(waiting_.begin(), end);
            }
        }
        for (auto& d : ready) d(error);
        ready.clear();
    }
    // Whoever still waits for a submission that was never made durable learns it now.
    std::multimap<std::uint64_t, Done> left;
    std::exception_ptr error;
    {
        std::lock_guard lock(mu_);
        if (!failure_) failure_ = std::make_exception_ptr(StoreError("the store is shutting down"));
        error = failure_;
        left.swap(waiting_);
    }
    for (auto& [_, d] : left) d(error);
}

std::exception_ptr GroupCommitWriter::commit(std::span<const Write> batch,
                                             std::vector<std::exception_ptr>& refused) {
    auto delay = kFirstRetry;
    for (;;) {
        try {
            refused = store_.transact(batch);
            if (!available()) set_available(true, {});
            return nullptr;
        } catch (const StoreUnavailable& e) {
            if (available()) set_available(false, e.what());
            std::unique_lock lock(mu_);
            if (stopping_) return std::current_exception();
            // stop() cuts the wait short; the attempt after it is the last.
            cv_.wait_for(lock, delay, [&] { return stopping_; });
            stats_.retries++;
        } catch (...) {
            return std::current_exception();
        }
        delay = std::min(delay * 2, kMaxRetry);
    }
}

void GroupCommitWriter::set_available(bool available, const std::string& why) {
    unavailable_.store(!available, std::memory_order_relaxed);
    if (on_health_) on_health_(available, why);
}

}  // namespace mxvoip::store
