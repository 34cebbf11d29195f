#include "mxvoip/server/rate_limiter.hpp"

#include <gtest/gtest.h>

using namespace mxvoip::server;

TEST(RateLimiter, BurstThenRefillAtRate) {
    RateLimiter rl({2.0, 3.0});  // 3 at once, then one every 500 ms
    for (int i = 0; i < 3; ++i) EXPECT_FALSE(rl.take("u", 1000)) << i;
    auto wait = rl.take("u", 1000);
    ASSERT_TRUE(wait);
    EXPECT_EQ(*wait, 500);
    EXPECT_TRUE(rl.take("u", 1400));
    EXPECT_FALSE(rl.take("u", 1500));
    EXPECT_TRUE(rl.take("u", 1500));
}

TEST(RateLimiter, KeysAreIndependent) {
    RateLimiter rl({1.0, 1.0});
    EXPECT_FALSE(rl.take("a", 0));
    EXPECT_TRUE(rl.take("a", 0));
    EXPECT_FALSE(rl.take("b", 0));
}

TEST(RateLimiter, NeverMoreThanBurstAfterIdle) {
    RateLimiter rl({10.0, 2.0});
    EXPECT_FALSE(rl.take("a", 0));
    EXPECT_FALSE(rl.take("a", 1'000'000));
    EXPECT_FALSE(rl.take("a", 1'000'000));
    EXPECT_TRUE(rl.take("a", 1'000'000));
}
