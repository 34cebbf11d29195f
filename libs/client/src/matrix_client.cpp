#include "mxvoip/client/matrix_client.hpp"

#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/url/encode.hpp>
#include <boost/url/parse.hpp>
#include <boost/url/rfc/unreserved_chars.hpp>
#include <deque>
#include <random>
#include <variant>

namespace mxvoip::client {

namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using asio::use_awaitable;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;

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

std::optional<asio::ip::address> ip_address(const std::string& host) {
    std::string h = host.size() > 2 && host.front() == '[' ? host.substr(1, host.size() - 2) : host;
    boost::system::error_code ec;
    asio::ip::address a = asio::ip::make_address(h, ec);
    if (ec) return std::nullopt;
    return a;
}

bool is_loopback(const std::string& host) {
    if (host == "localhost") return true;
    auto a = ip_address(host);
    return a && a->is_loopback();
}

// Why OpenSSL refused the certificate, in the words a user can act on.
std::string certificate_problem(long verify_result, const std::string& host) {
    switch (verify_result) {
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
        case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
        case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
            return "it is issued by an unknown certificate authority (for a private one, give "
                   "--ca-file)";
        case X509_V_ERR_HOSTNAME_MISMATCH:
        case X509_V_ERR_IP_ADDRESS_MISMATCH:
            return "it is not valid for the host name " + host;
        case X509_V_ERR_CERT_HAS_EXPIRED:
            return "it has expired";
        case X509_V_ERR_CERT_NOT_YET_VALID:
            return "it is not valid yet";
        default:
            return X509_verify_cert_error_string(verify_result);
    }
}

}  // namespace

struct MatrixClient::Impl {
    using Connection = std::variant<beast::tcp_stream, TlsStream>;

    asio::any_io_executor ex;
    std::string base;
    std::string host;  // as in the URL: the Host header, SNI, the certificate's name
    std::string port;
    std::optional<asio::ip::address> ip;  // the host, when it is an address
    std::string prefix;                   // the base URL's path, if the homeserver lives below one
    std::unique_ptr<ssl::context> tls;    // null for http://
    Session session;
    std::deque<Connection> idle;  // keep-alive connections not in use
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

