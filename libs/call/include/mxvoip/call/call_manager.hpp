#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

#include "mxvoip/call/ice_state.hpp"
#include "mxvoip/proto/call_events.hpp"

namespace mxvoip::call {

namespace json = boost::json;

// Milliseconds on the driver's monotonic clock. Time is an input: nothing here reads a clock.
using Ms = std::int64_t;

enum class CallState {
    preparing,    // outgoing: waiting for the local offer
    invite_sent,  // outgoing: waiting for an answer
    ringing,      // incoming: waiting for the user
    answering,    // incoming: the user answered; waiting for the local answer
    connecting,   // signalling done; waiting for ICE
    connected,    // media flows
    ended,
};
const char* to_string(CallState s);

enum class Direction { outgoing, incoming };

// ---- Inputs ------------------------------------------------------------------------------

// The user places a call. The driver chooses the call id (random, per VOIP-NOTES.md).
struct PlaceCall {
    std::string call_id;
    std::string room_id;
    std::string invitee;  // the one other member of the room
};
struct AnswerCall {
    std::string call_id;
};
struct RejectCall {
    std::string call_id;
};
// The user hangs up, or (`reason` user_media_failed) our media cannot go on.
struct HangUpCall {
    std::string call_id;
    std::string reason = "user_hangup";
};
// One room event from /sync. `age_ms` is unsigned.age as the server reported it.
// `from_this_device`: the server marked the event as sent by this very client
// (unsigned.transaction_id) — our own echo, skipped without reading it. Echoes without the
// mark are recognised by our party id.
struct RoomEvent {
    std::string room_id;
    std::string sender;
    std::string type;
    json::value content;
    Ms age_ms = 0;
    bool from_this_device = false;
};
// A whole /sync batch: processed together, so that an invite already answered, rejected or
// hung up in the same batch never rings.
struct SyncBatch {
    std::vector<RoomEvent> events;
};
// What the driver knows of a room: its join rule and joined members. A call's opponent
// leaving the room ends the call.
struct RoomChanged {
    std::string room_id;
    bool is_public = false;
    std::set<std::string> joined;
};
// The media layer produced a description (after create_offer / create_answer).
struct LocalDescription {
    std::string call_id;
    std::string type;  // "offer" or "answer"
    std::string sdp;
};
struct LocalCandidate {
    std::string call_id;
    proto::Candidate candidate;
};
struct GatheringDone {
    std::string call_id;
};
struct IceStateChanged {
    std::string call_id;
    IceState state;
};
struct TimerFired {
    std::uint64_t timer_id;
};
// The media layer needs a new offer (tracks added or removed, hold, ICE restart): perfect
// negotiation through m.call.negotiate.
struct NegotiationNeeded {
    std::string call_id;
};
// The local streams and what they are for; sent with every invite, answer and negotiate.
struct LocalStreams {
    std::string call_id;
    proto::SdpStreamMetadata metadata;
};
// User actions during a call. Hold and screen share change the media, which then asks for
// a negotiation; mute is signalled without one (sdp_stream_metadata_changed).
struct SetHold {
    std::string call_id;
    bool hold = true;
};
struct SetScreenshare {
    std::string call_id;
    bool on = true;
};
struct SetMuted {
    std::string call_id;
    bool audio = false;
    bool video = false;
};

using Input =
    std::variant<PlaceCall, AnswerCall, RejectCall, HangUpCall, SyncBatch, RoomChanged,
                 LocalDescription, LocalCandidate, GatheringDone, IceStateChanged, TimerFired,
                 NegotiationNeeded, LocalStreams, SetHold, SetScreenshare, SetMuted>;

// ---- Actions -----------------------------------------------------------------------------

struct SendEvent {
    std::string room_id;
    std::string call_id;
    std::string type;
    json::object content;
};
enum class MediaOp {
    create_offer,            // produce an offer (LocalDescription); first one starts local media
    create_answer,           // set `sdp` as the remote offer, produce an answer
    set_remote_description,  // the remote answer in `sdp`
    add_remote_candidate,    // `candidate`
    transfer_media,          // glare: hand the media of `from_call_id` to this call
    rollback,                // polite side in an offer collision: drop our pending offer
    hold,                    // transceivers to sendonly/inactive (then NegotiationNeeded)
    resume,
    add_screenshare,  // `replace_camera`: the peer takes one stream only (no metadata)
    remove_screenshare,
    ice_restart,  // restart ICE (then NegotiationNeeded)
    close,        // stop media for this call
};
struct MediaCommand {
    std::string call_id;
    MediaOp op;
    std::string sdp;
    proto::Candidate candidate;
    std::string from_call_id;
    bool replace_camera = false;
};
// The opponent's streams and what they are for, whenever that changes.
struct RemoteStreamsChanged {
    std::string call_id;
    proto::SdpStreamMetadata metadata;
};
struct StartTimer {
    std::uint64_t timer_id;
    Ms at;
};
struct CancelTimer {
    std::uint64_t timer_id;
};
// How a call ended, for people: a spec hangup reason, or one of "rejected",
// "answered_elsewhere", "rejected_elsewhere", "replaced" (glare), "opponent_left".
struct StateChanged {
    std::string call_id;
    CallState state;
    std::string end_reason;  // set when state == ended
    bool ended_by_remote = false;
};
// An input that does not fit the current state, with the reason: for the driver's log.
struct Dropped {
    std::string call_id;
    std::string why;
};

// An input that breaks the spec but is acted on, as a client in the wild sends it: for the
// driver's log.
struct Nonconforming {
    std::string call_id;
    std::string what;
};

using Action = std::variant<SendEvent, MediaCommand, StartTimer, CancelTimer, StateChanged, Dropped,
                            Nonconforming, RemoteStreamsChanged>;

// All calls of one client (user id, party id): routes events by call_id and party_id,
// resolves glare, and never does I/O, sleeps or throws. Feed inputs, carry out the actions.
class CallManager {
  public:
    struct Options {
        std::string user_id;
        std::string party_id;             // chosen once per client session (the device id)
        Ms invite_lifetime = 90000;       // VOIP-NOTES.md recommends at least 90 s
        Ms min_ring_left = 3000;          // an invite with less left than this does not ring
        Ms first_candidate_batch = 2000;  // after the invite (matrix-js-sdk's timing)
        Ms candidate_batch = 500;         // after the answer
        Ms negotiate_lifetime = 10000;    // lifetime of our m.call.negotiate
        Ms ice_restart_timeout =
            10000;  // an ICE restart that has not connected by then ends the call
        // A callee that hangs up our unanswered call as `replaced` (glare) calls us instead:
        // its invite may reach us after the hangup, and is waited for this long.
        Ms replacement_wait = 10000;
    };
    explicit CallManager(Options options);

