#include "call_event_text.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <iostream>
#include <random>
#include <sstream>

#include "mxvoip/proto/call_events.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/json.hpp"
#include "string_scan.hpp"

using namespace mxvoip::proto;

namespace {

const char* const kTypes[] = {
    "m.call.invite", "m.call.candidates", "m.call.answer", "m.call.select_answer",
    "m.call.reject", "m.call.negotiate",  "m.call.hangup", "m.call.sdp_stream_metadata_changed"};

std::string spec_content(const std::string& type) {
    std::ifstream in(std::string(MXVOIP_PROTO_TEST_DATA) + "/" + type + ".json");
    std::stringstream text;
    text << in.rdbuf();
    return json::serialize(json::parse(text.str()).at("content"));
}

// What the DOM path says about `text`: the event, or the error (text that is not JSON is an
// error at "content" with parse_json's message).
Parsed<CallEvent> through_dom(std::string_view type, std::string_view text) {
    try {
        return parse_call_event(type, parse_json(text));
    } catch (const MatrixError& e) {
        return CallEventError{"content", e.what()};
    }
}

// The text path and the DOM path agree on `text`: same event, or same error.
void expect_same(std::string_view type, std::string_view text) {
    auto fast = parse_call_event_json(type, text);
    auto dom = through_dom(type, text);
    ASSERT_EQ(fast.ok(), dom.ok())
        << text << "\ntext: " << (fast.ok() ? "ok" : fast.error().path + " " + fast.error().rule)
        << "\nDOM: " << (dom.ok() ? "ok" : dom.error().path + " " + dom.error().rule);
    if (fast.ok()) {
        EXPECT_EQ(fast.value(), dom.value()) << text;
        EXPECT_EQ(serialize_call_event(fast.value()), serialize_call_event(dom.value())) << text;
    } else {
        EXPECT_EQ(fast.error().path, dom.error().path) << text;
        EXPECT_EQ(fast.error().rule, dom.error().rule) << text;
    }
}

// A Chromium-like offer: many short lines, each ending in an escaped \r\n.
std::string sdp_like() {
    std::string s = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
    for (int i = 0; i < 40; ++i) s += "a=rtcp-fb:" + std::to_string(96 + i) + " nack pli\r\n";
    return s;
}

std::string invite_text() {
    json::object c{
        {"call_id", "c1"},
        {"party_id", "p1"},
        {"version", "1"},
        {"lifetime", 60000},
        {"invitee", "@bob:example.org"},
        {"offer", {{"type", "offer"}, {"sdp", sdp_like()}}},
        {"sdp_stream_metadata",
         {{"s1", {{"purpose", "m.usermedia"}, {"video_muted", true}}},
          {"s2", {{"purpose", "m.screenshare"}, {"x-custom", {1, 2, {{"a", nullptr}}}}}}}},
        {"x-extra", {{"nested", {true, false, -12, "é ✓ 𝄞"}}}}};
    return json::serialize(c);
}

// Runs `body` once with each string kernel this CPU has (AVX-512, SSE2, plain C++), then goes
// back to the best. Returns how many ran.
template <typename Body>
int for_each_kernel(Body body) {
    std::string best(mxvoip::proto::detail::string_kernels());
    int ran = 0;
    for (const char* k : {"scalar", "sse2", "avx512"}) {
        if (!mxvoip::proto::detail::use_string_kernels(k)) continue;
        SCOPED_TRACE(std::string("string kernels: ") + k);
        body();
        ++ran;
    }
    mxvoip::proto::detail::use_string_kernels(best);
    return ran;
}

}  // namespace

TEST(CallEventText, EveryKernelThisCpuHasIsChecked) {
    int ran = for_each_kernel([] {});
#if defined(__x86_64__)
    EXPECT_GE(ran, 2);  // plain C++ and SSE2 at least
#else
    EXPECT_GE(ran, 1);
#endif
    std::cout << "string kernels in use: " << mxvoip::proto::detail::string_kernels() << ", " << ran
              << " checked\n";
}

namespace {

// Whether the one-pass reading took `text` (rather than leaving it to the DOM).
bool taken(std::string_view type, std::string_view text) {
    return detail::read_call_event(type, text).has_value();
}

const std::string kCommon = R"("call_id":"c1","party_id":"p1","version":"1")";

}  // namespace

