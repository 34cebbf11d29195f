#pragma once

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include <cstdint>
#include <optional>
#include <string>

#include "homeserver.hpp"
#include "mxvoip/server/rate_limiter.hpp"
#include "routes.hpp"

namespace mxvoip::server {

// {"errcode","error"[,"retry_after_ms"]} as every error response carries it.
std::string error_body(const std::string& code, const std::string& message,
                       std::optional<std::int64_t> retry);

// The one place every request passes through, whichever way it arrived: the target parsed
// and checked as UTF-8, the route found, the access token authenticated, the route's rate
// limit taken, the body parsed, the module's handler run, a MatrixError rendered, and the response
// held until every write it may reflect is durable. `client` is the address the request counts
// against.
class Dispatcher {
  public:
    explicit Dispatcher(Homeserver& hs);

    asio::awaitable<Response> operator()(
        boost::beast::http::request<boost::beast::http::string_body>& raw,
        const std::string& client);

  private:
    // Takes one action of the route's limit for the request's user or address; 429
    // M_LIMIT_EXCEEDED with retry_after_ms when the limit is reached.
    void rate_limit(RateClass rate, const Request& req);

    Homeserver& hs_;
    Router router_;
    RateLimiter rc_message_;
    RateLimiter rc_login_;
    RateLimiter rc_registration_;
    RateLimiter rc_turn_;
};

}  // namespace mxvoip::server
