#include "mxvoip/proto/ids.hpp"

#include <gtest/gtest.h>

using namespace mxvoip::proto;

TEST(Ids, ParsesUserIdWithPortInServerName) {
    auto id = parse_user_id("@alice:example.org:8448");
    ASSERT_TRUE(id);
    EXPECT_EQ(id->localpart, "alice");
    EXPECT_EQ(id->server_name, "example.org:8448");
}

TEST(Ids, RejectsMalformedUserIds) {
    EXPECT_FALSE(parse_user_id("alice:example.org"));
    EXPECT_FALSE(parse_user_id("@:example.org"));
    EXPECT_FALSE(parse_user_id("@alice"));
    EXPECT_FALSE(parse_user_id("@alice:"));
    EXPECT_FALSE(parse_user_id("@al ice:example.org"));
    EXPECT_FALSE(parse_user_id("@" + std::string(300, 'a') + ":x"));
}

TEST(Ids, NewLocalpartGrammar) {
    EXPECT_TRUE(is_valid_new_localpart("alice.bob_1=2-3/4+5"));
    EXPECT_FALSE(is_valid_new_localpart("Alice"));
    EXPECT_FALSE(is_valid_new_localpart("al:ice"));
    EXPECT_FALSE(is_valid_new_localpart(""));
    EXPECT_FALSE(is_valid_new_localpart("caf\xc3\xa9"));
}

TEST(Ids, OpaqueIdGrammar) {
    EXPECT_TRUE(is_valid_opaque_id("1234567890abcXYZ-._~"));
    EXPECT_FALSE(is_valid_opaque_id(""));
    EXPECT_FALSE(is_valid_opaque_id("a b"));
    EXPECT_FALSE(is_valid_opaque_id(std::string(256, 'a')));
    EXPECT_TRUE(is_valid_opaque_id(std::string(255, 'a')));
}

TEST(Ids, RoomIds) {
    EXPECT_TRUE(is_valid_room_id("!abc:localhost"));
    EXPECT_FALSE(is_valid_room_id("#abc:localhost"));
    EXPECT_FALSE(is_valid_room_id("!abc"));
}

TEST(Ids, RoomAliases) {
    EXPECT_TRUE(is_valid_room_alias("#abc:localhost"));
    EXPECT_TRUE(is_valid_room_alias("#caf\xc3\xa9-\xe2\x98\x8e:example.org:8448"));
    EXPECT_FALSE(is_valid_room_alias("!abc:localhost"));
    EXPECT_FALSE(is_valid_room_alias("#abc"));
    EXPECT_FALSE(is_valid_room_alias("#:localhost"));
    EXPECT_FALSE(is_valid_room_alias("#abc:"));
    EXPECT_FALSE(is_valid_room_alias("#a b:localhost"));
    EXPECT_FALSE(is_valid_room_alias(std::string_view("#a\0b:localhost", 14)));
    EXPECT_FALSE(is_valid_room_alias("#abc:local host"));
    EXPECT_TRUE(is_valid_room_alias("#" + std::string(243, 'a') + ":localhost"));
    EXPECT_FALSE(is_valid_room_alias("#" + std::string(246, 'a') + ":localhost"));
}
