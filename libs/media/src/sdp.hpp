#pragma once

// Session descriptions of the webrtcbin session, read and edited as GstSDPMessage: a media
// section's stream id, and media directions rewritten at the boundary (gst_session.cpp says
// why).
#include <gst/sdp/sdp.h>

#include <functional>
#include <memory>
#include <string>

namespace mxvoip::media {

struct SdpMessageFree {
    void operator()(GstSDPMessage* m) const { gst_sdp_message_free(m); }
};
using SdpMessage = std::unique_ptr<GstSDPMessage, SdpMessageFree>;

// Parses a description whose lines end in "\r\n" or "\n"; null when it is not one.
SdpMessage parse_sdp(const std::string& text);
SdpMessage copy_sdp(const GstSDPMessage& sdp);
// The description as text, every line ending in "\r\n".
std::string sdp_text(const GstSDPMessage& sdp);

// The stream id of the media section `mid`: from its "a=msid:" attribute, else from an
// "a=ssrc:N msid:" one; empty when the section or the id is missing.
std::string stream_id(const GstSDPMessage& sdp, const std::string& mid);

// (mid, direction) -> the direction to write instead.
using DirectionMap = std::function<std::string(const std::string& mid, const std::string& dir)>;
// Calls `f` for every media section that has a direction attribute and puts the direction it
// returns in its place.
void rewrite_directions(GstSDPMessage& sdp, const DirectionMap& f);

// Whether `candidate` ("candidate:...", as webrtcbin reports it) is in some media section.
bool has_candidate(const GstSDPMessage& sdp, const std::string& candidate);

bool sends(const std::string& dir);
bool receives(const std::string& dir);
std::string direction(bool send, bool recv);

}  // namespace mxvoip::media
