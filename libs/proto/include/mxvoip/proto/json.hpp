#pragma once

#include <boost/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace mxvoip::proto {

namespace json = boost::json;

// Largest integer canonical JSON allows (2^53 - 1).
inline constexpr std::int64_t kMaxSafeInteger = 9007199254740991;

// Parses a request body. Malformed text (including invalid UTF-8) is M_NOT_JSON; integers
// outside +-(2^53-1) are M_BAD_JSON. Never throws anything but MatrixError.
json::value parse_json(std::string_view text);

// As parse_json, and the top level must be an object (M_BAD_JSON otherwise).
json::object parse_json_object(std::string_view text);

// Field accessors for request bodies. A field of the wrong type is M_BAD_JSON naming the key;
// a missing required field is M_MISSING_PARAM.
// Text fields: a string, or 400 M_BAD_JSON (also for a string containing NUL).
std::optional<std::string_view> opt_string(const json::object& obj, std::string_view key);
std::string_view req_string(const json::object& obj, std::string_view key);
std::optional<bool> opt_bool(const json::object& obj, std::string_view key);
std::optional<std::int64_t> opt_int(const json::object& obj, std::string_view key);
const json::object* opt_object(const json::object& obj, std::string_view key);
const json::array* opt_array(const json::object& obj, std::string_view key);

// Whether `text` is well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing past
// U+10FFFF). JSON bodies are checked by parse_json; paths and query strings, which reach
// identifiers and stored events too, are checked with this.
bool is_valid_utf8(std::string_view text);

// The spec's canonical JSON (appendices, "Canonical JSON"): object keys sorted by code point,
// no insignificant whitespace, UTF-8 as is, only the escapes JSON requires. What signatures
// of keys and events are computed over.
std::string canonical_json(const json::value& v);

// Serializes a value compactly.
inline std::string to_string(const json::value& v) {
    return json::serialize(v);
}

}  // namespace mxvoip::proto
