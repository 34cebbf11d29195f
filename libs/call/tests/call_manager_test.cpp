// One test per rule of ../shared/VOIP-NOTES.md "Behaviour" that the call manager implements.
#include "mxvoip/call/call_manager.hpp"

#include <gtest/gtest.h>

using namespace mxvoip::call;
namespace proto = mxvoip::proto;
namespace json = boost::json;

namespace {

const std::string kRoom = "!dm:example.org";
const std::string kAlice = "@alice:example.org";
const std::string kBob = "@bob:example.org";

template <typename T>
std::vector<T> all(const std::vector<Action>& actions) {
    std::vector<T> out;
    for (const auto& a : actions)
        if (const T* t = std::get_if<T>(&a)) out.push_back(*t);
    return out;
}

std::vector<SendEvent> sent(const std::vector<Action>& actions, const std::string& type = {}) {
    auto events = all<SendEvent>(actions);
    if (!type.empty()) std::erase_if(events, [&](const SendEvent& e) { return e.type != type; });
    return events;
}

std::vector<MediaCommand> media(const std::vector<Action>& actions, MediaOp op) {
    auto cmds = all<MediaCommand>(actions);
    std::erase_if(cmds, [&](const MediaCommand& m) { return m.op != op; });
    return cmds;
}

std::optional<StateChanged> ended(const std::vector<Action>& actions) {
    for (const auto& s : all<StateChanged>(actions))
        if (s.state == CallState::ended) return s;
    return std::nullopt;
}

json::object common(const std::string& call_id, const std::string& party) {
    return json::object{{"call_id", call_id}, {"party_id", party}, {"version", "1"}};
}

RoomEvent event(const std::string& sender, const std::string& type, json::object content,
                Ms age = 0) {
    return RoomEvent{kRoom, sender, type, std::move(content), age};
}

RoomEvent invite(const std::string& call_id, const std::string& sender, const std::string& party,
                 Ms age = 0, Ms lifetime = 60000, std::optional<std::string> invitee = {}) {
    json::object c = common(call_id, party);
    c["offer"] = {{"type", "offer"}, {"sdp", "offer-sdp-" + call_id}};
    c["lifetime"] = lifetime;
    if (invitee) c["invitee"] = *invitee;
    return event(sender, "m.call.invite", std::move(c), age);
}

RoomEvent answer_ev(const std::string& call_id, const std::string& sender,
                    const std::string& party) {
    json::object c = common(call_id, party);
    c["answer"] = {{"type", "answer"}, {"sdp", "answer-sdp-" + party}};
    return event(sender, "m.call.answer", std::move(c));
}

RoomEvent candidates_ev(const std::string& call_id, const std::string& sender,
                        const std::string& party, const std::string& candidate) {
    json::object c = common(call_id, party);
    c["candidates"] = json::array{json::object{{"candidate", candidate}, {"sdpMid", "0"}}};
    return event(sender, "m.call.candidates", std::move(c));
}

RoomEvent simple(const std::string& type, const std::string& call_id, const std::string& sender,
                 const std::string& party, json::object extra = {}) {
    json::object c = common(call_id, party);
    for (auto& kv : extra) c[kv.key()] = kv.value();
    return event(sender, type, std::move(c));
}

proto::Candidate cand(const std::string& text) {
    proto::Candidate c;
    c.candidate = text;
    c.sdp_mid = "0";
    return c;
}

struct Client {
    CallManager m;
    Client(const std::string& user, const std::string& party)
        : m(CallManager::Options{user, party}) {}
    std::vector<Action> in(const Input& input, Ms now = 0) { return m.handle(input, now); }
    std::vector<Action> sync(std::vector<RoomEvent> events, Ms now = 0) {
        return m.handle(SyncBatch{std::move(events)}, now);
    }
};

// Alice has placed call "c1" to bob and her invite is out.
Client alice_calling(const std::string& call_id = "c1") {
    Client a(kAlice, "ALICE1");
    a.in(PlaceCall{call_id, kRoom, kBob});
    a.in(LocalDescription{call_id, "offer", "alice-offer"}, 100);
    return a;
}

}  // namespace

TEST(Calls, PlacingACallCreatesAnOfferThenSendsAnInviteWithInviteeAndLifetime) {
    Client a(kAlice, "ALICE1");
    auto placed = a.in(PlaceCall{"c1", kRoom, kBob});
    ASSERT_EQ(media(placed, MediaOp::create_offer).size(), 1u);
    EXPECT_TRUE(sent(placed).empty()) << "nothing goes out before there is an offer";
    EXPECT_EQ(a.m.state("c1"), CallState::preparing);
    auto out = a.in(LocalDescription{"c1", "offer", "alice-offer"}, 1000);
    auto inv = sent(out, "m.call.invite");
    ASSERT_EQ(inv.size(), 1u);
    const auto& c = inv[0].content;
    EXPECT_EQ(c.at("invitee"), json::value(kBob));
    EXPECT_EQ(c.at("lifetime"), json::value(90000));
    EXPECT_EQ(c.at("version"), json::value("1"));
    EXPECT_EQ(c.at("party_id"), json::value("ALICE1"));
    EXPECT_EQ(c.at("offer").at("sdp"), json::value("alice-offer"));
    ASSERT_EQ(all<StartTimer>(out).size(), 1u);
    EXPECT_EQ(all<StartTimer>(out)[0].at, 91000);
    EXPECT_EQ(a.m.state("c1"), CallState::invite_sent);
}

