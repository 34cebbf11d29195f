#include "server_info.hpp"

namespace mxvoip::server {

namespace json = boost::json;

asio::awaitable<Response> ServerInfo::versions(Request&) {
    static const std::string body = [] {
        json::array v{"r0.0.1", "r0.1.0", "r0.2.0", "r0.3.0",
                      "r0.4.0", "r0.5.0", "r0.6.0", "r0.6.1"};
        for (int i = 1; i <= 11; ++i) v.push_back(json::string("v1." + std::to_string(i)));
        return json::serialize(
            json::object{{"versions", v}, {"unstable_features", json::object{}}});
    }();
    co_return Response{200, body, {}};
}

asio::awaitable<Response> ServerInfo::well_known(Request&) {
    co_return json_response(json::object{{"m.homeserver", {{"base_url", config_.public_baseurl}}}});
}

asio::awaitable<Response> ServerInfo::capabilities(Request&) {
    json::object available;
    for (int v = 4; v <= 11; ++v) available[std::to_string(v)] = "stable";
    co_return json_response(
        json::object{{"capabilities",
                      {{"m.room_versions", {{"default", "10"}, {"available", available}}},
                       {"m.change_password", {{"enabled", false}}},
                       {"m.set_displayname", {{"enabled", true}}},
                       {"m.set_avatar_url", {{"enabled", true}}},
                       {"m.3pid_changes", {{"enabled", false}}}}}});
}

}  // namespace mxvoip::server
