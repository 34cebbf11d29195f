#include "auth_rules.hpp"

#include <gtest/gtest.h>

#include <optional>
#include <string>

using namespace mxvoip::server;
namespace json = boost::json;

namespace {

struct Case {
    const char* name;
    const char* current;  // null: the room has no power levels yet
    const char* next;
    const char* sender;
    std::int64_t sender_level;
    bool allowed;
    bool integers_only = true;
};

// The direct chat mxvoip creates: both members at 100.
constexpr const char* kDm =
    R"({"users":{"@a:x":100,"@b:x":100},"users_default":0,"events":{"m.room.name":50},
        "events_default":0,"state_default":50,"ban":50,"kick":50,"redact":50,"invite":0})";
// A room where @a is 100, @m a moderator at 50 and @u a user at 10.
constexpr const char* kRoom =
    R"({"users":{"@a:x":100,"@m:x":50,"@u:x":10},"users_default":0,
        "events":{"m.room.name":50,"m.room.power_levels":50},"notifications":{"room":50},
        "events_default":0,"state_default":50,"ban":50,"kick":50,"redact":50,"invite":0})";

std::string with(const char* base, const char* key, const char* value) {
    json::object o = json::parse(base).as_object();
    if (value)
        o[key] = json::parse(value);
    else
        o.erase(key);
    return json::serialize(o);
}

class PowerLevelsRule : public ::testing::TestWithParam<Case> {};

TEST_P(PowerLevelsRule, Decides) {
    const Case& c = GetParam();
    std::optional<json::object> current;
    if (c.current) current = json::parse(c.current).as_object();
    json::object next = json::parse(c.next).as_object();
    auto refusal = power_levels_change_refusal(current ? &*current : nullptr, next, c.sender,
                                               c.sender_level, c.integers_only);
    EXPECT_EQ(!refusal, c.allowed) << (refusal ? *refusal : "allowed");
}

// Strings kept alive for the cases below.
const std::string kDmWithoutB = R"({"users":{"@a:x":100},"users_default":0})";
const std::string kDmBAt0 = R"({"users":{"@a:x":100,"@b:x":0}})";
const std::string kDmASelfDown = R"({"users":{"@a:x":50,"@b:x":100}})";
const std::string kRoomMDemotesU = with(kRoom, "users", R"({"@a:x":100,"@m:x":50,"@u:x":0})");
const std::string kRoomMRemovesU = with(kRoom, "users", R"({"@a:x":100,"@m:x":50})");
const std::string kRoomMAddsN =
    with(kRoom, "users", R"({"@a:x":100,"@m:x":50,"@u:x":10,"@n:x":50})");
const std::string kRoomMAddsN51 =
    with(kRoom, "users", R"({"@a:x":100,"@m:x":50,"@u:x":10,"@n:x":51})");
const std::string kRoomMDemotesA = with(kRoom, "users", R"({"@a:x":0,"@m:x":50,"@u:x":10})");
const std::string kRoomMSelf60 = with(kRoom, "users", R"({"@a:x":100,"@m:x":60,"@u:x":10})");
const std::string kRoomMSelf20 = with(kRoom, "users", R"({"@a:x":100,"@m:x":20,"@u:x":10})");
const std::string kBan40 = with(kRoom, "ban", "40");
const std::string kBan60 = with(kRoom, "ban", "60");
const std::string kNoBan = with(kRoom, "ban", nullptr);
const std::string kKick100 = with(kRoom, "kick", "100");
const std::string kUsersDefault50 = with(kRoom, "users_default", "50");
const std::string kUsersDefault51 = with(kRoom, "users_default", "51");
const std::string kEventsDefault60 = with(kRoom, "events_default", "60");
const std::string kStateDefault40 = with(kRoom, "state_default", "40");
const std::string kRedact60 = with(kRoom, "redact", "60");
const std::string kInvite50 = with(kRoom, "invite", "50");
const std::string kInvite51 = with(kRoom, "invite", "51");
const std::string kEventsNameDown =
    with(kRoom, "events", R"({"m.room.name":0,"m.room.power_levels":50})");
const std::string kEventsAddTopic100 =
    with(kRoom, "events", R"({"m.room.name":50,"m.room.power_levels":50,"m.room.topic":100})");
const std::string kEventsAddTopic50 =
    with(kRoom, "events", R"({"m.room.name":50,"m.room.power_levels":50,"m.room.topic":50})");
const std::string kEventsRemoveName = with(kRoom, "events", R"({"m.room.power_levels":50})");
const std::string kRoomWithHighEvent =
    with(kRoom, "events", R"({"m.room.name":50,"m.room.power_levels":50,"m.room.tombstone":100})");
const std::string kRoomWithoutHighEvent =
    with(kRoom, "events", R"({"m.room.name":50,"m.room.power_levels":50})");
