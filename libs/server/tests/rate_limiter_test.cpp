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

TEST(RateLimiter, ProcessesSharingADatabaseEachHoldTheirShareOfTheLimit) {
    std::atomic<int> processes{3};
    RateLimiter rl({3.0, 6.0}, &processes);  // 6 at once, then 3 a second, among 3 processes
    EXPECT_FALSE(rl.take("u", 0));
    EXPECT_FALSE(rl.take("u", 0));
    EXPECT_EQ(rl.take("u", 0), 1000) << "this process's share: 2 at once, one a second";
    // Never less than one action of burst, however many processes there are.
    processes = 100;
    EXPECT_FALSE(rl.take("v", 0));
    EXPECT_EQ(rl.take("v", 0), 33334);  // 0.03 a second: one in 33.3 s
    // One process again: the whole limit.
    processes = 1;
    EXPECT_FALSE(rl.take("w", 0));
    for (int i = 0; i < 5; ++i) EXPECT_FALSE(rl.take("w", 0)) << i;
    EXPECT_EQ(rl.take("w", 0), 334);
}