// A lifetime or an age of up to 2^53 ms is valid JSON: the ring timer stays within a day, and
// a negative age does not lengthen the ring.
TEST(Calls, HugeLifetimesAndAgesAreBoundedToADay) {
    constexpr Ms kMax = 9007199254740991;
    constexpr Ms kDay = 24 * 60 * 60 * 1000;
    auto ring_timer = [](Ms age, Ms lifetime) -> std::optional<Ms> {
        Client b(kBob, "PHONE");
        auto timers =
            all<StartTimer>(b.sync({invite("c1", kAlice, "ALICE1", age, lifetime)}, 5000));
        if (timers.empty()) return std::nullopt;
        EXPECT_EQ(b.m.state("c1"), CallState::ringing);
        return timers[0].at;
    };
    EXPECT_EQ(ring_timer(0, kMax), 5000 + kDay);
    EXPECT_EQ(ring_timer(-kMax, 60000), 5000 + 60000);
    EXPECT_EQ(ring_timer(kMax, kMax), std::nullopt) << "an invite older than a day has expired";
}

TEST(Calls, UnansweredInviteEndsWithInviteTimeoutAfterItsLifetime) {
    Client a = alice_calling();
    // The only timer armed so far is the invite lifetime.
    auto out = a.in(TimerFired{1}, 90100);
    auto hangup = sent(out, "m.call.hangup");
    ASSERT_EQ(hangup.size(), 1u);
    EXPECT_EQ(hangup[0].content.at("reason"), json::value("invite_timeout"));
    ASSERT_TRUE(ended(out));
    EXPECT_EQ(ended(out)->end_reason, "invite_timeout");
    EXPECT_EQ(media(out, MediaOp::close).size(), 1u);
}

TEST(Calls, CandidatesAreBatchedAfterTheInviteAndEndOfCandidatesFlushes) {
    Client a(kAlice, "ALICE1");
    a.in(PlaceCall{"c1", kRoom, kBob});
    EXPECT_TRUE(sent(a.in(LocalCandidate{"c1", cand("early")}, 10)).empty())
        << "never before the invite";
    auto out = a.in(LocalDescription{"c1", "offer", "sdp"}, 100);
    auto timers = all<StartTimer>(out);
    ASSERT_EQ(timers.size(), 2u);  // lifetime + first candidate batch
    EXPECT_EQ(timers[1].at, 100 + 2000);
    EXPECT_TRUE(all<StartTimer>(a.in(LocalCandidate{"c1", cand("second")}, 200)).empty())
        << "one batch timer";
    auto flushed = a.in(TimerFired{timers[1].timer_id}, 2100);
    auto batch = sent(flushed, "m.call.candidates");
    ASSERT_EQ(batch.size(), 1u);
    EXPECT_EQ(batch[0].content.at("candidates").as_array().size(), 2u);
    a.in(LocalCandidate{"c1", cand("third")}, 2200);
    auto done = a.in(GatheringDone{"c1"}, 2300);
    auto last = sent(done, "m.call.candidates");
    ASSERT_EQ(last.size(), 1u) << "gathering done flushes at once";
    const auto& list = last[0].content.at("candidates").as_array();
    ASSERT_EQ(list.size(), 2u);
    EXPECT_EQ(list[1].at("candidate"), json::value(""));
}

TEST(Calls, TheFirstAnswerIsSelectedAndLaterAnswersAreIgnored) {
    Client a = alice_calling();
    auto out = a.sync({answer_ev("c1", kBob, "PHONE"), answer_ev("c1", kBob, "LAPTOP")});
    auto select = sent(out, "m.call.select_answer");
    ASSERT_EQ(select.size(), 1u);
    EXPECT_EQ(select[0].content.at("selected_party_id"), json::value("PHONE"));
    auto remote = media(out, MediaOp::set_remote_description);
    ASSERT_EQ(remote.size(), 1u);
    EXPECT_EQ(remote[0].sdp, "answer-sdp-PHONE");
    ASSERT_EQ(all<Dropped>(out).size(), 1u);
    EXPECT_EQ(a.m.opponent_party("c1"), "PHONE");
    EXPECT_EQ(a.m.state("c1"), CallState::connecting);
    EXPECT_EQ(all<CancelTimer>(out).size(), 1u) << "the invite lifetime no longer matters";
}

TEST(Calls, AnAnswerFromAnotherUserIsIgnored) {
    Client a = alice_calling();
    auto out = a.sync({answer_ev("c1", "@mallory:example.org", "M")});
    EXPECT_TRUE(sent(out).empty());
    EXPECT_EQ(a.m.state("c1"), CallState::invite_sent);
}

TEST(Calls, AValidInviteRingsUntilItsLifetimeRunsOut) {
    Client b(kBob, "PHONE");
    auto out = b.sync({invite("c1", kAlice, "ALICE1", 1000, 60000, kBob)}, 5000);
    EXPECT_EQ(b.m.state("c1"), CallState::ringing);
    ASSERT_EQ(all<StartTimer>(out).size(), 1u);
    EXPECT_EQ(all<StartTimer>(out)[0].at, 5000 + 59000);
    auto expired = b.in(TimerFired{all<StartTimer>(out)[0].timer_id}, 64000);
    ASSERT_TRUE(ended(expired));
    EXPECT_EQ(ended(expired)->end_reason, "invite_timeout");
    EXPECT_TRUE(sent(expired).empty());
}

TEST(Calls, AnInviteTooOldToAnswerDoesNotRing) {
    Client b(kBob, "PHONE");
    auto out = b.sync({invite("c1", kAlice, "ALICE1", 58000, 60000)});
    EXPECT_FALSE(b.m.state("c1"));
    ASSERT_EQ(all<Dropped>(out).size(), 1u);
}

TEST(Calls, AnInviteForAnotherUserOrInAPublicRoomDoesNotRing) {
    Client b(kBob, "PHONE");
    b.sync({invite("c1", kAlice, "ALICE1", 0, 60000, "@carol:example.org")});
    EXPECT_FALSE(b.m.state("c1"));
    b.in(RoomChanged{kRoom, true, {kAlice, kBob}});
    b.sync({invite("c2", kAlice, "ALICE1")});
    EXPECT_FALSE(b.m.state("c2"));
}

