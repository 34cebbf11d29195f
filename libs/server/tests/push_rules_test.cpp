#include "push_rules.hpp"

#include <gtest/gtest.h>

#include "mxvoip/proto/errors.hpp"

using namespace mxvoip::server;
namespace json = boost::json;

namespace {

const std::string kMe = "@alice:example.org";

json::object message(std::string body, json::object extra = {}) {
    json::object content{{"msgtype", "m.text"}, {"body", std::move(body)}};
    for (auto& kv : extra) content[kv.key()] = kv.value();
    return json::object{{"type", "m.room.message"},
                        {"sender", "@bob:example.org"},
                        {"room_id", "!r:example.org"},
                        {"content", std::move(content)}};
}

push::Context context(std::size_t members = 2, std::string display_name = "Alice Liddell") {
    push::Context ctx;
    ctx.user_id = kMe;
    ctx.display_name = std::move(display_name);
    ctx.member_count = members;
    ctx.sender_may_notify = [](std::string_view key) { return key == "room"; };
    return ctx;
}

bool sound_is(const push::Outcome& o, const char* sound) {
    return o.sound && *o.sound == sound;
}

// The predefined rules both as one user's own copy and as the shared template evaluate alike.
class PredefinedRules : public ::testing::TestWithParam<bool> {
  protected:
    json::object rules() const {
        return GetParam() ? push::default_rules(kMe) : push::default_rules_template();
    }
    push::Outcome eval(const json::object& event, const push::Context& ctx = context()) const {
        return push::evaluate(rules(), event, ctx);
    }
};

TEST_P(PredefinedRules, OneToOneMessagesRingWithASoundLargerRoomsOnlyNotify) {
    auto dm = eval(message("hello"));
    EXPECT_TRUE(dm.notify);
    EXPECT_EQ(dm.rule_id, ".m.rule.room_one_to_one");
    EXPECT_TRUE(sound_is(dm, "default"));
    EXPECT_FALSE(dm.highlight);
    auto group = eval(message("hello"), context(3));
    EXPECT_TRUE(group.notify);
    EXPECT_EQ(group.rule_id, ".m.rule.message");
    EXPECT_FALSE(group.sound);
}

TEST_P(PredefinedRules, ACallInviteRings) {
    json::object invite{{"type", "m.call.invite"},
                        {"sender", "@bob:example.org"},
                        {"room_id", "!r:example.org"},
                        {"content", json::object{{"call_id", "c1"}, {"version", "1"}}}};
    auto o = eval(invite, context(5));
    EXPECT_TRUE(o.notify);
    EXPECT_EQ(o.rule_id, ".m.rule.call");
    EXPECT_TRUE(sound_is(o, "ring"));
}

TEST_P(PredefinedRules, NoticesAndMemberEventsAreQuietInvitesForMeAreNot) {
    EXPECT_FALSE(eval(message("bot says", {{"msgtype", "m.notice"}})).notify);
    json::object join{{"type", "m.room.member"},
                      {"sender", "@bob:example.org"},
                      {"state_key", "@bob:example.org"},
                      {"room_id", "!r:example.org"},
                      {"content", json::object{{"membership", "join"}}}};
    EXPECT_FALSE(eval(join).notify);
    json::object invite = join;
    invite["state_key"] = kMe;
    invite["content"] = json::object{{"membership", "invite"}};
    auto o = eval(invite);
    EXPECT_TRUE(o.notify);
    EXPECT_EQ(o.rule_id, ".m.rule.invite_for_me");
}

TEST_P(PredefinedRules, MentionsHighlight) {
    json::object mentions{{"m.mentions", json::object{{"user_ids", json::array{kMe}}}}};
    auto by_id = eval(message("hey", mentions), context(3));
    EXPECT_TRUE(by_id.highlight);
    EXPECT_EQ(by_id.rule_id, ".m.rule.is_user_mention");
    // Without m.mentions the legacy rules look at the body: the display name and the localpart,
    // as whole words, in any case.
    EXPECT_TRUE(eval(message("ask alice liddell", {}), context(3)).highlight);
    EXPECT_TRUE(eval(message("ALICE, are you there?"), context(3)).highlight);
    EXPECT_FALSE(eval(message("malice aforethought"), context(3)).highlight);
    // With m.mentions present (and not naming me), the body is not searched.
    json::object other{{"m.mentions", json::object{{"user_ids", json::array{"@carol:x"}}}}};
    EXPECT_FALSE(eval(message("alice", other), context(3)).highlight);
    // @room, from a sender whose power level allows it.
    EXPECT_TRUE(eval(message("@room lunch"), context(3)).highlight);
    auto weak = context(3);
    weak.sender_may_notify = [](std::string_view) { return false; };
    EXPECT_FALSE(eval(message("@room lunch"), weak).highlight);
}

TEST_P(PredefinedRules, DisabledRulesAreSkippedAndTheMasterRuleSilencesAll) {
    auto r = rules();
    auto& override_rules = r["global"].as_object()["override"].as_array();
    override_rules[0].as_object()["enabled"] = true;  // .m.rule.master
    EXPECT_FALSE(push::evaluate(r, message("hello"), context()).notify);
    r = rules();
    for (auto& rule : r["global"].as_object()["underride"].as_array())
        if (rule.as_object()["rule_id"] == ".m.rule.room_one_to_one")
            rule.as_object()["enabled"] = false;
    auto o = push::evaluate(r, message("hello"), context());
    EXPECT_EQ(o.rule_id, ".m.rule.message");
}

INSTANTIATE_TEST_SUITE_P(OwnCopyAndTemplate, PredefinedRules, ::testing::Bool());

TEST(PushGlob, WholeValuesAndWordsIgnoringCase) {
    EXPECT_TRUE(push::glob_matches("m.call.*", "m.call.invite", false));
    EXPECT_FALSE(push::glob_matches("m.call", "m.call.invite", false));
    EXPECT_TRUE(push::glob_matches("M.CALL.INV?TE", "m.call.invite", false));
    EXPECT_TRUE(push::glob_matches("cake*lie", "The cake is a lie!", true));
    EXPECT_FALSE(push::glob_matches("cake", "cupcakes", true));
    EXPECT_TRUE(push::glob_matches("cake", "cup cake", true));
    EXPECT_FALSE(push::glob_matches("cake", "cup cake", false));
    EXPECT_TRUE(push::glob_matches("", "", false));
}

TEST(PushConditions, MemberCountOperatorsAndPropertyContains) {
    json::object rules{
        {"global",
         json::object{
             {"override", json::array{json::object{
                              {"rule_id", "big"},
                              {"enabled", true},
                              {"conditions", json::array{json::object{{"kind", "room_member_count"},
                                                                      {"is", ">=10"}}}},
                              {"actions", json::array{"notify"}}}}}}}};
    EXPECT_TRUE(push::evaluate(rules, message("x"), context(10)).notify);
    EXPECT_FALSE(push::evaluate(rules, message("x"), context(9)).notify);
    // A condition kind the server does not know never matches.
    auto& cond = rules["global"].as_object()["override"].as_array()[0].as_object()["conditions"];
    cond.as_array()[0] = json::object{{"kind", "org.example.unknown"}};
    EXPECT_FALSE(push::evaluate(rules, message("x"), context(10)).notify);
    // Dotted keys with escaped dots reach into content.
    cond.as_array()[0] = json::object{{"kind", "event_property_is"},
                                      {"key", "content.m\\.relates_to.rel_type"},
                                      {"value", "m.thread"}};
    json::object threaded = message(
        "x", {{"m.relates_to", json::object{{"rel_type", "m.thread"}, {"event_id", "$root"}}}});
    EXPECT_TRUE(push::evaluate(rules, threaded, context()).notify);
    EXPECT_FALSE(push::evaluate(rules, message("x"), context()).notify);
}

TEST(PushUserRules, WhatTheSpecRefuses) {
    using mxvoip::proto::MatrixError;
    json::object ok{{"actions", json::array{"notify"}}, {"pattern", "cake*"}};
    EXPECT_EQ(push::make_user_rule("content", "cake", ok).at("pattern"), "cake*");
    EXPECT_THROW(push::make_user_rule("content", ".m.rule.mine", ok), MatrixError);
    EXPECT_THROW(push::make_user_rule("content", "a/b", ok), MatrixError);
    EXPECT_THROW(push::make_user_rule("content", "x", json::object{{"actions", json::array{}}}),
                 MatrixError);  // no pattern
    EXPECT_THROW(push::make_user_rule("override", "x", json::object{}), MatrixError);
    EXPECT_THROW(
        push::make_user_rule("override", "x", json::object{{"actions", json::array{"explode"}}}),
        MatrixError);
    EXPECT_THROW(push::make_user_rule("room", "not-a-room", ok), MatrixError);
    EXPECT_EQ(push::make_user_rule("room", "!r:x", ok).at("rule_id"), "!r:x");
}

}  // namespace
