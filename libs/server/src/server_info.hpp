#pragma once

// What a client asks before it signs in: the spec versions, the server's base URL
// (.well-known) and its capabilities.
#include <boost/asio/awaitable.hpp>

#include "core.hpp"
#include "http_types.hpp"

namespace mxvoip::server {

class ServerInfo {
  public:
    explicit ServerInfo(const Config& config) : config_(config) {}

    asio::awaitable<Response> versions(Request&);
    asio::awaitable<Response> well_known(Request&);
    asio::awaitable<Response> capabilities(Request&);

  private:
    const Config& config_;
};

}  // namespace mxvoip::server