TEST(Calls, AnInviteAnsweredRejectedOrHungUpInTheSameBatchNeverRings) {
    Client b(kBob, "PHONE");
    b.sync({invite("c1", kAlice, "ALICE1"), answer_ev("c1", kBob, "LAPTOP")});
    EXPECT_FALSE(b.m.state("c1"));
    b.sync({invite("c2", kAlice, "ALICE1"), simple("m.call.hangup", "c2", kAlice, "ALICE1")});
    EXPECT_FALSE(b.m.state("c2"));
    b.sync({invite("c3", kAlice, "ALICE1"), simple("m.call.reject", "c3", kBob, "LAPTOP")});
    EXPECT_FALSE(b.m.state("c3"));
}

TEST(Calls, AnInviteThisDeviceAlreadyAnsweredOrHungUpNeverRingsAgain) {
    // A restarted client reading the room again: our own answer and hangup are skipped as
    // echoes, yet they settle the call, whether marked by the server or by our party id.
    Client b(kBob, "PHONE");
    RoomEvent answer = answer_ev("c1", kBob, "PHONE");
    answer.from_this_device = true;
    auto out = b.sync(
        {invite("c1", kAlice, "ALICE1"), answer,
         simple("m.call.select_answer", "c1", kAlice, "ALICE1", {{"selected_party_id", "PHONE"}}),
         simple("m.call.hangup", "c1", kBob, "PHONE")});
    EXPECT_FALSE(b.m.state("c1"));
    EXPECT_TRUE(sent(out).empty());
    b.sync({invite("c2", kAlice, "ALICE1"), simple("m.call.reject", "c2", kBob, "PHONE")});
    EXPECT_FALSE(b.m.state("c2"));
}

TEST(Calls, OurOwnEchoIsIgnoredByPartyId) {
    Client a = alice_calling();
    auto out = a.sync({invite("c1", kAlice, "ALICE1")});
    EXPECT_TRUE(out.empty());
    EXPECT_EQ(a.m.state("c1"), CallState::invite_sent);
}

TEST(Calls, OurOwnEchoMarkedByTheServerIsSkippedUnread) {
    Client a = alice_calling();
    // Sent by this very device (unsigned.transaction_id): skipped before its content is
    // read, so not even invalid content is reported.
    RoomEvent echo = event(kAlice, "m.call.invite", json::object{{"not", "a call event"}});
    echo.from_this_device = true;
    EXPECT_TRUE(a.sync({echo}).empty());
    EXPECT_EQ(a.m.state("c1"), CallState::invite_sent);
}

TEST(Calls, AnsweringCreatesTheAnswerSendsItAndAppliesBufferedCandidates) {
    Client b(kBob, "PHONE");
    // Candidates may arrive before the invite they belong to.
    b.sync({candidates_ev("c1", kAlice, "ALICE1", "a-cand-1")});
    b.sync({invite("c1", kAlice, "ALICE1"), candidates_ev("c1", kAlice, "ALICE1", "a-cand-2")});
    auto out = b.in(AnswerCall{"c1"}, 100);
    auto cmds = all<MediaCommand>(out);
    ASSERT_EQ(cmds.size(), 3u);
    EXPECT_EQ(cmds[0].op, MediaOp::create_answer);
    EXPECT_EQ(cmds[0].sdp, "offer-sdp-c1");
    EXPECT_EQ(cmds[1].candidate.candidate, "a-cand-1");
    EXPECT_EQ(cmds[2].candidate.candidate, "a-cand-2");
    auto sent_answer =
        sent(b.in(LocalDescription{"c1", "answer", "bob-answer"}, 200), "m.call.answer");
    ASSERT_EQ(sent_answer.size(), 1u);
    EXPECT_EQ(sent_answer[0].content.at("answer").at("sdp"), json::value("bob-answer"));
    EXPECT_EQ(b.m.state("c1"), CallState::connecting);
    auto later = b.sync({candidates_ev("c1", kAlice, "ALICE1", "a-cand-3")});
    EXPECT_EQ(media(later, MediaOp::add_remote_candidate).size(), 1u) << "applied at once now";
    b.in(IceStateChanged{"c1", IceState::connected});
    EXPECT_EQ(b.m.state("c1"), CallState::connected);
}

TEST(Calls, CallerAppliesOnlyTheChosenPartysCandidates) {
    Client a = alice_calling();
    a.sync({candidates_ev("c1", kBob, "PHONE", "phone-cand"),
            candidates_ev("c1", kBob, "LAPTOP", "laptop-cand")});
    auto out = a.sync({answer_ev("c1", kBob, "LAPTOP")});
    auto cmds = all<MediaCommand>(out);
    ASSERT_EQ(cmds.size(), 2u);
    EXPECT_EQ(cmds[0].op, MediaOp::set_remote_description);
    EXPECT_EQ(cmds[1].candidate.candidate, "laptop-cand");
    auto stray = a.sync({candidates_ev("c1", kBob, "PHONE", "phone-2")});
    EXPECT_TRUE(media(stray, MediaOp::add_remote_candidate).empty());
}

TEST(Calls, ADeviceSeeingAnotherSelectedStopsAsAnsweredElsewhereAndSendsNothing) {
    Client b(kBob, "PHONE");
    b.sync({invite("c1", kAlice, "ALICE1")});
    b.in(AnswerCall{"c1"});
    b.in(LocalDescription{"c1", "answer", "sdp"});
    auto out = b.sync({simple("m.call.select_answer", "c1", kAlice, "ALICE1",
                              {{"selected_party_id", "LAPTOP"}})});
    ASSERT_TRUE(ended(out));
    EXPECT_EQ(ended(out)->end_reason, "answered_elsewhere");
    EXPECT_TRUE(sent(out).empty());
    EXPECT_EQ(media(out, MediaOp::close).size(), 1u);
    EXPECT_TRUE(sent(b.in(LocalCandidate{"c1", cand("late")})).empty()) << "nothing after the end";
}

