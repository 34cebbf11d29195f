#include "dispatch.hpp"

#include <spdlog/spdlog.h>
#include <boost/beast/core/string.hpp>
#include <boost/url/parse.hpp>

#include <algorithm>

#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/json.hpp"

namespace mxvoip::server {

namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using proto::MatrixError;

namespace {

Response error_response(const MatrixError& e) {
    Response r{e.status, error_body(e.errcode, e.what(), e.retry_after_ms), {}};
    if (e.errcode == proto::errcode::unknown_token)
        r.body.insert(r.body.size() - 1, ",\"soft_logout\":false");
    if (e.retry_after_ms)
        r.headers.emplace_back("Retry-After", std::to_string((*e.retry_after_ms + 999) / 1000));
    return r;
}

}  // namespace

std::string error_body(const std::string& code, const std::string& message,
                       std::optional<std::int64_t> retry) {
    json::object o{{"errcode", code}, {"error", message}};
    if (retry) o["retry_after_ms"] = *retry;
    return json::serialize(o);
}

Dispatcher::Dispatcher(Homeserver& hs)
    : hs_(hs),
      router_(make_routes(hs)),
      rc_message_(hs.core.config().rc_message, &hs.core.processes()),
      rc_login_(hs.core.config().rc_login, &hs.core.processes()),
      rc_registration_(hs.core.config().rc_registration, &hs.core.processes()),
      rc_turn_(hs.core.config().rc_turn, &hs.core.processes()) {}

void Dispatcher::rate_limit(RateClass rate, const Request& req) {
    const std::int64_t now = hs_.core.now_ms();
    std::optional<std::int64_t> wait;
    switch (rate) {
        case RateClass::none:
            return;
        case RateClass::message:
            wait = rc_message_.take(req.session->user_id, now);
            break;
        case RateClass::login:
            wait = rc_login_.take(req.remote, now);
            break;
        case RateClass::registration:
            wait = rc_registration_.check(req.remote, now);
            break;
        case RateClass::turn:
            wait = rc_turn_.take(req.session->user_id, now);
            break;
    }
    if (wait) throw MatrixError(429, proto::errcode::limit_exceeded, "Too many requests", *wait);
}

asio::awaitable<Response> Dispatcher::operator()(http::request<http::string_body>& raw,
                                                 const std::string& remote) {
    Request req;
    req.remote = remote;
    std::string_view target = raw.target();
    auto parsed = boost::urls::parse_origin_form(target);
    if (!parsed)
        co_return Response{
            400, error_body(proto::errcode::unrecognized, "Malformed request target", {}), {}};
    req.method = raw.method();
    std::vector<std::string> segments;
    for (auto seg : parsed->segments()) segments.push_back(seg);
    for (auto p : parsed->params()) req.query[p.key] = p.has_value ? p.value : std::string();
    // Identifiers, event types, state keys and transaction ids come from the path: text that
    // is not UTF-8 would be stored and make every later response that carries it invalid JSON,
    // and a NUL is text no PostgreSQL column holds.
    auto text = [](const std::string& s) {
        return proto::is_valid_utf8(s) && s.find('\0') == std::string::npos;
    };
    bool utf8 = std::all_of(segments.begin(), segments.end(), text) &&
                std::all_of(req.query.begin(), req.query.end(),
                            [&](const auto& kv) { return text(kv.first) && text(kv.second); });
    if (!utf8)
        co_return Response{
            400,
            error_body(proto::errcode::invalid_param,
                       "The request path or query is not UTF-8 text without NUL", {}),
            {}};
    if (req.method == http::verb::options) co_return Response{200, "{}", {}};
    Response response;
    bool settle = false;  // whether the response waits for the writes before it
    try {
        const Route* route = nullptr;
        bool path_known = false;
        router_.match(req.method, segments, route, path_known, req.params);
        if (!route) {
            if (path_known)
                throw MatrixError(405, proto::errcode::unrecognized, "Method not allowed");
            throw MatrixError(404, proto::errcode::unrecognized, "Unrecognized request");
        }
        // While the database is unavailable, what needs it is refused at once rather than
        // left waiting for the writes before it.
        if (route->database && !hs_.core.store_available()) throw Core::unavailable();
        settle = route->database;
        if (route->auth) {
            auto auth = raw[http::field::authorization];
            if (auth.size() > 7 && beast::iequals(auth.substr(0, 7), "Bearer "))
                req.access_token = std::string(auth.substr(7));
            else if (auto* t = req.query_param("access_token"))
                req.access_token = *t;
            if (req.access_token.empty())
                throw MatrixError(401, proto::errcode::missing_token, "Missing access token");
            req.session = hs_.accounts.authenticate(req.access_token);
            if (!req.session)
                throw MatrixError(401, proto::errcode::unknown_token, "Unknown access token");
        }
        rate_limit(route->rate, req);
        req.body = std::move(raw.body());
        if (route->body == Body::object || (route->body == Body::optional && !req.body.empty()))
            req.json = proto::parse_json_object(req.body);
        response = co_await route->handler(req);
        // Registration is limited by what completes: the rounds of interactive auth before it
        // do not count.
        if (route->rate == RateClass::registration && req.method == http::verb::post &&
            response.status == 200)
            rc_registration_.record(req.remote, hs_.core.now_ms());
    } catch (const MatrixError& e) {
        response = error_response(e);
    } catch (const store::StoreUnavailable& e) {
        // A read the store could not serve (the database restarting, say): it passes.
        spdlog::warn("503 for {} {}: {}", raw.method_string(), target.substr(0, target.find('?')),
                     e.what());
        response = error_response(Core::unavailable());
        settle = false;
    } catch (const std::exception& e) {
        std::string_view path = target.substr(0, target.find('?'));
        spdlog::error("500 for {} {}: {}", raw.method_string(), path, e.what());
        response =
            Response{500, error_body(proto::errcode::unknown, "Internal server error", {}), {}};
    }
    // Whatever the response says (an event, a state, even a refusal) may rest on writes
    // other requests made a moment ago: it leaves once they are durable, so no client learns
    // of something a failed commit then loses.
    if (auto seq = settle ? hs_.core.unsettled() : std::nullopt) {
        try {
            co_await hs_.core.durable(*seq);
        } catch (const MatrixError& e) {
            response = error_response(e);
        }
    }
    co_return response;
}

}  // namespace mxvoip::server