// Every kind of byte the scanners treat apart — an escape, a quote, a control character, a
// multi-byte character, invalid UTF-8, a doubled backslash — at every offset around the 16-
// and 64-byte block edges, in strings long enough to take the block paths.
TEST(CallEventText, BlockEdgesReadAsTheDomReadsThem) {
    const std::string specials[] = {"\\n",   "\\r\\n",   "\\\"",         "\\\\",
                                    "\\\\n", "\\/",      "\\t",          "\\u0041",
                                    "\x01",  "\xC3\xA9", "\xE2\x9C\x93", "\xF0\x9D\x84\x9E",
                                    "\xC3",  "\xFF",     "\"",           "\\"};
    for_each_kernel([&] {
        for (std::size_t len : {40u, 63u, 64u, 65u, 127u, 128u, 129u, 200u}) {
            for (std::size_t at = 0; at <= len; ++at) {
                for (const auto& sp : specials) {
                    std::string inside(len, 'a');
                    for (std::size_t i = 0; i < len; i += 9)
                        inside[i] = "\\n"[i % 2];  // some "\n"s
                    for (std::size_t i = 1; i < len; i += 9)
                        if (inside[i - 1] == '\\') inside[i] = 'n';
                    inside.insert(at, sp);
                    std::string text = "{" + kCommon + ",\"reason\":\"" + inside + "\",\"z\":1}";
                    bool dom_ok = true;
                    try {
                        parse_json(text);
                    } catch (const MatrixError&) {
                        dom_ok = false;
                    }
                    if (!dom_ok) {
                        ASSERT_FALSE(taken("m.call.hangup", text))
                            << "len " << len << " at " << at << ": " << text;
                    }
                    ASSERT_NO_FATAL_FAILURE(expect_same("m.call.hangup", text))
                        << "len " << len << " at " << at;
                }
            }
        }
    });
}

// Strings of printable ASCII and the short escapes are read in the one pass, at every length
// around the block edges.
TEST(CallEventText, TakesPlainStringsOfEveryLength) {
    for_each_kernel([] {
        for (std::size_t len = 0; len < 300; ++len) {
            std::string reason;
            for (std::size_t i = 0; i < len; ++i) reason += "ab\r\n\"\\/\t"[i % 8];
            std::string text =
                "{" + kCommon + ",\"reason\":" + json::serialize(json::value(reason)) + "}";
            ASSERT_TRUE(taken("m.call.hangup", text)) << text;
            auto event = parse_call_event_json("m.call.hangup", text);
            ASSERT_TRUE(event.ok());
            ASSERT_EQ(std::get<CallHangup>(event.value()).reason, reason) << len;
        }
    });
}

// What a client really sends is read in the one pass, unknown fields (matrix-js-sdk's
// capabilities, say) included: their values go into `extra` just as the DOM reads them.
TEST(CallEventText, TakesWhatClientsSend) {
    std::string invite = invite_text();
    EXPECT_TRUE(taken("m.call.invite", invite));
    for (std::string_view extra :
         {R"("capabilities":{"m.call.transferee":false,"m.call.dtmf":false})", R"("a":1.5)",
          R"("a":1e3)", R"("a":"\u00e9")", R"("a":[1,{"b":[null,-0]}])", R"("\u0061x":1)"}) {
        std::string text = "{" + kCommon + R"(,"reason":"user_hangup",)" + std::string(extra) + "}";
        if (extra.find("\\u0061x") == std::string_view::npos) {
            EXPECT_TRUE(taken("m.call.hangup", text)) << text;
        }
        expect_same("m.call.hangup", text);
    }
    std::string spaced =
        " {\n  \"call_id\" : \"c1\" ,\t\"party_id\":\"p1\", \"version\" : 0 ,"
        "\"candidates\" : [ { \"candidate\" : \"\" } ] }\r\n";
    EXPECT_TRUE(taken("m.call.candidates", spaced));
    expect_same("m.call.candidates", spaced);
}

