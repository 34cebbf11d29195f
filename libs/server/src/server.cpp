#include "mxvoip/server/server.hpp"

#include <sys/resource.h>

#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <chrono>
#include <list>
#include <optional>
#include <thread>
#include <unordered_map>

#include "dispatch.hpp"
#include "homeserver.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/json.hpp"
#include "proxy.hpp"

namespace mxvoip::server {

namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using proto::MatrixError;

namespace {

constexpr std::size_t kHeaderLimit = 16 * 1024;

std::int64_t system_now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// The store the configuration names (its DSN, which may hold a password, is not logged).
std::unique_ptr<store::Store> open_store(const DatabaseConfig& db) {
    if (db.backend == "postgres") {
        spdlog::info("database: PostgreSQL{}", db.shared ? ", shared with other processes" : "");
        return store::open_postgres({.dsn = db.dsn,
                                     .shared = db.shared,
                                     .feed_grace = std::chrono::seconds(db.feed_grace_s)});
    }
    spdlog::info("database: SQLite {}", db.path);
    return store::open_sqlite({db.path, db.synchronous});
}

void raise_open_files_limit() {
    rlimit lim{};
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
        rlim_t before = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &lim) == 0)
            spdlog::debug("open files limit raised from {} to {}", before, lim.rlim_cur);
    }
}

// The status for a request that failed to parse, or nothing when there is no one to answer
// (the connection closed or timed out, or the request ended half-way).
std::optional<http::status> unreadable_request_status(const boost::system::error_code& ec,
                                                      const beast::flat_buffer& buffer) {
    if (ec.category() != http::make_error_code(http::error::body_limit).category() ||
        ec == http::error::end_of_stream || ec == http::error::partial_message)
        return std::nullopt;
    if (ec == http::error::body_limit) return http::status::payload_too_large;
    if (ec == http::error::header_limit) {
        // The request line alone did not fit: the target is what is too long.
        auto data = buffer.cdata();
        std::string_view head(static_cast<const char*>(data.data()), data.size());
        return head.find('\n') == std::string_view::npos
                   ? http::status::uri_too_long
                   : http::status::request_header_fields_too_large;
    }
    if (ec == http::error::bad_version) return http::status::http_version_not_supported;
    return http::status::bad_request;
}

std::string unreadable_request_message(http::status status) {
    switch (status) {
        case http::status::payload_too_large:
            return "Request body is larger than the server accepts";
        case http::status::uri_too_long:
            return "Request target is longer than the server accepts";
        case http::status::request_header_fields_too_large:
            return "Request headers are larger than the server accepts";
        case http::status::http_version_not_supported:
            return "Only HTTP/1.0 and HTTP/1.1 are served";
        default:
            return "Malformed HTTP request";
    }
}

// The per-connection state the shutdown path needs to reach.
struct Connection {
    Connection(tcp::socket s, std::string r) : stream(std::move(s)), remote(std::move(r)) {}
    beast::tcp_stream stream;
    std::string remote;      // the peer's address
    bool via_proxy = false;  // the peer is a trusted proxy on an x_forwarded listener
    bool busy = false;       // a request is being handled: let it finish
    bool closing = false;    // the server is draining: close after the current response
};

}  // namespace

struct Server::Impl {
    Config config;
    Clock clock;
    asio::io_context ioc;
    asio::thread_pool blocking{1};
    std::unique_ptr<store::Store> store;
    std::unique_ptr<Homeserver> hs;
    std::unique_ptr<Dispatcher> dispatch;
    std::vector<std::unique_ptr<tcp::acceptor>> acceptors;
    std::vector<BoundAddress> addresses;
    std::optional<asio::signal_set> signals;
    // The acceptors, the signal set and the start of the shutdown run here: Asio's objects
    // are not safe to use from two threads at once (closing an acceptor while another
    // thread starts an accept on it was a data race).
    asio::strand<asio::io_context::executor_type> control{asio::make_strand(ioc)};
    std::mutex conns_mu;
    std::list<std::shared_ptr<Connection>> conns;
    std::unordered_map<std::string, std::size_t> conns_by_address;
    std::atomic<bool> stopping{false};
    std::string failure;  // why the server stops on its own (guarded by conns_mu)
    // Closes what is still open once the shutdown deadline passes.
    std::optional<asio::steady_timer> shutdown_deadline;

    std::optional<TrustedProxies> proxies;

    asio::awaitable<void> accept_loop(tcp::acceptor& acceptor, bool x_forwarded);
    // Whether a new connection from `remote` is within the connection limits; counts it.
    std::optional<std::string> admit(const std::shared_ptr<Connection>& conn);
    void forget(const std::shared_ptr<Connection>& conn);
    asio::awaitable<void> session(std::shared_ptr<Connection> conn);
    void begin_shutdown();
};

