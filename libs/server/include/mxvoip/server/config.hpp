#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace mxvoip::server {

// A start-up configuration error; the message names the key and its line.
struct ConfigError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct RateLimit {
    double per_second = 0;
    double burst_count = 0;
};

struct ListenAddress {
    std::string host;
    std::uint16_t port = 0;
    // Behind a reverse proxy: requests from `trusted_proxies` name their client in
    // X-Forwarded-For, and that client is what rate limits and logs see.
    bool x_forwarded = false;
};

struct DatabaseConfig {
    std::string backend = "sqlite";  // or "postgres"
    std::string path = "mxvoip.db";
    std::string synchronous = "full";  // "full" or "normal"; see store::SqliteOptions
    std::string dsn;                   // postgres: a libpq connection string (may hold a password)
    // postgres: several mxvoip-server processes share the database (each configured so).
    bool shared = false;
    // shared: how long the others keep the change feed for a process out of touch with the
    // database (store::PostgresOptions::feed_grace).
    std::int64_t feed_grace_s = 300;
};

// TURN for /voip/turnServer. Either a shared secret (coturn `use-auth-secret`) or a static
// username and password; neither means the endpoint answers {} as Synapse does.
struct TurnConfig {
    std::vector<std::string> uris;
    std::string shared_secret;  // never logged
    std::string username;
    std::string password;  // never logged
    std::int64_t user_lifetime_s = 3600;
    bool allow_guests = true;

    bool configured() const { return !uris.empty(); }
};

// What one client may make the server hold (`limits:` in homeserver.yaml). Each limit hit is
// a Matrix error naming it.
struct Limits {
    std::size_t to_device_per_device = 1000;      // messages waiting for one device
    std::size_t txn_ids_per_device = 1000;        // newest transaction ids a retry is matched to
    std::size_t one_time_keys_per_device = 1000;  // unclaimed, per algorithm
    std::size_t filters_per_user = 100;
    std::size_t account_data_per_user = 1000;  // entries, global and per room together
    std::size_t create_room_invites = 100;     // createRoom's `invite`
    std::size_t create_room_initial_state = 100;
    std::size_t syncs_per_user = 20;  // /syncs of one user waiting at once
    std::size_t connections = 10000;  // open connections in all
    std::size_t connections_per_address = 200;
    std::size_t pushers_per_user = 20;
    std::size_t aliases_per_room = 100;             // local aliases pointing at one room
    std::size_t backup_versions_per_user = 100;     // key backup versions not deleted
    std::size_t backup_keys_per_version = 1000000;  // room keys in one backup version
};

// How much of the database each process keeps in memory (`caches:`), in entries; the least
// recently used goes first. What is not held is read from the database when it is needed.
struct Caches {
    std::size_t accounts = 10000;      // users whose account and devices are held
    std::size_t tokens = 10000;        // access tokens (by their hash) known to be signed in
    std::size_t account_data = 10000;  // users whose account data is held
    std::size_t filters = 10000;       // sync filters (each user's, by id)
    std::size_t keys = 10000;          // users whose end-to-end keys are held
    std::size_t rooms = 2000;          // rooms: their state and membership history
    std::size_t memberships = 10000;   // users whose rooms (their memberships) are held
    std::size_t receipts = 2000;       // rooms whose read receipts are held
    std::size_t to_device = 10000;     // users whose devices' queues of to-device messages are held
    std::size_t push_rules = 10000;    // users whose push rules are held
    std::size_t pushers = 10000;       // users whose pushers are held
    std::size_t notifications =
        10000;  // users whose unread counts and recent notifications are held
};

// Push notifications to push gateways (`push:`).
struct PushSettings {
    // Gateways whose addresses are loopback, private, link-local or unique-local are refused
    // unless this is set: a user names the URL, and the server must not be made to post into
    // the network it sits in.
    bool allow_private_addresses = false;
    std::size_t queue_per_pusher = 100;    // notifications waiting for a gateway; oldest dropped
    std::int64_t retry_initial_ms = 1000;  // back-off after a failed delivery, doubling
    std::int64_t retry_max_ms = 600'000;
};

// How long the server waits for a client (`timeouts:`), in seconds.
struct Timeouts {
    std::int64_t header_read_s = 30;  // a new connection: until its first request has arrived
    std::int64_t keep_alive_s = 60;   // between requests: until the next one has arrived
    std::int64_t write_s = 30;        // a response the client does not read
    std::int64_t shutdown_s = 10;     // after SIGTERM: connections still open are closed
};

// Key names follow Synapse's homeserver.yaml where Synapse has the key.
struct Config {
    std::string server_name = "localhost";
    std::vector<ListenAddress> listen{{"127.0.0.1", 8008}};
    // Peers whose X-Forwarded-For an x_forwarded listener believes (addresses or networks).
    std::vector<std::string> trusted_proxies{"127.0.0.1", "::1"};
    std::string public_baseurl;  // derived from the first bound listen address when not set
    bool public_baseurl_derived = false;
    DatabaseConfig database;
    bool enable_registration = true;
    bool allow_guest_access = false;
    // user_directory.search_all_users: the user directory finds every local user, not only
    // those who share a room with the searcher or sit in a public room (Synapse's key).
    bool user_directory_search_all_users = false;
    PushSettings push;
    Caches caches;
    // presence.enabled: false turns presence off (as in Synapse): nothing is tracked or sent,
    // PUT is accepted and ignored, and everyone reads as offline.
    bool presence_enabled = true;
    RateLimit rc_message{10, 50};         // per user, every write
    RateLimit rc_login{0.17, 3};          // per address (rc_login.address, or rc_login itself)
    RateLimit rc_login_account{0.17, 3};  // per account, every attempt (rc_login.account)
    RateLimit rc_login_failed{0.17, 3};   // per account, failed ones (rc_login.failed_attempts)
    RateLimit rc_registration{0.17, 3};   // per address, completed registrations
    std::size_t max_request_body_size = 1024 * 1024;
    std::string log_level = "info";
    // Argon2id cost: "interactive" (libsodium's, ~64 MiB per hash), "moderate", or "min"
    // (for load tests only).
    std::string password_hash_cost = "interactive";
    unsigned worker_threads = 0;  // 0: one per core
    Limits limits;
    Timeouts timeouts;
    TurnConfig turn;
    RateLimit rc_turn{1, 10};  // per user
    // Accepted but worth saying at start-up (e.g. a TURN lifetime under 10 minutes).
    std::vector<std::string> warnings;
    // True when no file was given and the development defaults above are in force.
    bool development_defaults = false;
    // Where the file was read from, for messages.
    std::string source;
};

// Reads and validates a YAML file. Unknown keys and bad values throw ConfigError.
Config load_config(const std::string& path);
// Same, from text (`source` names it in errors).
Config parse_config(const std::string& yaml_text, const std::string& source);
// The development defaults used when no --config is given.
Config development_config();

}  // namespace mxvoip::server
