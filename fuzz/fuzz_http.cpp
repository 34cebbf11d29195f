// The HTTP request path: any bytes are read as an HTTP/1.1 request the way a connection reads
// them, then routed, authenticated, rate-limited and dispatched into a real Homeserver over a
// SQLite database in a temporary directory. Whatever the request, the answer is never a 500
// and its body is valid UTF-8 JSON; the process neither crashes nor leaks.
//
// Inputs may say $TOKEN, $USER, $DEVICE and $ROOM: they become the access token of a
// signed-in user, that user's id and device id, and a public room the user created, so that
// requests reach past authentication. A request that logs that user out is followed by a new
// login.
#include <spdlog/spdlog.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "dispatch.hpp"
#include "homeserver.hpp"
#include "mxvoip/proto/json.hpp"
#include "mxvoip/server/config.hpp"
#include "mxvoip/store/store.hpp"

namespace {

namespace asio = boost::asio;
namespace http = boost::beast::http;
namespace json = boost::json;
using namespace mxvoip::server;

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

void replace_all(std::string& s, std::string_view from, const std::string& to) {
    for (auto pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + to.size()))
        s.replace(pos, from.size(), to);
}

class Target {
  public:
    Target() {
        spdlog::set_level(spdlog::level::off);
        auto base = std::filesystem::exists("/dev/shm") ? std::filesystem::path("/dev/shm")
                                                        : std::filesystem::temp_directory_path();
        dir_ = base / ("mxvoip-fuzz-http-" + std::to_string(::getpid()));
        std::filesystem::create_directories(dir_);
        std::string unlimited = "{per_second: 1000000, burst_count: 1000000}";
        config_ = parse_config("database: {path: \"" + (dir_ / "db").string() +
                                   "\", synchronous: normal}\n"
                                   "password_hash_cost: min\n"
                                   "allow_guest_access: true\n"
                                   // Per account the default limits hold: every login
                                   // makes a device, and nothing else bounds them.
                                   "rc_login: {address: " +
                                   unlimited +
                                   "}\n"
                                   "turn_uris: [\"turn:turn.example.org?transport=udp\"]\n"
                                   "turn_shared_secret: fuzz-secret\n",
                               "fuzz.yaml");
        store_ = mxvoip::store::open_sqlite({config_.database.path, "normal"});
        hs_ = std::make_unique<Homeserver>(config_, *store_, blocking_, now_ms);
        // Every /sync answers at once instead of waiting for its timeout.
        hs_->core.wake_all();
        dispatch_ = std::make_unique<Dispatcher>(*hs_);
        token_ = setup("/register",
                       R"({"username":"fuzz","password":"fuzz-password","device_id":"FUZZDEV",)"
                       R"("auth":{"type":"m.login.dummy"}})",
                       "access_token");
        room_ = setup("/createRoom", R"({"preset":"public_chat"})", "room_id");
    }

    ~Target() {
        hs_->core.stop_writer();
        blocking_.join();
        dispatch_.reset();
        hs_.reset();
        store_.reset();
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }

    void run(std::string text) {
        replace_all(text, "$TOKEN", token_);
        replace_all(text, "$USER", "@fuzz:localhost");
        replace_all(text, "$DEVICE", "FUZZDEV");
        replace_all(text, "$ROOM", room_);
        auto r = call(text);
        if (!r) return;
        if (r->status >= 500 && r->status != 503) {
            std::fprintf(stderr, "status %u: %s\n", r->status, r->body.c_str());
            std::abort();
        }
        boost::system::error_code ec;
        if (!mxvoip::proto::is_valid_utf8(r->body) || (json::parse(r->body, ec), ec)) {
            std::fprintf(stderr, "not UTF-8 JSON: %s\n", r->body.c_str());
            std::abort();
        }
        if (token_.empty() || !hs_->accounts.authenticate(token_)) login();
    }

  private:
    // Reads `text` as one request, as a connection would, and dispatches it; nothing when it
    // is not a complete request (the connection would answer 4xx itself, or wait for more).
    std::optional<Response> call(const std::string& text) {
        http::request_parser<http::string_body> parser;
        parser.header_limit(16 * 1024);
        parser.body_limit(config_.max_request_body_size);
        parser.eager(true);
        boost::system::error_code ec;
        parser.put(asio::buffer(text), ec);
        if (ec || !parser.is_done()) return std::nullopt;
        auto raw = parser.release();
        std::optional<Response> out;
        asio::co_spawn(ioc_, (*dispatch_)(raw, client_), [&](std::exception_ptr e, Response r) {
            if (e) std::rethrow_exception(e);
            out = std::move(r);
        });
        ioc_.restart();
        ioc_.run();
        return out;
    }

    std::optional<Response> post(const std::string& path, const std::string& body) {
        std::string auth = token_.empty() ? "" : "Authorization: Bearer " + token_ + "\r\n";
        return call("POST /_matrix/client/v3" + path + " HTTP/1.1\r\n" + auth +
                    "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
    }

    // A request the target cannot do without: its `field`, or the process ends saying why.
    std::string setup(const std::string& path, const std::string& body, const char* field) {
        auto r = post(path, body);
        if (!r || r->status != 200) {
            std::fprintf(stderr, "fuzz_http set-up: POST %s failed: %s\n", path.c_str(),
                         r ? r->body.c_str() : "no response");
            std::abort();
        }
        return json::value_to<std::string>(json::parse(r->body).at(field));
    }

    void login() {
        token_.clear();
        auto r =
            post("/login", R"({"type":"m.login.password","user":"fuzz","password":"fuzz-password",)"
                           R"("device_id":"FUZZDEV"})");
        // When the fuzzer changed the password there is nobody to sign in as: stay signed out.
        if (r && r->status == 200)
            token_ = json::value_to<std::string>(json::parse(r->body).at("access_token"));
    }

    std::filesystem::path dir_;
    Config config_;
    std::unique_ptr<mxvoip::store::Store> store_;
    asio::thread_pool blocking_{1};
    std::unique_ptr<Homeserver> hs_;
    std::unique_ptr<Dispatcher> dispatch_;
    asio::io_context ioc_;
    const std::string client_ = "127.0.0.1";  // outlives every request the coroutine reads it in
    std::string token_;
    std::string room_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static Target target;
    target.run(std::string(reinterpret_cast<const char*>(data), size));
    return 0;
}
