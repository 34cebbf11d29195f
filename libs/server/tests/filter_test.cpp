#include "filter.hpp"

#include <gtest/gtest.h>

#include "mxvoip/proto/errors.hpp"

using namespace mxvoip::server;
namespace json = boost::json;

namespace {

EventFilter parse(std::string_view s) {
    return EventFilter::parse(json::parse(s).as_object());
}

}  // namespace

TEST(Filter, GlobMatchesAnyRunOfCharacters) {
    EXPECT_TRUE(glob_match("m.call.*", "m.call.invite"));
    EXPECT_TRUE(glob_match("m.call.*", "m.call."));
    EXPECT_FALSE(glob_match("m.call.*", "m.room.message"));
    EXPECT_TRUE(glob_match("*", ""));
    EXPECT_TRUE(glob_match("m.*.member", "m.room.member"));
    EXPECT_FALSE(glob_match("m.*.member", "m.room.members"));
    EXPECT_TRUE(glob_match("exact", "exact"));
    EXPECT_FALSE(glob_match("exact", "exactly"));
    // Many stars against a long mismatch stays quick (no exponential backtracking).
    EXPECT_FALSE(glob_match(std::string(50, '*') + "b", std::string(10000, 'a')));
}

TEST(Filter, AbsentListsAllowEverything) {
    auto f = parse("{}");
    EXPECT_TRUE(f.allows("m.room.message", "@a:x", "!r:x", R"({"body":"hi"})"));
    EXPECT_FALSE(f.limit.has_value());
}

TEST(Filter, NotListsWinOverAllowingOnes) {
    auto f = parse(R"({"types":["m.*"],"not_types":["m.room.member"],"senders":["@a:x","@b:x"],)"
                   R"("not_senders":["@b:x"],"not_rooms":["!bad:x"]})");
    EXPECT_TRUE(f.allows("m.room.message", "@a:x", "!r:x", "{}"));
    EXPECT_FALSE(f.allows("m.room.member", "@a:x", "!r:x", "{}"));
    EXPECT_FALSE(f.allows("org.example", "@a:x", "!r:x", "{}"));
    EXPECT_FALSE(f.allows("m.room.message", "@b:x", "!r:x", "{}"));
    EXPECT_FALSE(f.allows("m.room.message", "@c:x", "!r:x", "{}"));
    EXPECT_FALSE(f.allows("m.room.message", "@a:x", "!bad:x", "{}"));
}

TEST(Filter, EmptyTypesAllowNothing) {
    auto f = parse(R"({"types":[]})");
    EXPECT_FALSE(f.allows_type("m.room.message"));
}

TEST(Filter, ContainsUrl) {
    auto with = parse(R"({"contains_url":true})");
    auto without = parse(R"({"contains_url":false})");
    EXPECT_TRUE(with.allows("m.room.message", "@a:x", "!r:x", R"({"url":"mxc://x/y"})"));
    EXPECT_FALSE(with.allows("m.room.message", "@a:x", "!r:x", R"({"body":"x"})"));
    EXPECT_TRUE(without.allows("m.room.message", "@a:x", "!r:x", R"({"body":"x"})"));
    EXPECT_FALSE(without.allows("m.room.message", "@a:x", "!r:x", R"({"url":"mxc://x/y"})"));
}

TEST(Filter, LimitsAndFlags) {
    auto f = parse(R"({"limit":0,"lazy_load_members":true,"include_redundant_members":true})");
    EXPECT_EQ(f.limit, 0);
    EXPECT_TRUE(f.lazy_load_members);
    EXPECT_TRUE(f.include_redundant_members);
    EXPECT_EQ(parse(R"({"limit":100000})").limit, 1000);
}

TEST(Filter, WrongTypesAreBadJson) {
    for (const char* bad :
         {R"({"types":"m.room.message"})", R"({"types":[1]})", R"({"limit":"10"})",
          R"({"limit":-1})", R"({"limit":1.5})", R"({"lazy_load_members":"yes"})"}) {
        try {
            parse(bad);
            ADD_FAILURE() << bad << " was accepted";
        } catch (const mxvoip::proto::MatrixError& e) {
            EXPECT_EQ(e.status, 400u) << bad;
            EXPECT_EQ(std::string(e.errcode), "M_BAD_JSON") << bad;
        }
    }
}

TEST(Filter, SyncFilterSections) {
    auto f = SyncFilter::parse(
        json::parse(R"({"event_format":"federation","presence":{"types":[]},)"
                    R"("room":{"not_rooms":["!x:y"],"include_leave":true,"timeline":{"limit":5},)"
                    R"("state":{"lazy_load_members":true}}})")
            .as_object());
    EXPECT_FALSE(f.client_format);
    EXPECT_FALSE(f.presence.allows_type("m.presence"));
    EXPECT_FALSE(f.room_rooms.allows_room("!x:y"));
    EXPECT_TRUE(f.room_rooms.allows_room("!z:y"));
    EXPECT_TRUE(f.include_leave);
    EXPECT_EQ(f.timeline.limit, 5);
    EXPECT_TRUE(f.state.lazy_load_members);
    EXPECT_THROW(SyncFilter::parse(json::parse(R"({"event_format":"xml"})").as_object()),
                 mxvoip::proto::MatrixError);
    EXPECT_THROW(SyncFilter::parse(json::parse(R"({"room":[]})").as_object()),
                 mxvoip::proto::MatrixError);
}
