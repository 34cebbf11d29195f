#include "visibility.hpp"

#include <gtest/gtest.h>

using namespace mxvoip::server;

namespace {

// A room in which @a created it at 1, set `visibility` at 2, invited @b at 10, @b joined at
// 20, left at 30 and joined again at 40; events at 5, 15, 25, 35 and 45 fall in each period.
RoomHistory room(const char* visibility) {
    RoomHistory h;
    h.record_membership("@a:x", 1, "join");
    h.record_visibility(2, visibility);
    h.record_membership("@b:x", 10, "invite");
    h.record_membership("@b:x", 20, "join");
    h.record_membership("@b:x", 30, "leave");
    h.record_membership("@b:x", 40, "join");
    return h;
}

bool sees(const RoomHistory& h, const char* user, std::int64_t stream) {
    return h.may_see(user, stream, "m.room.message", std::nullopt);
}

struct Case {
    const char* visibility;
    // What @b sees of the events at 5 (before the invite), 15 (invited), 25 (joined),
    // 35 (left) and 45 (joined again).
    bool before_invite, invited, joined, away, back;
};

class VisibilityTable : public testing::TestWithParam<Case> {};

TEST_P(VisibilityTable, WhatARejoiningMemberSees) {
    const Case& c = GetParam();
    RoomHistory h = room(c.visibility);
    EXPECT_EQ(sees(h, "@b:x", 5), c.before_invite);
    EXPECT_EQ(sees(h, "@b:x", 15), c.invited);
    EXPECT_EQ(sees(h, "@b:x", 25), c.joined);
    EXPECT_EQ(sees(h, "@b:x", 35), c.away);
    EXPECT_EQ(sees(h, "@b:x", 45), c.back);
    // The creator, joined throughout, sees everything after joining.
    for (std::int64_t s : {5, 15, 25, 35, 45}) EXPECT_TRUE(sees(h, "@a:x", s)) << s;
}

INSTANTIATE_TEST_SUITE_P(
    Rules, VisibilityTable,
    testing::Values(Case{"world_readable", true, true, true, true, true},
                    // Shared: everything before a later join, never what happened while away
                    // unless they joined after it (they did, at 40).
                    Case{"shared", true, true, true, true, true},
                    Case{"invited", false, true, true, false, true},
                    Case{"joined", false, false, true, false, true},
                    // Unknown values are as strict as "joined".
                    Case{"members_only", false, false, true, false, true}),
    [](const auto& info) { return std::string(info.param.visibility); });

TEST(Visibility, AFormerMemberUnderSharedSeesNothingAfterLeaving) {
    RoomHistory h;
    h.record_membership("@a:x", 1, "join");
    h.record_visibility(2, "shared");
    h.record_membership("@b:x", 10, "join");
    h.record_membership("@b:x", 20, "leave");
    EXPECT_TRUE(sees(h, "@b:x", 5));    // before joining: shared with members who joined later
    EXPECT_TRUE(sees(h, "@b:x", 15));   // while joined
    EXPECT_FALSE(sees(h, "@b:x", 25));  // after leaving
}

TEST(Visibility, ANonMemberSeesOnlyWorldReadable) {
    for (const char* v : {"shared", "invited", "joined"}) {
        RoomHistory h = room(v);
        EXPECT_FALSE(sees(h, "@c:x", 25)) << v;
        EXPECT_FALSE(h.knows("@c:x"));
    }
    EXPECT_TRUE(sees(room("world_readable"), "@c:x", 25));
}

TEST(Visibility, VisibilityInForceAtTheEventCounts) {
    RoomHistory h;
    h.record_membership("@a:x", 1, "join");
    h.record_visibility(2, "world_readable");
    h.record_visibility(10, "joined");
    EXPECT_TRUE(sees(h, "@c:x", 5));
    EXPECT_FALSE(sees(h, "@c:x", 15));
    // The change itself: visible under the visibility before or after it.
    EXPECT_TRUE(h.may_see("@c:x", 10, "m.room.history_visibility", std::string()));
    EXPECT_EQ(h.current_visibility(), "joined");
}

TEST(Visibility, OwnMemberEventsAreVisibleWithTheMembershipAfterThem) {
    RoomHistory h = room("joined");
    // @b's join at 20 and re-join at 40 are theirs to see; their leave at 30 too (they were
    // joined before it).
    for (std::int64_t s : {20, 30, 40})
        EXPECT_TRUE(h.may_see("@b:x", s, "m.room.member", std::string("@b:x"))) << s;
    // Their invite (membership invite after it) is not visible under "joined"...
    EXPECT_FALSE(h.may_see("@b:x", 10, "m.room.member", std::string("@b:x")));
    // ...but is under "invited".
    EXPECT_TRUE(room("invited").may_see("@b:x", 10, "m.room.member", std::string("@b:x")));
}

TEST(Visibility, NoVisibilityEventMeansShared) {
    RoomHistory h;
    h.record_membership("@a:x", 1, "join");
    h.record_membership("@b:x", 10, "join");
    EXPECT_EQ(h.current_visibility(), "shared");
    EXPECT_TRUE(sees(h, "@b:x", 5));
}

TEST(Visibility, ReplayingKnownChangesIsHarmless) {
    RoomHistory h = room("joined");
    h.record_membership("@b:x", 20, "join");  // older than the last recorded: ignored
    h.record_membership("@b:x", 40, "join");
    EXPECT_FALSE(sees(h, "@b:x", 35));
    EXPECT_TRUE(sees(h, "@b:x", 45));
}

}  // namespace

TEST(RoomHistoryMembership, SinceIsTheStartOfTheNewestRunOfTheSameMembership) {
    RoomHistory h;
    EXPECT_EQ(h.membership_since("@b:x"), 0);
    h.record_membership("@b:x", 10, "invite");
    EXPECT_EQ(h.membership_since("@b:x"), 10);
    h.record_membership("@b:x", 20, "join");
    h.record_membership("@b:x", 25, "join");  // a new display name
    EXPECT_EQ(h.membership_since("@b:x"), 20);
    h.record_membership("@b:x", 30, "leave");
    h.record_membership("@b:x", 40, "join");
    EXPECT_EQ(h.membership_since("@b:x"), 40);
}
