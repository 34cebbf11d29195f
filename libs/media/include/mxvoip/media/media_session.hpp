#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "mxvoip/call/ice_state.hpp"

namespace mxvoip::media {

enum class Kind { audio, video };
const char* to_string(Kind k);

using call::IceState;

// One entry of /voip/turnServer: every URI shares the username and password.
struct TurnServer {
    std::vector<std::string> uris;
    std::string username;
    std::string password;
};

struct SessionOptions {
    bool video = false;
    bool relay_only = false;  // only relay candidates on our side
    double tone_hz = 440;     // the microphone is a sine test tone of this frequency
    std::vector<TurnServer> turn;
};

// ---- Events from the media layer -----------------------------------------------------------
// They are delivered on GStreamer's threads: the sink must only hand them to its own executor.

// A local description ready to signal; it already carries the candidates gathered in the
// first ~200 ms (VOIP-NOTES.md), later ones follow as CandidateReady.
struct DescriptionReady {
    std::string type;  // "offer" or "answer"
    std::string sdp;
};
struct CandidateReady {
    unsigned mline = 0;
    std::string mid;
    std::string candidate;
};
struct GatheringComplete {};
struct IceChanged {
    IceState state;
};
// A remote stream's track appeared (stream id from the SDP's msid, so stream metadata maps it).
struct RemoteTrackAdded {
    std::string stream_id;
    Kind kind;
};
// The first decoded frame of a remote track (audio: the first buffer with sound in it).
struct FirstFrame {
    std::string stream_id;
    Kind kind;
};
struct MediaFailed {
    std::string what;
};
using Event = std::variant<DescriptionReady, CandidateReady, GatheringComplete, IceChanged,
                           RemoteTrackAdded, FirstFrame, MediaFailed>;
using EventSink = std::function<void(Event)>;

// ---- Stats ---------------------------------------------------------------------------------

struct TrackStats {
    std::string stream_id;
    Kind kind = Kind::audio;
    std::uint64_t frames = 0;  // decoded video frames, or audio buffers
    double tone_hz = 0;        // audio: the measured frequency of what was received
};
struct Stats {
    double rtt_ms = -1;  // -1: not known yet
    double jitter_ms = -1;
    std::int64_t packets_lost = 0;
    std::uint64_t packets_received = 0;
    std::uint64_t bytes_sent = 0;
    std::uint64_t bytes_received = 0;
    bool relay = false;  // the selected candidate pair uses a relay candidate on our side
    std::vector<TrackStats> tracks;
};

// Our stream ids, as the `msid` of our tracks; the call layer names their purposes in
// sdp_stream_metadata.
struct LocalStreamIds {
    std::string usermedia;
    std::string screenshare;  // empty while not sharing
};

// One peer connection: what the call driver asks of the media layer. Methods are called from
// the driver's thread and never wait on the media engine; results come back as events.
// Negotiation steps (offer, answer, remote answer, candidates, rollback) take effect in the
// order they were asked for.
class MediaSession {
  public:
    virtual ~MediaSession() = default;
    virtual LocalStreamIds local_streams() const = 0;
    virtual void create_offer() = 0;
    // Sets the remote offer, then creates the answer (initial call and renegotiation alike).
    virtual void create_answer(const std::string& offer_sdp) = 0;
    virtual void set_remote_answer(const std::string& sdp) = 0;
    // An empty candidate is the end-of-candidates marker.
    virtual void add_remote_candidate(unsigned mline, const std::string& candidate) = 0;
    virtual void rollback() = 0;
    // Hold: our transceivers go sendonly and we stop sending; the next offer tells the peer.
    virtual void set_hold(bool hold) = 0;
    // Screen share as a second stream, or in place of the camera for a peer without metadata.
    virtual void set_screenshare(bool on, bool replace_camera) = 0;
    // Whether the media layer can restart ICE (GStreamer 1.22 webrtcbin cannot).
    virtual bool can_restart_ice() const = 0;
    virtual Stats stats() = 0;
    virtual void close() = 0;
};

class MediaEngine {
  public:
    virtual ~MediaEngine() = default;
    virtual std::unique_ptr<MediaSession> create_session(const SessionOptions& options,
                                                         EventSink sink) = 0;
};

// The GStreamer webrtcbin engine. Initialises GStreamer and generates the DTLS certificate
// up front so that neither is on a call's setup path. Throws if a needed plugin is missing.
std::unique_ptr<MediaEngine> make_gstreamer_engine();

// `turn:host:port?transport=tcp` + credentials -> `turn://user:pass@host:port?transport=tcp`
// for webrtcbin's add-turn-server, user and password percent-encoded. Empty for a URI that is
// not turn:/turns:.
std::string webrtcbin_turn_uri(const std::string& uri, const std::string& username,
                               const std::string& password);

}  // namespace mxvoip::media
