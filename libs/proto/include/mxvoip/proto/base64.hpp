#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace mxvoip::proto {

// Standard alphabet with '=' padding (RFC 4648 section 4): what coturn compares TURN passwords to.
std::string base64_encode(std::string_view bytes);
// URL-safe alphabet without padding (RFC 4648 section 5): the shape of room-v4+ event ids.
std::string base64url_encode(std::string_view bytes);
// Accepts either alphabet, padded or not. Returns nullopt on any other character.
std::optional<std::string> base64_decode(std::string_view text);

}  // namespace mxvoip::proto
