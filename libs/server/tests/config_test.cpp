#include "mxvoip/server/config.hpp"

#include <gtest/gtest.h>

using namespace mxvoip::server;

namespace {
std::string error_of(const std::string& yaml) {
    try {
        parse_config(yaml, "test.yaml");
    } catch (const ConfigError& e) {
        return e.what();
    }
    return "ok";
}
}  // namespace

TEST(Config, EmptyFileGivesDefaults) {
    Config c = parse_config("", "test.yaml");
    EXPECT_EQ(c.server_name, "localhost");
    ASSERT_EQ(c.listen.size(), 1u);
    EXPECT_EQ(c.listen[0].port, 8008);
    EXPECT_EQ(c.database.backend, "sqlite");
    EXPECT_EQ(c.public_baseurl, "http://127.0.0.1:8008/");
    EXPECT_TRUE(c.public_baseurl_derived);
    EXPECT_FALSE(c.development_defaults);
    EXPECT_TRUE(development_config().development_defaults);
}

TEST(Config, ReadsEveryKey) {
    Config c = parse_config(R"(
server_name: example.org
listen: ["0.0.0.0:8448", "[::1]:9000"]
public_baseurl: https://matrix.example.org
database:
  backend: sqlite
  path: /var/lib/mxvoip/db.sqlite
  synchronous: normal
enable_registration: false
allow_guest_access: true
user_directory: {search_all_users: true}
rc_message: {per_second: 2.5, burst_count: 20}
rc_login: {per_second: 0.5, burst_count: 5}
rc_registration: {per_second: 0.1, burst_count: 2}
max_request_body_size: 10M
log_level: debug
password_hash_cost: moderate
worker_threads: 4
)",
                            "test.yaml");
    EXPECT_EQ(c.server_name, "example.org");
    ASSERT_EQ(c.listen.size(), 2u);
    EXPECT_EQ(c.listen[1].host, "::1");
    EXPECT_EQ(c.listen[1].port, 9000);
    EXPECT_EQ(c.public_baseurl, "https://matrix.example.org/");
    EXPECT_FALSE(c.public_baseurl_derived);
    EXPECT_EQ(c.database.path, "/var/lib/mxvoip/db.sqlite");
    EXPECT_EQ(c.database.synchronous, "normal");
    EXPECT_FALSE(c.enable_registration);
    EXPECT_TRUE(c.allow_guest_access);
    EXPECT_TRUE(c.user_directory_search_all_users);
    EXPECT_FALSE(development_config().user_directory_search_all_users);
    EXPECT_DOUBLE_EQ(c.rc_message.per_second, 2.5);
    EXPECT_DOUBLE_EQ(c.rc_message.burst_count, 20);
    EXPECT_EQ(c.max_request_body_size, 10u * 1024 * 1024);
    EXPECT_EQ(c.log_level, "debug");
    EXPECT_EQ(c.worker_threads, 4u);
}

TEST(Config, LoginLimitsInSynapsesShapeAndListenersBehindAProxy) {
    Config c = parse_config(R"(
rc_login:
  address: {per_second: 1, burst_count: 10}
  account: {per_second: 0.5, burst_count: 4}
  failed_attempts: {per_second: 0.1, burst_count: 2}
listen:
  - "127.0.0.1:8008"
  - {address: "[::1]:8009", x_forwarded: true}
trusted_proxies: ["10.0.0.0/8", "::1"]
)",
                            "test.yaml");
    EXPECT_DOUBLE_EQ(c.rc_login.burst_count, 10);
    EXPECT_DOUBLE_EQ(c.rc_login_account.burst_count, 4);
    EXPECT_DOUBLE_EQ(c.rc_login_failed.per_second, 0.1);
    ASSERT_EQ(c.listen.size(), 2u);
    EXPECT_FALSE(c.listen[0].x_forwarded);
    EXPECT_TRUE(c.listen[1].x_forwarded);
    EXPECT_EQ(c.listen[1].port, 8009);
    EXPECT_EQ(c.trusted_proxies, (std::vector<std::string>{"10.0.0.0/8", "::1"}));
    // The flat form is the per-address limit; the others keep their defaults.
    Config flat = parse_config("rc_login: {per_second: 2, burst_count: 7}\n", "test.yaml");
    EXPECT_DOUBLE_EQ(flat.rc_login.burst_count, 7);
    EXPECT_DOUBLE_EQ(flat.rc_login_failed.burst_count, Config{}.rc_login_failed.burst_count);

    EXPECT_EQ(error_of("rc_login: {adress: {per_second: 1, burst_count: 1}}\n"),
              "test.yaml:1: rc_login.adress: unknown key");
    EXPECT_EQ(error_of("listen: [{x_forwarded: true}]\n"),
              "test.yaml:1: listen.address: is required");
    EXPECT_EQ(error_of("listen: [{address: \"1.2.3.4:1\", proxy: true}]\n"),
              "test.yaml:1: listen.proxy: unknown key");
    EXPECT_EQ(error_of("trusted_proxies: [\"proxy.local\"]\n"),
              "test.yaml:1: trusted_proxies: 'proxy.local' is not an IP address or a network such "
              "as 10.0.0.0/8");
}

