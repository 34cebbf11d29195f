#pragma once

// What a client asks about the server itself: the spec versions, its base URL (.well-known),
// its capabilities and the third-party networks it bridges to.
#include <boost/asio/awaitable.hpp>

#include "core.hpp"
#include "http_types.hpp"

namespace mxvoip::server {

class ServerInfo {
  public:
    explicit ServerInfo(const Core& core) : core_(core), config_(core.config()) {}

    asio::awaitable<Response> versions(Request&);
    // For load balancers: 200 while the database takes writes, 503 while it does not.
    asio::awaitable<Response> health(Request&);
    asio::awaitable<Response> well_known(Request&);
    asio::awaitable<Response> capabilities(Request&);

    // Third-party networks (bridges): this server has none. Element asks for the protocols at
    // every start, and from them decides whether to offer a dial pad.
    asio::awaitable<Response> thirdparty_protocols(Request&);
    asio::awaitable<Response> thirdparty_protocol(Request&);  // one protocol, or a lookup in it
    asio::awaitable<Response> thirdparty_location(Request&);  // by room alias
    asio::awaitable<Response> thirdparty_user(Request&);      // by user id

  private:
    const Core& core_;
    const Config& config_;
};

}  // namespace mxvoip::server
