#include "mxvoip/call/call_manager.hpp"

#include <algorithm>

namespace mxvoip::call {

namespace {

constexpr std::size_t kMaxEarlyCalls = 256;  // calls whose candidates wait for their invite
constexpr Ms kForgetEndedAfter = 10 * 60 * 1000;
constexpr Ms kMaxLifetime = 24 * 60 * 60 * 1000;

bool active(CallState s) {
    return s != CallState::ended;
}

MediaCommand& command(std::vector<Action>& out, const std::string& call_id, MediaOp op,
                      std::string sdp = {}) {
    return std::get<MediaCommand>(out.emplace_back(MediaCommand{call_id, op, std::move(sdp)}));
}
void candidate_command(std::vector<Action>& out, const std::string& call_id,
                       proto::Candidate candidate) {
    out.push_back(MediaCommand{call_id, MediaOp::add_remote_candidate, {}, std::move(candidate)});
}

}  // namespace

const char* to_string(CallState s) {
    switch (s) {
        case CallState::preparing:
            return "preparing";
        case CallState::invite_sent:
            return "invite_sent";
        case CallState::ringing:
            return "ringing";
        case CallState::answering:
            return "answering";
        case CallState::connecting:
            return "connecting";
        case CallState::connected:
            return "connected";
        case CallState::ended:
            return "ended";
    }
    return "?";
}

CallManager::CallManager(Options options) : opt_(std::move(options)) {}

std::vector<Action> CallManager::handle(const Input& input, Ms now) {
    Out out;
    handle(input, now, out);
    return out;
}

void CallManager::handle(const Input& input, Ms now, Out& out) {
    now_ = now;
    forget_old(now);
    std::visit(
        [&](const auto& in) {
            using T = std::decay_t<decltype(in)>;
            if constexpr (std::is_same_v<T, PlaceCall>)
                place(in, now, out);
            else if constexpr (std::is_same_v<T, AnswerCall>)
                answer(in.call_id, now, out);
            else if constexpr (std::is_same_v<T, RejectCall>)
                reject(in.call_id, out);
            else if constexpr (std::is_same_v<T, HangUpCall>)
                hang_up(in.call_id, in.reason, out);
            else if constexpr (std::is_same_v<T, SyncBatch>)
                batch(in, now, out);
            else if constexpr (std::is_same_v<T, RoomChanged>)
                room_changed(in, out);
            else if constexpr (std::is_same_v<T, LocalDescription>)
                local_description(in, now, out);
            else if constexpr (std::is_same_v<T, LocalCandidate>)
                local_candidate(in, now, out);
            else if constexpr (std::is_same_v<T, GatheringDone>)
                gathering_done(in, out);
            else if constexpr (std::is_same_v<T, IceStateChanged>)
                ice(in, now, out);
            else if constexpr (std::is_same_v<T, TimerFired>)
                timer(in, out);
            else if constexpr (std::is_same_v<T, NegotiationNeeded>)
                negotiation_needed(in, out);
            else if constexpr (std::is_same_v<T, LocalStreams>)
                local_streams(in, out);
            else if constexpr (std::is_same_v<T, SetHold>)
                set_hold(in, out);
            else if constexpr (std::is_same_v<T, SetScreenshare>)
                set_screenshare(in, out);
            else if constexpr (std::is_same_v<T, SetMuted>)
                set_muted(in, out);
        },
        input);
}

std::optional<CallState> CallManager::state(const std::string& call_id) const {
    const Call* c = find(call_id);
    return c ? std::optional(c->state) : std::nullopt;
}

std::optional<Direction> CallManager::direction(const std::string& call_id) const {
    const Call* c = find(call_id);
    return c ? std::optional(c->dir) : std::nullopt;
}

std::optional<std::string> CallManager::opponent_party(const std::string& call_id) const {
    const Call* c = find(call_id);
    if (!c || c->opponent_party.empty()) return std::nullopt;
    return c->opponent_party;
}

std::optional<std::string> CallManager::room(const std::string& call_id) const {
    const Call* c = find(call_id);
    if (!c) return std::nullopt;
    return c->room_id;
}

void CallManager::forget_old(Ms now) {
    while (!ended_at_.empty() && ended_at_.front().first + kForgetEndedAfter < now) {
        const std::string& id = ended_at_.front().second;
        // An ended call's timers were cancelled when it ended.
        calls_.erase(id);
        ended_at_.pop_front();
    }
    std::erase_if(early_candidates_, [&](const auto& kv) {
        return kv.second.first_seen + opt_.invite_lifetime < now;
    });
}

bool CallManager::use_remote_stream(const std::string& call_id, const std::string& stream_id,
                                    bool first_stream) const {
    const Call* c = find(call_id);
    if (!c) return false;
    if (!c->peer_sends_metadata) return first_stream;
    auto it = c->remote_metadata.find(stream_id);
    return it != c->remote_metadata.end() && it->second.purpose_known();
}

CallManager::Call* CallManager::find(const std::string& call_id) {
    auto it = calls_.find(call_id);
    return it == calls_.end() ? nullptr : &it->second;
}

const CallManager::Call* CallManager::find(const std::string& call_id) const {
    auto it = calls_.find(call_id);
    return it == calls_.end() ? nullptr : &it->second;
}

// ---- helpers -----------------------------------------------------------------------------

CallManager::Call& CallManager::add_call(const std::string& id, const std::string& room_id,
                                         Direction dir, CallState state) {
    Call& c = calls_[id];
    c.id = id;
    c.room_id = room_id;
    c.dir = dir;
    c.state = state;
    if (active(state)) active_by_room_[room_id].insert(id);
    return c;
}

std::vector<CallManager::Call*> CallManager::active_in_room(const std::string& room_id) {
    std::vector<Call*> out;
    if (auto it = active_by_room_.find(room_id); it != active_by_room_.end())
        for (const auto& id : it->second) out.push_back(find(id));
    return out;
}

template <typename Event>
Event CallManager::event(const Call& c) const {
    Event e;
    e.call_id = c.id;
    e.party_id = opt_.party_id;
    return e;
}

std::optional<proto::SdpStreamMetadata> CallManager::local_metadata(const Call& c) const {
    if (c.local_metadata.empty()) return std::nullopt;
    return c.local_metadata;
}

void CallManager::send(const Call& c, const proto::CallEvent& e, Out& out) {
    out.push_back(SendEvent{c.room_id, c.id, std::string(proto::call_event_type(e)),
                            proto::serialize_call_event(e)});
}

void CallManager::send_hangup(const Call& c, std::string reason, Out& out) {
    auto hangup = event<proto::CallHangup>(c);
    hangup.reason = std::move(reason);
    send(c, hangup, out);
}

void CallManager::ice_failed(Call& c, Out& out) {
    std::string reason = c.media_flowed ? "ice_timeout" : "ice_failed";
    send_hangup(c, reason, out);
    end(c, reason, false, out);
}

std::uint64_t CallManager::start_timer(const Call& c, TimerKind kind, Ms at, Out& out) {
    std::uint64_t id = next_timer_++;
    timers_[id] = {c.id, kind};
    out.push_back(StartTimer{id, at});
    return id;
}

void CallManager::cancel_timer(std::uint64_t& id, Out& out) {
    if (!id) return;
    timers_.erase(id);
    out.push_back(CancelTimer{id});
    id = 0;
}

void CallManager::set_state(Call& c, CallState s, Out& out) {
    if (c.state == s) return;
    c.state = s;
    out.push_back(StateChanged{c.id, s, {}, false});
}

// The first invite or answer decides whether the peer describes its streams at all.
void CallManager::take_remote_metadata(Call& c, std::optional<proto::SdpStreamMetadata> m,
                                       bool first, Out& out) {
    if (first) c.peer_sends_metadata = m.has_value();
    if (!m) return;
    c.remote_metadata = std::move(*m);
    out.push_back(RemoteStreamsChanged{c.id, c.remote_metadata});
}

CallManager::Call* CallManager::in_call(const std::string& call_id, const char* what, Out& out) {
    Call* c = find(call_id);
    if (!c || (c->state != CallState::connecting && c->state != CallState::connected)) {
        out.push_back(Dropped{call_id, std::string(what) + ": no call in progress"});
        return nullptr;
    }
    return c;
}

void CallManager::end(Call& c, const std::string& reason, bool by_remote, Out& out) {
    if (!active(c.state)) return;
    cancel_timer(c.lifetime_timer, out);
    cancel_timer(c.batch_timer, out);
    cancel_timer(c.ice_restart_timer, out);
    c.pending_local.clear();
    c.remote_by_party.clear();
    if (c.media_started) command(out, c.id, MediaOp::close);
    c.state = CallState::ended;
    c.ended_at = now_;
    ended_at_.emplace_back(now_, c.id);
    if (auto it = active_by_room_.find(c.room_id); it != active_by_room_.end()) {
        it->second.erase(c.id);
        if (it->second.empty()) active_by_room_.erase(it);
    }
    out.push_back(StateChanged{c.id, CallState::ended, reason, by_remote});
}

void CallManager::flush_candidates(Call& c, Out& out) {
    cancel_timer(c.batch_timer, out);
    if (c.pending_local.empty() || !c.signalled || !active(c.state)) return;
    auto candidates = event<proto::CallCandidates>(c);
    candidates.candidates = std::move(c.pending_local);
    c.pending_local.clear();
    send(c, candidates, out);
}

// Candidates go out in batches: the first ~2 s after the invite, then every ~500 ms; the
// end-of-candidates marker flushes at once.
void CallManager::arm_candidate_batch(Call& c, Ms now, Out& out) {
    if (!c.signalled || c.pending_local.empty()) return;
    if (c.pending_local.back().candidate.empty()) {
        flush_candidates(c, out);
        return;
    }
    if (c.batch_timer) return;
    Ms delay = c.dir == Direction::outgoing && c.opponent_party.empty() ? opt_.first_candidate_batch
                                                                        : opt_.candidate_batch;
    c.batch_timer = start_timer(c, TimerKind::candidates, now + delay, out);
}

void CallManager::choose_opponent(Call& c, const std::string& party, Out& out) {
    c.opponent_party = party;
    auto it = c.remote_by_party.find(party);
    if (it != c.remote_by_party.end() && c.media_started) {
        for (auto& cand : it->second) candidate_command(out, c.id, std::move(cand));
        c.remote_by_party.erase(it);
    }
    // Candidates of the parties not chosen are of no use.
    std::erase_if(c.remote_by_party, [&](const auto& kv) { return kv.first != party; });
}

bool CallManager::is_opponent(const Call& c, const RoomEvent& ev, const std::string& party) const {
    return ev.sender == c.opponent_user && party == c.opponent_party;
}

// ---- user inputs -------------------------------------------------------------------------

void CallManager::place(const PlaceCall& in, Ms now, Out& out) {
    if (find(in.call_id)) {
        out.push_back(Dropped{in.call_id, "a call with this id exists already"});
        return;
    }
    // Calls belong in rooms of exactly two: in a bigger room anyone could answer.
    if (auto room = rooms_.find(in.room_id);
        room != rooms_.end() && room->second.joined.size() != 2) {
        out.push_back(Dropped{in.call_id, "the room has " +
                                              std::to_string(room->second.joined.size()) +
                                              " joined members; calls need exactly two"});
        return;
    }
    // Calling someone who is calling us is answering them.
    for (Call* c : active_in_room(in.room_id)) {
        if (c->dir == Direction::incoming && c->state == CallState::ringing) {
            out.push_back(Dropped{
                in.call_id, "answering the ringing call " + c->id + " in the same room instead"});
            answer(c->id, now, out);
            return;
        }
    }
    Call& call = add_call(in.call_id, in.room_id, Direction::outgoing, CallState::preparing);
    call.opponent_user = in.invitee;
    call.media_started = true;
    out.push_back(StateChanged{call.id, CallState::preparing, {}, false});
    command(out, call.id, MediaOp::create_offer);
}

void CallManager::answer(const std::string& call_id, Ms /*now*/, Out& out) {
    Call* c = find(call_id);
    if (!c || c->state != CallState::ringing) {
        out.push_back(Dropped{call_id, "answer: the call is not ringing"});
        return;
    }
    cancel_timer(c->lifetime_timer, out);
    c->media_started = true;
    set_state(*c, CallState::answering, out);
    command(out, c->id, MediaOp::create_answer, std::move(c->remote_offer));
    choose_opponent(*c, c->opponent_party, out);
}

void CallManager::reject(const std::string& call_id, Out& out) {
    Call* c = find(call_id);
    if (!c || !declinable(*c)) {
        out.push_back(Dropped{call_id, "reject: the call is not ringing"});
        return;
    }
    decline(*c, "rejected", out);
}

// Ringing, or answered locally but the answer is not out yet: to the caller, ending it is a
// decline.
bool CallManager::declinable(const Call& c) const {
    return c.state == CallState::ringing || (c.state == CallState::answering && !c.signalled);
}

void CallManager::decline(Call& c, const std::string& end_reason, Out& out) {
    if (c.remote_version == proto::CallVersion::v1)
        send(c, event<proto::CallReject>(c), out);
    else  // version 0 has no reject: a hangup declines
        send_hangup(c, end_reason == "rejected" ? "user_hangup" : end_reason, out);
    end(c, end_reason, false, out);
}

void CallManager::hang_up(const std::string& call_id, const std::string& reason, Out& out) {
    Call* c = find(call_id);
    if (!c || !active(c->state)) {
        out.push_back(Dropped{call_id, "hang up: no such active call"});
        return;
    }
    if (declinable(*c)) {
        // Before our answer is out the caller hears a decline (a version 1 callee sends
        // only m.call.reject), also when our media failed: it stops ringing at once rather
        // than at the end of the invite's lifetime. Here the call ends as what it was.
        decline(*c, reason == "user_hangup" ? "rejected" : reason, out);
        return;
    }
    if (c->signalled) {
        flush_candidates(*c, out);
        send_hangup(*c, reason, out);
    }
    end(*c, reason, false, out);
}

// ---- media inputs ------------------------------------------------------------------------

void CallManager::local_description(const LocalDescription& in, Ms now, Out& out) {
    Call* c = find(in.call_id);
    if (c && c->dir == Direction::outgoing && c->state == CallState::preparing &&
        in.type == "offer") {
        auto invite = event<proto::CallInvite>(*c);
        invite.offer = {"offer", in.sdp};
        invite.lifetime = opt_.invite_lifetime;
        if (!c->opponent_user.empty()) invite.invitee = c->opponent_user;
        invite.metadata = local_metadata(*c);
        send(*c, invite, out);
        c->signalled = true;
        c->lifetime_timer = start_timer(*c, TimerKind::lifetime, now + opt_.invite_lifetime, out);
        set_state(*c, CallState::invite_sent, out);
        arm_candidate_batch(*c, now, out);
        return;
    }
    if (c && c->dir == Direction::incoming && c->state == CallState::answering &&
        in.type == "answer") {
        auto answer = event<proto::CallAnswer>(*c);
        answer.answer = {"answer", in.sdp};
        answer.metadata = local_metadata(*c);
        send(*c, answer, out);
        c->signalled = true;
        set_state(*c, CallState::connecting, out);
        arm_candidate_batch(*c, now, out);
        return;
    }
    bool in_progress = c && (c->state == CallState::connecting || c->state == CallState::connected);
    if (in_progress &&
        ((in.type == "offer" && c->making_offer) || (in.type == "answer" && c->answering_offer))) {
        auto negotiate = event<proto::CallNegotiate>(*c);
        negotiate.description = {in.type, in.sdp};
        negotiate.lifetime = opt_.negotiate_lifetime;
        negotiate.metadata = local_metadata(*c);
        if (in.type == "answer") c->answering_offer = false;
        send(*c, negotiate, out);
        return;
    }
    out.push_back(Dropped{in.call_id, "local " + in.type + " does not fit the call's state"});
}

void CallManager::negotiation_needed(const NegotiationNeeded& in, Out& out) {
    Call* c = in_call(in.call_id, "negotiation", out);
    if (!c) return;
    if (c->remote_version != proto::CallVersion::v1) {
        out.push_back(Dropped{c->id, "the peer speaks version 0: no renegotiation"});
        return;
    }
    if (c->making_offer || c->answering_offer) {
        out.push_back(Dropped{c->id, "a negotiation is already in progress"});
        return;
    }
    c->making_offer = true;
    command(out, c->id, MediaOp::create_offer);
}

void CallManager::local_streams(const LocalStreams& in, Out& out) {
    Call* c = find(in.call_id);
    if (!c || !active(c->state)) {
        out.push_back(Dropped{in.call_id, "local streams for no active call"});
        return;
    }
    c->local_metadata = in.metadata;
}

void CallManager::set_hold(const SetHold& in, Out& out) {
    Call* c = in_call(in.call_id, "hold", out);
    if (!c) return;
    if (c->remote_version != proto::CallVersion::v1) {
        out.push_back(Dropped{c->id, "the peer speaks version 0: hold needs renegotiation"});
        return;
    }
    command(out, c->id, in.hold ? MediaOp::hold : MediaOp::resume);
}

void CallManager::set_screenshare(const SetScreenshare& in, Out& out) {
    Call* c = in_call(in.call_id, "screen share", out);
    if (!c) return;
    if (c->remote_version != proto::CallVersion::v1) {
        out.push_back(
            Dropped{c->id, "the peer speaks version 0: screen share needs renegotiation"});
        return;
    }
    MediaCommand m{
        c->id, in.on ? MediaOp::add_screenshare : MediaOp::remove_screenshare, {}, {}, {}};
    // A peer that sent no stream metadata takes one stream only: the screen replaces the camera.
    m.replace_camera = !c->peer_sends_metadata;
    out.push_back(std::move(m));
}

void CallManager::set_muted(const SetMuted& in, Out& out) {
    Call* c = in_call(in.call_id, "mute", out);
    if (!c) return;
    bool changed = false;
    for (auto& [id, s] : c->local_metadata) {
        if (s.purpose != proto::kPurposeUsermedia) continue;
        changed |= s.audio_muted != in.audio || s.video_muted != in.video;
        s.audio_muted = in.audio;
        s.video_muted = in.video;
    }
    if (!changed) return;
    auto changed_event = event<proto::CallSdpStreamMetadataChanged>(*c);
    changed_event.metadata = c->local_metadata;
    send(*c, changed_event, out);
}

void CallManager::local_candidate(const LocalCandidate& in, Ms now, Out& out) {
    Call* c = find(in.call_id);
    if (!c || !active(c->state)) {
        out.push_back(Dropped{in.call_id, "local candidate for no active call"});
        return;
    }
    c->pending_local.push_back(in.candidate);
    arm_candidate_batch(*c, now, out);
}

void CallManager::gathering_done(const GatheringDone& in, Out& out) {
    Call* c = find(in.call_id);
    if (!c || !active(c->state)) {
        out.push_back(Dropped{in.call_id, "gathering done for no active call"});
        return;
    }
    proto::Candidate marker;
    c->pending_local.push_back(marker);
    if (c->signalled) flush_candidates(*c, out);
}

void CallManager::ice(const IceStateChanged& in, Ms now, Out& out) {
    Call* c = find(in.call_id);
    if (!c || !active(c->state)) {
        out.push_back(Dropped{in.call_id, "ICE state for no active call"});
        return;
    }
    if (in.state == IceState::connected) {
        c->media_flowed = true;
        cancel_timer(c->ice_restart_timer, out);
        if (c->state == CallState::connecting) set_state(*c, CallState::connected, out);
    } else if (in.state == IceState::failed &&
               (c->state == CallState::connecting || c->state == CallState::connected) &&
               c->remote_version == proto::CallVersion::v1 && !c->ice_restart_tried) {
        // First try an ICE restart (a renegotiation); the call ends only if that fails too.
        c->ice_restart_tried = true;
        c->ice_restart_timer =
            start_timer(*c, TimerKind::ice_restart, now + opt_.ice_restart_timeout, out);
        command(out, c->id, MediaOp::ice_restart);
    } else if (in.state == IceState::failed &&
               (c->state == CallState::connecting || c->state == CallState::connected)) {
        ice_failed(*c, out);
    }
}

void CallManager::timer(const TimerFired& in, Out& out) {
    auto it = timers_.find(in.timer_id);
    if (it == timers_.end()) return;  // cancelled, or not ours
    auto [call_id, kind] = it->second;
    timers_.erase(it);
    Call* c = find(call_id);
    if (!c || !active(c->state)) return;
    if (kind == TimerKind::candidates) {
        c->batch_timer = 0;
        flush_candidates(*c, out);
        return;
    }
    if (kind == TimerKind::ice_restart) {
        c->ice_restart_timer = 0;
        ice_failed(*c, out);
        return;
    }
    c->lifetime_timer = 0;
    if (c->state == CallState::invite_sent && !c->replaced_by_party.empty()) {
        // The callee said it was calling us instead, and no call of theirs came: a decline.
        out.push_back(Nonconforming{c->id,
                                    "the callee hung up as replaced, but no call of "
                                    "theirs came: taken as a reject"});
        auto select = event<proto::CallSelectAnswer>(*c);
        select.selected_party_id = c->replaced_by_party;
        send(*c, select, out);
        end(*c, "rejected", true, out);
    } else if (c->state == CallState::invite_sent) {
        send_hangup(*c, "invite_timeout", out);
        end(*c, "invite_timeout", false, out);
    } else if (c->state == CallState::ringing) {
        end(*c, "invite_timeout", true, out);  // the invite expired unanswered: nothing to send
    }
}

void CallManager::room_changed(const RoomChanged& in, Out& out) {
    rooms_[in.room_id] = in;
    for (Call* c : active_in_room(in.room_id)) {
        // The other party leaving the room is a hangup.
        if (!c->opponent_user.empty() && !in.joined.count(c->opponent_user) &&
            c->state != CallState::preparing && c->state != CallState::invite_sent)
            end(*c, "user_hangup", true, out);
    }
}

// ---- room events -------------------------------------------------------------------------

void CallManager::batch(const SyncBatch& in, Ms now, Out& out) {
    struct Item {
        const RoomEvent* ev;
        proto::CallEvent event;
    };
    std::vector<Item> items;
    // Calls answered, rejected or hung up within this batch.
    std::set<std::string> settled;
    for (const auto& ev : in.events) {
        if (!ev.type.starts_with("m.call.")) continue;
        const json::object* content = ev.content.if_object();
        auto string_field = [&](std::string_view key) {
            const json::value* v = content ? content->if_contains(key) : nullptr;
            return v && v->is_string() ? std::string(v->get_string()) : std::string();
        };
        // Our own events come back through /sync, marked by the server as this device's or
        // recognised by our party id: skipped before parsing (they carry our own SDPs). Our
        // answer, reject or hangup still settles its call for the batch: after a restart, an
        // invite this device already dealt with must not ring again.
        if (ev.from_this_device ||
            (ev.sender == opt_.user_id && string_field("party_id") == opt_.party_id)) {
            if (ev.type == "m.call.answer" || ev.type == "m.call.reject" ||
                ev.type == "m.call.hangup")
                settled.insert(string_field("call_id"));
            continue;
        }
        auto parsed = proto::parse_call_event(ev.type, ev.content);
        if (!parsed.ok()) {
            out.push_back(Dropped{
                string_field("call_id"),
                "invalid " + ev.type + ": " + parsed.error().path + " " + parsed.error().rule});
            continue;
        }
        const proto::CallEvent& event = items.emplace_back(&ev, std::move(parsed.value())).event;
        if (std::holds_alternative<proto::CallAnswer>(event) ||
            std::holds_alternative<proto::CallReject>(event) ||
            std::holds_alternative<proto::CallHangup>(event))
            settled.insert(std::visit([](const auto& e) { return e.call_id; }, event));
    }
    // The handlers take the events' strings (SDPs, candidates) rather than copying them.
    for (auto& item : items) {
        const RoomEvent& ev = *item.ev;
        std::visit(
            [&](auto& e) {
                using T = std::decay_t<decltype(e)>;
                if constexpr (std::is_same_v<T, proto::CallInvite>) {
                    if (settled.count(e.call_id) && !find(e.call_id))
                        out.push_back(Dropped{
                            e.call_id,
                            "invite already answered, rejected or hung up in the same batch"});
                    else
                        on_invite(ev, e, now, out);
                } else if constexpr (std::is_same_v<T, proto::CallAnswer>) {
                    on_answer(ev, e, out);
                } else if constexpr (std::is_same_v<T, proto::CallCandidates>) {
                    on_candidates(ev, e, now, out);
                } else if constexpr (std::is_same_v<T, proto::CallSelectAnswer>) {
                    on_select_answer(ev, e, out);
                } else if constexpr (std::is_same_v<T, proto::CallReject>) {
                    on_reject(ev, e, out);
                } else if constexpr (std::is_same_v<T, proto::CallHangup>) {
                    on_hangup(ev, e, out);
                } else if constexpr (std::is_same_v<T, proto::CallNegotiate>) {
                    on_negotiate(ev, e, out);
                } else if constexpr (std::is_same_v<T, proto::CallSdpStreamMetadataChanged>) {
                    on_metadata_changed(ev, e, out);
                }
            },
            item.event);
    }
}

void CallManager::on_invite(const RoomEvent& ev, proto::CallInvite& invite, Ms now, Out& out) {
    // Candidates that came first belong to this invite, whether it rings or not.
    auto early = early_candidates_.extract(invite.call_id);
    if (invite.invitee && *invite.invitee != opt_.user_id) {
        out.push_back(Dropped{invite.call_id, "invite is for " + *invite.invitee});
        return;
    }
    if (ev.sender == opt_.user_id) {
        out.push_back(Dropped{invite.call_id, "a call placed by another of our devices"});
        return;
    }
    if (auto room = rooms_.find(ev.room_id); room != rooms_.end() && room->second.is_public) {
        out.push_back(Dropped{invite.call_id, "invites in public rooms are ignored"});
        return;
    }
    if (find(invite.call_id)) {
        out.push_back(Dropped{invite.call_id, "duplicate invite"});
        return;
    }
    // Lifetimes and ages come from other clients and servers: a day at most (and no negative
    // age), so that the ring timer stays within any clock's range.
    Ms left = std::min(invite.lifetime, kMaxLifetime) - std::clamp<Ms>(ev.age_ms, 0, kMaxLifetime);
    if (left < opt_.min_ring_left) {
        out.push_back(Dropped{invite.call_id, "invite expired (" + std::to_string(ev.age_ms) +
                                                  " ms old, lifetime " +
                                                  std::to_string(invite.lifetime) + " ms)"});
        return;
    }
    // Glare: our own call to the same room.
    Call* ours = nullptr;
    auto in_room = active_in_room(ev.room_id);
    for (Call* c : in_room)
        if (c->dir == Direction::outgoing &&
            (c->state == CallState::preparing || c->state == CallState::invite_sent))
            ours = c;
    // Already in a call in this room: answer busy instead of ringing.
    for (Call* c : in_room) {
        if (c->state != CallState::preparing && c->state != CallState::invite_sent &&
            c->state != CallState::ringing) {
            Call& b = add_call(invite.call_id, ev.room_id, Direction::incoming, CallState::ended);
            b.opponent_user = ev.sender;
            b.opponent_party = invite.party_id;
            send_hangup(b, "user_busy", out);
            out.push_back(StateChanged{b.id, CallState::ended, "user_busy", false});
            return;
        }
    }
    bool auto_answer = false;
    std::string media_from;
    if (ours) {
        bool replacement = !ours->replaced_by_party.empty() && ev.sender == ours->opponent_user;
        if (ours->state == CallState::preparing || replacement || invite.call_id < ours->id) {
            // Theirs lives: drop ours (hanging it up if it is out) and answer theirs with our
            // media.
            if (ours->signalled) send_hangup(*ours, "user_hangup", out);
            ours->media_started = false;  // its media moves to the surviving call
            end(*ours, "replaced", false, out);
            auto_answer = true;
            media_from = ours->id;
        } else {
            out.push_back(Dropped{invite.call_id,
                                  "glare: our call " + ours->id + " has the lesser id and lives"});
            return;
        }
    }
    Call& call = add_call(invite.call_id, ev.room_id, Direction::incoming, CallState::ringing);
    call.opponent_user = ev.sender;
    call.opponent_party = invite.party_id;
    call.remote_version = invite.version;
    call.remote_offer = std::move(invite.offer.sdp);
    call.polite = true;  // the callee yields in offer collisions
    if (!early.empty()) call.remote_by_party = std::move(early.mapped().by_party);
    out.push_back(StateChanged{call.id, CallState::ringing, {}, false});
    take_remote_metadata(call, std::move(invite.metadata), true, out);
    call.lifetime_timer = start_timer(call, TimerKind::lifetime, now + left, out);
    if (auto_answer) {
        command(out, call.id, MediaOp::transfer_media).from_call_id = media_from;
        answer(call.id, now, out);
    }
}

// An answer or a reject: on a ringing device, another of our devices took the call
// (`elsewhere`); on the caller, it counts only while the invite waits for its first response.
// Returns the caller's call when the response is to be acted on.
CallManager::Call* CallManager::invite_response(const RoomEvent& ev, const std::string& call_id,
                                                const std::string& what, const char* elsewhere,
                                                Out& out) {
    Call* c = find(call_id);
    if (!c || !active(c->state)) {
        out.push_back(Dropped{call_id, what + " for no active call"});
        return nullptr;
    }
    if (c->dir == Direction::incoming) {
        if (ev.sender == opt_.user_id && c->state == CallState::ringing)
            end(*c, elsewhere, true, out);
        else
            out.push_back(Dropped{call_id, what + " seen on the responding side"});
        return nullptr;
    }
    if (!c->opponent_user.empty() && ev.sender != c->opponent_user) {
        out.push_back(Dropped{
            call_id, what + " from " + ev.sender + ", the call is for " + c->opponent_user});
        return nullptr;
    }
    if (c->state != CallState::invite_sent) {
        out.push_back(Dropped{call_id, what + " after party " + c->opponent_party + " answered"});
        return nullptr;
    }
    return c;
}

void CallManager::on_answer(const RoomEvent& ev, proto::CallAnswer& a, Out& out) {
    Call* c = invite_response(ev, a.call_id, "answer", "answered_elsewhere", out);
    if (!c) return;
    cancel_timer(c->lifetime_timer, out);
    c->remote_version = a.version;
    auto select = event<proto::CallSelectAnswer>(*c);
    select.selected_party_id = a.party_id;
    send(*c, select, out);
    command(out, c->id, MediaOp::set_remote_description, std::move(a.answer.sdp));
    take_remote_metadata(*c, std::move(a.metadata), true, out);
    choose_opponent(*c, a.party_id, out);
    set_state(*c, CallState::connecting, out);
}

void CallManager::on_candidates(const RoomEvent& ev, proto::CallCandidates& cands, Ms now,
                                Out& out) {
    Call* c = find(cands.call_id);
    if (!c) {
        // Candidates may overtake their invite: keep them for a while.
        if (ev.sender != opt_.user_id &&
            (early_candidates_.count(cands.call_id) || early_candidates_.size() < kMaxEarlyCalls)) {
            auto [it, fresh] = early_candidates_.try_emplace(cands.call_id);
            if (fresh) it->second.first_seen = now;
            auto& list = it->second.by_party[cands.party_id];
            list.insert(list.end(), std::make_move_iterator(cands.candidates.begin()),
                        std::make_move_iterator(cands.candidates.end()));
        }
        return;
    }
    if (!active(c->state)) return;
    if (ev.sender != c->opponent_user) {
        out.push_back(
            Dropped{cands.call_id, "candidates from " + ev.sender + ", who is not in this call"});
        return;
    }
    if (!c->opponent_party.empty() && cands.party_id != c->opponent_party) {
        out.push_back(Dropped{
            cands.call_id, "candidates from party " + cands.party_id + ", which was not chosen"});
        return;
    }
    bool apply_now = !c->opponent_party.empty() && c->media_started &&
                     (c->dir == Direction::incoming ? c->state != CallState::ringing
                                                    : c->state != CallState::invite_sent);
    if (!apply_now) {
        auto& list = c->remote_by_party[cands.party_id];
        list.insert(list.end(), std::make_move_iterator(cands.candidates.begin()),
                    std::make_move_iterator(cands.candidates.end()));
        return;
    }
    for (auto& cand : cands.candidates) candidate_command(out, c->id, std::move(cand));
}

void CallManager::on_select_answer(const RoomEvent& ev, const proto::CallSelectAnswer& s,
                                   Out& out) {
    Call* c = find(s.call_id);
    if (!c || !active(c->state) || c->dir != Direction::incoming) {
        out.push_back(Dropped{s.call_id, "select_answer for no active incoming call"});
        return;
    }
    if (!is_opponent(*c, ev, s.party_id)) {
        out.push_back(Dropped{s.call_id, "select_answer from someone other than the caller"});
        return;
    }
    if (s.selected_party_id == opt_.party_id) return;  // we are the chosen one
    // Another device answered first: stop, and send nothing.
    end(*c, "answered_elsewhere", true, out);
}

void CallManager::on_reject(const RoomEvent& ev, const proto::CallReject& r, Out& out) {
    Call* c = invite_response(ev, r.call_id, "reject", "rejected_elsewhere", out);
    if (!c) return;
    // The caller selects a reject like an answer, so the callee's other devices stop ringing.
    auto select = event<proto::CallSelectAnswer>(*c);
    select.selected_party_id = r.party_id;
    send(*c, select, out);
    end(*c, "rejected", true, out);
}

void CallManager::on_hangup(const RoomEvent& ev, const proto::CallHangup& h, Out& out) {
    Call* c = find(h.call_id);
    if (!c || !active(c->state)) {
        out.push_back(Dropped{h.call_id, "hangup for no active call"});
        return;
    }
    if (!c->opponent_party.empty()) {
        if (!is_opponent(*c, ev, h.party_id)) {
            out.push_back(Dropped{h.call_id, "hangup from a party that is not the opponent"});
            return;
        }
        end(*c, h.effective_reason(), true, out);
        return;
    }
    // Outgoing, not answered yet: a version 0 callee declines with a hangup, and a busy
    // callee says so with one.
    if (ev.sender == c->opponent_user && h.version == proto::CallVersion::v0) {
        end(*c, "rejected", true, out);
        return;
    }
    if (ev.sender == c->opponent_user && h.effective_reason() == "user_busy") {
        end(*c, "user_busy", true, out);
        return;
    }
    // Glare seen first by the callee: it hangs up ours as `replaced` and calls us instead. The
    // two events may reach us in either order; theirs is answered when it comes (on_invite).
    if (ev.sender == c->opponent_user && c->state == CallState::invite_sent &&
        h.effective_reason() == "replaced") {
        if (c->replaced_by_party.empty()) {
            c->replaced_by_party = h.party_id;
            cancel_timer(c->lifetime_timer, out);
            c->lifetime_timer =
                start_timer(*c, TimerKind::lifetime, now_ + opt_.replacement_wait, out);
        }
        return;
    }
    // A version 1 callee should decline with m.call.reject, but some (nheko) send a hangup
    // instead, e.g. when their media cannot start. It is a decline all the same: selected
    // like a reject so the callee's other devices stop ringing, or we would ring on for the
    // whole lifetime of the invite.
    if (ev.sender == c->opponent_user && c->state == CallState::invite_sent) {
        out.push_back(Nonconforming{
            h.call_id, "the callee declined with m.call.hangup (" + h.effective_reason() +
                           ") instead of m.call.reject: taken as a reject"});
        auto select = event<proto::CallSelectAnswer>(*c);
        select.selected_party_id = h.party_id;
        send(*c, select, out);
        end(*c, "rejected", true, out);
        return;
    }
    out.push_back(Dropped{h.call_id, "hangup from a party that is not the opponent"});
}

void CallManager::on_negotiate(const RoomEvent& ev, proto::CallNegotiate& n, Out& out) {
    Call* c = find(n.call_id);
    if (!c || (c->state != CallState::connecting && c->state != CallState::connected)) {
        out.push_back(Dropped{n.call_id, "negotiate for no call in progress"});
        return;
    }
    if (!is_opponent(*c, ev, n.party_id)) {
        out.push_back(Dropped{n.call_id, "negotiate from a party that is not the opponent"});
        return;
    }
    if (ev.age_ms > n.lifetime) {
        out.push_back(Dropped{n.call_id, "negotiate expired (" + std::to_string(ev.age_ms) +
                                             " ms old, lifetime " + std::to_string(n.lifetime) +
                                             " ms)"});
        return;
    }
    if (n.description.type == "offer") {
        if (c->making_offer) {
            if (!c->polite) {
                out.push_back(Dropped{
                    n.call_id, "offer collision: we are the impolite side and keep our offer"});
                return;
            }
            c->making_offer = false;
            command(out, c->id, MediaOp::rollback);
        }
        c->answering_offer = true;
        take_remote_metadata(*c, std::move(n.metadata), false, out);
        command(out, c->id, MediaOp::create_answer, std::move(n.description.sdp));
        return;
    }
    if (!c->making_offer) {
        out.push_back(Dropped{n.call_id, "negotiate answer without an offer of ours"});
        return;
    }
    c->making_offer = false;
    take_remote_metadata(*c, std::move(n.metadata), false, out);
    command(out, c->id, MediaOp::set_remote_description, std::move(n.description.sdp));
}

void CallManager::on_metadata_changed(const RoomEvent& ev, proto::CallSdpStreamMetadataChanged& m,
                                      Out& out) {
    Call* c = find(m.call_id);
    if (!c || !active(c->state) || c->opponent_party.empty() || !is_opponent(*c, ev, m.party_id)) {
        out.push_back(Dropped{m.call_id, "stream metadata from a party that is not the opponent"});
        return;
    }
    take_remote_metadata(*c, std::move(m.metadata), false, out);
}

}  // namespace mxvoip::call
