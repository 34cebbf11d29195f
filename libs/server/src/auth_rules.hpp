#pragma once

// Room auth rules that are pure functions of the room's current state and the new event, so
// they can be table-tested on their own.
#include <boost/json.hpp>

#include <cstdint>
#include <optional>
#include <string>

#include "mxvoip/proto/errors.hpp"
#include "room.hpp"

namespace mxvoip::server {

// The auth rules for a client's event in `room` as it is now (the spec's rules for
// m.room.member, the sender's membership, the event's required power level, state keys that
// name a user, and m.room.power_levels below). m.room.create is never admitted: only
// createRoom makes it. Returns the error to answer with, or nothing when the event is allowed.
std::optional<proto::MatrixError> event_auth_refusal(const RoomState& room,
                                                     const std::string& sender,
                                                     bool sender_is_guest, const NewEvent& ev);

// The spec's auth rule for m.room.power_levels (rules 10.a to 10.h of room versions 10 and
// 11; versions before 10 also allow levels written as strings of an integer, which
// `integers_only` false accepts). `current` is the content of the room's power levels, null
// when the room has none yet; `sender_level` is the sender's level in `current`. Returns why
// the change is refused, or nothing when it is allowed:
// - every level is an integer and every key of `users` a user id;
// - users_default, events_default, state_default, ban, kick, redact and invite, and each
//   entry of `events` and `notifications`, may be added, changed or removed only by a sender
//   whose level is at least the old and the new value;
// - each entry of `users` other than the sender's own may be changed or removed only if its
//   old level is below the sender's, and set to no more than the sender's level.
std::optional<std::string> power_levels_change_refusal(const boost::json::object* current,
                                                       const boost::json::object& next,
                                                       const std::string& sender,
                                                       std::int64_t sender_level,
                                                       bool integers_only);

}  // namespace mxvoip::server
