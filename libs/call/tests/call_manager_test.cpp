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

RoomEvent event(const std::string& sender, const std::string& type, json::object content, Ms age = 0) {
    return RoomEvent{kRoom, sender, type, std::move(content), age};
}

RoomEvent invite(const std::string& call_id, const std::string& sender, const std::string& party, Ms age = 0,
                 Ms lifetime = 60000, std::optional<std::string> invitee = {}) {
    json::object c = common(call_id, party);
    c["offer"] = {{"type", "offer"}, {"sdp", "offer-sdp-" + call_id}};
    c["lifetime"] = lifetime;
    if (invitee) c["invitee"] = *invitee;
    return event(sender, "m.call.invite", std::move(c), age);
}

RoomEvent answer_ev(const std::string& call_id, const std::string& sender, const std::string& party) {
    json::object c = common(call_id, party);
    c["answer"] = {{"type", "answer"}, {"sdp", "answer-sdp-" + party}};
    return event(sender, "m.call.answer", std::move(c));
}

RoomEvent candidates_ev(const std::string& call_id, const std::string& sender, const std::string& party,
                        const std::string& candidate) {
    json::object c = common(call_id, party);
    c["candidates"] = json::array{json::object{{"candidate", candidate}, {"sdpMid", "0"}}};
    return event(sender, "m.call.candidates", std::move(c));
}

RoomEvent simple(const std::string& type, const std::string& call_id, const std::string& sender, const std::string& party,
                 json::object extra = {}) {
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
    Client(const std::string& user, const std::string& party) : m(CallManager::Options{user, party}) {}
    std::vector<Action> in(const Input& input, Ms now = 0) { return m.handle(input, now); }
    std::vector<Action> sync(std::vector<RoomEvent> events, Ms now = 0) { return m.handle(SyncBatch{std::move(events)}, now); }
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
    EXPECT_TRUE(sent(a.in(LocalCandidate{"c1", cand("early")}, 10)).empty()) << "never before the invite";
    auto out = a.in(LocalDescription{"c1", "offer", "sdp"}, 100);
    auto timers = all<StartTimer>(out);
    ASSERT_EQ(timers.size(), 2u);  // lifetime + first candidate batch
    EXPECT_EQ(timers[1].at, 100 + 2000);
    EXPECT_TRUE(all<StartTimer>(a.in(LocalCandidate{"c1", cand("second")}, 200)).empty()) << "one batch timer";
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

TEST(Calls, OurOwnEchoIsIgnoredByPartyId) {
    Client a = alice_calling();
    auto out = a.sync({invite("c1", kAlice, "ALICE1")});
    EXPECT_TRUE(out.empty());
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
    auto sent_answer = sent(b.in(LocalDescription{"c1", "answer", "bob-answer"}, 200), "m.call.answer");
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
    a.sync({candidates_ev("c1", kBob, "PHONE", "phone-cand"), candidates_ev("c1", kBob, "LAPTOP", "laptop-cand")});
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
    auto out = b.sync({simple("m.call.select_answer", "c1", kAlice, "ALICE1", {{"selected_party_id", "LAPTOP"}})});
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
    json::object v0{{"call_id", "c2"}, {"version", 0}, {"lifetime", 60000}, {"offer", {{"type", "offer"}, {"sdp", "s"}}}};
    b.sync({event(kAlice, "m.call.invite", v0)});
    auto old = b.in(RejectCall{"c2"});
    EXPECT_TRUE(sent(old, "m.call.reject").empty());
    ASSERT_EQ(sent(old, "m.call.hangup").size(), 1u);
}

TEST(Calls, TheCallerSelectsARejectLikeAnAnswer) {
    Client a = alice_calling();
    auto out = a.sync({simple("m.call.reject", "c1", kBob, "PHONE")});
    auto select = sent(out, "m.call.select_answer");
    ASSERT_EQ(select.size(), 1u);
    EXPECT_EQ(select[0].content.at("selected_party_id"), json::value("PHONE"));
    ASSERT_TRUE(ended(out));
    EXPECT_EQ(ended(out)->end_reason, "rejected");
    EXPECT_TRUE(ended(out)->ended_by_remote);
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

TEST(Calls, IceFailureIsIceFailedBeforeMediaFlowedAndIceTimeoutAfter) {
    Client a = alice_calling();
    a.sync({answer_ev("c1", kBob, "PHONE")});
    auto failed = a.in(IceStateChanged{"c1", IceState::failed});
    EXPECT_EQ(sent(failed, "m.call.hangup").at(0).content.at("reason"), json::value("ice_failed"));
    Client b = alice_calling("c2");
    b.sync({answer_ev("c2", kBob, "PHONE")});
    b.in(IceStateChanged{"c2", IceState::connected});
    auto timeout = b.in(IceStateChanged{"c2", IceState::failed});
    EXPECT_EQ(sent(timeout, "m.call.hangup").at(0).content.at("reason"), json::value("ice_timeout"));
    EXPECT_EQ(ended(timeout)->end_reason, "ice_timeout");
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
    ASSERT_EQ(sent(out, "m.call.reject").size(), 1u) << "the caller must not ring on until the invite expires";
    EXPECT_EQ(media(out, MediaOp::close).size(), 1u);
    // A late local answer goes nowhere.
    EXPECT_TRUE(sent(b.in(LocalDescription{"c1", "answer", "sdp"})).empty());
}
