#include "mxvoip/proto/ids.hpp"

#include <algorithm>
#include <array>

namespace mxvoip::proto {

std::optional<UserId> parse_user_id(std::string_view id) {
    if (id.size() < 4 || id.size() > 255 || id.front() != '@') return std::nullopt;
    auto colon = id.find(':');
    if (colon == std::string_view::npos || colon == 1 || colon + 1 == id.size())
        return std::nullopt;
    UserId out{id.substr(1, colon - 1), id.substr(colon + 1)};
    auto printable = [](char c) { return c > 0x20 && c < 0x7f; };
    if (!std::all_of(out.localpart.begin(), out.localpart.end(), printable)) return std::nullopt;
    if (!std::all_of(out.server_name.begin(), out.server_name.end(), printable))
        return std::nullopt;
    return out;
}

bool is_valid_new_localpart(std::string_view localpart) {
    if (localpart.empty() || localpart.size() > 255 - 3) return false;
    return std::all_of(localpart.begin(), localpart.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
               c == '=' || c == '-' || c == '/' || c == '+';
    });
}

bool is_valid_room_id(std::string_view id) {
    if (id.size() < 4 || id.size() > 255 || id.front() != '!') return false;
    auto colon = id.find(':');
    return colon != std::string_view::npos && colon > 1 && colon + 1 < id.size();
}

bool is_valid_room_alias(std::string_view alias) {
    if (alias.size() < 4 || alias.size() > 255 || alias.front() != '#') return false;
    auto colon = alias.find(':');
    if (colon == std::string_view::npos || colon < 2 || colon + 1 == alias.size()) return false;
    auto local = alias.substr(1, colon - 1);
    auto server = alias.substr(colon + 1);
    auto blank = [](char c) {
        return c == '\0' || c == ' ' || c == '\t' || c == '\n' || c == '\r';
    };
    auto printable = [](char c) { return c > 0x20 && c < 0x7f; };
    return std::none_of(local.begin(), local.end(), blank) &&
           std::all_of(server.begin(), server.end(), printable);
}

bool is_valid_opaque_id(std::string_view id) {
    // One table look per character: every call event carries two or three of these ids.
    static constexpr auto kAllowed = [] {
        std::array<bool, 256> t{};
        for (int c = 0; c < 256; ++c)
            t[c] = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                   c == '-' || c == '.' || c == '_' || c == '~';
        return t;
    }();
    if (id.empty() || id.size() > 255) return false;
    return std::all_of(id.begin(), id.end(),
                       [](char c) { return kAllowed[static_cast<unsigned char>(c)]; });
}

bool is_valid_event_type(std::string_view type) {
    if (type.empty() || type.size() > 255) return false;
    return std::all_of(type.begin(), type.end(),
                       [](char c) { return static_cast<unsigned char>(c) >= 0x20 && c != 0x7f; });
}

}  // namespace mxvoip::proto