TEST(Config, PostgresTakesADsn) {
    auto c = parse_config("database: {backend: postgres, dsn: \"host=/run/pg dbname=mx\"}\n",
                          "test.yaml");
    EXPECT_EQ(c.database.backend, "postgres");
    EXPECT_EQ(c.database.dsn, "host=/run/pg dbname=mx");
    EXPECT_FALSE(c.database.shared);
    auto shared = parse_config("database: {backend: postgres, dsn: \"dbname=mx\", shared: true}\n",
                               "test.yaml");
    EXPECT_TRUE(shared.database.shared);
    EXPECT_EQ(shared.database.feed_grace_s, 300);
    auto grace = parse_config(
        "database: {backend: postgres, dsn: \"dbname=mx\", shared: true, feed_grace: 2m}\n",
        "test.yaml");
    EXPECT_EQ(grace.database.feed_grace_s, 120);
    EXPECT_EQ(error_of("database: {backend: postgres, dsn: x, feed_grace: 2d}\n"),
              "test.yaml:1: database.feed_grace: must be between 1s and 1d");
    EXPECT_EQ(error_of("database: {backend: postgres, dsn: x, feed_grace: 30}\n")
                  .rfind("test.yaml:1: database.feed_grace: needs a unit", 0),
              0u);
}

TEST(Config, ErrorsNameKeyAndLine) {
    EXPECT_EQ(error_of("server_name: a\nbogus: 1\n"), "test.yaml:2: bogus: unknown key");
    EXPECT_EQ(error_of("worker_threads: -1\n"),
              "test.yaml:1: worker_threads: must be a whole number, got '-1'");
    EXPECT_EQ(error_of("listen: 8008\n"), "test.yaml:1: listen: must be a list of host:port");
    EXPECT_EQ(error_of("listen: [\"nohost\"]\n"),
              "test.yaml:1: listen: must be host:port, got 'nohost'");
    EXPECT_EQ(error_of("database: {backend: postgres}\n"),
              "test.yaml:1: database: backend postgres needs a dsn (a libpq connection string)");
    EXPECT_EQ(error_of("database: {shared: true}\n"),
              "test.yaml:1: database: shared needs backend postgres (SQLite serves one process)");
    EXPECT_EQ(error_of("database: {backend: mysql}\n"),
              "test.yaml:1: database.backend: must be sqlite or postgres");
    EXPECT_EQ(error_of("rc_message: {per_second: 1, burst_count: 0}\n"),
              "test.yaml:1: rc_message.burst_count: must be at least 1.000000");
    EXPECT_EQ(error_of("public_baseurl: ftp://x\n"),
              "test.yaml:1: public_baseurl: must start with http:// or https://");
    EXPECT_EQ(error_of("- a\n- b\n"), "test.yaml: the top level must be a map of keys");
    EXPECT_NE(error_of("a: [\n").find("not valid YAML"), std::string::npos);
}

