#include "mxvoip/store/writer.hpp"

namespace mxvoip::store {

namespace {
constexpr std::size_t kMaxBatch = 4096;
}

GroupCommitWriter::GroupCommitWriter(Store& store) : store_(store), thread_([this] { run(); }) {}

GroupCommitWriter::~GroupCommitWriter() {
    stop();
}

void GroupCommitWriter::submit(std::vector<Mutation> mutations, Done done) {
    bool refused = false;
    {
        std::lock_guard lock(mu_);
        if (stopping_)
            refused = true;
        else
            queue_.push_back({std::move(mutations), std::move(done)});
    }
    if (refused) {
        done(std::make_exception_ptr(StoreError("store is shutting down")));
        return;
    }
    cv_.notify_one();
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
    std::vector<Mutation> flat;
    for (;;) {
        {
            std::unique_lock lock(mu_);
            cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
            if (queue_.empty()) return;  // stopping and drained
            if (queue_.size() <= kMaxBatch) {
                batch.swap(queue_);
            } else {
                batch.assign(std::make_move_iterator(queue_.begin()),
                             std::make_move_iterator(queue_.begin() + kMaxBatch));
                queue_.erase(queue_.begin(), queue_.begin() + kMaxBatch);
            }
            stats_.transactions++;
            stats_.submissions += batch.size();
        }
        flat.clear();
        for (auto& p : batch)
            for (auto& m : p.mutations) flat.push_back(std::move(m));
        std::exception_ptr error;
        try {
            store_.apply(flat);
        } catch (...) {
            error = std::current_exception();
        }
        for (auto& p : batch) p.done(error);
        batch.clear();
    }
}

}  // namespace mxvoip::store
