#include <boost/url/encode.hpp>
#include <boost/url/rfc/unreserved_chars.hpp>
#include <string>

#include "mxvoip/media/media_session.hpp"

namespace mxvoip::media {

const char* to_string(Kind k) {
    return k == Kind::audio ? "audio" : "video";
}

namespace {

std::string percent_encode(const std::string& s) {
    return boost::urls::encode(s, boost::urls::unreserved_chars);
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