TEST(Calls, ARingingDeviceStopsWhenAnotherOfOurDevicesAnswersOrRejects) {
    Client b(kBob, "PHONE");
    b.sync({invite("c1", kAlice, "ALICE1")});
    auto answered = b.sync({answer_ev("c1", kBob, "LAPTOP")});
    ASSERT_TRUE(ended(answered));
    EXPECT_EQ(ended(answered)->end_reason, "answered_elsewhere");
    EXPECT_TRUE(sent(answered).empty());
    b.sync({invite("c2", kAlice, "ALICE1")});
    auto rejected = b.sync({simple("m.call.reject", "c2", kBob, "LAPTOP")});
    ASSERT_TRUE(ended(rejected));
    EXPECT_EQ(ended(rejected)->end_reason, "rejected_elsewhere");
    EXPECT_TRUE(sent(rejected).empty());
}

TEST(Calls, RejectingAVersion1InviteSendsRejectAndAVersion0InviteAHangup) {
    Client b(kBob, "PHONE");
    b.sync({invite("c1", kAlice, "ALICE1")});
    auto out = b.in(RejectCall{"c1"});
    ASSERT_EQ(sent(out, "m.call.reject").size(), 1u);
    EXPECT_EQ(ended(out)->end_reason, "rejected");
    json::object v0{{"call_id", "c2"},
                    {"version", 0},
                    {"lifetime", 60000},
                    {"offer", {{"type", "offer"}, {"sdp", "s"}}}};
    b.sync({event(kAlice, "m.call.invite", v0)});
    auto old = b.in(RejectCall{"c2"});
    EXPECT_TRUE(sent(old, "m.call.reject").empty());
    ASSERT_EQ(sent(old, "m.call.hangup").size(), 1u);
}

TEST(Calls, MediaFailingBeforeOurAnswerIsOutDeclinesAndEndsAsAMediaFailure) {
    Client b(kBob, "PHONE");
    b.sync({invite("c1", kAlice, "ALICE1")});
    b.in(AnswerCall{"c1"});
    auto out = b.in(HangUpCall{"c1", "user_media_failed"});
    EXPECT_EQ(sent(out, "m.call.reject").size(), 1u);
    ASSERT_TRUE(ended(out));
    EXPECT_EQ(ended(out)->end_reason, "user_media_failed");
    // After the answer is out it is a hangup with that reason.
    Client c(kBob, "PHONE");
    c.sync({invite("c2", kAlice, "ALICE1")});
    c.in(AnswerCall{"c2"});
    c.in(LocalDescription{"c2", "answer", "sdp"});
    auto later = c.in(HangUpCall{"c2", "user_media_failed"});
    ASSERT_EQ(sent(later, "m.call.hangup").size(), 1u);
    EXPECT_EQ(sent(later, "m.call.hangup")[0].content.at("reason"),
              json::value("user_media_failed"));
    EXPECT_EQ(ended(later)->end_reason, "user_media_failed");
}

namespace {
// The caller selected `party`'s decline, so the callee's other devices stop, and the call
// ended as rejected by the other side.
void expect_declined_by(const std::vector<Action>& out, const std::string& party) {
    auto select = sent(out, "m.call.select_answer");
    ASSERT_EQ(select.size(), 1u);
    EXPECT_EQ(select[0].content.at("selected_party_id"), json::value(party));
    ASSERT_TRUE(ended(out));
    EXPECT_EQ(ended(out)->end_reason, "rejected");
    EXPECT_TRUE(ended(out)->ended_by_remote);
}
}  // namespace

TEST(Calls, TheCallerSelectsARejectLikeAnAnswer) {
    Client a = alice_calling();
    expect_declined_by(a.sync({simple("m.call.reject", "c1", kBob, "PHONE")}), "PHONE");
}

TEST(Calls, AVersion1HangupFromTheCalleeBeforeAnyAnswerIsTakenAsAReject) {
    // As nheko declines when its media cannot start.
    Client a = alice_calling();
    auto out =
        a.sync({simple("m.call.hangup", "c1", kBob, "NHEKO", {{"reason", "user_media_failed"}})});
    EXPECT_EQ(all<Nonconforming>(out).size(), 1u);
    expect_declined_by(out, "NHEKO");
    // A hangup from someone who is not the callee still ends nothing.
    Client b = alice_calling();
    auto stranger = b.sync({simple("m.call.hangup", "c1", "@mallory:x", "M")});
    EXPECT_FALSE(ended(stranger));
    EXPECT_EQ(all<Dropped>(stranger).size(), 1u);
}

TEST(Calls, ACallerThatSawAnAnswerIgnoresAReject) {
    Client a = alice_calling();
    a.sync({answer_ev("c1", kBob, "PHONE")});
    auto out = a.sync({simple("m.call.reject", "c1", kBob, "LAPTOP")});
    EXPECT_FALSE(ended(out));
    EXPECT_EQ(a.m.state("c1"), CallState::connecting);
}

TEST(Calls, AHangupWithoutReasonIsUserHangup) {
    Client a = alice_calling();
    a.sync({answer_ev("c1", kBob, "PHONE")});
    auto out = a.sync({simple("m.call.hangup", "c1", kBob, "PHONE")});
    ASSERT_TRUE(ended(out));
    EXPECT_EQ(ended(out)->end_reason, "user_hangup");
    EXPECT_TRUE(sent(out).empty());
}

TEST(Calls, AHangupFromAPartyThatIsNotTheOpponentIsIgnored) {
    Client a = alice_calling();
    a.sync({answer_ev("c1", kBob, "PHONE")});
    auto out = a.sync({simple("m.call.hangup", "c1", kBob, "LAPTOP")});
    EXPECT_FALSE(ended(out));
}

TEST(Calls, HangingUpSendsAHangupAndEnds) {
    Client a = alice_calling();
    a.sync({answer_ev("c1", kBob, "PHONE")});
    auto out = a.in(HangUpCall{"c1"});
    auto h = sent(out, "m.call.hangup");
    ASSERT_EQ(h.size(), 1u);
    EXPECT_EQ(h[0].content.at("reason"), json::value("user_hangup"));
    EXPECT_EQ(ended(out)->end_reason, "user_hangup");
    EXPECT_FALSE(ended(out)->ended_by_remote);
}

