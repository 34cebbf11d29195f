#pragma once

// Reverse proxies the server believes about who the client is (X-Forwarded-For).
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/network_v4.hpp>
#include <boost/asio/ip/network_v6.hpp>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mxvoip::server {

class TrustedProxies {
  public:
    // Addresses ("127.0.0.1", "::1") and networks ("10.0.0.0/8", "fd00::/8"); throws
    // std::invalid_argument naming an entry that is neither.
    explicit TrustedProxies(const std::vector<std::string>& entries);

    bool contains(const boost::asio::ip::address& a) const;
    bool contains(std::string_view address) const;

    // The client of a request that came from a trusted proxy: walking X-Forwarded-For from the
    // right (the entry the nearest proxy added), the first address that is not itself a
    // trusted proxy; the leftmost when all are; `peer` when there is no header. Nothing when
    // that entry is not an IP address (the proxy sent something that cannot be believed).
    std::optional<std::string> client(std::string_view forwarded_for,
                                      const std::string& peer) const;

  private:
    std::vector<boost::asio::ip::network_v4> v4_;
    std::vector<boost::asio::ip::network_v6> v6_;
};

}  // namespace mxvoip::server