// Known fields outside the plain shape go to the DOM, which then decides; either way the result
// is the DOM's.
TEST(CallEventText, LeavesEverythingOutsideThePlainShapeToTheDom) {
    for (std::string_view field : {
             R"("reason":"\u0041")",     // \u escapes
             R"("reason":"\x")",         // invalid escape
             "\"reason\":\"\xC3\xA9\"",  // non-ASCII
             "\"reason\":\"\x01\"",      // raw control character
             "\"reason\":\"\xC0\x80\"",  // overlong UTF-8
             R"("reason":1)",            // not a string
             R"("reason":null)",
             R"("reason":"a","reason":"b")",  // duplicate keys
             R"("x":1,"x":2)",
             R"("x":tru)",
             R"("x":1,)",
             R"("x" 1)",
             R"("x":"y)",
         }) {
        std::string text = "{" + kCommon + "," + std::string(field) + "}";
        EXPECT_FALSE(taken("m.call.hangup", text)) << text;
        expect_same("m.call.hangup", text);
    }
    for (std::string_view text : {
             R"({"call_id":"c1","party_id":"p1","version":1.0})",
             R"({"call_id":"c1","party_id":"p1","version":-0})",
             R"({"call_id":"c1","party_id":"p1","version":true})",
             R"({"call_id":"c1","party_id":"p1","version":9007199254740992})",
             R"({"call_id":"c1","party_id":"p1","version":01})", R"(["c1"])", "",
             "\xEF\xBB\xBF{}",  // byte-order mark
         }) {
        EXPECT_FALSE(taken("m.call.hangup", text)) << text;
        expect_same("m.call.hangup", text);
    }
    std::string deep = "{" + kCommon + R"(,"x":)";
    for (int i = 0; i < 40; ++i) deep += "[";
    for (int i = 0; i < 40; ++i) deep += "]";
    deep += "}";
    EXPECT_FALSE(taken("m.call.hangup", deep));
    expect_same("m.call.hangup", deep);
}

// A top-level string read without the rest of the event.
TEST(CallEventText, ReadsOneMemberWithoutTheRest) {
    std::string invite = invite_text();
    EXPECT_EQ(json_string_member(invite, "party_id"), "p1");
    EXPECT_EQ(json_string_member(invite, "invitee"), "@bob:example.org");
    EXPECT_EQ(json_string_member(invite, "lifetime"), std::nullopt);
    EXPECT_EQ(json_string_member(invite, "missing"), std::nullopt);
    EXPECT_EQ(json_string_member(R"({"a":"\u0041"})", "a"), "A");  // through the DOM
    EXPECT_EQ(json_string_member(R"({"a":"x","a":"y"})", "a"),
              json_string_member(json::serialize(parse_json(R"({"a":"x","a":"y"})")), "a"));
    EXPECT_EQ(json_string_member("not json", "a"), std::nullopt);
    EXPECT_EQ(json_string_member(R"(["a"])", "a"), std::nullopt);
}

// The spec's examples and a realistic invite go through the one pass, not the fallback, and give
// exactly what the DOM path gives.
TEST(CallEventText, CallEventsAgreeWithTheDomPath) {
    for_each_kernel([] {
        for (const char* type : kTypes) {
            std::string text = spec_content(type);
            EXPECT_TRUE(taken(type, text)) << type;
            expect_same(type, text);
        }
        std::string invite = invite_text();
        EXPECT_TRUE(taken("m.call.invite", invite));
        expect_same("m.call.invite", invite);
        auto parsed = parse_call_event_json("m.call.invite", invite);
        ASSERT_TRUE(parsed.ok());
        EXPECT_EQ(std::get<CallInvite>(parsed.value()).offer.sdp, sdp_like());
    });
}

