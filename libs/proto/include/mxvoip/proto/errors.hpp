#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

namespace mxvoip::proto {

// The Matrix error codes the project emits. Kept as constants, not an enum, because
// they travel as strings and clients match on the exact text.
namespace errcode {
inline constexpr const char* forbidden = "M_FORBIDDEN";
inline constexpr const char* unknown_token = "M_UNKNOWN_TOKEN";
inline constexpr const char* missing_token = "M_MISSING_TOKEN";
inline constexpr const char* bad_json = "M_BAD_JSON";
inline constexpr const char* not_json = "M_NOT_JSON";
inline constexpr const char* not_found = "M_NOT_FOUND";
inline constexpr const char* limit_exceeded = "M_LIMIT_EXCEEDED";
inline constexpr const char* unrecognized = "M_UNRECOGNIZED";
inline constexpr const char* unknown = "M_UNKNOWN";
inline constexpr const char* user_in_use = "M_USER_IN_USE";
inline constexpr const char* invalid_username = "M_INVALID_USERNAME";
inline constexpr const char* invalid_param = "M_INVALID_PARAM";
inline constexpr const char* missing_param = "M_MISSING_PARAM";
inline constexpr const char* too_large = "M_TOO_LARGE";
inline constexpr const char* guest_access_forbidden = "M_GUEST_ACCESS_FORBIDDEN";
inline constexpr const char* unsupported_room_version = "M_UNSUPPORTED_ROOM_VERSION";
inline constexpr const char* invalid_room_state = "M_INVALID_ROOM_STATE";
inline constexpr const char* room_in_use = "M_ROOM_IN_USE";
inline constexpr const char* bad_alias = "M_BAD_ALIAS";
inline constexpr const char* user_deactivated = "M_USER_DEACTIVATED";
}  // namespace errcode

// Thrown by request handlers; rendered by the HTTP layer as {"errcode","error"}.
struct MatrixError : std::runtime_error {
    MatrixError(unsigned status, std::string code, const std::string& message,
                std::optional<std::int64_t> retry_after = std::nullopt)
        : std::runtime_error(message),
          status(status),
          errcode(std::move(code)),
          retry_after_ms(retry_after) {}

    unsigned status;
    std::string errcode;
    std::optional<std::int64_t> retry_after_ms;
};

}  // namespace mxvoip::proto
