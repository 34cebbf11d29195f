#include "mxvoip/proto/call_events.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

using namespace mxvoip::proto;

namespace {

json::object spec_example(const std::string& type) {
    std::ifstream in(std::string(MXVOIP_PROTO_TEST_DATA) + "/" + type + ".json");
    std::stringstream text;
    text << in.rdbuf();
    return json::parse(text.str()).as_object();
}

json::object content_of(const std::string& type) {
    return spec_example(type).at("content").as_object();
}

CallEventError error_of(std::string_view type, std::string_view content) {
    auto p = parse_call_event(type, json::parse(content));
    if (p.ok()) return {"", "ok"};
    return p.error();
}

const std::string kCommon = R"("call_id":"c1","party_id":"p1","version":"1")";

}  // namespace

// Every spec example parses and serialises back to itself; events that carry stream metadata
// gain the unstable key beside the stable one, with the same value.
class SpecExample : public ::testing::TestWithParam<std::string> {};

TEST_P(SpecExample, RoundTrips) {
    const std::string type = GetParam();
    json::object content = content_of(type);
    auto parsed = parse_call_event(type, content);
    ASSERT_TRUE(parsed.ok()) << parsed.error().path << ": " << parsed.error().rule;
    EXPECT_EQ(call_event_type(parsed.value()), type);
    json::object out = serialize_call_event(parsed.value());
    if (content.contains(kMetadataKey)) {
        ASSERT_TRUE(out.contains(kMetadataUnstableKey));
        EXPECT_EQ(out.at(kMetadataUnstableKey), content.at(kMetadataKey));
        out.erase(kMetadataUnstableKey);
    }
    EXPECT_EQ(out, content) << json::serialize(out);
    auto again = parse_call_event(type, out);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again.value(), parsed.value());
}

INSTANTIATE_TEST_SUITE_P(CallEvents, SpecExample,
                         ::testing::Values("m.call.invite", "m.call.candidates", "m.call.answer",
                                           "m.call.select_answer", "m.call.reject",
                                           "m.call.negotiate", "m.call.hangup",
                                           "m.call.sdp_stream_metadata_changed"),
                         [](const auto& info) {
                             std::string name = info.param.substr(7);
                             for (auto& c : name)
                                 if (c == '.') c = '_';
                             return name;
                         });

TEST(CallEvents, SpecExampleFieldsAreRead) {
    auto invite = std::get<CallInvite>(
        parse_call_event("m.call.invite", content_of("m.call.invite")).value());
    EXPECT_EQ(invite.call_id, "12345");
    EXPECT_EQ(invite.party_id, "67890");
    EXPECT_EQ(invite.lifetime, 60000);
    EXPECT_EQ(invite.offer.type, "offer");
    ASSERT_TRUE(invite.metadata);
    EXPECT_EQ(invite.metadata->at("271828182845").purpose, "m.screenshare");
    EXPECT_EQ(invite.metadata->at("314159265358").purpose, "m.usermedia");
    auto cands = std::get<CallCandidates>(
        parse_call_event("m.call.candidates", content_of("m.call.candidates")).value());
    ASSERT_EQ(cands.candidates.size(), 1u);
    EXPECT_EQ(cands.candidates[0].sdp_mid, "audio");
    EXPECT_EQ(cands.candidates[0].sdp_mline_index, 0);
}

TEST(CallEvents, SpecTypoInMetadataChangedIsAnUnknownFieldNotAMuteFlag) {
    auto e = std::get<CallSdpStreamMetadataChanged>(
        parse_call_event("m.call.sdp_stream_metadata_changed",
                         content_of("m.call.sdp_stream_metadata_changed"))
            .value());
    const auto& m = e.metadata.at("2311546231");
    EXPECT_FALSE(m.audio_muted) << "\"audio_muted:\" is not \"audio_muted\"";
    EXPECT_TRUE(m.video_muted);
    EXPECT_TRUE(m.extra.contains("audio_muted:"));
    auto lint = lint_call_event(e);
    ASSERT_EQ(lint.size(), 1u);
    EXPECT_EQ(lint[0].path, "content.sdp_stream_metadata.2311546231.audio_muted:");
}