TEST(Calls, GlareWhilePreparingDropsOursAndAnswersTheirsWithOurMedia) {
    Client a(kAlice, "ALICE1");
    a.in(PlaceCall{"zzz", kRoom, kBob});
    auto out = a.sync({invite("aaa", kBob, "PHONE")});
    EXPECT_TRUE(sent(out).empty()) << "our invite never went out: nothing to hang up";
    EXPECT_EQ(a.m.state("zzz"), CallState::ended);
    auto transfer = media(out, MediaOp::transfer_media);
    ASSERT_EQ(transfer.size(), 1u);
    EXPECT_EQ(transfer[0].from_call_id, "zzz");
    EXPECT_EQ(media(out, MediaOp::create_answer).size(), 1u);
    EXPECT_EQ(a.m.state("aaa"), CallState::answering);
}

TEST(Calls, GlareAfterSendingKeepsTheLesserCallId) {
    // Their call id is the lesser: hang up ours, answer theirs.
    Client a = alice_calling("m2");
    auto out = a.sync({invite("m1", kBob, "PHONE")});
    auto h = sent(out, "m.call.hangup");
    ASSERT_EQ(h.size(), 1u);
    EXPECT_EQ(h[0].call_id, "m2");
    EXPECT_EQ(a.m.state("m1"), CallState::answering);
    EXPECT_EQ(ended(out)->end_reason, "replaced");
    // Ours is the lesser: theirs does not ring, ours goes on.
    Client b = alice_calling("m1");
    auto kept = b.sync({invite("m2", kBob, "PHONE")});
    EXPECT_FALSE(b.m.state("m2"));
    EXPECT_EQ(b.m.state("m1"), CallState::invite_sent);
    EXPECT_TRUE(sent(kept).empty());
}

TEST(Calls, GlareResolvedByTheCalleeFirstAnswersItsCallInWhicheverOrderItsEventsCome) {
    // matrix-js-sdk resolves glare by hanging up our invite as `replaced` right after sending
    // its own; the server may order the two either way. Its call is answered even when its id
    // is the greater: it has already given ours up.
    for (std::string theirs : {"a-lesser", "z-greater"}) {
        SCOPED_TRACE(theirs);
        Client same = alice_calling("m");
        auto out = same.sync({simple("m.call.hangup", "m", kBob, "PHONE", {{"reason", "replaced"}}),
                              invite(theirs, kBob, "PHONE")});
        EXPECT_EQ(same.m.state("m"), CallState::ended);
        EXPECT_EQ(ended(out)->end_reason, "replaced");
        EXPECT_EQ(same.m.state(theirs), CallState::answering);
        ASSERT_EQ(media(out, MediaOp::transfer_media).size(), 1u);
        EXPECT_EQ(media(out, MediaOp::transfer_media)[0].from_call_id, "m");

        // The invite comes in a later batch: ours waits for it, still ringing out.
        Client later = alice_calling("m");
        auto hung = later.sync(
            {simple("m.call.hangup", "m", kBob, "PHONE", {{"reason", "replaced"}})}, 1000);
        EXPECT_EQ(later.m.state("m"), CallState::invite_sent);
        EXPECT_TRUE(sent(hung).empty());
        ASSERT_EQ(all<StartTimer>(hung).size(), 1u);
        EXPECT_EQ(all<StartTimer>(hung)[0].at, 1000 + 10000);
        later.sync({invite(theirs, kBob, "PHONE")}, 1500);
        EXPECT_EQ(later.m.state("m"), CallState::ended);
        EXPECT_EQ(later.m.state(theirs), CallState::answering);
    }
}

TEST(Calls, ACalleeThatHangsUpAsReplacedButNeverCallsHasDeclined) {
    Client a = alice_calling("m");
    auto hung =
        a.sync({simple("m.call.hangup", "m", kBob, "PHONE", {{"reason", "replaced"}})}, 1000);
    auto out = a.in(TimerFired{all<StartTimer>(hung).at(0).timer_id}, 11000);
    EXPECT_EQ(ended(out)->end_reason, "rejected");
    EXPECT_TRUE(ended(out)->ended_by_remote);
    EXPECT_EQ(all<Nonconforming>(out).size(), 1u);
    auto select = sent(out, "m.call.select_answer");
    ASSERT_EQ(select.size(), 1u) << "the callee's other devices stop ringing";
    EXPECT_EQ(select[0].content.at("selected_party_id"), json::value("PHONE"));
    // A hangup as `replaced` from someone else in the room changes nothing.
    Client b = alice_calling("m");
    b.sync({simple("m.call.hangup", "m", "@mallory:example.org", "X", {{"reason", "replaced"}})});
    b.sync({invite("z", kBob, "PHONE")});
    EXPECT_FALSE(b.m.state("z")) << "glare by call id: ours is the lesser and lives";
}

TEST(Calls, PlacingACallToSomeoneWhoIsCallingUsAnswersThem) {
    Client b(kBob, "PHONE");
    b.sync({invite("c1", kAlice, "ALICE1")});
    auto out = b.in(PlaceCall{"c2", kRoom, kAlice});
    EXPECT_FALSE(b.m.state("c2"));
    EXPECT_EQ(b.m.state("c1"), CallState::answering);
}

TEST(Calls, TheOtherPartyLeavingTheRoomEndsTheCall) {
    Client a = alice_calling();
    a.sync({answer_ev("c1", kBob, "PHONE")});
    auto out = a.in(RoomChanged{kRoom, false, {kAlice}});
    ASSERT_TRUE(ended(out));
    EXPECT_EQ(ended(out)->end_reason, "user_hangup");
    EXPECT_TRUE(ended(out)->ended_by_remote);
}

