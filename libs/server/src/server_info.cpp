#include "server_info.hpp"

#include "mxvoip/proto/errors.hpp"

namespace mxvoip::server {

namespace json = boost::json;
using proto::MatrixError;
namespace errcode = proto::errcode;

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

asio::awaitable<Response> ServerInfo::health(Request&) {
    if (!core_.store_available()) throw Core::unavailable();
    co_return Response{200, "{}", {}};
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

asio::awaitable<Response> ServerInfo::thirdparty_protocols(Request&) {
    co_return json_response(json::object{});
}

// /thirdparty/protocol/{p}, /thirdparty/location/{p}, /thirdparty/user/{p}: every protocol
// is unknown, so there is neither metadata nor a portal room nor a user to find.
asio::awaitable<Response> ServerInfo::thirdparty_protocol(Request& req) {
    throw MatrixError(
        404, errcode::not_found,
        "Unknown third-party protocol " + req.params.back() + ": this server bridges to none");
    co_return Response{};
}

// /thirdparty/location?alias= and /thirdparty/user?userid=: nothing bridged, nothing found.
namespace {
Response nothing_bridged(const Request& req, const char* param) {
    if (!req.query_param(param))
        throw MatrixError(400, errcode::missing_param, std::string("Missing ") + param);
    return json_response(json::array{});
}
}  // namespace

asio::awaitable<Response> ServerInfo::thirdparty_location(Request& req) {
    co_return nothing_bridged(req, "alias");
}

asio::awaitable<Response> ServerInfo::thirdparty_user(Request& req) {
    co_return nothing_bridged(req, "userid");
}

}  // namespace mxvoip::server
