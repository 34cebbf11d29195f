#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "../src/sdp.hpp"

using namespace mxvoip::media;

namespace {

// A description as Chrome writes it (a=msid) with one section as webrtcbin writes it
// (ssrc-level msid), in "\r\n" lines.
const std::string kSdp =
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\n"
    "a=msid:camera audio-track\r\n"
    "a=candidate:1 1 UDP 2122252543 192.0.2.1 40000 typ host\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendonly\r\n"
    "a=ssrc:42 cname:x\r\na=ssrc:42 msid:camera video-track\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\na=recvonly\r\n"
    "a=msid:screen screen-track\r\n";

std::string with_bare_newlines(std::string text) {
    std::string out;
    for (char c : text)
        if (c != '\r') out += c;
    return out;
}

// Every test runs on the description with "\r\n" lines and on the same with bare "\n".
class Sdp : public ::testing::TestWithParam<bool> {
  protected:
    std::string text() const { return GetParam() ? with_bare_newlines(kSdp) : kSdp; }
    SdpMessage parsed() const {
        SdpMessage sdp = parse_sdp(text());
        EXPECT_TRUE(sdp);
        return sdp;
    }
};

TEST_P(Sdp, EveryMediaSectionIsRewritten) {
    SdpMessage sdp = parsed();
    ASSERT_TRUE(sdp);
    std::string seen;
    rewrite_directions(*sdp, [&](const std::string& mid, const std::string& dir) {
        seen += mid + "=" + dir + ";";
        return std::string("inactive");
    });
    EXPECT_EQ(seen, "0=sendrecv;1=sendonly;2=recvonly;");
    // The edited message is one webrtcbin can read as it is (it turns each section's
    // attributes into caps, and needs every attribute to have a value, if only "").
    for (guint m = 0; m < gst_sdp_message_medias_len(sdp.get()); ++m) {
        GstCaps* caps = gst_caps_new_empty_simple("application/x-unknown");
        EXPECT_EQ(gst_sdp_media_attributes_to_caps(gst_sdp_message_get_media(sdp.get(), m), caps),
                  GST_SDP_OK);
        gst_caps_unref(caps);
    }
    std::string out = sdp_text(*sdp);
    for (const char* d : {"a=sendrecv", "a=sendonly", "a=recvonly"})
        EXPECT_EQ(out.find(d), std::string::npos) << out;
    EXPECT_EQ(out, [] {
        std::string expected = kSdp;
        for (std::string d : {"a=sendrecv", "a=sendonly", "a=recvonly"})
            expected.replace(expected.find(d), d.size(), "a=inactive");
        return expected;
    }()) << "the rest of the description is unchanged, in \\r\\n lines";
    // The rewritten description reads back with the new directions.
    SdpMessage again = parse_sdp(out);
    ASSERT_TRUE(again);
    std::vector<std::string> dirs;
    rewrite_directions(*again, [&](const std::string&, const std::string& dir) {
        dirs.push_back(dir);
        return dir;
    });
    EXPECT_EQ(dirs, (std::vector<std::string>{"inactive", "inactive", "inactive"}));
}

TEST_P(Sdp, UnchangedDirectionsLeaveTheDescriptionAlone) {
    SdpMessage sdp = parsed();
    ASSERT_TRUE(sdp);
    rewrite_directions(*sdp, [](const std::string&, const std::string& d) { return d; });
    EXPECT_EQ(sdp_text(*sdp), kSdp);
}

TEST_P(Sdp, StreamIdsFromMsidOrSsrcAttributes) {
    SdpMessage sdp = parsed();
    ASSERT_TRUE(sdp);
    EXPECT_EQ(stream_id(*sdp, "0"), "camera");
    EXPECT_EQ(stream_id(*sdp, "1"), "camera");
    EXPECT_EQ(stream_id(*sdp, "2"), "screen");
    EXPECT_EQ(stream_id(*sdp, "3"), "");
}

TEST_P(Sdp, CandidatesInTheDescription) {
    SdpMessage sdp = parsed();
    ASSERT_TRUE(sdp);
    EXPECT_TRUE(has_candidate(*sdp, "candidate:1 1 UDP 2122252543 192.0.2.1 40000 typ host"));
    EXPECT_FALSE(has_candidate(*sdp, "candidate:2 1 UDP 2122252543 192.0.2.1 40001 typ host"));
    EXPECT_FALSE(has_candidate(*sdp, "1 1 UDP 2122252543 192.0.2.1 40000 typ host"));
}

INSTANTIATE_TEST_SUITE_P(LineEnds, Sdp, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "LF" : "CRLF"; });

TEST(SdpParse, TextThatIsNotSdpIsRefused) {
    EXPECT_FALSE(parse_sdp(""));
    EXPECT_FALSE(parse_sdp("not a session description"));
    SdpMessage no_media = parse_sdp("v=0\ns=-\n");
    ASSERT_TRUE(no_media);
    rewrite_directions(*no_media, [](const std::string&, const std::string&) {
        ADD_FAILURE() << "no media section to rewrite";
        return std::string("inactive");
    });
}

TEST(SdpDirections, SendAndReceive) {
    EXPECT_TRUE(sends("sendonly") && sends("sendrecv") && !sends("recvonly") && !sends("inactive"));
    EXPECT_TRUE(receives("recvonly") && receives("sendrecv") && !receives("sendonly"));
    EXPECT_EQ(direction(true, true), "sendrecv");
    EXPECT_EQ(direction(true, false), "sendonly");
    EXPECT_EQ(direction(false, true), "recvonly");
    EXPECT_EQ(direction(false, false), "inactive");
}

}  // namespace
