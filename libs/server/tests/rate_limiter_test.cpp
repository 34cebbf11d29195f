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

TEST(RateLimiter, CheckTakesNothingAndRecordCountsPastTheLimit) {
    RateLimiter rl({1.0, 2.0});  // 2 at once, then one a second
    for (int i = 0; i < 5; ++i) EXPECT_FALSE(rl.check("a", 0)) << "check takes nothing";
    rl.record("a", 0);
    rl.record("a", 0);
    EXPECT_EQ(rl.check("a", 0), 1000);
    rl.record("a", 0);  // a third that was allowed before the others finished
    EXPECT_EQ(rl.check("a", 0), 2000) << "the bucket refills from below zero";
    EXPECT_FALSE(rl.check("a", 2000));
    EXPECT_FALSE(rl.check("b", 0));
}
