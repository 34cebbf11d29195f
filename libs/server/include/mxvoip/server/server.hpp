#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mxvoip/server/config.hpp"

namespace mxvoip::server {

struct BoundAddress {
    std::string host;
    std::uint16_t port = 0;
};

// The homeserver process: listeners, I/O threads, the store and the request handlers.
class Server {
  public:
    using Clock = std::function<std::int64_t()>;  // unix milliseconds; the system clock by default

    explicit Server(Config config, Clock clock = {});
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // Opens the database and binds every listen address (port 0 picks a free port).
    void start();
    const std::vector<BoundAddress>& addresses() const;

    // Serves until stop() (or SIGINT/SIGTERM when handle_signals), then drains: stops
    // accepting, finishes in-flight requests, answers parked /syncs, closes the store.
    // Throws, once all that is done, when the server stopped because its model could no longer
    // be trusted (a database write failed; changes it never fed were pruned).
    void run(bool handle_signals);
    // Thread-safe; returns at once.
    void stop();

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// `mxvoip-server user add`: creates an account in the configured database.
void add_user(const Config& config, const std::string& user_id, const std::string& password);

}  // namespace mxvoip::server
