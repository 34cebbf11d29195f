#include "mxvoip/server/rate_limiter.hpp"

#include <algorithm>
#include <cmath>

namespace mxvoip::server {

namespace {
constexpr std::size_t kPruneAbove = 50000;
}

RateLimit RateLimiter::share() const {
    const int n = processes_ ? processes_->load(std::memory_order_relaxed) : 1;
    if (n <= 1) return limit_;
    RateLimit mine = limit_;
    mine.per_second /= n;
    mine.burst_count = std::max(1.0, mine.burst_count / n);
    return mine;
}

RateLimiter::Bucket& RateLimiter::refilled(const std::string& key, std::int64_t now_ms) {
    if (buckets_.size() > kPruneAbove) prune(now_ms);
    const RateLimit limit = share();
    auto [it, inserted] = buckets_.try_emplace(key, Bucket{limit.burst_count, now_ms});
    Bucket& b = it->second;
    double elapsed = static_cast<double>(std::max<std::int64_t>(0, now_ms - b.updated_ms)) / 1000.0;
    b.tokens = std::min(limit.burst_count, b.tokens + elapsed * limit.per_second);
    b.updated_ms = now_ms;
    return b;
}

std::optional<std::int64_t> RateLimiter::wait_for(const Bucket& b) const {
    if (b.tokens >= 1.0) return std::nullopt;
    const double per_second = share().per_second;
    if (per_second <= 0) return std::int64_t{60'000};
    return static_cast<std::int64_t>(std::ceil((1.0 - b.tokens) / per_second * 1000.0));
}

std::optional<std::int64_t> RateLimiter::take(const std::string& key, std::int64_t now_ms) {
    if (unlimited()) return std::nullopt;
    std::lock_guard lock(mu_);
    Bucket& b = refilled(key, now_ms);
    auto wait = wait_for(b);
    if (!wait) b.tokens -= 1.0;
    return wait;
}

std::optional<std::int64_t> RateLimiter::check(const std::string& key, std::int64_t now_ms) {
    if (unlimited()) return std::nullopt;
    std::lock_guard lock(mu_);
    return wait_for(refilled(key, now_ms));
}

void RateLimiter::record(const std::string& key, std::int64_t now_ms) {
    if (unlimited()) return;
    std::lock_guard lock(mu_);
    refilled(key, now_ms).tokens -= 1.0;
}

// Buckets that have refilled completely carry no information: drop them.
void RateLimiter::prune(std::int64_t now_ms) {
    const RateLimit limit = share();
    std::erase_if(buckets_, [&](const auto& kv) {
        double elapsed = static_cast<double>(now_ms - kv.second.updated_ms) / 1000.0;
        return kv.second.tokens + elapsed * limit.per_second >= limit.burst_count;
    });
}

}  // namespace mxvoip::server
