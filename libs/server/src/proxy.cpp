#include "proxy.hpp"

#include <stdexcept>

namespace mxvoip::server {

namespace ip = boost::asio::ip;

namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

std::optional<ip::address> parse(std::string_view text) {
    boost::system::error_code ec;
    auto a = ip::make_address(std::string(text), ec);
    if (ec) return std::nullopt;
    // A v4 client seen through a v6 socket ("::ffff:192.0.2.1") is that v4 client.
    if (a.is_v6() && a.to_v6().is_v4_mapped()) return ip::make_address_v4(ip::v4_mapped, a.to_v6());
    return a;
}

}  // namespace

TrustedProxies::TrustedProxies(const std::vector<std::string>& entries) {
    for (const auto& e : entries) {
        boost::system::error_code ec;
        if (e.find('/') != std::string::npos) {
            if (e.find(':') == std::string::npos) {
                auto n = ip::make_network_v4(e, ec);
                if (!ec) v4_.push_back(n.canonical());
            } else {
                auto n = ip::make_network_v6(e, ec);
                if (!ec) v6_.push_back(n.canonical());
            }
        } else if (auto a = parse(e)) {
            if (a->is_v4())
                v4_.emplace_back(a->to_v4(), 32);
            else
                v6_.emplace_back(a->to_v6(), 128);
        } else {
            ec = boost::asio::error::invalid_argument;
        }
        if (ec)
            throw std::invalid_argument("'" + e + "' is not an IP address or a network such as " +
                                        "10.0.0.0/8");
    }
}

bool TrustedProxies::contains(const ip::address& a) const {
    if (a.is_v4()) {
        ip::network_v4 host(a.to_v4(), 32);
        for (const auto& n : v4_)
            if (host == n || host.is_subnet_of(n)) return true;
        return false;
    }
    ip::network_v6 host(a.to_v6(), 128);
    for (const auto& n : v6_)
        if (host == n || host.is_subnet_of(n)) return true;
    return false;
}

bool TrustedProxies::contains(std::string_view address) const {
    auto a = parse(address);
    return a && contains(*a);
}

std::optional<std::string> TrustedProxies::client(std::string_view forwarded_for,
                                                  const std::string& peer) const {
    std::string_view rest = forwarded_for;
    std::optional<std::string> leftmost;
    while (!trim(rest).empty()) {
        auto comma = rest.rfind(',');
        std::string_view entry =
            trim(comma == std::string_view::npos ? rest : rest.substr(comma + 1));
        rest = comma == std::string_view::npos ? std::string_view() : rest.substr(0, comma);
        auto a = parse(entry);
        if (!a) return std::nullopt;
        if (!contains(*a)) return a->to_string();
        leftmost = a->to_string();
    }
    return leftmost ? leftmost : std::optional<std::string>(peer);
}

}  // namespace mxvoip::server
