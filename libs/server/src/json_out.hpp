#pragma once

#include <boost/json.hpp>

#include <string>
#include <string_view>

namespace mxvoip::server {

// Appends `s` as a JSON string literal.
inline void append_quoted(std::string& out, std::string_view s) {
    out += boost::json::serialize(boost::json::string_view(s));
}

inline std::string quoted(std::string_view s) {
    return boost::json::serialize(boost::json::string_view(s));
}

}  // namespace mxvoip::server
