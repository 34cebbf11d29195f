#pragma once

#include <boost/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace mxvoip::proto {

namespace json = boost::json;

// Why a call event is invalid: the JSON path of the offending value ("content.offer.sdp")
// and the rule it breaks.
struct CallEventError {
    std::string path;
    std::string rule;
};

template <typename T>
class Parsed {
  public:
    Parsed(T value) : v_(std::move(value)) {}
    Parsed(CallEventError error) : v_(std::move(error)) {}
    bool ok() const { return v_.index() == 0; }
    explicit operator bool() const { return ok(); }
    const T& value() const { return std::get<0>(v_); }
    T& value() { return std::get<0>(v_); }
    const CallEventError& error() const { return std::get<1>(v_); }

  private:
    std::variant<T, CallEventError> v_;
};

// `version`: the integer 0 and the string "0" are version 0; every other value, the integer 1
// included, is treated as "1" (VOIP-NOTES.md). The value as sent is kept for round trips.
enum class CallVersion { v0, v1 };

// Stream purposes. An unknown purpose is kept as text: the spec says to ignore such a stream,
// not the whole event.
inline constexpr std::string_view kPurposeUsermedia = "m.usermedia";
inline constexpr std::string_view kPurposeScreenshare = "m.screenshare";

struct StreamMetadata {
    std::string purpose;
    bool audio_muted = false;
    bool video_muted = false;
    json::object extra;  // unknown fields, kept

    bool purpose_known() const {
        return purpose == kPurposeUsermedia || purpose == kPurposeScreenshare;
    }
    bool operator==(const StreamMetadata&) const = default;
};
// Stream id (the SDP msid stream id) -> metadata.
using SdpStreamMetadata = std::map<std::string, StreamMetadata>;

// Sent under both; read from either (the stable one wins): matrix-js-sdk 37 reads only the
// unstable key, newer versions both.
inline constexpr std::string_view kMetadataKey = "sdp_stream_metadata";
inline constexpr std::string_view kMetadataUnstableKey = "org.matrix.msc3077.sdp_stream_metadata";

struct SessionDescription {
    std::string type;  // "offer" or "answer"
    std::string sdp;
    json::object extra;
    bool operator==(const SessionDescription&) const = default;
};

struct Candidate {
    std::string candidate;  // "" marks the end of candidates
    std::optional<std::string> sdp_mid;
    std::optional<std::int64_t> sdp_mline_index;
    json::object extra;
    bool operator==(const Candidate&) const = default;
};

// Fields every call event has.
struct CallCommon {
    std::string call_id;
    std::string party_id;  // absent in version 0 events
    CallVersion version = CallVersion::v1;
    std::optional<json::value> version_sent;  // as sent, when that was not "1"
    json::object extra;                       // unknown content fields, kept
    bool operator==(const CallCommon&) const = default;
};

struct CallInvite : CallCommon {
    SessionDescription offer;
    std::int64_t lifetime = 0;  // ms
    std::optional<std::string> invitee;
    std::optional<SdpStreamMetadata> metadata;
    bool operator==(const CallInvite&) const = default;
};
struct CallCandidates : CallCommon {
    std::vector<Candidate> candidates;
    bool operator==(const CallCandidates&) const = default;
};
struct CallAnswer : CallCommon {
    SessionDescription answer;
    std::optional<SdpStreamMetadata> metadata;
    bool operator==(const CallAnswer&) const = default;
};
struct CallSelectAnswer : CallCommon {
    std::string selected_party_id;
    bool operator==(const CallSelectAnswer&) const = default;
};
struct CallReject : CallCommon {
    bool operator==(const CallReject&) const = default;
};
struct CallNegotiate : CallCommon {
    SessionDescription description;
    std::int64_t lifetime = 0;  // ms
    std::optional<SdpStreamMetadata> metadata;
    bool operator==(const CallNegotiate&) const = default;
};

// Hangup reasons the spec defines. Others (matrix-js-sdk sends "replaced" after glare) are
// kept as text so the hangup itself still counts.
inline constexpr std::string_view kHangupReasons[] = {
    "ice_timeout",       "ice_failed", "invite_timeout", "user_hangup",
    "user_media_failed", "user_busy",  "unknown_error"};
struct CallHangup : CallCommon {
    std::optional<std::string> reason;  // missing means user_hangup
    std::string effective_reason() const { return reason.value_or("user_hangup"); }
    bool reason_known() const;
    bool operator==(const CallHangup&) const = default;
};
struct CallSdpStreamMetadataChanged : CallCommon {
    SdpStreamMetadata metadata;
    bool operator==(const CallSdpStreamMetadataChanged&) const = default;
};

using CallEvent = std::variant<CallInvite, CallCandidates, CallAnswer, CallSelectAnswer, CallReject,
                               CallNegotiate, CallHangup, CallSdpStreamMetadataChanged>;

// Parses the content of an m.call.* event of `type`. Required fields, types, the opaque-id
// grammar, description types and the candidates rule are enforced; unknown fields survive.
Parsed<CallEvent> parse_call_event(std::string_view type, const json::value& content);

// The event type of a parsed event ("m.call.invite", ...).
std::string_view call_event_type(const CallEvent& event);

// Content JSON of an event: spec field names, stream metadata under both keys, unknown fields
// kept.
json::object serialize_call_event(const CallEvent& event);

// What a linter says of an event the parser accepted: a rule of the schema or the spec that
// the parser deliberately tolerates (an unknown stream purpose or hangup reason, a version
// that is a number other than 0) is a violation; what the schema allows but a peer may not
// understand (an experimental string version) is a note.
struct LintFinding {
    enum class Severity { violation, note };
    Severity severity;
    std::string path;
    std::string rule;
};
std::vector<LintFinding> lint_call_event(const CallEvent& event);

}  // namespace mxvoip::proto