TEST(CallEvents, VersionRules) {
    auto version_of = [](std::string_view v) {
        auto p = parse_call_event(
            "m.call.hangup",
            json::parse(R"({"call_id":"c","party_id":"p","version":)" + std::string(v) + "}"));
        EXPECT_TRUE(p.ok()) << v;
        return std::get<CallHangup>(p.value()).version;
    };
    EXPECT_EQ(version_of("0"), CallVersion::v0);
    EXPECT_EQ(version_of("\"0\""), CallVersion::v0);
    EXPECT_EQ(version_of("\"1\""), CallVersion::v1);
    EXPECT_EQ(version_of("1"), CallVersion::v1)
        << "the integer 1 is version 1, not 0 (mtxclient's mistake)";
    EXPECT_EQ(version_of("2"), CallVersion::v1);
    EXPECT_EQ(version_of("\"2.5-experimental\""), CallVersion::v1);
    EXPECT_EQ(error_of("m.call.hangup", R"({"call_id":"c","party_id":"p"})").path,
              "content.version");
    EXPECT_EQ(error_of("m.call.hangup", R"({"call_id":"c","party_id":"p","version":true})").rule,
              "must be a string (or the integer 0 of version 0)");
    // Version 0 events have no party_id; version 1 events must.
    EXPECT_EQ(error_of("m.call.hangup", R"({"call_id":"c","version":0})").rule, "ok");
    EXPECT_EQ(error_of("m.call.hangup", R"({"call_id":"c","version":"1"})").path,
              "content.party_id");
    // The value as sent survives a round trip.
    auto p = parse_call_event("m.call.reject",
                              json::parse(R"({"call_id":"c","party_id":"p","version":1})"));
    EXPECT_EQ(serialize_call_event(p.value()).at("version"), json::value(1));
}

TEST(CallEvents, OpaqueIdGrammar) {
    EXPECT_EQ(
        error_of("m.call.reject", R"({"call_id":"bad id","party_id":"p","version":"1"})").path,
        "content.call_id");
    EXPECT_EQ(error_of("m.call.reject", R"({"call_id":"","party_id":"p","version":"1"})").rule,
              "must be 1-255 characters of [0-9A-Za-z-._~]");
    EXPECT_EQ(error_of("m.call.reject", R"({"call_id":"c","party_id":"p/1","version":"1"})").path,
              "content.party_id");
    EXPECT_EQ(
        error_of("m.call.select_answer", "{" + kCommon + R"(,"selected_party_id":"a b"})").path,
        "content.selected_party_id");
    EXPECT_EQ(error_of("m.call.select_answer", "{" + kCommon + "}").rule, "is required");
    EXPECT_EQ(error_of("m.call.reject", R"({"party_id":"p","version":"1"})").path,
              "content.call_id");
    EXPECT_EQ(error_of("m.call.reject", R"({"call_id":7,"party_id":"p","version":"1"})").rule,
              "must be a string");
}

TEST(CallEvents, InviteRequiredFields) {
    EXPECT_EQ(error_of("m.call.invite", "{" + kCommon + R"(,"lifetime":1})").path, "content.offer");
    EXPECT_EQ(
        error_of("m.call.invite", "{" + kCommon + R"(,"offer":{"type":"offer","sdp":"v"}})").path,
        "content.lifetime");
    EXPECT_EQ(error_of("m.call.invite",
                       "{" + kCommon + R"(,"lifetime":-1,"offer":{"type":"offer","sdp":"v"}})")
                  .rule,
              "must be at least 0");
    EXPECT_EQ(error_of("m.call.invite",
                       "{" + kCommon + R"(,"lifetime":"60000","offer":{"type":"offer","sdp":"v"}})")
                  .rule,
              "must be an integer");
    auto wrong_type = error_of(
        "m.call.invite", "{" + kCommon + R"(,"lifetime":1,"offer":{"type":"answer","sdp":"v"}})");
    EXPECT_EQ(wrong_type.path, "content.offer.type");
    EXPECT_EQ(wrong_type.rule, "must be \"offer\"");
    EXPECT_EQ(
        error_of("m.call.invite", "{" + kCommon + R"(,"lifetime":1,"offer":{"type":"offer"}})")
            .path,
        "content.offer.sdp");
    EXPECT_EQ(error_of("m.call.invite", "{" + kCommon + R"(,"lifetime":1,"offer":"v=0"})").rule,
              "must be an object");
    EXPECT_EQ(error_of("m.call.invite",
                       "{" + kCommon +
                           R"(,"lifetime":1,"offer":{"type":"offer","sdp":"v"},"invitee":"bob"})")
                  .path,
              "content.invitee");
    EXPECT_EQ(error_of("m.call.invite", "[]").path, "content");
}

