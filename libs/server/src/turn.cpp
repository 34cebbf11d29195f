#include "mxvoip/server/turn.hpp"

#include <cctype>
#include <charconv>

#include "mxvoip/proto/base64.hpp"
#include "mxvoip/server/crypto.hpp"

namespace mxvoip::server {

TurnCredentials make_turn_credentials(std::string_view shared_secret, std::string_view user_id,
                                      std::int64_t now_s, std::int64_t lifetime_s,
                                      const std::vector<std::string>& uris) {
    TurnCredentials c;
    c.username = std::to_string(now_s + lifetime_s);
    c.username += ':';
    c.username += user_id;
    c.password = proto::base64_encode(hmac_sha1(shared_secret, c.username));
    c.ttl = lifetime_s;
    c.uris = uris;
    return c;
}

namespace {

bool valid_hostname(std::string_view host) {
    if (host.empty() || host.size() > 253) return false;
    std::size_t label = 0;
    for (std::size_t i = 0; i < host.size(); ++i) {
        char c = host[i];
        if (c == '.') {
            if (label == 0) return false;
            label = 0;
            continue;
        }
        bool ok = std::isalnum(static_cast<unsigned char>(c)) ||
                  (c == '-' && label > 0 && i + 1 < host.size() && host[i + 1] != '.');
        if (!ok || ++label > 63) return false;
    }
    return label > 0;
}

bool valid_ipv6(std::string_view host) {
    if (host.size() < 2) return false;
    int colons = 0;
    for (char c : host) {
        if (c == ':')
            ++colons;
        else if (!std::isxdigit(static_cast<unsigned char>(c)) && c != '.')
            return false;
    }
    return colons >= 2;
}

}  // namespace

std::optional<std::string> turn_uri_problem(std::string_view uri) {
    std::string_view rest;
    if (uri.rfind("turn:", 0) == 0)
        rest = uri.substr(5);
    else if (uri.rfind("turns:", 0) == 0)
        rest = uri.substr(6);
    else
        return "must start with turn: or turns:";
    if (rest.rfind("//", 0) == 0)
        return "must not have '//' after the scheme (turn:host:port, RFC 7065)";
    std::string_view query;
    if (auto q = rest.find('?'); q != std::string_view::npos) {
        query = rest.substr(q + 1);
        rest = rest.substr(0, q);
    }
    std::string_view host = rest, port;
    if (!rest.empty() && rest.front() == '[') {
        auto close = rest.find(']');
        if (close == std::string_view::npos) return "has an unclosed '[' in the host";
        host = rest.substr(1, close - 1);
        if (!valid_ipv6(host)) return "has an invalid IPv6 address";
        std::string_view after = rest.substr(close + 1);
        if (!after.empty()) {
            if (after.front() != ':') return "has text after the IPv6 address";
            port = after.substr(1);
            if (port.empty()) return "has an empty port";
        }
    } else {
        if (auto colon = rest.find(':'); colon != std::string_view::npos) {
            host = rest.substr(0, colon);
            port = rest.substr(colon + 1);
            if (port.empty()) return "has an empty port";
        }
        if (!valid_hostname(host)) return "has no valid host";
    }
    if (!port.empty()) {
        unsigned v = 0;
        auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), v);
        if (ec != std::errc() || p != port.data() + port.size() || v == 0 || v > 65535)
            return "has an invalid port '" + std::string(port) + "'";
    }
    if (!query.empty() && query != "transport=udp" && query != "transport=tcp")
        return "may only have ?transport=udp or ?transport=tcp";
    return std::nullopt;
}

DurationResult parse_duration(std::string_view text) {
    DurationResult r;
    if (text.empty()) {
        r.error = "is empty; write a duration such as 1h, 90m or 1d";
        return r;
    }
    std::int64_t unit = 0;
    switch (text.back()) {
        case 's':
            unit = 1;
            break;
        case 'm':
            unit = 60;
            break;
        case 'h':
            unit = 3600;
            break;
        case 'd':
            unit = 86400;
            break;
        case 'w':
            unit = 7 * 86400;
            break;
        case 'y':
            unit = 365 * 86400;
            break;
        default:
            break;
    }
    if (unit == 0) {
        bool numeric = text.find_first_not_of("0123456789") == std::string_view::npos;
        r.error = numeric ? "needs a unit such as 1h or 90m: Synapse reads a bare number as "
                            "milliseconds, so '" +
                                std::string(text) + "' would not mean what it seems"
                          : "must be a duration such as 1h, 90m or 1d";
        return r;
    }
    std::string_view digits = text.substr(0, text.size() - 1);
    std::int64_t v = 0;
    auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
    if (digits.empty() || ec != std::errc() || p != digits.data() + digits.size() || v <= 0 ||
        v > std::int64_t{100} * 365 * 86400 / unit) {
        r.error = "must be a positive duration such as 1h, 90m or 1d";
        return r;
    }
    r.seconds = v * unit;
    return r;
}

}  // namespace mxvoip::server