    asio::awaitable<Connection> connection() {
        if (!idle.empty()) {
            Connection c = std::move(idle.front());
            idle.pop_front();
            co_return c;
        }
        tcp::resolver resolver(ex);
        std::string name = ip ? ip->to_string() : host;
        auto [rerr, endpoints] =
            co_await resolver.async_resolve(name, port, asio::as_tuple(use_awaitable));
        if (rerr) throw ClientError(0, "", "cannot resolve " + host + ": " + rerr.message());
        beast::tcp_stream stream(ex);
        stream.expires_after(std::chrono::seconds(10));
        auto [cerr, ep] = co_await stream.async_connect(endpoints, asio::as_tuple(use_awaitable));
        if (cerr) throw ClientError(0, "", "cannot connect to " + base + ": " + cerr.message());
        stream.socket().set_option(tcp::no_delay(true));
        if (!tls) co_return Connection(std::move(stream));

        TlsStream secure(std::move(stream), *tls);
        SSL* ssl = secure.native_handle();
        // OpenSSL checks the name during the handshake, so a mismatch is reported as such.
        if (ip) {
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ip->to_string().c_str());
        } else {
            SSL_set_tlsext_host_name(ssl, host.c_str());
            SSL_set1_host(ssl, host.c_str());
        }
        auto [herr] = co_await secure.async_handshake(ssl::stream_base::client,
                                                      asio::as_tuple(use_awaitable));
        if (herr) {
            long verified = SSL_get_verify_result(ssl);
            if (verified != X509_V_OK)
                throw ClientError(0, "",
                                  "the certificate of " + host +
                                      " is refused: " + certificate_problem(verified, host));
            throw ClientError(0, "", "TLS with " + base + " failed: " + herr.message());
        }
        co_return Connection(std::move(secure));
    }

    // Writes `req` and reads the answer on one connection, within `timeout`.
    template <class Stream>
    static asio::awaitable<beast::error_code> exchange(Stream& stream,
                                                       http::request<http::string_body>& req,
                                                       http::response<http::string_body>& res,
                                                       std::chrono::seconds timeout) {
        beast::get_lowest_layer(stream).expires_after(timeout);
        auto [werr, wn] = co_await http::async_write(stream, req, asio::as_tuple(use_awaitable));
        if (werr) co_return werr;
        beast::flat_buffer buf;
        auto [rerr, rn] =
            co_await http::async_read(stream, buf, res, asio::as_tuple(use_awaitable));
        co_return rerr;
    }

    asio::awaitable<json::value> request(http::verb verb, const std::string& target,
                                         const std::string& body, std::chrono::seconds timeout) {
        http::request<http::string_body> req{verb, prefix + target, 11};
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
            Connection stream = co_await connection();
            http::response<http::string_body> res;
            beast::error_code rerr;
            if (auto* plain = std::get_if<beast::tcp_stream>(&stream))
                rerr = co_await exchange(*plain, req, res, timeout);
            else
                rerr = co_await exchange(std::get<TlsStream>(stream), req, res, timeout);
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

MatrixClient::MatrixClient(asio::any_io_executor ex, std::string homeserver,
                           ConnectionOptions options)
    : impl_(std::make_unique<Impl>()) {
    impl_->ex = ex;
    while (!homeserver.empty() && homeserver.back() == '/') homeserver.pop_back();
    auto url = boost::urls::parse_absolute_uri(homeserver);
    bool https = url && url->scheme() == "https";
    if (!url || (!https && url->scheme() != "http") || url->host().empty() || url->has_query() ||
        url->has_fragment() || url->has_userinfo())
        throw std::invalid_argument("the homeserver must be an https:// URL, got '" + homeserver +
                                    "'");
    impl_->base = homeserver;
    impl_->prefix = url->encoded_path();
    impl_->host = url->host();
    impl_->ip = ip_address(impl_->host);
    impl_->port = url->has_port() ? std::string(url->port()) : https ? "443" : "80";
    impl_->session.homeserver = homeserver;
    if (!https) {
        if (!is_loopback(impl_->host) && !options.allow_insecure_http)
            throw std::invalid_argument("refusing plain HTTP to " + homeserver +
                                        ": passwords and access tokens would cross the network "
                                        "in clear (use https://, or --allow-insecure-http)");
        return;
    }
    impl_->tls = std::make_unique<ssl::context>(ssl::context::tls_client);
    SSL_CTX_set_min_proto_version(impl_->tls->native_handle(), TLS1_2_VERSION);
    impl_->tls->set_verify_mode(ssl::verify_peer);
    boost::system::error_code ec;
    if (options.ca_file.empty()) {
        impl_->tls->set_default_verify_paths(ec);
        if (ec)
            throw std::invalid_argument("cannot load the system's CA certificates: " +
                                        ec.message());
    } else {
        impl_->tls->load_verify_file(options.ca_file, ec);
        if (ec)
            throw std::invalid_argument("cannot read the CA certificates in " + options.ca_file +
                                        ": " + ec.message());
    }
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

asio::awaitable<std::string> discover_homeserver(asio::any_io_executor ex, std::string server_name,
                                                 ConnectionOptions options) {
    std::string base = "https://" + server_name;
    std::string where = base + "/.well-known/matrix/client";
    json::value wk;
    bool found = true;
    try {
        MatrixClient origin(ex, base, options);
        std::string get = "GET", target = "/.well-known/matrix/client", none;
        wk = co_await origin.call(get, target, none);
    } catch (const std::invalid_argument& e) {
        throw ClientError(0, "", "'" + server_name + "' is not a server name: " + e.what());
    } catch (const ClientError& e) {
        if (e.status != 404) throw ClientError(e.status, e.errcode, where + ": " + e.what());
        found = false;  // no delegation: the server name is the homeserver
    }
    if (found) {
        const json::value* hs =
            wk.is_object() ? wk.as_object().if_contains("m.homeserver") : nullptr;
        const json::value* url =
            hs && hs->is_object() ? hs->as_object().if_contains("base_url") : nullptr;
        if (!url || !url->is_string() || url->as_string().empty())
            throw ClientError(0, "", where + " names no m.homeserver.base_url");
        base = std::string(url->as_string());
        while (!base.empty() && base.back() == '/') base.pop_back();
    }
    std::unique_ptr<MatrixClient> hs;
    try {
        hs = std::make_unique<MatrixClient>(ex, base, options);
    } catch (const std::invalid_argument& e) {
        throw ClientError(0, "", where + " points to an unusable homeserver: " + e.what());
    }
    json::value versions;
    try {
        std::string get = "GET", target = "/_matrix/client/versions", none;
        versions = co_await hs->call(get, target, none);
    } catch (const ClientError& e) {
        throw ClientError(e.status, e.errcode,
                          base + " (the homeserver of " + server_name + ") does not answer " +
                              "/_matrix/client/versions: " + e.what());
    }
    const json::value* list =
        versions.is_object() ? versions.as_object().if_contains("versions") : nullptr;
    if (!list || !list->is_array())
        throw ClientError(0, "",
                          base + " (the homeserver of " + server_name +
                              ") is not a Matrix homeserver: its /versions has no versions");
    co_return base;
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

asio::awaitable<json::object> MatrixClient::sync(std::string since, int timeout_ms,
                                                 bool full_state) {
    std::string target = "/_matrix/client/v3/sync?timeout=" + std::to_string(timeout_ms);
    if (!since.empty()) target += "&since=" + path_segment(since);
    if (full_state) target += "&full_state=true";
    std::string body;
    auto timeout = std::chrono::seconds(timeout_ms / 1000) + kRequestTimeout;
    json::value v = co_await impl_->request(http::verb::get, target, body, timeout);
    if (!v.is_object()) throw ClientError(0, "", "the /sync answer is not an object");
    co_return std::move(v.as_object());
}

asio::awaitable<json::value> MatrixClient::put_idempotent(std::string target, std::string body) {
    auto delay = std::chrono::milliseconds(250);
    for (int attempt = 1;; ++attempt) {
        std::optional<ClientError> failure;
        try {
            co_return co_await impl_->request(http::verb::put, target, body, kRequestTimeout);
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

asio::awaitable<std::string> MatrixClient::send_event(std::string room_id, std::string type,
                                                      json::object content) {
    std::string target = "/_matrix/client/v3/rooms/" + path_segment(room_id) + "/send/" +
                         path_segment(type) + "/" + impl_->txn_prefix + "." +
                         std::to_string(++impl_->txn);
    json::value v = co_await put_idempotent(target, json::serialize(content));
    co_return v.is_object() ? str(v.as_object(), "event_id") : std::string();
}

asio::awaitable<void> MatrixClient::send_to_device(std::string type, std::string txn_id,
                                                   json::object messages) {
    std::string target =
        "/_matrix/client/v3/sendToDevice/" + path_segment(type) + "/" + path_segment(txn_id);
    co_await put_idempotent(target, json::serialize(messages));
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

asio::awaitable<std::string> MatrixClient::create_direct_room(std::string user_id, bool encrypted) {
    json::object body{{"preset", "trusted_private_chat"},
                      {"is_direct", true},
                      {"invite", json::array{json::value(user_id)}}};
    if (encrypted)
        body["initial_state"] = json::array{
            json::object{{"type", "m.room.encryption"},
                         {"state_key", ""},
                         {"content", json::object{{"algorithm", "m.megolm.v1.aes-sha2"}}}}};
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
