#include "../src/lru_cache.hpp"

#include <gtest/gtest.h>

#include <memory>
#include <string>

using mxvoip::server::LruCache;

TEST(LruCache, HoldsAtMostItsCapacityAndForgetsTheLeastRecentlyUsed) {
    LruCache<std::string, int> cache(2);
    cache.put("a", 1);
    cache.put("b", 2);
    ASSERT_NE(cache.get("a"), nullptr);  // "a" is now the most recently used
    cache.put("c", 3);                   // so "b" goes
    EXPECT_EQ(cache.size(), 2u);
    EXPECT_EQ(cache.get("b"), nullptr);
    ASSERT_NE(cache.get("a"), nullptr);
    EXPECT_EQ(*cache.get("a"), 1);
    ASSERT_NE(cache.get("c"), nullptr);
    EXPECT_EQ(*cache.get("c"), 3);
}

TEST(LruCache, PutReplacesAndRefreshesAndEraseForgets) {
    LruCache<std::string, int> cache(2);
    cache.put("a", 1);
    cache.put("b", 2);
    EXPECT_EQ(cache.put("a", 10), 10);  // replaced, and now the most recently used
    cache.put("c", 3);
    EXPECT_EQ(cache.get("b"), nullptr);
    ASSERT_NE(cache.get("a"), nullptr);
    EXPECT_EQ(*cache.get("a"), 10);
    cache.erase("a");
    cache.erase("missing");
    EXPECT_EQ(cache.get("a"), nullptr);
    EXPECT_EQ(cache.size(), 1u);
}

TEST(LruCache, ACapacityOfZeroHoldsOne) {
    LruCache<int, int> cache(0);
    cache.put(1, 1);
    cache.put(2, 2);
    EXPECT_EQ(cache.size(), 1u);
    EXPECT_EQ(cache.get(1), nullptr);
    ASSERT_NE(cache.get(2), nullptr);
}

TEST(LruCache, AnEntryInUseIsPassedOverUntilItIsNoLongerKept) {
    auto in_use = [](const std::shared_ptr<int>& p) { return p.use_count() > 1; };
    LruCache<std::string, std::shared_ptr<int>> cache(2, in_use);
    auto held = cache.put("a", std::make_shared<int>(1));  // a request holds "a"
    cache.put("b", std::make_shared<int>(2));
    cache.put("c", std::make_shared<int>(3));  // "a" is the oldest, but kept: "b" goes
    EXPECT_NE(cache.get("a"), nullptr);
    EXPECT_EQ(cache.get("b"), nullptr);
    cache.get("c");
    cache.put("d", std::make_shared<int>(4));  // "a" (held) and "c" are older: "a" stays
    EXPECT_EQ(cache.size(), 2u);
    EXPECT_NE(cache.get("a"), nullptr);
    EXPECT_EQ(cache.get("c"), nullptr);
    auto held_too = *cache.get("d");
    cache.put("e", std::make_shared<int>(5));  // both older ones held: over capacity
    EXPECT_EQ(cache.size(), 3u);
    held.reset();
    held_too.reset();
    cache.put("f", std::make_shared<int>(6));  // no longer held: now they go
    EXPECT_EQ(cache.size(), 2u);
    EXPECT_EQ(cache.get("a"), nullptr);
    EXPECT_EQ(cache.get("d"), nullptr);
    EXPECT_NE(cache.get("e"), nullptr);
}

TEST(LruCache, HoldLetsNothingGoUntilTrimAndTrimPassesOverWhatIsKept) {
    LruCache<std::string, int> cache(2, [](const int& v) { return v < 0; });  // negative: kept
    int* first = &cache.hold("a", 1);
    cache.hold("b", -2);
    cache.hold("c", 3);
    cache.hold("d", 4);
    // Over capacity, and what was held is where it was: a reference taken before stays good.
    EXPECT_EQ(cache.size(), 4u);
    EXPECT_EQ(cache.get("a"), first);
    cache.get("a");
    cache.get("c");               // newest to oldest: c, a, d, b (kept)
    EXPECT_EQ(cache.trim(), 2u);  // "b" is kept: "d" and "a" go, down to two entries
    EXPECT_EQ(cache.size(), 2u);
    EXPECT_NE(cache.get("b"), nullptr);
    EXPECT_NE(cache.get("c"), nullptr);
    EXPECT_EQ(cache.get("a"), nullptr);
    EXPECT_EQ(cache.get("d"), nullptr);
    EXPECT_EQ(cache.trim(), 0u);
}