TEST(Calls, OnIceFailureAnIceRestartIsTriedFirst) {
    Client a = alice_calling();
    a.sync({answer_ev("c1", kBob, "PHONE")});
    auto failed = a.in(IceStateChanged{"c1", IceState::failed}, 1000);
    EXPECT_TRUE(sent(failed).empty());
    ASSERT_EQ(media(failed, MediaOp::ice_restart).size(), 1u);
    auto deadline = all<StartTimer>(failed);
    ASSERT_EQ(deadline.size(), 1u);
    EXPECT_EQ(deadline[0].at, 1000 + 10000);
    // The restart works: the deadline is cancelled and the call goes on.
    auto back = a.in(IceStateChanged{"c1", IceState::connected}, 3000);
    EXPECT_EQ(all<CancelTimer>(back).size(), 1u);
    EXPECT_EQ(a.m.state("c1"), CallState::connected);
}

TEST(Calls, IceFailureIsIceFailedBeforeMediaFlowedAndIceTimeoutAfter) {
    // Media never flowed and the restart did not help: ice_failed.
    Client a = alice_calling();
    a.sync({answer_ev("c1", kBob, "PHONE")});
    auto restart = a.in(IceStateChanged{"c1", IceState::failed}, 1000);
    auto gave_up = a.in(TimerFired{all<StartTimer>(restart).at(0).timer_id}, 11000);
    EXPECT_EQ(sent(gave_up, "m.call.hangup").at(0).content.at("reason"), json::value("ice_failed"));
    EXPECT_EQ(ended(gave_up)->end_reason, "ice_failed");
    // Media flowed, then failed twice: ice_timeout without waiting for a second restart.
    Client b = alice_calling("c2");
    b.sync({answer_ev("c2", kBob, "PHONE")});
    b.in(IceStateChanged{"c2", IceState::connected});
    b.in(IceStateChanged{"c2", IceState::failed});
    b.in(IceStateChanged{"c2", IceState::connected});
    auto again = b.in(IceStateChanged{"c2", IceState::failed});
    EXPECT_EQ(sent(again, "m.call.hangup").at(0).content.at("reason"), json::value("ice_timeout"));
    EXPECT_EQ(ended(again)->end_reason, "ice_timeout");
}

TEST(Calls, AVersion0PeerGetsNoRenegotiation) {
    Client b(kBob, "PHONE");
    json::object v0{{"call_id", "c1"},
                    {"version", 0},
                    {"lifetime", 60000},
                    {"offer", {{"type", "offer"}, {"sdp", "s"}}}};
    b.sync({event(kAlice, "m.call.invite", v0)});
    b.in(AnswerCall{"c1"});
    b.in(LocalDescription{"c1", "answer", "sdp"});
    EXPECT_EQ(all<Dropped>(b.in(NegotiationNeeded{"c1"})).size(), 1u);
    EXPECT_EQ(all<Dropped>(b.in(SetHold{"c1", true})).size(), 1u);
    // ICE failure ends the call at once: a restart needs renegotiation.
    auto failed = b.in(IceStateChanged{"c1", IceState::failed});
    EXPECT_EQ(ended(failed)->end_reason, "ice_failed");
}

namespace {
// Alice and bob in a call c1 (alice called, bob's PHONE answered), both with stream metadata.
std::pair<Client, Client> in_a_call() {
    Client a(kAlice, "ALICE1");
    Client b(kBob, "PHONE");
    proto::SdpStreamMetadata am{{"a-cam", {"m.usermedia", false, false, {}}}};
    proto::SdpStreamMetadata bm{{"b-cam", {"m.usermedia", false, false, {}}}};
    a.in(PlaceCall{"c1", kRoom, kBob});
    a.in(LocalStreams{"c1", am});
    auto inv = sent(a.in(LocalDescription{"c1", "offer", "o1"}), "m.call.invite").at(0);
    b.sync({event(kAlice, inv.type, inv.content)});
    b.in(AnswerCall{"c1"});
    b.in(LocalStreams{"c1", bm});
    auto ans = sent(b.in(LocalDescription{"c1", "answer", "a1"}), "m.call.answer").at(0);
    auto sel = sent(a.sync({event(kBob, ans.type, ans.content)}), "m.call.select_answer").at(0);
    b.sync({event(kAlice, sel.type, sel.content)});
    a.in(IceStateChanged{"c1", IceState::connected});
    b.in(IceStateChanged{"c1", IceState::connected});
    return {std::move(a), std::move(b)};
}
}  // namespace

TEST(Calls, InviteAndAnswerCarryStreamMetadataUnderBothKeys) {
    Client a(kAlice, "ALICE1");
    a.in(PlaceCall{"c1", kRoom, kBob});
    a.in(LocalStreams{"c1", {{"cam", {"m.usermedia", false, false, {}}}}});
    auto inv = sent(a.in(LocalDescription{"c1", "offer", "o"}), "m.call.invite").at(0);
    EXPECT_EQ(inv.content.at("sdp_stream_metadata").at("cam").at("purpose"),
              json::value("m.usermedia"));
    EXPECT_EQ(inv.content.at("org.matrix.msc3077.sdp_stream_metadata"),
              inv.content.at("sdp_stream_metadata"));
}

