#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "mxvoip/server/config.hpp"

namespace mxvoip::server {

// Token buckets keyed by user or address, Synapse's semantics: `burst_count` actions at
// once, refilled at `per_second`. Time is passed in so tests control it.
//
// Several processes sharing a database each hold their own buckets, with the limit divided
// by `*processes` (how many are live, never below 1 action of burst): behind a balancer that
// spreads each client's requests over the processes, they hold the configured limit together.
class RateLimiter {
  public:
    explicit RateLimiter(RateLimit limit, const std::atomic<int>* processes = nullptr)
        : limit_(limit), processes_(processes) {}

    // Takes one action for `key` at `now_ms`. Returns nullopt when allowed, otherwise how
    // many milliseconds until the next action would be.
    std::optional<std::int64_t> take(const std::string& key, std::int64_t now_ms);
    // For actions counted only once they are done (a completed registration, not each round
    // of its interactive auth): check() says whether one would be allowed now without taking
    // it, record() takes it when it is done, even past the limit (the bucket then refills
    // from below zero).
    std::optional<std::int64_t> check(const std::string& key, std::int64_t now_ms);
    void record(const std::string& key, std::int64_t now_ms);

  private:
    struct Bucket {
        double tokens;
        std::int64_t updated_ms;
    };
    bool unlimited() const { return limit_.per_second <= 0 && limit_.burst_count <= 0; }
    // The bucket of `key`, refilled up to `now_ms`. Under mu_.
    Bucket& refilled(const std::string& key, std::int64_t now_ms);
    std::optional<std::int64_t> wait_for(const Bucket& b) const;
    void prune(std::int64_t now_ms);

    // The limit this process holds: the configured one, divided among the live processes.
    RateLimit share() const;

    RateLimit limit_;
    const std::atomic<int>* processes_;
    std::mutex mu_;
    std::unordered_map<std::string, Bucket> buckets_;
};

}  // namespace mxvoip::server
