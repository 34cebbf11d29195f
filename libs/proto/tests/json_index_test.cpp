#include "mxvoip/proto/json_index.hpp"

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

// The index path and the DOM path agree on `text`: same event, or same error.
void expect_same(std::string_view type, std::string_view text) {
    auto fast = parse_call_event(type, JsonIndex(text));
    auto dom = through_dom(type, text);
    ASSERT_EQ(fast.ok(), dom.ok())
        << text << "\nindex: " << (fast.ok() ? "ok" : fast.error().path + " " + fast.error().rule)
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

TEST(JsonIndex, EveryKernelThisCpuHasIsChecked) {
    int ran = for_each_kernel([] {});
#if defined(__x86_64__)
    EXPECT_GE(ran, 2);  // plain C++ and SSE2 at least
#else
    EXPECT_GE(ran, 1);
#endif
    std::cout << "string kernels in use: " << mxvoip::proto::detail::string_kernels() << ", " << ran
              << " checked\n";
}

// Every kind of byte the scanners treat apart — an escape, a quote, a control character, a
// multi-byte character, invalid UTF-8, a doubled backslash — at every offset around the 16-
// and 64-byte block edges, in strings long enough to take the block paths.
TEST(JsonIndex, BlockEdgesReadAsTheDomReadsThem) {
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
                    std::string text = "{\"k\":\"" + inside + "\",\"z\":1}";
                    JsonIndex ix(text);
                    json::value dom;
                    bool dom_ok = true;
                    try {
                        dom = parse_json(text);
                    } catch (const MatrixError&) {
                        dom_ok = false;
                    }
                    if (!dom_ok) {
                        ASSERT_FALSE(ix.ok()) << "len " << len << " at " << at << ": " << text;
                        continue;
                    }
                    if (!ix.ok()) continue;  // left to the DOM (\\u): nothing to compare
                    auto k = ix.root().find("k");
                    ASSERT_TRUE(k && k->is_string()) << text;
                    ASSERT_EQ(k->string(), dom.at("k").as_string())
                        << "len " << len << " at " << at;
                    ASSERT_EQ(ix.root().find("z")->integer(), 1);
                }
            }
        }
    });
}

TEST(JsonIndex, TakesWhatClientsSendAndReadsItAsTheDomDoes) {
    std::string text = invite_text();
    JsonIndex ix(text);
    ASSERT_TRUE(ix.ok());
    auto root = ix.root();
    ASSERT_TRUE(root.is_object());
    EXPECT_EQ(root.size(), 8u);
    auto offer = root.find("offer");
    ASSERT_TRUE(offer && offer->is_object());
    auto sdp = offer->find("sdp");
    ASSERT_TRUE(sdp && sdp->is_string());
    EXPECT_TRUE(sdp->has_escapes());
    EXPECT_EQ(sdp->string(), sdp_like());
    EXPECT_EQ(root.find("lifetime")->integer(), 60000);
    EXPECT_FALSE(root.find("missing"));
    EXPECT_EQ(root.find("x-extra")->to_value(), json::parse(text).at("x-extra"));
    std::vector<std::string> keys;
    root.for_each_member([&](std::string_view k, const JsonIndex::Node&) { keys.emplace_back(k); });
    EXPECT_EQ(keys.front(), "call_id");
    EXPECT_EQ(keys.size(), 8u);
}

TEST(JsonIndex, LeavesEverythingOutsideThePlainShapeToTheDom) {
    for (std::string_view text : {
             R"({"a":"\u0041"})",             // \u escapes
             R"({"a":1.5})",                  // fractions
             R"({"a":1e3})",                  // exponents
             R"({"a":-0})",                   // negative zero is a double in the DOM
             R"({"a":9007199254740992})",     // beyond 2^53-1
             R"({"a":1,"a":2})",              // duplicate keys
             R"({"\u0061":1})",               // escaped keys
             R"({"a":01})",                   // leading zero
             "{\"a\":\"\x01\"}",              // raw control character
             "{\"a\":\"\xC0\x80\"}",          // overlong UTF-8
             "{\"a\":\"\xED\xA0\x80\"}",      // a UTF-16 surrogate in UTF-8
             "{\"a\":\"\xF4\x90\x80\x80\"}",  // above U+10FFFF
             "{\"a\":\"\xE2\x9C\"}",          // truncated sequence
             R"({"a":tru})",
             R"({"a":1,})",
             R"({"a" 1})",
             R"([1,2)",
             R"({"a":"x)",
             "",
             "\xEF\xBB\xBF{}",  // byte-order mark
             R"({"a":"\x"})",
         })
        EXPECT_FALSE(JsonIndex(text).ok()) << text;
    std::string deep;
    for (int i = 0; i < 40; ++i) deep += "[";
    for (int i = 0; i < 40; ++i) deep += "]";
    EXPECT_FALSE(JsonIndex(deep).ok());
    for (std::string_view text :
         {R"({})", R"([])", R"( { "a" : [ 1 , -2 , true , null ] } )",
          R"({"a":"\"\\\/\b\f\n\r\t"})", "{\"a\":\"\xC3\xA9\xE2\x9C\x93\xF0\x9D\x84\x9E\"}",
          R"({"a":-9007199254740991})", R"("s")", R"(0)"})
        EXPECT_TRUE(JsonIndex(text).ok()) << text;
}

// The spec's examples and a realistic invite go through the index, not the fallback, and give
// exactly what the DOM path gives.
TEST(JsonIndex, CallEventsAgreeWithTheDomPath) {
    for_each_kernel([] {
        for (const char* type : kTypes) {
            std::string text = spec_content(type);
            EXPECT_TRUE(JsonIndex(text).ok()) << type;
            expect_same(type, text);
        }
        std::string invite = invite_text();
        EXPECT_TRUE(JsonIndex(invite).ok());
        expect_same("m.call.invite", invite);
        auto parsed = parse_call_event("m.call.invite", JsonIndex(invite));
        ASSERT_TRUE(parsed.ok());
        EXPECT_EQ(std::get<CallInvite>(parsed.value()).offer.sdp, sdp_like());
    });
}

TEST(JsonIndex, ErrorsAgreeWithTheDomPath) {
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
TEST(JsonIndex, RandomlyDamagedEventsAgreeWithTheDomPath) {
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
        int taken = 0;
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
            if (JsonIndex(text).ok()) ++taken;
            ASSERT_NO_FATAL_FAILURE(expect_same(type, text)) << "round " << round;
        }
        // Both paths were exercised: some damage leaves valid JSON the index takes.
        EXPECT_GT(taken, 500);
    });
}