const std::string kNotificationsRoom100 = with(kRoom, "notifications", R"({"room":100})");
const std::string kNotificationsRoom0 = with(kRoom, "notifications", R"({"room":0})");
const std::string kBadUserKey = with(kRoom, "users", R"({"@a:x":100,"not-a-user":1})");
const std::string kStringLevel = with(kRoom, "kick", R"("50")");
const std::string kFloatLevel = with(kRoom, "kick", "50.5");
const std::string kUsersNotObject = with(kRoom, "users", "[1]");

INSTANTIATE_TEST_SUITE_P(
    Spec, PowerLevelsRule,
    ::testing::Values(
        Case{"first_power_levels_of_a_room", nullptr, kDm, "@a:x", 100, true},
        Case{"unchanged", kDm, kDm, "@b:x", 100, true},
        // Rule f: the direct-chat demotion. Neither member can drop or lower the other.
        Case{"dm_member_removes_the_other", kDm, kDmWithoutB.c_str(), "@a:x", 100, false},
        Case{"dm_member_lowers_the_other", kDm, kDmBAt0.c_str(), "@a:x", 100, false},
        Case{"dm_member_lowers_itself", kDm, kDmASelfDown.c_str(), "@a:x", 100, true},
        Case{"moderator_lowers_a_user_below_it", kRoom, kRoomMDemotesU.c_str(), "@m:x", 50, true},
        Case{"moderator_removes_a_user_below_it", kRoom, kRoomMRemovesU.c_str(), "@m:x", 50, true},
        Case{"moderator_adds_a_peer", kRoom, kRoomMAddsN.c_str(), "@m:x", 50, true},
        Case{"moderator_adds_someone_above_it", kRoom, kRoomMAddsN51.c_str(), "@m:x", 50, false},
        Case{"moderator_lowers_the_admin", kRoom, kRoomMDemotesA.c_str(), "@m:x", 50, false},
        Case{"moderator_raises_itself", kRoom, kRoomMSelf60.c_str(), "@m:x", 50, false},
        Case{"moderator_lowers_itself", kRoom, kRoomMSelf20.c_str(), "@m:x", 50, true},
        // Rule c: the top-level keys, old and new value at most the sender's level.
        Case{"ban_lowered_within_level", kRoom, kBan40.c_str(), "@m:x", 50, true},
        Case{"ban_raised_above_level", kRoom, kBan60.c_str(), "@m:x", 50, false},
        Case{"ban_removed_within_level", kRoom, kNoBan.c_str(), "@m:x", 50, true},
        Case{"kick_raised_above_level", kRoom, kKick100.c_str(), "@m:x", 50, false},
        Case{"kick_lowered_from_above_level", kKick100.c_str(), kRoom, "@m:x", 50, false},
        Case{"users_default_to_own_level", kRoom, kUsersDefault50.c_str(), "@m:x", 50, true},
        Case{"users_default_above_level", kRoom, kUsersDefault51.c_str(), "@m:x", 50, false},
        Case{"events_default_above_level", kRoom, kEventsDefault60.c_str(), "@m:x", 50, false},
        Case{"state_default_within_level", kRoom, kStateDefault40.c_str(), "@m:x", 50, true},
        Case{"redact_above_level", kRoom, kRedact60.c_str(), "@m:x", 50, false},
        Case{"invite_to_own_level", kRoom, kInvite50.c_str(), "@m:x", 50, true},
        Case{"invite_above_level", kRoom, kInvite51.c_str(), "@m:x", 50, false},
        Case{"invite_changed_by_a_user", kRoom, kInvite50.c_str(), "@u:x", 10, false},
        // Rules d, e: entries of events and notifications.
        Case{"event_level_lowered_within_level", kRoom, kEventsNameDown.c_str(), "@m:x", 50, true},
        Case{"event_level_added_above_level", kRoom, kEventsAddTopic100.c_str(), "@m:x", 50, false},
        Case{"event_level_added_within_level", kRoom, kEventsAddTopic50.c_str(), "@m:x", 50, true},
        Case{"event_level_removed_within_level", kRoom, kEventsRemoveName.c_str(), "@m:x", 50,
             true},
        Case{"event_level_removed_from_above_level", kRoomWithHighEvent.c_str(),
             kRoomWithoutHighEvent.c_str(), "@m:x", 50, false},
        Case{"notification_level_above_level", kRoom, kNotificationsRoom100.c_str(), "@m:x", 50,
             false},
        Case{"notification_level_within_level", kRoom, kNotificationsRoom0.c_str(), "@m:x", 50,
             true},
        // Rule a: the content's shape, checked even for a room's first power levels.
        Case{"users_key_not_a_user_id", nullptr, kBadUserKey.c_str(), "@a:x", 100, false},
        Case{"users_not_an_object", kRoom, kUsersNotObject.c_str(), "@a:x", 100, false},
        Case{"float_level", kRoom, kFloatLevel.c_str(), "@a:x", 100, false},
        Case{"string_level_in_version_10", kRoom, kStringLevel.c_str(), "@a:x", 100, false},
        Case{"string_level_before_version_10", kRoom, kStringLevel.c_str(), "@a:x", 100, true,
             false}),
    [](const auto& info) { return std::string(info.param.name); });

