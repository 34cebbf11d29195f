#include "redaction.hpp"

#include <gtest/gtest.h>

using namespace mxvoip::server;
namespace json = boost::json;

namespace {

json::object parse(std::string_view s) {
    return json::parse(s).as_object();
}

json::object redact(std::string_view type, std::string_view content, std::string_view version) {
    return redacted_content(type, parse(content), version);
}

}  // namespace

TEST(Redaction, OrdinaryEventsLoseAllContent) {
    for (const char* v : {"1", "6", "10", "11"}) {
        EXPECT_EQ(redact("m.room.message", R"({"msgtype":"m.text","body":"secret"})", v),
                  json::object{});
        EXPECT_EQ(redact("m.call.invite", R"({"call_id":"c","offer":{"sdp":"v=0"}})", v),
                  json::object{});
        EXPECT_EQ(redact("m.room.name", R"({"name":"x"})", v), json::object{});
    }
}

TEST(Redaction, MemberKeepsMembershipAndFromV8TheAuthorisingServer) {
    const char* content = R"({"membership":"join","displayname":"A","avatar_url":"mxc://a/b",)"
                          R"("join_authorised_via_users_server":"@x:y","is_direct":true,)"
                          R"("third_party_invite":{"display_name":"d","signed":{"token":"t"}}})";
    EXPECT_EQ(redact("m.room.member", content, "7"), parse(R"({"membership":"join"})"));
    EXPECT_EQ(redact("m.room.member", content, "8"),
              parse(R"({"membership":"join","join_authorised_via_users_server":"@x:y"})"));
    EXPECT_EQ(redact("m.room.member", content, "10"), redact("m.room.member", content, "8"));
    EXPECT_EQ(redact("m.room.member", content, "11"),
              parse(R"({"membership":"join","join_authorised_via_users_server":"@x:y",)"
                    R"("third_party_invite":{"signed":{"token":"t"}}})"));
}

TEST(Redaction, CreateKeepsCreatorUntilV11KeepsEverything) {
    const char* content = R"({"creator":"@a:b","room_version":"10","m.federate":false})";
    EXPECT_EQ(redact("m.room.create", content, "1"), parse(R"({"creator":"@a:b"})"));
    EXPECT_EQ(redact("m.room.create", content, "10"), parse(R"({"creator":"@a:b"})"));
    EXPECT_EQ(redact("m.room.create", content, "11"), parse(content));
}

TEST(Redaction, JoinRulesKeepAllowFromV8) {
    const char* content = R"({"join_rule":"restricted","allow":[{"type":"m.room_membership"}]})";
    EXPECT_EQ(redact("m.room.join_rules", content, "7"), parse(R"({"join_rule":"restricted"})"));
    EXPECT_EQ(redact("m.room.join_rules", content, "8"), parse(content));
}

TEST(Redaction, PowerLevelsKeepTheLevelsAndFromV11Invite) {
    const char* content =
        R"({"ban":50,"events":{"m.room.name":50},"events_default":0,"invite":0,"kick":50,)"
        R"("redact":50,"state_default":50,"users":{"@a:b":100},"users_default":0,)"
        R"("notifications":{"room":50}})";
    EXPECT_EQ(redact("m.room.power_levels", content, "10"),
              parse(R"({"ban":50,"events":{"m.room.name":50},"events_default":0,"kick":50,)"
                    R"("redact":50,"state_default":50,"users":{"@a:b":100},"users_default":0})"));
    EXPECT_EQ(redact("m.room.power_levels", content, "11"),
              parse(R"({"ban":50,"events":{"m.room.name":50},"events_default":0,"invite":0,)"
                    R"("kick":50,"redact":50,"state_default":50,"users":{"@a:b":100},)"
                    R"("users_default":0})"));
}

TEST(Redaction, AliasesKeptOnlyBeforeV6) {
    const char* content = R"({"aliases":["#a:b"],"other":1})";
    EXPECT_EQ(redact("m.room.aliases", content, "5"), parse(R"({"aliases":["#a:b"]})"));
    EXPECT_EQ(redact("m.room.aliases", content, "6"), json::object{});
}

TEST(Redaction, HistoryVisibilityKeepsItsValue) {
    EXPECT_EQ(redact("m.room.history_visibility", R"({"history_visibility":"joined","x":1})", "3"),
              parse(R"({"history_visibility":"joined"})"));
}

TEST(Redaction, RedactionKeepsRedactsFromV11) {
    const char* content = R"({"redacts":"$e","reason":"spam"})";
    EXPECT_EQ(redact("m.room.redaction", content, "10"), json::object{});
    EXPECT_EQ(redact("m.room.redaction", content, "11"), parse(R"({"redacts":"$e"})"));
}