TEST(CallEventText, ErrorsAgreeWithTheDomPath) {
    const std::string common = R"("call_id":"c1","party_id":"p1","version":"1")";
    const std::pair<const char*, std::string> cases[] = {
        {"m.call.invite", "{" + common + R"(,"lifetime":1})"},
        {"m.call.invite", "{" + common + R"(,"lifetime":-1,"offer":{"type":"offer","sdp":""}})"},
        {"m.call.invite", "{" + common + R"(,"lifetime":1.5,"offer":{"type":"offer","sdp":""}})"},
        {"m.call.invite", "{" + common + R"(,"lifetime":1,"offer":{"type":"answer","sdp":""}})"},
        {"m.call.invite",
         "{" + common + R"(,"lifetime":1,"offer":{"type":"offer","sdp":""},"invitee":"bob"})"},
        {"m.call.candidates", "{" + common + R"(,"candidates":[{"candidate":"x"}]})"},
        {"m.call.candidates",
         "{" + common + R"(,"candidates":[{"candidate":"x","sdpMLineIndex":-1}]})"},
        {"m.call.candidates", "{" + common + R"(,"candidates":{}})"},
        {"m.call.answer",
         "{" + common + R"(,"answer":{"type":"answer","sdp":""},"sdp_stream_metadata":{"s":{}}})"},
        {"m.call.answer",
         "{" + common +
             R"(,"answer":{"type":"answer","sdp":""},"sdp_stream_metadata":{"s":{"purpose":"m.usermedia","audio_muted":1}}})"},
        {"m.call.hangup", R"({"call_id":"c1","version":0})"},
        {"m.call.hangup", R"({"call_id":"c1","version":"0"})"},
        {"m.call.hangup", R"({"call_id":"c1","version":1})"},
        {"m.call.hangup", R"({"call_id":"c1","version":"2","party_id":"p"})"},
        {"m.call.hangup", R"({"call_id":"c1","version":null,"party_id":"p"})"},
        {"m.call.hangup", R"({"call_id":"c 1","version":"1","party_id":"p"})"},
        {"m.call.hangup", R"({"call_id":"c1","version":"1"})"},
        {"m.call.hangup", R"({"call_id":"c1","version":"1","party_id":"p","reason":7})"},
        {"m.call.hangup", R"(["not an object"])"},
        {"m.call.hangup", R"({"call_id":"c1",)"},
        {"m.call.hangup", R"({"call_id":"c1","version":"1","party_id":"p","n":9007199254740993})"},
        {"m.call.select_answer", "{" + common + "}"},
        {"m.call.sdp_stream_metadata_changed", "{" + common + "}"},
        {"m.call.unknown", "{" + common + "}"},
    };
    for (const auto& [type, text] : cases) expect_same(type, text);
}

// Seeded random damage to real events — bytes changed, dropped, doubled; escapes, multi-byte
// characters and numbers spliced in — never makes the two paths disagree.
TEST(CallEventText, RandomlyDamagedEventsAgreeWithTheDomPath) {
    std::vector<std::pair<std::string, std::string>> seeds;
    for (const char* type : kTypes) seeds.emplace_back(type, spec_content(type));
    seeds.emplace_back("m.call.invite", invite_text());
    const std::string splices[] = {"\\",
                                   "\\n",
                                   "\\u00e9",
                                   "\"",
                                   "é",
                                   "\xE2\x82",
                                   "\xFF",
                                   "-0",
                                   "1e2",
                                   "01",
                                   "9007199254740993",
                                   "{",
                                   "}",
                                   "[",
                                   "]",
                                   ",",
                                   ":",
                                   "null",
                                   "true",
                                   "\"a\":1,",
                                   " ",
                                   "\x01"};
    for_each_kernel([&] {
        std::mt19937 rng(20261122);
        int took = 0;
        for (int round = 0; round < 10000; ++round) {
            const auto& [type, seed] = seeds[rng() % seeds.size()];
            std::string text = seed;
            int edits = 1 + static_cast<int>(rng() % 3);
            for (int e = 0; e < edits && !text.empty(); ++e) {
                std::size_t at = rng() % text.size();
                switch (rng() % 4) {
                    case 0:
                        text[at] = static_cast<char>(rng() % 256);
                        break;
                    case 1:
                        text.erase(at, 1 + rng() % 3);
                        break;
                    case 2:
                        text.insert(at, text.substr(at, 1 + rng() % 4));
                        break;
                    default:
                        text.insert(at, splices[rng() % std::size(splices)]);
                        break;
                }
            }
            if (taken(type, text)) ++took;
            ASSERT_NO_FATAL_FAILURE(expect_same(type, text)) << "round " << round;
        }
        // Both paths were exercised: some damage leaves an event the one pass takes.
        EXPECT_GT(took, 500);
    });
}