TEST(Config, Limits) {
    Config defaults = parse_config("", "test.yaml");
    EXPECT_EQ(defaults.limits.to_device_per_device, 1000u);
    EXPECT_EQ(defaults.limits.syncs_per_user, 20u);
    EXPECT_EQ(defaults.limits.txn_ids_per_device, 1000u);
    EXPECT_EQ(defaults.limits.one_time_keys_per_device, 1000u);
    Config c = parse_config(
        "limits:\n  to_device_per_device: 5\n  syncs_per_user: 2\n  txn_ids_per_device: 3\n",
        "test.yaml");
    EXPECT_EQ(c.limits.to_device_per_device, 5u);
    EXPECT_EQ(c.limits.txn_ids_per_device, 3u);
    EXPECT_EQ(c.limits.syncs_per_user, 2u);
    EXPECT_EQ(c.limits.filters_per_user, defaults.limits.filters_per_user);
    EXPECT_NE(error_of("user_directory:\n  search_everyone: true\n")
                  .find("user_directory.search_everyone: unknown key"),
              std::string::npos);
    EXPECT_NE(error_of("limits:\n  to_device: 5\n").find("limits.to_device: unknown key"),
              std::string::npos);
    EXPECT_NE(error_of("limits:\n  syncs_per_user: 0\n").find("limits.syncs_per_user"),
              std::string::npos);
    EXPECT_NE(error_of("limits: 5\n").find("limits: must be a map"), std::string::npos);
}

TEST(Config, Caches) {
    EXPECT_EQ(parse_config("", "test.yaml").caches.filters, 10000u);
    EXPECT_EQ(parse_config("", "test.yaml").caches.account_data, 10000u);
    EXPECT_EQ(parse_config("caches:\n  account_data: 3\n", "test.yaml").caches.account_data, 3u);
    EXPECT_EQ(parse_config("caches:\n  filters: 50\n", "test.yaml").caches.filters, 50u);
    EXPECT_NE(error_of("caches:\n  filters: 0\n").find("caches.filters"), std::string::npos);
    EXPECT_EQ(parse_config("", "test.yaml").caches.rooms, 2000u);
    EXPECT_EQ(parse_config("caches:\n  rooms: 5\n", "test.yaml").caches.rooms, 5u);
    EXPECT_NE(error_of("caches:\n  rooms: 0\n").find("caches.rooms"), std::string::npos);
    EXPECT_EQ(parse_config("", "test.yaml").caches.keys, 10000u);
    EXPECT_EQ(parse_config("caches:\n  keys: 7\n", "test.yaml").caches.keys, 7u);
    EXPECT_NE(error_of("caches:\n  keys: 0\n").find("caches.keys"), std::string::npos);
    EXPECT_EQ(parse_config("", "test.yaml").caches.accounts, 10000u);
    EXPECT_EQ(parse_config("", "test.yaml").caches.tokens, 10000u);
    EXPECT_EQ(parse_config("caches: {accounts: 4, tokens: 6}\n", "test.yaml").caches.tokens, 6u);
    EXPECT_NE(error_of("caches:\n  accounts: 0\n").find("caches.accounts"), std::string::npos);
    EXPECT_EQ(parse_config("", "test.yaml").caches.to_device, 10000u);
    EXPECT_EQ(parse_config("", "test.yaml").caches.receipts, 2000u);
    EXPECT_EQ(parse_config("", "test.yaml").caches.memberships, 10000u);
    EXPECT_EQ(parse_config("caches:\n  memberships: 4\n", "test.yaml").caches.memberships, 4u);
    EXPECT_NE(error_of("caches:\n  memberships: 0\n").find("caches.memberships"),
              std::string::npos);
    EXPECT_EQ(parse_config("caches:\n  receipts: 3\n", "test.yaml").caches.receipts, 3u);
    EXPECT_NE(error_of("caches:\n  receipts: 0\n").find("caches.receipts"), std::string::npos);
    EXPECT_EQ(parse_config("caches:\n  to_device: 9\n", "test.yaml").caches.to_device, 9u);
    EXPECT_NE(error_of("caches:\n  to_device: 0\n").find("caches.to_device"), std::string::npos);
    EXPECT_EQ(parse_config("", "test.yaml").caches.push_rules, 10000u);
    EXPECT_EQ(parse_config("", "test.yaml").caches.pushers, 10000u);
    EXPECT_EQ(parse_config("", "test.yaml").caches.notifications, 10000u);
    EXPECT_EQ(parse_config("caches:\n  notifications: 5\n", "test.yaml").caches.notifications, 5u);
    EXPECT_NE(error_of("caches:\n  notifications: 0\n").find("caches.notifications"),
              std::string::npos);
    auto push = parse_config("caches: {push_rules: 2, pushers: 3}\n", "test.yaml").caches;
    EXPECT_EQ(push.push_rules, 2u);
    EXPECT_EQ(push.pushers, 3u);
    EXPECT_NE(error_of("caches:\n  push_rules: 0\n").find("caches.push_rules"), std::string::npos);
    EXPECT_NE(error_of("caches:\n  pushers: 0\n").find("caches.pushers"), std::string::npos);
    EXPECT_NE(error_of("caches:\n  users: 5\n").find("caches.users: unknown key"),
              std::string::npos);
}

