#include "sdp_text.hpp"

#include <algorithm>
#include <cstring>

namespace mxvoip::media {

namespace {
const char* const kDirections[] = {"sendrecv", "sendonly", "recvonly", "inactive"};
}  // namespace

std::string media_section(const std::string& sdp, const std::string& mid) {
    std::size_t pos = 0;
    while ((pos = sdp.find("m=", pos)) != std::string::npos) {
        if (pos != 0 && sdp[pos - 1] != '\n') {
            pos += 2;
            continue;
        }
        std::size_t end = sdp.find("\nm=", pos);
        std::string section = sdp.substr(pos, end == std::string::npos ? end : end + 1 - pos);
        if (section.find("a=mid:" + mid + "\r") != std::string::npos ||
            section.find("a=mid:" + mid + "\n") != std::string::npos)
            return section;
        pos += 2;
    }
    return {};
}

std::string msid_of(const std::string& section) {
    for (const char* key : {"a=msid:", " msid:"}) {
        std::size_t p = section.find(key);
        if (p == std::string::npos) continue;
        p += std::strlen(key);
        std::size_t e = section.find_first_of(" \r\n", p);
        return section.substr(p, e == std::string::npos ? e : e - p);
    }
    return {};
}

std::string rewrite_directions(const std::string& sdp, const DirectionMap& f) {
    std::string out;
    std::size_t pos = 0;
    while (pos < sdp.size()) {
        std::size_t start = pos;
        if (sdp.compare(pos, 2, "m=") != 0 || (pos != 0 && sdp[pos - 1] != '\n')) {
            start = sdp.find("\nm=", pos);
            if (start == std::string::npos) break;
            ++start;
        }
        out += sdp.substr(pos, start - pos);
        std::size_t end = sdp.find("\nm=", start);
        end = end == std::string::npos ? sdp.size() : end + 1;
        std::string section = sdp.substr(start, end - start);
        std::string mid;
        if (std::size_t m = section.find("a=mid:"); m != std::string::npos)
            mid = section.substr(m + 6, section.find_first_of("\r\n", m) - m - 6);
        for (const char* d : kDirections) {
            std::string attr = std::string("a=") + d + "\r";
            std::size_t at = section.find(attr);
            if (at == std::string::npos) continue;
            section.replace(at + 2, std::strlen(d), f(mid, std::string(d)));
            break;
        }
        out += section;
        pos = end;
    }
    out += sdp.substr(std::min(pos, sdp.size()));
    return out;
}

bool sends(const std::string& dir) {
    return dir == "sendrecv" || dir == "sendonly";
}
bool receives(const std::string& dir) {
    return dir == "sendrecv" || dir == "recvonly";
}
std::string direction(bool send, bool recv) {
    return send && recv ? "sendrecv" : send ? "sendonly" : recv ? "recvonly" : "inactive";
}

}  // namespace mxvoip::media