TEST(CallEvents, AnswerNegotiateAndMetadataRules) {
    EXPECT_EQ(
        error_of("m.call.answer", "{" + kCommon + R"(,"answer":{"type":"offer","sdp":"v"}})").rule,
        "must be \"answer\"");
    EXPECT_EQ(
        error_of("m.call.negotiate",
                 "{" + kCommon + R"(,"lifetime":1,"description":{"type":"pranswer","sdp":"v"}})")
            .rule,
        "must be \"offer\" or \"answer\"");
    EXPECT_EQ(error_of("m.call.negotiate",
                       "{" + kCommon + R"(,"description":{"type":"offer","sdp":"v"}})")
                  .path,
              "content.lifetime");
    EXPECT_EQ(error_of("m.call.sdp_stream_metadata_changed", "{" + kCommon + "}").path,
              "content.sdp_stream_metadata");
    EXPECT_EQ(error_of("m.call.sdp_stream_metadata_changed",
                       "{" + kCommon + R"(,"sdp_stream_metadata":{"s":{}}})")
                  .path,
              "content.sdp_stream_metadata.s.purpose");
    EXPECT_EQ(
        error_of(
            "m.call.sdp_stream_metadata_changed",
            "{" + kCommon +
                R"(,"sdp_stream_metadata":{"s":{"purpose":"m.usermedia","audio_muted":"yes"}}})")
            .path,
        "content.sdp_stream_metadata.s.audio_muted");
    EXPECT_EQ(error_of("m.call.answer",
                       "{" + kCommon +
                           R"(,"answer":{"type":"answer","sdp":"v"},"sdp_stream_metadata":[]})")
                  .rule,
              "must be an object");
}

TEST(CallEvents, MetadataIsReadFromEitherKeyStableFirst) {
    auto only_unstable = parse_call_event(
        "m.call.answer",
        json::parse(
            "{" + kCommon +
            R"(,"answer":{"type":"answer","sdp":"v"},"org.matrix.msc3077.sdp_stream_metadata":{"a":{"purpose":"m.usermedia","video_muted":true}}})"));
    ASSERT_TRUE(only_unstable.ok());
    const auto& a = std::get<CallAnswer>(only_unstable.value());
    ASSERT_TRUE(a.metadata);
    EXPECT_TRUE(a.metadata->at("a").video_muted);
    auto both = parse_call_event(
        "m.call.answer",
        json::parse(
            "{" + kCommon +
            R"(,"answer":{"type":"answer","sdp":"v"},"sdp_stream_metadata":{"s":{"purpose":"m.screenshare"}},"org.matrix.msc3077.sdp_stream_metadata":{"u":{"purpose":"m.usermedia"}}})"));
    const auto& b = std::get<CallAnswer>(both.value());
    EXPECT_EQ(b.metadata->count("s"), 1u);
    EXPECT_EQ(b.metadata->count("u"), 0u);
    auto out = serialize_call_event(b);
    EXPECT_EQ(out.at(kMetadataKey), out.at(kMetadataUnstableKey));
    // Without metadata neither key is written: absence means "the peer does not support it".
    auto none = serialize_call_event(
        parse_call_event("m.call.answer",
                         json::parse("{" + kCommon + R"(,"answer":{"type":"answer","sdp":"v"}})"))
            .value());
    EXPECT_FALSE(none.contains(kMetadataKey));
    EXPECT_FALSE(none.contains(kMetadataUnstableKey));
}

TEST(CallEvents, CandidatesRule) {
    auto ok = [](std::string_view cands) {
        return error_of("m.call.candidates",
                        "{" + kCommon + R"(,"candidates":)" + std::string(cands) + "}");
    };
    EXPECT_EQ(ok(R"([{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMid":"0"}])").rule,
              "ok");
    EXPECT_EQ(
        ok(R"([{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMLineIndex":0}])").rule,
        "ok");
    EXPECT_EQ(ok(R"([{"candidate":""}])").rule, "ok") << "end-of-candidates needs neither";
    auto missing = ok(R"([{"candidate":"x","sdpMid":"0"},{"candidate":"candidate:2"}])");
    EXPECT_EQ(missing.path, "content.candidates[1]");
    EXPECT_EQ(missing.rule,
              "needs sdpMid or sdpMLineIndex (only the end-of-candidates marker may omit both)");
    EXPECT_EQ(ok(R"([{"sdpMid":"0"}])").path, "content.candidates[0].candidate");
    EXPECT_EQ(ok(R"([{"candidate":"x","sdpMLineIndex":-1}])").rule, "must not be negative");
    EXPECT_EQ(ok(R"({})").rule, "must be an array");
    EXPECT_EQ(error_of("m.call.candidates", "{" + kCommon + "}").path, "content.candidates");
}