Server::Server(Config config, Clock clock) : impl_(std::make_unique<Impl>()) {
    impl_->config = std::move(config);
    impl_->clock = clock ? std::move(clock) : Clock(system_now_ms);
}

Server::~Server() {
    if (impl_->hs) impl_->hs->core.stop_writer();
}

const std::vector<BoundAddress>& Server::addresses() const {
    return impl_->addresses;
}

void Server::start() {
    auto& I = *impl_;
    raise_open_files_limit();
    I.store = open_store(I.config.database);
    I.hs = std::make_unique<Homeserver>(I.config, *I.store, I.blocking, I.clock);
    I.hs->core.on_fatal([this](const std::string& why) {
        {
            std::lock_guard lock(impl_->conns_mu);
            impl_->failure = why;
        }
        stop();
    });
    I.hs->accounts.start(I.ioc.get_executor());
    I.hs->rooms.start(I.ioc.get_executor());
    I.hs->typing.start(I.ioc.get_executor());
    I.hs->pushers.start(I.ioc.get_executor());
    I.hs->presence.start(I.ioc.get_executor());
    I.hs->core.start_feed();
    I.dispatch = std::make_unique<Dispatcher>(*I.hs);
    I.proxies.emplace(I.config.trusted_proxies);
    for (const auto& addr : I.config.listen) {
        boost::system::error_code ec;
        auto ip = asio::ip::make_address(addr.host, ec);
        if (ec) throw std::runtime_error("listen address '" + addr.host + "' is not an IP address");
        tcp::endpoint ep(ip, addr.port);
        auto acc = std::make_unique<tcp::acceptor>(I.ioc);
        acc->open(ep.protocol());
        acc->set_option(asio::socket_base::reuse_address(true));
        acc->bind(ep, ec);
        if (ec)
            throw std::runtime_error("cannot listen on " + addr.host + ":" +
                                     std::to_string(addr.port) + ": " + ec.message());
        acc->listen(asio::socket_base::max_listen_connections);
        auto bound = acc->local_endpoint();
        I.addresses.push_back({bound.address().to_string(), bound.port()});
        spdlog::info("listening on http://{}:{}{}", bound.address().to_string(), bound.port(),
                     addr.x_forwarded ? " (behind a proxy: X-Forwarded-For trusted)" : "");
        I.acceptors.push_back(std::move(acc));
    }
    if (I.config.public_baseurl_derived) {
        // Port 0 was resolved by bind: advertise the port clients can actually reach.
        const auto& a = I.addresses.front();
        std::string host = a.host == "0.0.0.0" || a.host == "::" ? "localhost" : a.host;
        if (host.find(':') != std::string::npos) host = "[" + host + "]";
        I.config.public_baseurl = "http://" + host + ":" + std::to_string(a.port) + "/";
    }
}

