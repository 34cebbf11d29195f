#pragma once

#include <boost/beast/http/verb.hpp>

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "homeserver.hpp"

namespace mxvoip::server {

// A module's handler for one route.
using Handler = std::function<asio::awaitable<Response>(Request&)>;

// Which rate limit a route's requests count against (the configuration's rc_*).
enum class RateClass {
    none,
    message,       // rc_message, per user: every write
    login,         // rc_login, per address
    registration,  // rc_registration, per address: checked first, counted once one completes
    turn,          // rc_turn, per user
};

// What the dispatch layer makes of the request body before the handler runs (Request::json).
enum class Body {
    none,      // ignored
    object,    // a JSON object: M_NOT_JSON or M_BAD_JSON otherwise
    optional,  // a JSON object when there is a body at all
};

struct Route {
    boost::beast::http::verb method;
    std::vector<std::string> segments;  // "*" captures one segment
    bool auth;
    Handler handler;
    RateClass rate = RateClass::none;
    Body body = Body::none;
    // Whether the route is refused (503) while the database is unavailable, and its response
    // waits for the writes before it to be durable. Only what no database state shapes
    // answers without.
    bool database = true;
};

class Router {
  public:
    explicit Router(std::vector<Route> routes);
    // Finds the route for (method, path). `path_known` tells a 405 from a 404.
    void match(boost::beast::http::verb method, const std::vector<std::string>& segments,
               const Route*& route, bool& path_known, std::vector<std::string>& params) const;

  private:
    std::vector<std::vector<Route>> by_length_;
};

std::vector<Route> make_routes(Homeserver& hs);

}  // namespace mxvoip::server
