#pragma once

// VoIP: short-lived TURN credentials for calls (GET /voip/turnServer), what coturn's
// use-auth-secret accepts.
#include <boost/asio/awaitable.hpp>

#include <string>

#include "core.hpp"
#include "http_types.hpp"

namespace mxvoip::server {

class Voip {
  public:
    explicit Voip(Core& core);

    asio::awaitable<Response> turn_server(Request&);

  private:
    Core& core_;
    std::string uris_json_;  // the configured URIs, serialised once
};

}  // namespace mxvoip::server