    std::vector<Action> handle(const Input& input, Ms now);
    // The same, appending the actions to `out`: a caller that handles many inputs reuses one
    // vector instead of allocating one per input.
    void handle(const Input& input, Ms now, std::vector<Action>& out);

    std::optional<CallState> state(const std::string& call_id) const;
    std::optional<Direction> direction(const std::string& call_id) const;
    std::optional<std::string> room(const std::string& call_id) const;
    // The party chosen as the other end (after select_answer / on answering).
    std::optional<std::string> opponent_party(const std::string& call_id) const;
    // Whether to use an incoming stream: if the opponent's first invite or answer carried
    // stream metadata, only streams it lists with a known purpose; otherwise only the first.
    bool use_remote_stream(const std::string& call_id, const std::string& stream_id,
                           bool first_stream) const;
    const Options& options() const { return opt_; }

  private:
    struct Call {
        std::string id;
        std::string room_id;
        Direction dir = Direction::outgoing;
        CallState state = CallState::preparing;
        std::string opponent_user;
        std::string opponent_party;  // empty until chosen
        proto::CallVersion remote_version = proto::CallVersion::v1;
        std::string remote_offer;  // incoming: the invite's SDP
        std::uint64_t lifetime_timer = 0;
        std::uint64_t batch_timer = 0;
        bool signalled = false;  // our invite / answer is out: candidates may follow
        bool media_started = false;
        bool media_flowed = false;
        std::vector<proto::Candidate> pending_local;
        Ms ended_at = 0;
        bool polite = false;           // perfect negotiation: the callee (and a glare loser) yields
        bool making_offer = false;     // our renegotiation offer is out or being made
        bool answering_offer = false;  // we are making the answer to their renegotiation offer
        bool ice_restart_tried = false;
        std::string replaced_by_party;  // the callee hung up as `replaced`: its call will come
        std::uint64_t ice_restart_timer = 0;
        proto::SdpStreamMetadata local_metadata;
        bool peer_sends_metadata = false;  // decided by their first invite / chosen answer
        proto::SdpStreamMetadata remote_metadata;
        std::map<std::string, std::vector<proto::Candidate>>
            remote_by_party;  // before a party is chosen
    };
    enum class TimerKind { lifetime, candidates, ice_restart };