void Server::run(bool handle_signals) {
    auto& I = *impl_;
    for (std::size_t i = 0; i < I.acceptors.size(); ++i)
        asio::co_spawn(I.control, I.accept_loop(*I.acceptors[i], I.config.listen[i].x_forwarded),
                       asio::detached);
    if (handle_signals) {
        I.signals.emplace(I.control, SIGINT, SIGTERM);
        I.signals->async_wait([this](const boost::system::error_code& ec, int sig) {
            if (ec) return;
            spdlog::info("received {}, shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
            stop();
        });
    }
    unsigned n = I.config.worker_threads ? I.config.worker_threads
                                         : std::max(1u, std::thread::hardware_concurrency());
    std::vector<std::thread> threads;
    for (unsigned i = 1; i < n; ++i) threads.emplace_back([&] { I.ioc.run(); });
    I.ioc.run();
    for (auto& t : threads) t.join();
    I.hs->core.stop_writer();
    I.blocking.join();
    I.hs.reset();
    I.store.reset();
    spdlog::info("stopped; database closed");
    // Exit non-zero, so a supervisor (systemd's Restart=on-failure) starts the server again
    // from what the database holds.
    if (!I.failure.empty()) throw std::runtime_error("stopped: " + I.failure);
}

void Server::stop() {
    if (impl_->stopping.exchange(true)) return;
    asio::post(impl_->control, [this] { impl_->begin_shutdown(); });
}

void Server::Impl::begin_shutdown() {
    for (auto& acc : acceptors) {
        boost::system::error_code ec;
        acc->close(ec);
    }
    if (signals) signals->cancel();
    hs->typing.stop();
    hs->pushers.stop();
    hs->presence.stop();
    hs->core.stop_feed();
    hs->core.wake_all();
    std::lock_guard lock(conns_mu);
    spdlog::info("shutting down: {} connections to finish", conns.size());
    for (auto& c : conns) {
        asio::post(c->stream.get_executor(), [c] {
            c->closing = true;
            if (!c->busy) c->stream.socket().close();
        });
    }
    if (conns.empty()) return;
    // A response the client does not read, or a request that never ends, must not hold the
    // process: past the deadline every connection still open is closed.
    shutdown_deadline.emplace(asio::make_strand(ioc),
                              std::chrono::seconds(config.timeouts.shutdown_s));
    shutdown_deadline->async_wait([this](boost::system::error_code ec) {
        if (ec) return;
        std::lock_guard lock(conns_mu);
        if (!conns.empty())
            spdlog::warn("closing {} connections still open {} s after the shutdown began",
                         conns.size(), config.timeouts.shutdown_s);
        for (auto& c : conns)
            asio::post(c->stream.get_executor(), [c] { c->stream.socket().close(); });
    });
}

std::optional<std::string> Server::Impl::admit(const std::shared_ptr<Connection>& conn) {
    std::lock_guard lock(conns_mu);
    if (stopping) return "The server is shutting down";
    if (conns.size() >= config.limits.connections)
        return "The server has as many connections as it takes (limits.connections)";
    // A proxy's connections carry many clients: only the total limits them.
    if (!conn->via_proxy) {
        std::size_t& from_here = conns_by_address[conn->remote];
        if (from_here >= config.limits.connections_per_address)
            return "Too many connections from your address (limits.connections_per_address)";
        ++from_here;
    }
    conns.push_back(conn);
    return std::nullopt;
}

void Server::Impl::forget(const std::shared_ptr<Connection>& conn) {
    std::lock_guard lock(conns_mu);
    conns.remove(conn);
    if (auto it = conns_by_address.find(conn->remote);
        !conn->via_proxy && it != conns_by_address.end() && !--it->second)
        conns_by_address.erase(it);
    // The last connection is gone: the deadline has nothing left to close.
    if (conns.empty() && shutdown_deadline)
        asio::post(shutdown_deadline->get_executor(), [this] { shutdown_deadline->cancel(); });
}

asio::awaitable<void> Server::Impl::accept_loop(tcp::acceptor& acceptor, bool x_forwarded) {
    for (;;) {
        auto strand = asio::make_strand(ioc);
        auto [ec, socket] =
            co_await acceptor.async_accept(strand, asio::as_tuple(asio::use_awaitable));
        if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
        if (ec) {
            // Out of descriptors and the like: back off instead of spinning.
            spdlog::warn("accept failed: {}", ec.message());
            asio::steady_timer t(ioc, std::chrono::milliseconds(50));
            co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
            continue;
        }
        boost::system::error_code ignore;
        socket.set_option(tcp::no_delay(true), ignore);
        auto remote_ep = socket.remote_endpoint(ignore);
        std::string remote = ignore ? std::string("unknown") : remote_ep.address().to_string();
        auto conn = std::make_shared<Connection>(std::move(socket), std::move(remote));
        conn->via_proxy = x_forwarded && proxies->contains(conn->remote);
        if (auto refusal = admit(conn)) {
            if (stopping) co_return;
            // Said without waiting for a request, then closed: the client learns why.
            spdlog::debug("refused a connection from {}: {}", conn->remote, *refusal);
            std::string body = error_body(proto::errcode::limit_exceeded, *refusal, {});
            std::string res =
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
                "application/json\r\nConnection: close\r\nRetry-After: "
                "10\r\nContent-Length: " +
                std::to_string(body.size()) + "\r\n\r\n" + body;
            auto& sock = conn->stream.socket();
            sock.non_blocking(true, ignore);
            sock.write_some(asio::buffer(res), ignore);
            sock.shutdown(tcp::socket::shutdown_both, ignore);
            sock.close(ignore);
            continue;
        }
        auto ex = conn->stream.get_executor();
        asio::co_spawn(ex, session(conn), asio::detached);
    }
}

asio::awaitable<void> Server::Impl::session(std::shared_ptr<Connection> conn) {
    const std::string& remote = conn->remote;
    beast::flat_buffer buffer;
    boost::system::error_code ignore;
    conn->stream.socket().non_blocking(true, ignore);
    for (bool first = true;; first = false) {
        http::request_parser<http::string_body> parser;
        parser.header_limit(kHeaderLimit);
        parser.body_limit(config.max_request_body_size);
        // A connection that sends nothing, or a request slowly, is closed: a new one after
        // header_read, one kept alive after keep_alive.
        conn->stream.expires_after(std::chrono::seconds(first ? config.timeouts.header_read_s
                                                              : config.timeouts.keep_alive_s));
        auto [ec, n] = co_await http::async_read(conn->stream, buffer, parser,
                                                 asio::as_tuple(asio::use_awaitable));
        if (ec) {
            // A request that cannot be read is answered (then the connection closed) when
            // the client is still there to read why; closed and timed-out ones are not.
            if (auto status = unreadable_request_status(ec, buffer)) {
                http::response<http::string_body> res{*status, 11};
                res.set(http::field::content_type, "application/json");
                res.set(http::field::access_control_allow_origin, "*");
                res.body() = error_body(*status == http::status::payload_too_large
                                            ? proto::errcode::too_large
                                            : proto::errcode::unrecognized,
                                        unreadable_request_message(*status), {});
                res.keep_alive(false);
                res.prepare_payload();
                co_await http::async_write(conn->stream, res, asio::as_tuple(asio::use_awaitable));
            }
            break;
        }
        conn->busy = true;
        conn->stream.expires_never();
        auto& raw = parser.get();
        auto started = std::chrono::steady_clock::now();
        // Behind a trusted proxy the client is whom X-Forwarded-For names: that address is
        // what rate limits count and the log shows.
        std::optional<std::string> client = remote;
        if (conn->via_proxy) client = proxies->client(raw["X-Forwarded-For"], remote);
        Response r;
        if (client)
            r = co_await (*dispatch)(raw, *client);
        else
            r = Response{400,
                         error_body(proto::errcode::unknown,
                                    "X-Forwarded-For does not end in an IP address", {}),
                         {}};
        const std::string& who = client ? *client : remote;
        bool keep = raw.keep_alive() && !conn->closing;
        if (spdlog::should_log(spdlog::level::debug)) {
            auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                std::chrono::steady_clock::now() - started);
            std::string_view target = raw.target();
            // The query string can hold an access token: never log it.
            target = target.substr(0, target.find('?'));
            spdlog::debug("{} {} {} -> {} in {} us", who, raw.method_string(), target, r.status,
                          us.count());
        }
        // The response is serialised by hand into one buffer: every response has the same
        // fixed header block, and Beast's field-by-field serializer was ~6 % of a request.
        std::string out;
        out.reserve(r.body.size() + 384);
        out += raw.version() == 10 ? "HTTP/1.0 " : "HTTP/1.1 ";
        out += std::to_string(r.status);
        out += ' ';
        out += http::obsolete_reason(static_cast<http::status>(r.status));
        out +=
            "\r\n"
            "Content-Type: application/json\r\n"
            "Access-Control-Allow-Origin: *\r\n"
            "Access-Control-Allow-Methods: GET, HEAD, POST, PUT, DELETE, OPTIONS\r\n"
            "Access-Control-Allow-Headers: X-Requested-With, Content-Type, Authorization, Date\r\n"
            "Access-Control-Expose-Headers: Retry-After\r\n";
        for (auto& [k, v] : r.headers) {
            out += k;
            out += ": ";
            out += v;
            out += "\r\n";
        }
        if (!keep)
            out += "Connection: close\r\n";
        else if (raw.version() == 10)
            out += "Connection: keep-alive\r\n";
        out += "Content-Length: ";
        out += std::to_string(raw.method() == http::verb::head ? 0 : r.body.size());
        out += "\r\n\r\n";
        if (raw.method() != http::verb::head) out += r.body;
        // Most responses fit in the socket's buffer and go at once, with no timer (a timer per
        // operation costs ~7 % of throughput, bench/RESULTS.md); the rest of a larger one must
        // be read by the client within the write timeout.
        boost::system::error_code wec;
        std::size_t sent = conn->stream.socket().write_some(asio::buffer(out), wec);
        if (wec == asio::error::would_block || wec == asio::error::try_again) wec = {};
        if (!wec && sent < out.size()) {
            conn->stream.expires_after(std::chrono::seconds(config.timeouts.write_s));
            auto [rest_ec, rest] = co_await asio::async_write(
                conn->stream, asio::buffer(out) + sent, asio::as_tuple(asio::use_awaitable));
            wec = rest_ec;
            if (wec == beast::error::timeout)
                spdlog::info("{} did not read its response for {} s: connection closed", who,
                             config.timeouts.write_s);
        }
        conn->busy = false;
        if (wec || !keep) break;
    }
    conn->stream.socket().shutdown(tcp::socket::shutdown_send, ignore);
    conn->stream.close();
    forget(conn);
}

void add_user(const Config& config, const std::string& user_id, const std::string& password) {
    auto store = open_store(config.database);
    Accounts::add_user_offline(*store, config, user_id, password);
}

}  // namespace mxvoip::server
