#pragma once

// The redaction algorithm of the room versions (the spec's "Redactions" section of each room
// version): which content keys survive a redaction, by event type and room version. Pure.
#include <boost/json.hpp>

#include <string_view>

namespace mxvoip::server {

// The content `content` of an event of `type` keeps once redacted in a room of `room_version`
// ("1" to "11"; later versions are treated as 11).
boost::json::object redacted_content(std::string_view type, const boost::json::object& content,
                                     std::string_view room_version);

}  // namespace mxvoip::server
