#include <gtest/gtest.h>

#include <cstring>

#include "../src/sdp_text.hpp"

using namespace mxvoip::media;

namespace {

const std::string kSdp =
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendrecv\r\n"
    "a=msid:camera audio-track\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendonly\r\n"
    "a=ssrc:42 msid:camera video-track\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=recvonly\r\n"
    "a=msid:screen screen-track\r\n";

TEST(SdpText, EveryMediaSectionIsRewritten) {
    std::string seen;
    std::string out = rewrite_directions(kSdp, [&](const std::string& mid, const std::string& dir) {
        seen += mid + "=" + dir + ";";
        return std::string("inactive");
    });
    EXPECT_EQ(seen, "0=sendrecv;1=sendonly;2=recvonly;");
    std::string expected = kSdp;
    for (const char* d : {"a=sendrecv", "a=sendonly", "a=recvonly"})
        expected.replace(expected.find(d), std::strlen(d), "a=inactive");
    EXPECT_EQ(out, expected);
}

TEST(SdpText, UnchangedDirectionsLeaveTheTextAlone) {
    EXPECT_EQ(rewrite_directions(kSdp, [](const std::string&, const std::string& d) { return d; }),
              kSdp);
    std::string no_media = "v=0\r\ns=-\r\n";
    EXPECT_EQ(
        rewrite_directions(no_media, [](const std::string&,
                                        const std::string&) { return std::string("inactive"); }),
        no_media);
}

TEST(SdpText, StreamIdsFromMsidOrSsrcLines) {
    EXPECT_EQ(msid_of(media_section(kSdp, "0")), "camera");
    EXPECT_EQ(msid_of(media_section(kSdp, "1")), "camera");
    EXPECT_EQ(msid_of(media_section(kSdp, "2")), "screen");
    EXPECT_EQ(media_section(kSdp, "3"), "");
    EXPECT_EQ(msid_of(""), "");
}

TEST(SdpText, Directions) {
    EXPECT_TRUE(sends("sendonly") && sends("sendrecv") && !sends("recvonly") && !sends("inactive"));
    EXPECT_TRUE(receives("recvonly") && receives("sendrecv") && !receives("sendonly"));
    EXPECT_EQ(direction(true, true), "sendrecv");
    EXPECT_EQ(direction(true, false), "sendonly");
    EXPECT_EQ(direction(false, true), "recvonly");
    EXPECT_EQ(direction(false, false), "inactive");
}

}  // namespace
