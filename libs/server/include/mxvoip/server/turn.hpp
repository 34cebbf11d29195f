#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mxvoip::server {

// What GET /voip/turnServer returns.
struct TurnCredentials {
    std::string username;
    std::string password;
    std::int64_t ttl = 0;  // seconds
    std::vector<std::string> uris;
};

// coturn's `use-auth-secret` scheme (the "TURN REST API"), as Synapse issues it:
// username = "<unix expiry seconds>:<user id>", password = base64(HMAC-SHA1(secret, username))
// with '=' padding, ttl = lifetime. A pure function of its inputs.
TurnCredentials make_turn_credentials(std::string_view shared_secret, std::string_view user_id,
                                      std::int64_t now_s, std::int64_t lifetime_s,
                                      const std::vector<std::string>& uris);

// Checks a turn:/turns: URI (RFC 7065): scheme, a host (name, IPv4 or [IPv6]), an optional
// port, and an optional ?transport=udp|tcp. Returns what is wrong, or nullopt when valid.
std::optional<std::string> turn_uri_problem(std::string_view uri);

// Durations as Synapse writes them: "90s", "90m", "1h", "1d", "1w", "1y". A bare number is
// refused (Synapse would read it as milliseconds). Returns seconds, or an explanation.
struct DurationResult {
    std::int64_t seconds = 0;
    std::string error;
};
DurationResult parse_duration(std::string_view text);

}  // namespace mxvoip::server