TEST(CallEvents, UnknownFieldsSurviveEverywhere) {
    std::string text =
        "{" + kCommon +
        R"(,"x-top":1,"lifetime":5,"offer":{"type":"offer","sdp":"v","x-desc":true},)"
        R"("sdp_stream_metadata":{"s":{"purpose":"m.usermedia","x-stream":"y"}}})";
    auto p = parse_call_event("m.call.invite", json::parse(text));
    ASSERT_TRUE(p.ok());
    auto out = serialize_call_event(p.value());
    EXPECT_EQ(out.at("x-top"), json::value(1));
    EXPECT_EQ(out.at("offer").at("x-desc"), json::value(true));
    EXPECT_EQ(out.at(kMetadataKey).at("s").at("x-stream"), json::value("y"));
    auto c = parse_call_event(
        "m.call.candidates",
        json::parse("{" + kCommon +
                    R"(,"candidates":[{"candidate":"","usernameFragment":"abc"}]})"));
    EXPECT_EQ(serialize_call_event(c.value()).at("candidates").at(0).at("usernameFragment"),
              json::value("abc"));
}

TEST(CallEvents, HangupReasons) {
    auto hangup = [](std::string_view extra) {
        return std::get<CallHangup>(
            parse_call_event("m.call.hangup", json::parse("{" + kCommon + std::string(extra) + "}"))
                .value());
    };
    EXPECT_EQ(hangup("").effective_reason(), "user_hangup") << "missing means user_hangup";
    EXPECT_TRUE(hangup("").reason_known());
    EXPECT_TRUE(hangup(R"(,"reason":"ice_failed")").reason_known());
    // matrix-js-sdk's glare hangup still parses: the call must end.
    auto replaced = hangup(R"(,"reason":"replaced")");
    EXPECT_FALSE(replaced.reason_known());
    auto lint = lint_call_event(replaced);
    ASSERT_EQ(lint.size(), 1u);
    EXPECT_EQ(lint[0].path, "content.reason");
    EXPECT_EQ(error_of("m.call.hangup", "{" + kCommon + R"(,"reason":5})").rule,
              "must be a string");
}

TEST(CallEvents, LintFlagsWhatParsingTolerates) {
    auto p = parse_call_event(
        "m.call.answer",
        json::parse(
            R"({"call_id":"c","party_id":"p","version":1,"answer":{"type":"answer","sdp":"v"},"sdp_stream_metadata":{"s":{"purpose":"m.hologram"}}})"));
    ASSERT_TRUE(p.ok());
    auto lint = lint_call_event(p.value());
    ASSERT_EQ(lint.size(), 2u);
    EXPECT_EQ(lint[0].path, "content.version");
    EXPECT_EQ(lint[1].path, "content.sdp_stream_metadata.s.purpose");
    EXPECT_FALSE(std::get<CallAnswer>(p.value()).metadata->at("s").purpose_known());
    auto v0_reject =
        parse_call_event("m.call.reject", json::parse(R"({"call_id":"c","version":0})"));
    ASSERT_TRUE(v0_reject.ok());
    EXPECT_EQ(lint_call_event(v0_reject.value()).at(0).rule,
              "m.call.reject exists only in version 1");
    EXPECT_TRUE(
        lint_call_event(parse_call_event("m.call.invite", content_of("m.call.invite")).value())
            .empty());
}

TEST(CallEvents, LintNotesExperimentalStringVersions) {
    auto lint_of = [](std::string_view version) {
        auto p = parse_call_event("m.call.hangup",
                                  json::parse(R"({"call_id":"c","party_id":"p","version":)" +
                                              std::string(version) + "}"));
        EXPECT_TRUE(p.ok()) << version;
        return lint_call_event(p.value());
    };
    // The schema's version is a string, and "experimental implementations can use non-integer
    // versions": a note, not a violation.
    auto experimental = lint_of(R"("2.5-experimental")");
    ASSERT_EQ(experimental.size(), 1u);
    EXPECT_EQ(experimental[0].severity, LintFinding::Severity::note);
    EXPECT_EQ(experimental[0].path, "content.version");
    EXPECT_TRUE(lint_of(R"("1")").empty());
    EXPECT_TRUE(lint_of(R"("0")").empty());
    EXPECT_TRUE(lint_of("0").empty());
    // Integers other than 0 are not what any version sends.
    for (const char* v : {"1", "2", "1.5"}) {
        auto lint = lint_of(v);
        ASSERT_EQ(lint.size(), 1u) << v;
        EXPECT_EQ(lint[0].severity, LintFinding::Severity::violation) << v;
    }
}

TEST(CallEvents, UnknownTypeIsAnError) {
    EXPECT_EQ(error_of("m.call.ring", "{}").path, "type");
}
