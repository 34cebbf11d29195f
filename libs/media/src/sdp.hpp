#pragma once

// SDP text helpers of the webrtcbin session: finding a media section and its stream id, and
// rewriting media directions at the boundary (see gst_session.cpp for why).
#include <functional>
#include <string>

namespace mxvoip::media {

// The whole "m=" section of `sdp` that declares `mid`, or the empty string.
std::string media_section(const std::string& sdp, const std::string& mid);
// The stream id of the first "a=msid:" (or "a=ssrc:N msid:") line in a media section.
std::string msid_of(const std::string& section);

// (mid, direction) -> the direction to write instead.
using DirectionMap = std::function<std::string(const std::string& mid, const std::string& dir)>;
// Calls `f` for every media section of `sdp` that has a direction attribute and puts the
// direction it returns in its place; everything else is left byte for byte.
std::string rewrite_directions(const std::string& sdp, const DirectionMap& f);

bool sends(const std::string& dir);
bool receives(const std::string& dir);
std::string direction(bool send, bool recv);

}  // namespace mxvoip::media