// ---------------------------------------------------------------------------------------------
// The whole check for a client's event, against a room built from state events.

struct EventCase {
    const char* name;
    const char* sender;
    const char* type;
    const char* state_key;  // null: a message event
    const char* content;
    const char* refusal;  // null: allowed; else the errcode
    bool sender_is_guest = false;
};

// An invite-only room: @a created it (100), @m is a moderator (50), @u a user, @i invited,
// @b banned, @l left; kick and ban need 50, invite 0; m.room.name needs 50.
Room test_room(const char* join_rule = "invite", const char* guest_access = "forbidden") {
    Room room;
    room.id = "!r:x";
    room.version = "10";
    StreamId stream = 0;
    auto state = [&](const char* type, const std::string& key, const std::string& sender,
                     const std::string& content) {
        auto e = std::make_shared<Event>();
        e->stream = ++stream;
        e->room_id = room.id;
        e->type = type;
        e->state_key = key;
        e->sender = sender;
        e->json = "{\"content\":" + content + "}";
        e->content_len = content.size();
        room.apply_state(e);
    };
    state("m.room.create", "", "@a:x", R"({"room_version":"10"})");
    state("m.room.member", "@a:x", "@a:x", R"({"membership":"join"})");
    state("m.room.power_levels", "", "@a:x",
          R"({"users":{"@a:x":100,"@m:x":50},"events":{"m.room.name":50},"invite":0,)"
          R"("kick":50,"ban":50,"state_default":50,"events_default":0})");
    state("m.room.join_rules", "", "@a:x", std::string(R"({"join_rule":")") + join_rule + "\"}");
    state("m.room.guest_access", "", "@a:x",
          std::string(R"({"guest_access":")") + guest_access + "\"}");
    for (const char* u : {"@m:x", "@u:x", "@b:x", "@l:x"})
        state("m.room.member", u, u, R"({"membership":"join"})");
    state("m.room.member", "@i:x", "@a:x", R"({"membership":"invite"})");
    state("m.room.member", "@b:x", "@a:x", R"({"membership":"ban"})");
    state("m.room.member", "@l:x", "@l:x", R"({"membership":"leave"})");
    return room;
}

class EventAuth : public ::testing::TestWithParam<EventCase> {};

TEST_P(EventAuth, Decides) {
    const EventCase& c = GetParam();
    const Room room = test_room();
    NewEvent ev{c.type, c.state_key ? std::optional<std::string>(c.state_key) : std::nullopt,
                json::parse(c.content).as_object()};
    auto refusal = event_auth_refusal(room, c.sender, c.sender_is_guest, ev);
    if (!c.refusal)
        EXPECT_FALSE(refusal) << refusal->what();
    else
        EXPECT_TRUE(refusal && refusal->errcode == c.refusal)
            << (refusal ? refusal->errcode + ": " + refusal->what() : std::string("allowed"));
}

constexpr const char* kForbidden = "M_FORBIDDEN";
constexpr const char* kBadJson = "M_BAD_JSON";
constexpr const char* kJoin = R"({"membership":"join"})";
constexpr const char* kInvite = R"({"membership":"invite"})";
constexpr const char* kLeave = R"({"membership":"leave"})";
constexpr const char* kBan = R"({"membership":"ban"})";

