#include "mxvoip/server/turn.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "mxvoip/server/config.hpp"

using namespace mxvoip::server;

namespace {

// The reference: OpenSSL's command line, independent of our code path.
std::string openssl_password(const std::string& secret, const std::string& username) {
    std::string cmd = "printf '%s' '" + username + "' | openssl dgst -sha1 -hmac '" + secret +
                      "' -binary | base64";
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) return "popen failed";
    char buf[256] = {};
    std::string out;
    while (fgets(buf, sizeof buf, p)) out += buf;
    int rc = pclose(p);
    if (rc != 0) return "openssl failed (install it with scripts/setup)";
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
    return out;
}

std::string config_error(const std::string& yaml) {
    try {
        parse_config(yaml, "t.yaml");
    } catch (const ConfigError& e) {
        return e.what();
    }
    return "ok";
}

}  // namespace

TEST(TurnCredentials, MatchOpensslHmacSha1) {
    for (auto [secret, user] :
         {std::pair{"n0t-s0-s3cret", "@alice:example.org"},
          std::pair{"another secret with spaces", "@bob:localhost:8448"}, std::pair{"x", "@c:d"}}) {
        auto c = make_turn_credentials(secret, user, 1'700'000'000, 3600, {"turn:t.example:3478"});
        EXPECT_EQ(c.username, std::string("1700003600:") + user);
        EXPECT_EQ(c.password, openssl_password(secret, c.username)) << secret;
        EXPECT_EQ(c.password.size(), 28u);  // 20 bytes, base64 with one '=' of padding
        EXPECT_EQ(c.password.back(), '=');
    }
}

TEST(TurnCredentials, ExpiryIsNowPlusLifetime) {
    auto c =
        make_turn_credentials("s", "@u:x", 1000, 86400, {"turn:a", "turns:b:5349?transport=tcp"});
    EXPECT_EQ(c.username, "87400:@u:x");
    EXPECT_EQ(c.ttl, 86400);
    ASSERT_EQ(c.uris.size(), 2u);
    auto later = make_turn_credentials("s", "@u:x", 1001, 86400, {});
    EXPECT_NE(later.password, c.password);
}

TEST(TurnUri, AcceptsRfc7065Forms) {
    for (const char* ok :
         {"turn:turn.example.com", "turn:turn.example.com:3478?transport=udp",
          "turn:10.20.30.40:3478?transport=tcp", "turns:10.20.30.40:443?transport=tcp",
          "turn:[::1]:3478", "turn:[2001:db8::1]", "turns:a-b.example"})
        EXPECT_FALSE(turn_uri_problem(ok)) << ok << ": " << turn_uri_problem(ok).value_or("");
}

TEST(TurnUri, RejectsWithAReason) {
    EXPECT_EQ(turn_uri_problem("stun:example.com"), "must start with turn: or turns:");
    EXPECT_EQ(turn_uri_problem("turn://example.com"),
              "must not have '//' after the scheme (turn:host:port, RFC 7065)");
    EXPECT_EQ(turn_uri_problem("turn:example.com:0"), "has an invalid port '0'");
    EXPECT_EQ(turn_uri_problem("turn:example.com:99999"), "has an invalid port '99999'");
    EXPECT_EQ(turn_uri_problem("turn:example.com:"), "has an empty port");
    EXPECT_EQ(turn_uri_problem("turn:example.com?transport=sctp"),
              "may only have ?transport=udp or ?transport=tcp");
    EXPECT_EQ(turn_uri_problem("turn:"), "has no valid host");
    EXPECT_EQ(turn_uri_problem("turn:-bad.example"), "has no valid host");
    EXPECT_EQ(turn_uri_problem("turn:[::1"), "has an unclosed '[' in the host");
    EXPECT_EQ(turn_uri_problem("turn:exa mple.com"), "has no valid host");
}

TEST(Duration, UnitsAndTheBareNumberTrap) {
    EXPECT_EQ(parse_duration("90m").seconds, 5400);
    EXPECT_EQ(parse_duration("1h").seconds, 3600);
    EXPECT_EQ(parse_duration("1d").seconds, 86400);
    EXPECT_EQ(parse_duration("30s").seconds, 30);
    auto bare = parse_duration("86400");
    EXPECT_EQ(bare.seconds, 0);
    EXPECT_NE(bare.error.find("milliseconds"), std::string::npos) << bare.error;
    EXPECT_FALSE(parse_duration("1x").error.empty());
    EXPECT_FALSE(parse_duration("0h").error.empty());
    EXPECT_FALSE(parse_duration("h").error.empty());
}

TEST(TurnConfig, EveryError) {
    EXPECT_EQ(config_error("turn_uris: ['turn:ok.example']\nturn_shared_secret: s\n"), "ok");
    EXPECT_EQ(config_error("turn_uris: ['turn:ok.example', 'stun:bad']\nturn_shared_secret: s\n"),
              "t.yaml:1: turn_uris: 'stun:bad' must start with turn: or turns:");
    EXPECT_EQ(config_error("turn_uris: ['turn:a']\n"),
              "t.yaml: turn_uris is set but there are no credentials: add turn_shared_secret (the "
              "static-auth-secret "
              "of coturn's use-auth-secret) or turn_username/turn_password");
    EXPECT_EQ(
        config_error("turn_shared_secret: s\n"),
        "t.yaml: TURN credentials are set but turn_uris is empty: clients would get no servers");
    EXPECT_EQ(config_error("turn_uris: ['turn:a']\nturn_username: u\n"),
              "t.yaml: turn_username and turn_password go together");
    EXPECT_EQ(
        config_error(
            "turn_uris: ['turn:a']\nturn_shared_secret: s\nturn_username: u\nturn_password: p\n"),
        "t.yaml: set either turn_shared_secret(_path) or turn_username/turn_password, not both");
    EXPECT_NE(
        config_error("turn_uris: ['turn:a']\nturn_shared_secret: s\nturn_user_lifetime: 86400000\n")
            .find("t.yaml:3: turn_user_lifetime: needs a unit"),
        std::string::npos);
    EXPECT_EQ(config_error("turn_uris: ['turn:a']\nturn_shared_secret: ''\n"),
              "t.yaml:2: turn_shared_secret: must not be empty");
    EXPECT_EQ(config_error("turn_uris: ['turn:a']\nturn_shared_secret_path: /nonexistent/secret\n"),
              "t.yaml:2: turn_shared_secret_path: cannot read '/nonexistent/secret'");
    EXPECT_EQ(config_error("turn_uris: ['turn:a']\nturn_shared_secret_path: /dev/zero\n"),
              "t.yaml:2: turn_shared_secret_path: '/dev/zero' is not a regular file");
    EXPECT_EQ(config_error("rc_turn: {per_second: 1}\n"),
              "t.yaml:1: rc_turn.burst_count: is required");
    EXPECT_EQ(config_error("turn_allow_guests: perhaps\n"),
              "t.yaml:1: turn_allow_guests: must be true or false");
}

TEST(TurnConfig, SecretFileIsTrimmedAndExclusiveWithInlineSecret) {
    auto path = std::filesystem::temp_directory_path() /
                ("mxvoip-turn-secret-" + std::to_string(::getpid()));
    { std::ofstream(path) << "  s3cret-from-file\n\n"; }
    Config c = parse_config(
        "turn_uris: ['turn:a']\nturn_shared_secret_path: " + path.string() + "\n", "t.yaml");
    EXPECT_EQ(c.turn.shared_secret, "s3cret-from-file");
    EXPECT_EQ(
        config_error("turn_uris: ['turn:a']\nturn_shared_secret: x\nturn_shared_secret_path: " +
                     path.string() + "\n"),
        "t.yaml:3: turn_shared_secret_path: set either turn_shared_secret or "
        "turn_shared_secret_path, not both");
    std::filesystem::remove(path);
}

TEST(TurnConfig, ShortLifetimeIsAcceptedWithAWarning) {
    Config c = parse_config(
        "turn_uris: ['turn:a']\nturn_shared_secret: s\nturn_user_lifetime: 5m\n", "t.yaml");
    EXPECT_EQ(c.turn.user_lifetime_s, 300);
    ASSERT_EQ(c.warnings.size(), 1u);
    EXPECT_NE(c.warnings[0].find("under 10 minutes"), std::string::npos);
    EXPECT_TRUE(
        parse_config("turn_uris: ['turn:a']\nturn_shared_secret: s\nturn_user_lifetime: 1h\n",
                     "t.yaml")
            .warnings.empty());
    EXPECT_EQ(parse_config("", "t.yaml").turn.user_lifetime_s, 3600);
    EXPECT_TRUE(parse_config("", "t.yaml").turn.allow_guests);
}
