#include "mxvoip/client/matrix_client.hpp"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <map>
#include <optional>
#include <vector>

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using mxvoip::client::ClientError;
using mxvoip::client::ConnectionOptions;
using mxvoip::client::MatrixClient;
using tcp = asio::ip::tcp;

TEST(MatrixClientUrl, PlainHttpOnlyToThisMachine) {
    asio::io_context io;
    for (const char* ok : {"http://127.0.0.1:8008", "http://127.1.2.3", "http://localhost:8008/",
                           "http://[::1]:8008", "https://example.org", "https://example.org:8448",
                           "https://example.org/matrix"})
        EXPECT_NO_THROW(MatrixClient(io.get_executor(), ok)) << ok;
    for (const char* refused : {"http://example.org", "http://10.0.0.1:8008", "http://[::2]:8008",
                                "http://localhost.example.org"}) {
        try {
            MatrixClient(io.get_executor(), refused);
            ADD_FAILURE() << refused << " was accepted";
        } catch (const std::invalid_argument& e) {
            EXPECT_NE(std::string(e.what()).find("refusing plain HTTP"), std::string::npos)
                << e.what();
        }
        EXPECT_NO_THROW(MatrixClient(io.get_executor(), refused, ConnectionOptions{"", true}))
            << refused;
    }
    for (const char* bad :
         {"example.org", "ftp://example.org", "https://", "https://u:p@example.org",
          "https://example.org/?q=1", "https://example.org/#x"})
        EXPECT_THROW(MatrixClient(io.get_executor(), bad), std::invalid_argument) << bad;
    EXPECT_THROW(MatrixClient(io.get_executor(), "https://example.org",
                              ConnectionOptions{"/nonexistent/ca.pem", false}),
                 std::invalid_argument);
}

// A homeserver stand-in on loopback: answers each target from `routes` (404 otherwise) and
// records the targets it was asked for.
struct Origin {
    struct Answer {
        unsigned status;
        std::string body;
    };
    asio::io_context& io;
    tcp::acceptor acceptor{io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)};
    std::map<std::string, Answer> routes;
    std::vector<std::string> asked;

    explicit Origin(asio::io_context& c) : io(c) { asio::co_spawn(io, serve(), asio::detached); }
    std::string url() const {
        return "http://127.0.0.1:" + std::to_string(acceptor.local_endpoint().port());
    }
    asio::awaitable<void> serve() {
        for (;;) {
            tcp::socket s = co_await acceptor.async_accept(asio::use_awaitable);
            asio::co_spawn(io, session(std::move(s)), asio::detached);
        }
    }
    asio::awaitable<void> session(tcp::socket s) {
        beast::flat_buffer buf;
        for (;;) {
            http::request<http::string_body> req;
            co_await http::async_read(s, buf, req, asio::use_awaitable);
            std::string target(req.target());
            asked.push_back(target);
            auto it = routes.find(target);
            Answer a =
                it == routes.end() ? Answer{404, R"({"errcode":"M_UNRECOGNIZED"})"} : it->second;
            http::response<http::string_body> res{static_cast<http::status>(a.status), 11};
            res.set(http::field::content_type, "application/json");
            res.body() = a.body;
            res.prepare_payload();
            co_await http::async_write(s, res, asio::use_awaitable);
        }
    }
};

// Runs `f` on `io` to its end; its exception, if any, is rethrown here.
template <class F>
auto run(asio::io_context& io, F f) {
    using T = typename decltype(f())::value_type;
    std::optional<T> out;
    std::exception_ptr failure;
    asio::co_spawn(io, f(), [&](std::exception_ptr e, T v) {
        failure = e;
        if (!e) out = std::move(v);
        io.stop();
    });
    io.run();
    io.restart();
    if (failure) std::rethrow_exception(failure);
    return *out;
}

TEST(MatrixClientUrl, APathInTheBaseUrlPrefixesEveryRequest) {
    asio::io_context io;
    Origin origin(io);
    origin.routes["/matrix/_matrix/client/versions"] = {200, R"({"versions":["v1.11"]})"};
    MatrixClient client(io.get_executor(), origin.url() + "/matrix/");
    auto v = run(io, [&]() -> asio::awaitable<boost::json::value> {
        std::string get = "GET", target = "/_matrix/client/versions", none;
        co_return co_await client.call(get, target, none);
    });
    EXPECT_EQ(v.at("versions").at(0).as_string(), "v1.11");
    EXPECT_EQ(origin.asked, std::vector<std::string>{"/matrix/_matrix/client/versions"});
}

TEST(Discovery, RefusesAServerNameThatIsNoHost) {
    asio::io_context io;
    auto discover = [&]() -> asio::awaitable<std::string> {
        std::string name = "bad name/x";
        ConnectionOptions options;
        co_return co_await mxvoip::client::discover_homeserver(io.get_executor(), name, options);
    };
    EXPECT_THROW(run(io, discover), ClientError);
}

}  // namespace