INSTANTIATE_TEST_SUITE_P(
    Spec, EventAuth,
    ::testing::Values(
        EventCase{"create_is_only_made_by_createRoom", "@a:x", "m.room.create", "", "{}",
                  kForbidden},
        // Joins.
        EventCase{"invitee_joins", "@i:x", "m.room.member", "@i:x", kJoin, nullptr},
        EventCase{"stranger_joins_invite_only_room", "@s:x", "m.room.member", "@s:x", kJoin,
                  kForbidden},
        EventCase{"former_member_rejoins_invite_only_room", "@l:x", "m.room.member", "@l:x", kJoin,
                  kForbidden},
        EventCase{"banned_user_joins", "@b:x", "m.room.member", "@b:x", kJoin, kForbidden},
        EventCase{"member_joins_someone_else", "@a:x", "m.room.member", "@i:x", kJoin, kForbidden},
        EventCase{"guest_invitee_joins_without_guest_access", "@i:x", "m.room.member", "@i:x",
                  kJoin, "M_GUEST_ACCESS_FORBIDDEN", true},
        EventCase{"member_changes_own_profile", "@u:x", "m.room.member", "@u:x",
                  R"({"membership":"join","displayname":"U"})", nullptr},
        // Invites.
        EventCase{"member_invites_stranger", "@u:x", "m.room.member", "@s:x", kInvite, nullptr},
        EventCase{"non_member_invites", "@l:x", "m.room.member", "@s:x", kInvite, kForbidden},
        EventCase{"invite_of_a_member", "@a:x", "m.room.member", "@u:x", kInvite, kForbidden},
        EventCase{"invite_of_a_banned_user", "@a:x", "m.room.member", "@b:x", kInvite, kForbidden},
        // Leaves and kicks.
        EventCase{"member_leaves", "@u:x", "m.room.member", "@u:x", kLeave, nullptr},
        EventCase{"invitee_declines", "@i:x", "m.room.member", "@i:x", kLeave, nullptr},
        EventCase{"former_member_leaves_again", "@l:x", "m.room.member", "@l:x", kLeave,
                  kForbidden},
        EventCase{"moderator_kicks_user", "@m:x", "m.room.member", "@u:x", kLeave, nullptr},
        EventCase{"user_kicks_moderator", "@u:x", "m.room.member", "@m:x", kLeave, kForbidden},
        EventCase{"moderator_kicks_admin", "@m:x", "m.room.member", "@a:x", kLeave, kForbidden},
        EventCase{"moderator_unbans", "@m:x", "m.room.member", "@b:x", kLeave, nullptr},
        EventCase{"user_unbans", "@u:x", "m.room.member", "@b:x", kLeave, kForbidden},
        // Bans.
        EventCase{"moderator_bans_user", "@m:x", "m.room.member", "@u:x", kBan, nullptr},
        EventCase{"moderator_bans_peer_level_or_above", "@m:x", "m.room.member", "@a:x", kBan,
                  kForbidden},
        EventCase{"user_bans", "@u:x", "m.room.member", "@s:x", kBan, kForbidden},
        // Malformed member events.
        EventCase{"member_event_without_state_key", "@u:x", "m.room.member", nullptr, kJoin,
                  kBadJson},
        EventCase{"member_state_key_not_a_user", "@u:x", "m.room.member", "u", kJoin, kBadJson},
        EventCase{"unknown_membership", "@u:x", "m.room.member", "@u:x",
                  R"({"membership":"dance"})", kBadJson},
        EventCase{"membership_missing", "@u:x", "m.room.member", "@u:x", "{}", kBadJson},
        // Other events: membership and power.
        EventCase{"member_sends_message", "@u:x", "m.room.message", nullptr, "{}", nullptr},
        EventCase{"former_member_sends_message", "@l:x", "m.room.message", nullptr, "{}",
                  kForbidden},
        EventCase{"invitee_sends_message", "@i:x", "m.room.message", nullptr, "{}", kForbidden},
        EventCase{"user_sets_name_below_its_level", "@u:x", "m.room.name", "", "{}", kForbidden},
        EventCase{"moderator_sets_name", "@m:x", "m.room.name", "", "{}", nullptr},
        EventCase{"user_sets_state_at_state_default", "@u:x", "m.room.topic", "", "{}", kForbidden},
        EventCase{"state_key_of_another_user", "@m:x", "org.example.status", "@u:x", "{}",
                  kForbidden},
        EventCase{"state_key_of_the_sender", "@m:x", "org.example.status", "@m:x", "{}", nullptr},
        // m.room.power_levels goes through the rule tested above.
        EventCase{"moderator_demotes_admin", "@m:x", "m.room.power_levels", "",
                  R"({"users":{"@a:x":0,"@m:x":50}})", kForbidden},
        EventCase{"admin_promotes_user", "@a:x", "m.room.power_levels", "",
                  R"({"users":{"@a:x":100,"@m:x":50,"@u:x":50},"events":{"m.room.name":50},)"
                  R"("invite":0,"kick":50,"ban":50,"state_default":50,"events_default":0})",
                  nullptr}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(EventAuth, PublicRoomsAdmitAnyoneButTheBanned) {
    const Room room = test_room("public");
    auto join = [&](const char* user) {
        NewEvent ev{"m.room.member", std::string(user), json::parse(kJoin).as_object()};
        return event_auth_refusal(room, user, false, ev);
    };
    EXPECT_FALSE(join("@s:x"));
    EXPECT_FALSE(join("@l:x"));
    EXPECT_TRUE(join("@b:x"));
}

TEST(EventAuth, GuestsJoinWhereGuestAccessIsCanJoin) {
    const Room room = test_room("public", "can_join");
    NewEvent ev{"m.room.member", std::string("@g:x"), json::parse(kJoin).as_object()};
    EXPECT_FALSE(event_auth_refusal(room, "@g:x", true, ev));
}

}  // namespace
