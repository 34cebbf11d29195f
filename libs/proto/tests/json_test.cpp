#include "mxvoip/proto/json.hpp"

#include "mxvoip/proto/errors.hpp"

#include <gtest/gtest.h>

using namespace mxvoip::proto;

namespace {
std::string errcode_of(std::string_view text) {
    try {
        parse_json_object(text);
    } catch (const MatrixError& e) {
        return e.errcode;
    }
    return "ok";
}
}  // namespace

TEST(Json, MalformedIsNotJson) {
    EXPECT_EQ(errcode_of("{"), "M_NOT_JSON");
    EXPECT_EQ(errcode_of(""), "M_NOT_JSON");
    EXPECT_EQ(errcode_of("{\"a\": \"\xff\"}"), "M_NOT_JSON");
}

TEST(Json, NonObjectIsBadJson) {
    EXPECT_EQ(errcode_of("[1]"), "M_BAD_JSON");
    EXPECT_EQ(errcode_of("\"x\""), "M_BAD_JSON");
}

TEST(Json, IntegerRangeIsCanonicalJson) {
    EXPECT_EQ(errcode_of(R"({"a": 9007199254740991, "b": -9007199254740991})"), "ok");
    EXPECT_EQ(errcode_of(R"({"a": 9007199254740992})"), "M_BAD_JSON");
    EXPECT_EQ(errcode_of(R"({"a": [{"b": -9007199254740992}]})"), "M_BAD_JSON");
    EXPECT_EQ(errcode_of(R"({"a": 18446744073709551615})"), "M_BAD_JSON");
}

TEST(Json, FieldAccessorsNameTheKey) {
    auto obj = parse_json_object(R"({"s": 1, "b": "x"})");
    try {
        opt_string(obj, "s");
        FAIL();
    } catch (const MatrixError& e) {
        EXPECT_EQ(e.errcode, "M_BAD_JSON");
        EXPECT_NE(std::string(e.what()).find("'s'"), std::string::npos);
    }
    try {
        req_string(obj, "missing");
        FAIL();
    } catch (const MatrixError& e) {
        EXPECT_EQ(e.errcode, "M_MISSING_PARAM");
    }
    EXPECT_THROW(opt_bool(obj, "b"), MatrixError);
    EXPECT_FALSE(opt_int(obj, "nope").has_value());
}

TEST(Json, Utf8Validation) {
    for (std::string_view ok :
         {"", "plain ascii", "caf\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x93\x9e", "\xed\x9f\xbf",
          "\xee\x80\x80", "\xf4\x8f\xbf\xbf"})
        EXPECT_TRUE(is_valid_utf8(ok)) << ok;
    for (std::string_view bad : {
             "\xff",              // never in UTF-8
             "\x80",              // a continuation byte alone
             "\xc3",              // truncated
             "\xc0\xaf",          // overlong '/'
             "\xe0\x80\xaf",      // overlong, three bytes
             "\xed\xa0\x80",      // a surrogate (U+D800)
             "\xf4\x90\x80\x80",  // past U+10FFFF
             "\xf5\x80\x80\x80",  // past U+10FFFF
             "\xe2\x82",          // truncated
             "ok\xe2\x28\xa1",    // a bad continuation byte
         })
        EXPECT_FALSE(is_valid_utf8(bad)) << testing::PrintToString(std::string(bad));
}

TEST(Json, NumbersPastTheSafeRangeAreBadJsonWhateverTheParserMadeOfThem) {
    EXPECT_EQ(errcode_of(R"({"n":-9007199254740991})"), "ok");
    EXPECT_EQ(errcode_of(R"({"n":9007199254740992})"), "M_BAD_JSON");
    // Too large for 64 bits: Boost.JSON reads these as doubles.
    EXPECT_EQ(errcode_of(R"({"n":-90201999252374704959254740991})"), "M_BAD_JSON");
    EXPECT_EQ(errcode_of(R"({"n":184467440737095516160})"), "M_BAD_JSON");
    EXPECT_EQ(errcode_of(R"({"n":1e300})"), "M_BAD_JSON");
    EXPECT_EQ(errcode_of(R"({"n":1.5})"), "ok");
    EXPECT_EQ(errcode_of(R"({"n":-1e15})"), "ok");
}

// The examples of the spec's appendix on canonical JSON.
TEST(Json, CanonicalJsonMatchesTheSpecExamples) {
    auto canonical = [](const char* text) { return canonical_json(json::parse(text)); };
    EXPECT_EQ(canonical("{}"), "{}");
    EXPECT_EQ(canonical(R"({"one": 1, "two": "Two"})"), R"({"one":1,"two":"Two"})");
    EXPECT_EQ(canonical(R"({"b": "2", "a": "1"})"), R"({"a":"1","b":"2"})");
    EXPECT_EQ(canonical(R"({"auth": {"success": true, "mxid": "@john.doe:example.com",
        "profile": {"display_name": "John Doe", "three_pids": [{"medium": "email",
        "address": "john.doe@example.org"}, {"medium": "msisdn", "address": "123456789"}]}}})"),
              R"({"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe",)"
              R"("three_pids":[{"address":"john.doe@example.org","medium":"email"},)"
              R"({"address":"123456789","medium":"msisdn"}]},"success":true}})");
    EXPECT_EQ(canonical(R"({"a": "日本語"})"), "{\"a\":\"日本語\"}");
    EXPECT_EQ(canonical(R"({"本": 2, "日": 1})"), "{\"日\":1,\"本\":2}");
    EXPECT_EQ(canonical(R"({"a": "\u65E5"})"), "{\"a\":\"日\"}");
    EXPECT_EQ(canonical(R"({"a": null})"), R"({"a":null})");
}

TEST(Json, TextFieldsRefuseNul) {
    auto obj = boost::json::parse(R"({"a":"x\u0000y","b":"fine"})").as_object();
    EXPECT_THROW(mxvoip::proto::opt_string(obj, "a"), mxvoip::proto::MatrixError);
    EXPECT_EQ(mxvoip::proto::opt_string(obj, "b"), "fine");
}
