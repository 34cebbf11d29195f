#include "mxvoip/client/matrix_client.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/url/encode.hpp>
#include <boost/url/parse.hpp>
#include <boost/url/rfc/unreserved_chars.hpp>
#include <deque>
#include <random>

namespace mxvoip::client {

namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using asio::use_awaitable;

ClientError::ClientError(unsigned s, std::string code, const std::string& message,
                         std::int64_t retry_after)
    : std::runtime_error(message),
      status(s),
      errcode(std::move(code)),
      retry_after_ms(retry_after) {}

std::string random_token(std::size_t n) {
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    std::string s;
    for (std::size_t i = 0; i < n; ++i) s += alphabet[rng() % 62];
    return s;
}

std::string path_segment(const std::string& s) {
    return boost::urls::encode(s, boost::urls::unreserved_chars);
}

namespace {

constexpr auto kRequestTimeout = std::chrono::seconds(30);
constexpr int kSendAttempts = 8;

std::string str(const json::object& o, const char* key) {
    const json::value* v = o.if_contains(key);
    return v && v->is_string() ? std::string(v->as_string()) : std::string();
}

}  // namespace

struct MatrixClient::Impl {
    asio::any_io_executor ex;
    std::string base;
    std::string host;  // for the Host header
    std::string port;
    Session session;
    std::deque<beast::tcp_stream> idle;  // keep-alive connections not in use
    std::uint64_t txn = 0;
    std::string txn_prefix = random_token(8);

    // The session a login or registration answer carries; it becomes ours.
    Session take_session(const json::value& v, const char* what) {
        json::object o = v.is_object() ? v.as_object() : json::object{};
        Session s{base, str(o, "user_id"), str(o, "device_id"), str(o, "access_token")};
        if (s.access_token.empty())
            throw ClientError(0, "", std::string("the ") + what + " answer has no access_token");
        session = s;
        return s;
    }

    asio::awaitable<beast::tcp_stream> connection() {
        if (!idle.empty()) {
            beast::tcp_stream s = std::move(idle.front());
            idle.pop_front();
            co_return s;
        }
        tcp::resolver resolver(ex);
        auto [rerr, endpoints] =
            co_await resolver.async_resolve(host, port, asio::as_tuple(use_awaitable));
        if (rerr) throw ClientError(0, "", "cannot resolve " + host + ": " + rerr.message());
        beast::tcp_stream stream(ex);
        stream.expires_after(std::chrono::seconds(10));
        auto [cerr, ep] = co_await stream.async_connect(endpoints, asio::as_tuple(use_awaitable));
        if (cerr) throw ClientError(0, "", "cannot connect to " + base + ": " + cerr.message());
        stream.socket().set_option(tcp::no_delay(true));
        co_return stream;
    }

