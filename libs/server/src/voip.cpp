#include "voip.hpp"

#include "json_out.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/server/turn.hpp"

namespace mxvoip::server {

namespace json = boost::json;
using proto::MatrixError;
namespace errcode = proto::errcode;

Voip::Voip(Core& core) : core_(core) {
    boost::json::array uris;
    for (const auto& u : core.config().turn.uris) uris.push_back(boost::json::string(u));
    uris_json_ = boost::json::serialize(uris);
}

asio::awaitable<Response> Voip::turn_server(Request& req) {
    const auto& turn = core_.config().turn;
    // Not configured: 200 {} as Synapse answers, so clients fall back to STUN-less direct ICE.
    if (!turn.configured()) co_return Response{};
    const Session& s = *req.session;
    if (s.is_guest && !turn.allow_guests)
        throw MatrixError(403, errcode::guest_access_forbidden,
                          "Guests may not use TURN on this server");
    std::string username, password;
    std::int64_t ttl = turn.user_lifetime_s;
    if (!turn.shared_secret.empty()) {
        auto creds = make_turn_credentials(turn.shared_secret, s.user_id, core_.now_ms() / 1000,
                                           turn.user_lifetime_s, {});
        username = std::move(creds.username);
        password = std::move(creds.password);
    } else {
        username = turn.username;
        password = turn.password;
    }
    std::string body;
    body.reserve(160 + uris_json_.size() + username.size());
    body += "{\"username\":";
    append_quoted(body, username);
    body += ",\"password\":";
    append_quoted(body, password);
    body += ",\"ttl\":" + std::to_string(ttl) + ",\"uris\":" + uris_json_ + "}";
    co_return Response{200, std::move(body), {}};
}

}  // namespace mxvoip::server