TEST(Calls, RenegotiationRunsThroughNegotiateOfferAndAnswer) {
    auto [a, b] = in_a_call();
    auto need = a.in(NegotiationNeeded{"c1"});
    ASSERT_EQ(media(need, MediaOp::create_offer).size(), 1u);
    auto offer = sent(a.in(LocalDescription{"c1", "offer", "o2"}), "m.call.negotiate").at(0);
    EXPECT_EQ(offer.content.at("description").at("type"), json::value("offer"));
    EXPECT_EQ(offer.content.at("lifetime"), json::value(10000));
    auto at_bob = b.sync({event(kAlice, offer.type, offer.content, 100)});
    auto create = media(at_bob, MediaOp::create_answer);
    ASSERT_EQ(create.size(), 1u);
    EXPECT_EQ(create[0].sdp, "o2");
    auto answer = sent(b.in(LocalDescription{"c1", "answer", "a2"}), "m.call.negotiate").at(0);
    EXPECT_EQ(answer.content.at("description").at("type"), json::value("answer"));
    auto at_alice = a.sync({event(kBob, answer.type, answer.content)});
    auto set = media(at_alice, MediaOp::set_remote_description);
    ASSERT_EQ(set.size(), 1u);
    EXPECT_EQ(set[0].sdp, "a2");
    // A second answer to the same offer finds no offer of ours.
    EXPECT_EQ(all<Dropped>(a.sync({event(kBob, answer.type, answer.content)})).size(), 1u);
}

TEST(Calls, InAnOfferCollisionThePoliteCalleeRollsBackAndTheCallerKeepsItsOffer) {
    auto [a, b] = in_a_call();
    a.in(NegotiationNeeded{"c1"});
    auto a_offer = sent(a.in(LocalDescription{"c1", "offer", "alice-o"}), "m.call.negotiate").at(0);
    b.in(NegotiationNeeded{"c1"});
    auto b_offer = sent(b.in(LocalDescription{"c1", "offer", "bob-o"}), "m.call.negotiate").at(0);
    auto at_alice = a.sync({event(kBob, b_offer.type, b_offer.content)});
    EXPECT_TRUE(media(at_alice, MediaOp::create_answer).empty())
        << "the impolite caller ignores it";
    EXPECT_EQ(all<Dropped>(at_alice).size(), 1u);
    auto at_bob = b.sync({event(kAlice, a_offer.type, a_offer.content)});
    auto cmds = all<MediaCommand>(at_bob);
    ASSERT_EQ(cmds.size(), 2u);
    EXPECT_EQ(cmds[0].op, MediaOp::rollback);
    EXPECT_EQ(cmds[1].op, MediaOp::create_answer);
    EXPECT_EQ(cmds[1].sdp, "alice-o");
}

TEST(Calls, ANegotiateIsAcceptedOnlyFromTheChosenOpponentAndWithinItsLifetime) {
    auto [a, b] = in_a_call();
    json::object offer = common("c1", "ALICE1");
    offer["description"] = {{"type", "offer"}, {"sdp", "o"}};
    offer["lifetime"] = 5000;
    EXPECT_TRUE(
        media(b.sync({event(kAlice, "m.call.negotiate", offer, 6000)}), MediaOp::create_answer)
            .empty());
    json::object stranger = offer;
    stranger["party_id"] = "ALICE2";
    EXPECT_TRUE(media(b.sync({event(kAlice, "m.call.negotiate", stranger)}), MediaOp::create_answer)
                    .empty());
    EXPECT_EQ(media(b.sync({event(kAlice, "m.call.negotiate", offer, 100)}), MediaOp::create_answer)
                  .size(),
              1u);
}

TEST(Calls, HoldAndResumeAreMediaChangesThatRenegotiate) {
    auto [a, b] = in_a_call();
    ASSERT_EQ(media(a.in(SetHold{"c1", true}), MediaOp::hold).size(), 1u);
    ASSERT_EQ(media(a.in(NegotiationNeeded{"c1"}), MediaOp::create_offer).size(), 1u);
    EXPECT_EQ(sent(a.in(LocalDescription{"c1", "offer", "sendonly"}), "m.call.negotiate").size(),
              1u);
    EXPECT_EQ(media(a.in(SetHold{"c1", false}), MediaOp::resume).size(), 1u);
}

TEST(Calls, ScreenShareIsASecondStreamWithMetadataOrReplacesTheCameraForOldPeers) {
    auto [a, b] = in_a_call();
    auto share = media(a.in(SetScreenshare{"c1", true}), MediaOp::add_screenshare);
    ASSERT_EQ(share.size(), 1u);
    EXPECT_FALSE(share[0].replace_camera) << "bob describes his streams";
    a.in(LocalStreams{"c1",
                      {{"a-cam", {"m.usermedia", false, false, {}}},
                       {"a-screen", {"m.screenshare", false, false, {}}}}});
    a.in(NegotiationNeeded{"c1"});
    auto neg = sent(a.in(LocalDescription{"c1", "offer", "o-screen"}), "m.call.negotiate").at(0);
    EXPECT_EQ(neg.content.at("sdp_stream_metadata").at("a-screen").at("purpose"),
              json::value("m.screenshare"));
    auto at_bob = b.sync({event(kAlice, neg.type, neg.content)});
    auto streams = all<RemoteStreamsChanged>(at_bob);
    ASSERT_EQ(streams.size(), 1u);
    EXPECT_EQ(streams[0].metadata.count("a-screen"), 1u);
    EXPECT_TRUE(b.m.use_remote_stream("c1", "a-screen", false));
    EXPECT_FALSE(b.m.use_remote_stream("c1", "unlisted", false));
    // A peer whose invite had no metadata: the screen replaces the camera.
    Client old = alice_calling("c9");
    old.sync({answer_ev("c9", kBob, "PHONE")});
    auto replace = media(old.in(SetScreenshare{"c9", true}), MediaOp::add_screenshare);
    ASSERT_EQ(replace.size(), 1u);
    EXPECT_TRUE(replace[0].replace_camera);
}

TEST(Calls, WithoutMetadataOnlyTheFirstIncomingStreamIsUsed) {
    Client a = alice_calling();
    a.sync({answer_ev("c1", kBob, "PHONE")});  // no sdp_stream_metadata
    EXPECT_TRUE(a.m.use_remote_stream("c1", "whatever", true));
    EXPECT_FALSE(a.m.use_remote_stream("c1", "second", false));
}