    asio::awaitable<json::value> request(http::verb verb, const std::string& target,
                                         const std::string& body, std::chrono::seconds timeout) {
        http::request<http::string_body> req{verb, target, 11};
        req.set(http::field::host, host);
        req.set(http::field::user_agent, "mxvoip");
        req.keep_alive(true);
        if (!session.access_token.empty())
            req.set(http::field::authorization, "Bearer " + session.access_token);
        if (!body.empty() || verb == http::verb::post || verb == http::verb::put) {
            req.set(http::field::content_type, "application/json");
            req.body() = body.empty() ? "{}" : body;
        }
        req.prepare_payload();
        // A kept-alive connection may have been closed by the server meanwhile: one more try
        // on a fresh connection.
        for (int attempt = 0;; ++attempt) {
            bool reused = !idle.empty();
            beast::tcp_stream stream = co_await connection();
            stream.expires_after(timeout);
            auto [werr, wn] =
                co_await http::async_write(stream, req, asio::as_tuple(use_awaitable));
            beast::flat_buffer buf;
            http::response<http::string_body> res;
            beast::error_code rerr = werr;
            if (!werr) {
                auto [e, rn] =
                    co_await http::async_read(stream, buf, res, asio::as_tuple(use_awaitable));
                rerr = e;
            }
            if (rerr) {
                if (reused && attempt == 0) continue;
                throw ClientError(
                    0, "",
                    std::string(http::to_string(verb)) + " " + target + ": " + rerr.message());
            }
            if (res.keep_alive()) idle.push_back(std::move(stream));
            json::value v;
            if (!res.body().empty()) {
                boost::system::error_code jerr;
                v = json::parse(res.body(), jerr);
                if (jerr)
                    throw ClientError(res.result_int(), "",
                                      "the homeserver's answer to " + target + " is not JSON");
            }
            if (res.result_int() >= 300) {
                json::object o = v.is_object() ? v.as_object() : json::object{};
                std::int64_t retry = 0;
                if (const json::value* r = o.if_contains("retry_after_ms"); r && r->is_int64())
                    retry = r->as_int64();
                std::string code = str(o, "errcode");
                std::string msg = str(o, "error");
                throw ClientError(res.result_int(), code,
                                  (code.empty() ? std::to_string(res.result_int()) : code) +
                                      (msg.empty() ? "" : ": " + msg),
                                  retry);
            }
            co_return v;
        }
    }
};

MatrixClient::MatrixClient(asio::any_io_executor ex, std::string homeserver)
    : impl_(std::make_unique<Impl>()) {
    impl_->ex = ex;
    while (!homeserver.empty() && homeserver.back() == '/') homeserver.pop_back();
    auto url = boost::urls::parse_absolute_uri(homeserver);
    if (!url || url->scheme() != "http" || url->host().empty())
        throw std::invalid_argument("the homeserver must be an http:// URL, got '" + homeserver +
                                    "' (https is not supported yet)");
    impl_->base = homeserver;
    impl_->host = url->host();
    impl_->port = url->has_port() ? std::string(url->port()) : "80";
    impl_->session.homeserver = homeserver;
}

MatrixClient::~MatrixClient() = default;

const std::string& MatrixClient::homeserver() const {
    return impl_->base;
}
void MatrixClient::use_session(Session s) {
    s.homeserver = impl_->base;
    impl_->session = std::move(s);
}
const Session& MatrixClient::session() const {
    return impl_->session;
}

asio::awaitable<json::value> MatrixClient::call(std::string method, std::string target,
                                                std::string body) {
    http::verb verb = http::string_to_verb(method);
    json::value v = co_await impl_->request(verb, target, body, kRequestTimeout);
    co_return v;
}

asio::awaitable<Session> MatrixClient::login(std::string user, std::string password,
                                             std::string device_name) {
    json::object body{{"type", "m.login.password"},
                      {"identifier", {{"type", "m.id.user"}, {"user", user}}},
                      {"password", password},
                      {"initial_device_display_name", device_name}};
    std::string text = json::serialize(body);
    std::string target = "/_matrix/client/v3/login";
    json::value v = co_await impl_->request(http::verb::post, target, text, kRequestTimeout);
    co_return impl_->take_session(v, "login");
}

asio::awaitable<Session> MatrixClient::register_user(std::string localpart, std::string password,
                                                     std::string device_name) {
    json::object body{{"username", localpart},
                      {"password", password},
                      {"auth", {{"type", "m.login.dummy"}}},
                      {"initial_device_display_name", device_name}};
    std::string text = json::serialize(body);
    std::string target = "/_matrix/client/v3/register";
    json::value v = co_await impl_->request(http::verb::post, target, text, kRequestTimeout);
    co_return impl_->take_session(v, "registration");
}

asio::awaitable<json::object> MatrixClient::sync(std::string since, int timeout_ms) {
    std::string target = "/_matrix/client/v3/sync?timeout=" + std::to_string(timeout_ms);
    if (!since.empty()) target += "&since=" + path_segment(since);
    std::string body;
    auto timeout = std::chrono::seconds(timeout_ms / 1000) + kRequestTimeout;
    json::value v = co_await impl_->request(http::verb::get, target, body, timeout);
    if (!v.is_object()) throw ClientError(0, "", "the /sync answer is not an object");
    co_return std::move(v.as_object());
}

asio::awaitable<std::string> MatrixClient::send_event(std::string room_id, std::string type,
                                                      json::object content) {
    std::string target = "/_matrix/client/v3/rooms/" + path_segment(room_id) + "/send/" +
                         path_segment(type) + "/" + impl_->txn_prefix + "." +
                         std::to_string(++impl_->txn);
    std::string body = json::serialize(content);
    auto delay = std::chrono::milliseconds(250);
    for (int attempt = 1;; ++attempt) {
        std::optional<ClientError> failure;
        try {
            json::value v = co_await impl_->request(http::verb::put, target, body, kRequestTimeout);
            co_return v.is_object() ? str(v.as_object(), "event_id") : std::string();
        } catch (const ClientError& e) {
            if (!e.retryable() || attempt == kSendAttempts) throw;
            failure = e;
        }
        auto wait = failure->retry_after_ms > 0 ? std::chrono::milliseconds(failure->retry_after_ms)
                                                : delay;
        delay = std::min(delay * 2, std::chrono::milliseconds(8000));
        asio::steady_timer timer(impl_->ex, wait);
        co_await timer.async_wait(use_awaitable);
    }
}

asio::awaitable<TurnCredentials> MatrixClient::turn_server() {
    std::string target = "/_matrix/client/v3/voip/turnServer";
    std::string body;
    json::value v = co_await impl_->request(http::verb::get, target, body, kRequestTimeout);
    TurnCredentials t;
    t.fetched_at = std::chrono::steady_clock::now();
    if (!v.is_object()) co_return t;
    const json::object& o = v.as_object();
    t.username = str(o, "username");
    t.password = str(o, "password");
    if (const json::value* ttl = o.if_contains("ttl"); ttl && ttl->is_int64())
        t.ttl = std::chrono::seconds(ttl->as_int64());
    if (const json::value* uris = o.if_contains("uris"); uris && uris->is_array())
        for (const auto& u : uris->as_array())
            if (u.is_string()) t.uris.emplace_back(u.as_string());
    co_return t;
}

asio::awaitable<std::string> MatrixClient::create_direct_room(std::string user_id) {
    json::object body{{"preset", "trusted_private_chat"},
                      {"is_direct", true},
                      {"invite", json::array{json::value(user_id)}}};
    std::string text = json::serialize(body);
    std::string target = "/_matrix/client/v3/createRoom";
    json::value v = co_await impl_->request(http::verb::post, target, text, kRequestTimeout);
    std::string room = v.is_object() ? str(v.as_object(), "room_id") : std::string();
    if (room.empty()) throw ClientError(0, "", "the createRoom answer has no room_id");
    co_return room;
}

asio::awaitable<void> MatrixClient::join(std::string room_id) {
    std::string target = "/_matrix/client/v3/join/" + path_segment(room_id);
    std::string body = "{}";
    co_await impl_->request(http::verb::post, target, body, kRequestTimeout);
}

asio::awaitable<std::optional<json::object>> MatrixClient::account_data(std::string type) {
    std::string target = "/_matrix/client/v3/user/" + path_segment(impl_->session.user_id) +
                         "/account_data/" + path_segment(type);
    std::string body;
    try {
        json::value v = co_await impl_->request(http::verb::get, target, body, kRequestTimeout);
        if (v.is_object()) co_return std::move(v.as_object());
        co_return std::nullopt;
    } catch (const ClientError& e) {
        if (e.status != 404) throw;
    }
    co_return std::nullopt;
}

asio::awaitable<void> MatrixClient::put_account_data(std::string type, json::object content) {
    std::string target = "/_matrix/client/v3/user/" + path_segment(impl_->session.user_id) +
                         "/account_data/" + path_segment(type);
    std::string body = json::serialize(content);
    co_await impl_->request(http::verb::put, target, body, kRequestTimeout);
}

asio::awaitable<std::vector<std::string>> MatrixClient::joined_members(std::string room_id) {
    std::string target = "/_matrix/client/v3/rooms/" + path_segment(room_id) + "/members";
    std::string body;
    json::value v = co_await impl_->request(http::verb::get, target, body, kRequestTimeout);
    std::vector<std::string> out;
    if (const json::value* chunk = v.is_object() ? v.as_object().if_contains("chunk") : nullptr;
        chunk && chunk->is_array()) {
        for (const auto& ev : chunk->as_array()) {
            if (!ev.is_object()) continue;
            const json::object& e = ev.as_object();
            const json::value* c = e.if_contains("content");
            if (c && c->is_object() && str(c->as_object(), "membership") == "join")
                out.push_back(str(e, "state_key"));
        }
    }
    co_return out;
}

}  // namespace mxvoip::client