    using Out = std::vector<Action>;
    void place(const PlaceCall& in, Ms now, Out& out);
    void answer(const std::string& call_id, Ms now, Out& out);
    void reject(const std::string& call_id, Out& out);
    void hang_up(const std::string& call_id, const std::string& reason, Out& out);
    bool declinable(const Call& c) const;
    void decline(Call& c, const std::string& end_reason, Out& out);
    void batch(const SyncBatch& in, Ms now, Out& out);
    void room_changed(const RoomChanged& in, Out& out);
    void local_description(const LocalDescription& in, Ms now, Out& out);
    void local_candidate(const LocalCandidate& in, Ms now, Out& out);
    void gathering_done(const GatheringDone& in, Out& out);
    void ice(const IceStateChanged& in, Ms now, Out& out);
    void timer(const TimerFired& in, Out& out);
    void negotiation_needed(const NegotiationNeeded& in, Out& out);
    void local_streams(const LocalStreams& in, Out& out);
    void set_hold(const SetHold& in, Out& out);
    void set_screenshare(const SetScreenshare& in, Out& out);
    void set_muted(const SetMuted& in, Out& out);
    void on_negotiate(const RoomEvent& ev, proto::CallNegotiate& n, Out& out);
    void on_metadata_changed(const RoomEvent& ev, proto::CallSdpStreamMetadataChanged& m, Out& out);
    void take_remote_metadata(Call& c, std::optional<proto::SdpStreamMetadata> m, bool first,
                              Out& out);
    Call* in_call(const std::string& call_id, const char* what, Out& out);

    void on_invite(const RoomEvent& ev, proto::CallInvite& invite, Ms now, Out& out);
    Call* invite_response(const RoomEvent& ev, const std::string& call_id, const std::string& what,
                          const char* elsewhere, Out& out);
    void on_answer(const RoomEvent& ev, proto::CallAnswer& answer, Out& out);
    void on_candidates(const RoomEvent& ev, proto::CallCandidates& c, Ms now, Out& out);
    void on_select_answer(const RoomEvent& ev, const proto::CallSelectAnswer& s, Out& out);
    void on_reject(const RoomEvent& ev, const proto::CallReject& r, Out& out);
    void on_hangup(const RoomEvent& ev, const proto::CallHangup& h, Out& out);

    // A new call (callers check the id is not in use), built in its place and listed in its
    // room while it is active.
    Call& add_call(const std::string& id, const std::string& room_id, Direction dir,
                   CallState state);
    std::vector<Call*> active_in_room(const std::string& room_id);
    Call* find(const std::string& call_id);
    const Call* find(const std::string& call_id) const;
    // An event of ours in call `c`, its common fields filled in.
    template <typename Event>
    Event event(const Call& c) const;
    // The local stream metadata, for the events that carry it (none while it is empty).
    std::optional<proto::SdpStreamMetadata> local_metadata(const Call& c) const;
    void send(const Call& c, const proto::CallEvent& event, Out& out);
    void send_hangup(const Call& c, std::string reason, Out& out);
    // ICE failed for good: hang up with ice_failed, or ice_timeout if media had flowed.
    void ice_failed(Call& c, Out& out);
    std::uint64_t start_timer(const Call& c, TimerKind kind, Ms at, Out& out);
    void cancel_timer(std::uint64_t& id, Out& out);
    void set_state(Call& c, CallState s, Out& out);
    void end(Call& c, const std::string& reason, bool by_remote, Out& out);
    void flush_candidates(Call& c, Out& out);
    void arm_candidate_batch(Call& c, Ms now, Out& out);
    void choose_opponent(Call& c, const std::string& party, Out& out);
    bool is_opponent(const Call& c, const RoomEvent& ev, const std::string& party) const;

    Options opt_;
    std::unordered_map<std::string, Call> calls_;  // ended ones too, for state()
    // Room -> ids of its calls not ended.
    std::unordered_map<std::string, std::set<std::string>> active_by_room_;
    // Timer id -> its call and kind.
    std::unordered_map<std::uint64_t, std::pair<std::string, TimerKind>> timers_;
    std::uint64_t next_timer_ = 1;
    Ms now_ = 0;  // the time of the input being handled
    std::map<std::string, RoomChanged> rooms_;
    // Candidates that arrived before the invite of their call, by call then party; kept for
    // one invite lifetime at most.
    struct Early {
        Ms first_seen = 0;
        std::map<std::string, std::vector<proto::Candidate>> by_party;
    };
    std::map<std::string, Early> early_candidates_;
    // Ended calls are forgotten after a while, so a long-running client does not grow.
    std::deque<std::pair<Ms, std::string>> ended_at_;  // in the order they ended
    void forget_old(Ms now);
};

}  // namespace mxvoip::call
