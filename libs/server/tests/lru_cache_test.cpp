#include "../src/lru_cache.hpp"

#include <gtest/gtest.h>

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
