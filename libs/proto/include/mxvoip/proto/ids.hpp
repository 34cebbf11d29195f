#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace mxvoip::proto {

// A user id split at its first ':' (the server name may itself contain ':' for a port).
struct UserId {
    std::string_view localpart;
    std::string_view server_name;
};

// Parses "@localpart:server". Accepts the historical localpart grammar (any printable ASCII
// but ':'), because ids of users on other servers are not ours to police.
std::optional<UserId> parse_user_id(std::string_view id);

// The grammar for localparts this server hands out: [a-z0-9._=\-/+], 1 to 255 bytes in the
// whole user id.
bool is_valid_new_localpart(std::string_view localpart);

// "!opaque:server".
bool is_valid_room_id(std::string_view id);

// "#localpart:server", at most 255 bytes; the localpart is any non-empty text without ':',
// NUL or white space (Synapse refuses white space too), the server name printable.
bool is_valid_room_alias(std::string_view alias);

// call_id / party_id: 1-255 chars of [0-9A-Za-z-._~].
bool is_valid_opaque_id(std::string_view id);

// Event types and state keys: printable, bounded, as Synapse enforces (255 bytes).
bool is_valid_event_type(std::string_view type);

}  // namespace mxvoip::proto
