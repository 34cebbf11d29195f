#pragma once

#include <boost/beast/http/verb.hpp>

#include <string>
#include <string_view>
#include <vector>

#include "homeserver.hpp"

namespace mxvoip::server {

using Handler = asio::awaitable<Response> (Homeserver::*)(Request&);

struct Route {
    boost::beast::http::verb method;
    std::vector<std::string> segments;  // "*" captures one segment
    bool auth;
    Handler handler;
    RateClass rate = RateClass::none;  // taken by the dispatch layer before the handler runs
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

std::vector<Route> make_routes();

}  // namespace mxvoip::server
