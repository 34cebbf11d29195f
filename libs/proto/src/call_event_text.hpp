#pragma once

#include <optional>
#include <string_view>

#include "mxvoip/proto/call_events.hpp"

namespace mxvoip::proto::detail {

// The one-pass reading of a call event's text alone: the event, or nullopt where it gives up
// and parse_call_event_json goes to the DOM. Tests use it to see which way an event went.
std::optional<CallEvent> read_call_event(std::string_view type, std::string_view text);

}  // namespace mxvoip::proto::detail
