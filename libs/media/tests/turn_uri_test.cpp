#include <gtest/gtest.h>

#include "mxvoip/media/media_session.hpp"

using mxvoip::media::webrtcbin_turn_uri;

TEST(TurnUri, UsernameAndPasswordArePercentEncoded) {
    EXPECT_EQ(
        webrtcbin_turn_uri("turn:127.0.0.1:3478?transport=tcp", "1700000000:@alice:example.org",
                           "ab/c+d="),
        "turn://1700000000%3A%40alice%3Aexample.org:ab%2Fc%2Bd%3D@127.0.0.1:3478?transport=tcp");
}

TEST(TurnUri, TurnsKeepsItsScheme) {
    EXPECT_EQ(webrtcbin_turn_uri("turns:turn.example.org:5349?transport=tcp", "u", "p"),
              "turns://u:p@turn.example.org:5349?transport=tcp");
}

TEST(TurnUri, OtherSchemesAreNotTurnServers) {
    EXPECT_EQ(webrtcbin_turn_uri("stun:stun.example.org:3478", "u", "p"), "");
    EXPECT_EQ(webrtcbin_turn_uri("turn:", "u", "p"), "");
}