TEST(Config, Push) {
    Config defaults = parse_config("", "test.yaml");
    EXPECT_FALSE(defaults.push.allow_private_addresses);
    EXPECT_EQ(defaults.push.queue_per_pusher, 100u);
    EXPECT_EQ(defaults.push.retry_initial_ms, 1000);
    EXPECT_EQ(defaults.push.retry_max_ms, 600'000);
    EXPECT_EQ(defaults.limits.pushers_per_user, 20u);
    Config c = parse_config(
        "push:\n  allow_private_addresses: true\n  queue_per_pusher: 7\n  retry_initial_ms: "
        "50\n  retry_max_ms: 500\nlimits: {pushers_per_user: 3}\n",
        "test.yaml");
    EXPECT_TRUE(c.push.allow_private_addresses);
    EXPECT_EQ(c.push.queue_per_pusher, 7u);
    EXPECT_EQ(c.push.retry_initial_ms, 50);
    EXPECT_EQ(c.push.retry_max_ms, 500);
    EXPECT_EQ(c.limits.pushers_per_user, 3u);
    EXPECT_NE(error_of("push:\n  retries: 3\n").find("push.retries: unknown key"),
              std::string::npos);
    EXPECT_NE(error_of("push:\n  retry_initial_ms: 5000\n  retry_max_ms: 1000\n")
                  .find("retry_max_ms must be at least retry_initial_ms"),
              std::string::npos);
    EXPECT_NE(error_of("push:\n  queue_per_pusher: 0\n").find("push.queue_per_pusher"),
              std::string::npos);
    EXPECT_NE(error_of("push: yes\n").find("push: must be a map"), std::string::npos);
}

TEST(Config, Presence) {
    EXPECT_TRUE(parse_config("", "test.yaml").presence_enabled);
    EXPECT_FALSE(parse_config("presence: {enabled: false}\n", "test.yaml").presence_enabled);
    EXPECT_NE(error_of("presence: {enabled: maybe}\n").find("presence.enabled"), std::string::npos);
}

TEST(Config, Timeouts) {
    Config defaults = parse_config("", "test.yaml");
    EXPECT_EQ(defaults.timeouts.header_read_s, 30);
    EXPECT_EQ(defaults.timeouts.shutdown_s, 10);
    Config c = parse_config("timeouts:\n  keep_alive: 2m\n  write: 5s\n", "test.yaml");
    EXPECT_EQ(c.timeouts.keep_alive_s, 120);
    EXPECT_EQ(c.timeouts.write_s, 5);
    EXPECT_NE(error_of("timeouts:\n  write: 5\n").find("timeouts.write"), std::string::npos)
        << "a bare number is refused";
    EXPECT_NE(error_of("timeouts:\n  write: 2h\n").find("between 1s and 1h"), std::string::npos);
    EXPECT_NE(error_of("timeouts:\n  idle: 5s\n").find("timeouts.idle: unknown key"),
              std::string::npos);
}

TEST(Config, KeysThatAreNotTextAreAConfigError) {
    EXPECT_NE(error_of("{a: 1}: 2\n").find("test.yaml:1: "), std::string::npos);
    EXPECT_NE(error_of("limits:\n  [x]: 1\n").find("test.yaml:"), std::string::npos);
    EXPECT_NE(error_of("server_name: [a, b]\n").find("test.yaml:1: server_name"),
              std::string::npos);
}
