#pragma once

#include <boost/beast/http/verb.hpp>
#include <boost/json.hpp>

#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "mxvoip/proto/errors.hpp"

namespace mxvoip::server {

// Who a request is authenticated as.
struct Session {
    std::string user_id;
    std::string device_id;
    bool is_guest = false;

    // The device, as transaction ids and to-device queues are keyed.
    std::string device_key() const { return user_id + '|' + device_id; }
};

struct Request {
    boost::beast::http::verb method{};
    std::string path;                 // percent-encoded, without the query
    std::vector<std::string> params;  // decoded path captures, in pattern order
    std::unordered_map<std::string, std::string> query;
    std::string body;
    boost::json::object json;        // the body, parsed by the dispatch layer (Route::body)
    std::string remote;              // peer address, for per-address rate limits
    std::string access_token;        // from the header or ?access_token=
    std::optional<Session> session;  // set when the route requires auth

    const std::string* query_param(const std::string& name) const {
        auto it = query.find(name);
        return it == query.end() ? nullptr : &it->second;
    }
};

struct Response {
    unsigned status = 200;
    std::string body = "{}";
    std::vector<std::pair<std::string, std::string>> headers;
};

// 403 unless path capture `index` is the requesting user's own id (/user/{userId}/...).
inline void require_own_path(const Request& req, std::size_t index) {
    if (req.params.at(index) != req.session->user_id)
        throw proto::MatrixError(403, proto::errcode::forbidden,
                                 "Cannot access another user's data");
}

inline Response json_response(const boost::json::value& v, unsigned status = 200) {
    return Response{status, boost::json::serialize(v), {}};
}

}  // namespace mxvoip::server