TEST(Calls, UnknownPurposesAreIgnored) {
    Client b(kBob, "PHONE");
    auto inv = invite("c1", kAlice, "ALICE1");
    inv.content.as_object()["sdp_stream_metadata"] = {{"s1", {{"purpose", "m.usermedia"}}},
                                                      {"s2", {{"purpose", "m.hologram"}}}};
    b.sync({inv});
    EXPECT_TRUE(b.m.use_remote_stream("c1", "s1", true));
    EXPECT_FALSE(b.m.use_remote_stream("c1", "s2", false));
}

TEST(Calls, MuteChangesGoOutAsStreamMetadataChangedWithoutRenegotiation) {
    auto [a, b] = in_a_call();
    auto out = a.in(SetMuted{"c1", false, true});
    EXPECT_TRUE(all<MediaCommand>(out).empty());
    auto changed = sent(out, "m.call.sdp_stream_metadata_changed");
    ASSERT_EQ(changed.size(), 1u);
    EXPECT_EQ(changed[0].content.at("sdp_stream_metadata").at("a-cam").at("video_muted"),
              json::value(true));
    EXPECT_TRUE(a.in(SetMuted{"c1", false, true}).empty()) << "nothing changed, nothing sent";
    auto at_bob = b.sync({event(kAlice, changed[0].type, changed[0].content)});
    auto streams = all<RemoteStreamsChanged>(at_bob);
    ASSERT_EQ(streams.size(), 1u);
    EXPECT_TRUE(streams[0].metadata.at("a-cam").video_muted);
    EXPECT_FALSE(streams[0].metadata.at("a-cam").audio_muted);
}

TEST(Calls, InvalidEventsAreDroppedWithTheRuleTheyBreak) {
    Client b(kBob, "PHONE");
    json::object bad = common("c1", "ALICE1");
    bad["lifetime"] = 60000;  // no offer
    auto out = b.sync({event(kAlice, "m.call.invite", bad)});
    auto d = all<Dropped>(out);
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(d[0].call_id, "c1");
    EXPECT_NE(d[0].why.find("content.offer"), std::string::npos) << d[0].why;
}

TEST(Calls, HangingUpBeforeOurAnswerIsOutDeclinesTheCall) {
    Client b(kBob, "PHONE");
    b.sync({invite("c1", kAlice, "ALICE1")});
    b.in(AnswerCall{"c1"});
    auto out = b.in(HangUpCall{"c1"});
    ASSERT_EQ(sent(out, "m.call.reject").size(), 1u)
        << "the caller must not ring on until the invite expires";
    EXPECT_EQ(media(out, MediaOp::close).size(), 1u);
    // A late local answer goes nowhere.
    EXPECT_TRUE(sent(b.in(LocalDescription{"c1", "answer", "sdp"})).empty());
}

TEST(Calls, AfterTheAnswerCandidatesGoOutEvery500ms) {
    Client b(kBob, "PHONE");
    b.sync({invite("c1", kAlice, "ALICE1")});
    b.in(AnswerCall{"c1"});
    b.in(LocalCandidate{"c1", cand("before-answer")}, 10);
    auto out = b.in(LocalDescription{"c1", "answer", "sdp"}, 100);
    auto timers = all<StartTimer>(out);
    ASSERT_EQ(timers.size(), 1u);
    EXPECT_EQ(timers[0].at, 100 + 500);
    auto flushed = sent(b.in(TimerFired{timers[0].timer_id}, 600), "m.call.candidates");
    ASSERT_EQ(flushed.size(), 1u);
    EXPECT_EQ(flushed[0].content.at("candidates").at(0).at("candidate"),
              json::value("before-answer"));
}

TEST(Calls, CallsArePlacedOnlyInRoomsOfExactlyTwo) {
    Client a(kAlice, "ALICE1");
    a.in(RoomChanged{kRoom, false, {kAlice, kBob, "@carol:example.org"}});
    auto out = a.in(PlaceCall{"c1", kRoom, kBob});
    EXPECT_FALSE(a.m.state("c1"));
    ASSERT_EQ(all<Dropped>(out).size(), 1u);
    a.in(RoomChanged{kRoom, false, {kAlice, kBob}});
    a.in(PlaceCall{"c2", kRoom, kBob});
    EXPECT_EQ(a.m.state("c2"), CallState::preparing);
}

TEST(Calls, EarlyCandidatesWaitOneInviteLifetimeAtMost) {
    Client b(kBob, "PHONE");
    b.sync({candidates_ev("c1", kAlice, "ALICE1", "stale")}, 0);
    b.sync({invite("c1", kAlice, "ALICE1")}, 95000);
    auto out = b.in(AnswerCall{"c1"}, 95100);
    EXPECT_TRUE(media(out, MediaOp::add_remote_candidate).empty());
    // Candidates of an invite that does not ring here do not linger either.
    Client d(kBob, "LAPTOP");
    d.sync({candidates_ev("c2", kAlice, "ALICE1", "x")}, 0);
    d.sync({invite("c2", kAlice, "ALICE1", 0, 60000, "@carol:example.org")}, 100);
    d.sync({invite("c2", kAlice, "ALICE1", 0, 60000)}, 200);  // the same id again, now for us
    ASSERT_EQ(d.m.state("c2"), CallState::ringing);
    EXPECT_TRUE(media(d.in(AnswerCall{"c2"}, 300), MediaOp::add_remote_candidate).empty())
        << "the candidates went with the invite that was not for us";
}

TEST(Calls, EndedCallsAreForgottenAfterTenMinutes) {
    Client a = alice_calling();
    a.in(HangUpCall{"c1"}, 1000);
    EXPECT_EQ(a.m.state("c1"), CallState::ended);
    a.in(RoomChanged{kRoom, false, {kAlice, kBob}}, 1000 + 9 * 60 * 1000);
    EXPECT_EQ(a.m.state("c1"), CallState::ended);
    a.in(RoomChanged{kRoom, false, {kAlice, kBob}}, 1000 + 11 * 60 * 1000);
    EXPECT_FALSE(a.m.state("c1"));
}
