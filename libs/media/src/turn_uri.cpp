#include <string>

#include "mxvoip/media/media_session.hpp"

namespace mxvoip::media {

const char* to_string(Kind k) { return k == Kind::audio ? "audio" : "video"; }

namespace {

std::string percent_encode(const std::string& s) {
    static const char* hex = "0123456789ABCDEF";
    std::string out;
    out.reserve(s.size() * 3);
    for (unsigned char c : s) {
        bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                          (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
        if (unreserved) {
            out += static_cast<char>(c);
        } else {
            out += '%';
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    return out;
}

}  // namespace

std::string webrtcbin_turn_uri(const std::string& uri, const std::string& username,
                               const std::string& password) {
    std::string scheme;
    std::string rest;
    for (const char* s : {"turns:", "turn:"}) {
        std::string prefix(s);
        if (uri.compare(0, prefix.size(), prefix) == 0) {
            scheme = prefix.substr(0, prefix.size() - 1);
            rest = uri.substr(prefix.size());
            break;
        }
    }
    if (scheme.empty() || rest.empty()) return {};
    if (rest.compare(0, 2, "//") == 0) rest.erase(0, 2);
    return scheme + "://" + percent_encode(username) + ":" + percent_encode(password) + "@" + rest;
}

}  // namespace mxvoip::media
