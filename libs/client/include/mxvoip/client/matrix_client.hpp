#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/json.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace mxvoip::client {

namespace asio = boost::asio;
namespace json = boost::json;

// A request the homeserver refused (a Matrix error), or one that could not be made at all
// (status 0: connection refused, timeout, a response that is not JSON).
struct ClientError : std::runtime_error {
    ClientError(unsigned status, std::string errcode, const std::string& message,
                std::int64_t retry_after_ms = 0);
    unsigned status;
    std::string errcode;
    std::int64_t retry_after_ms;
    bool retryable() const { return status == 0 || status == 429 || status >= 500; }
};

struct Session {
    std::string homeserver;  // base URL, e.g. http://127.0.0.1:8008
    std::string user_id;
    std::string device_id;
    std::string access_token;
};

struct TurnCredentials {
    std::vector<std::string> uris;
    std::string username;
    std::string password;
    std::chrono::seconds ttl{0};
    std::chrono::steady_clock::time_point fetched_at{};
};

// How the client reaches a homeserver.
struct ConnectionOptions {
    // PEM file of the certificate authorities to trust instead of the system's (a private CA).
    std::string ca_file;
    // Plain http:// to a host that is not loopback (127.0.0.0/8, ::1, localhost): refused
    // unless set, since a password or access token would cross the network in clear.
    bool allow_insecure_http = false;
};

// An async Matrix client-server API client over Asio/Beast: keep-alive connections (one per
// concurrent request, reused), JSON in and out, Matrix errors as ClientError. All methods run
// on the client's executor. https:// is TLS 1.2 or newer with the certificate verified against
// the system's CAs (or ConnectionOptions::ca_file) and the host name, SNI sent; a certificate
// that is refused ends the request with a ClientError naming why (unknown CA, wrong host,
// expired). The constructor throws std::invalid_argument for a URL it will not use.
class MatrixClient {
  public:
    MatrixClient(asio::any_io_executor ex, std::string homeserver, ConnectionOptions options = {});
    ~MatrixClient();
    MatrixClient(const MatrixClient&) = delete;
    MatrixClient& operator=(const MatrixClient&) = delete;

    const std::string& homeserver() const;
    void use_session(Session s);
    const Session& session() const;

    asio::awaitable<Session> login(std::string user, std::string password, std::string device_name);
    asio::awaitable<Session> register_user(std::string localpart, std::string password,
                                           std::string device_name);
    // GET /sync. `timeout_ms` is the server-side long-poll; `full_state` asks for every
    // room's whole state with a `since` (resuming where an earlier run stopped).
    asio::awaitable<json::object> sync(std::string since, int timeout_ms, bool full_state);
    // PUT /rooms/{room}/send/{type}/{txn}: a fresh transaction id per event, kept across
    // retries (network errors, 5xx, 429 after retry_after_ms) so nothing is sent twice.
    asio::awaitable<std::string> send_event(std::string room_id, std::string type,
                                            json::object content);
    // PUT /sendToDevice/{type}/{txn}: `body` is {"messages": ...}; retried like send_event,
    // with the caller's transaction id.
    asio::awaitable<void> send_to_device(std::string type, std::string txn_id, json::object body);
    // GET /voip/turnServer; empty URIs when the homeserver has no TURN configured.
    asio::awaitable<TurnCredentials> turn_server();
    // A private chat with `user_id` invited and marked direct; `encrypted` adds
    // m.room.encryption (Megolm) to its initial state, as Element does.
    asio::awaitable<std::string> create_direct_room(std::string user_id, bool encrypted);
    asio::awaitable<void> join(std::string room_id);
    asio::awaitable<std::optional<json::object>> account_data(std::string type);
    asio::awaitable<void> put_account_data(std::string type, json::object content);
    asio::awaitable<std::vector<std::string>> joined_members(std::string room_id);

    // Any request: `body` empty for none. Throws ClientError for a non-2xx answer.
    asio::awaitable<json::value> call(std::string method, std::string target, std::string body);

  private:
    // A PUT with a transaction id in `target`: retried on network errors, 5xx and 429.
    asio::awaitable<json::value> put_idempotent(std::string target, std::string body);
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// The homeserver base URL of `server_name` (a user id's part after the colon), found the way
// clients do: https://<server_name>/.well-known/matrix/client (its absence means the server
// name itself), then checked to be a homeserver with /_matrix/client/versions. Throws
// ClientError saying which step failed. (No default for `options`: a default argument of a
// coroutine is a temporary in the caller's co_await, which GCC 12 destroys twice.)
asio::awaitable<std::string> discover_homeserver(asio::any_io_executor ex, std::string server_name,
                                                 ConnectionOptions options);

// n random characters from [A-Za-z0-9]: transaction ids, call ids.
std::string random_token(std::size_t n);

// Percent-encodes one path segment (room ids, event types, user ids).
std::string path_segment(const std::string& s);

}  // namespace mxvoip::client
