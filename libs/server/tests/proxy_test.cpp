#include "proxy.hpp"

#include <gtest/gtest.h>

using namespace mxvoip::server;

TEST(TrustedProxies, AddressesAndNetworks) {
    TrustedProxies p({"127.0.0.1", "::1", "10.0.0.0/8", "fd00::/8"});
    EXPECT_TRUE(p.contains("127.0.0.1"));
    EXPECT_FALSE(p.contains("127.0.0.2"));
    EXPECT_TRUE(p.contains("10.200.3.4"));
    EXPECT_FALSE(p.contains("11.0.0.1"));
    EXPECT_TRUE(p.contains("::1"));
    EXPECT_TRUE(p.contains("fd12::5"));
    EXPECT_FALSE(p.contains("fe80::1"));
    EXPECT_TRUE(p.contains("::ffff:10.1.2.3")) << "a v4 peer on a v6 socket";
    EXPECT_FALSE(p.contains("not an address"));
}

TEST(TrustedProxies, RefusesWhatIsNotAnAddress) {
    EXPECT_THROW(TrustedProxies({"localhost"}), std::invalid_argument);
    EXPECT_THROW(TrustedProxies({"10.0.0.0/33"}), std::invalid_argument);
    EXPECT_THROW(TrustedProxies({""}), std::invalid_argument);
}

TEST(TrustedProxies, TheClientIsTheRightmostUntrustedEntry) {
    TrustedProxies p({"127.0.0.1", "10.0.0.0/8"});
    EXPECT_EQ(p.client("203.0.113.5", "127.0.0.1"), "203.0.113.5");
    // Whatever the client wrote itself is to the left of what our proxies added.
    EXPECT_EQ(p.client("1.1.1.1, 203.0.113.5, 10.0.0.7", "127.0.0.1"), "203.0.113.5");
    EXPECT_EQ(p.client("garbage, 203.0.113.5", "127.0.0.1"), "203.0.113.5");
    EXPECT_EQ(p.client(" 2001:db8::1 ", "127.0.0.1"), "2001:db8::1");
    // All proxies: the leftmost; no header: the peer.
    EXPECT_EQ(p.client("10.0.0.1, 10.0.0.2", "127.0.0.1"), "10.0.0.1");
    EXPECT_EQ(p.client("", "127.0.0.1"), "127.0.0.1");
    // The entry our own proxy added must be an address.
    EXPECT_EQ(p.client("203.0.113.5, nonsense", "127.0.0.1"), std::nullopt);
}
