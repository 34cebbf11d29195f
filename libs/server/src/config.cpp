#include "mxvoip/server/config.hpp"

#include "proxy.hpp"

#include <yaml-cpp/yaml.h>

#include "mxvoip/server/turn.hpp"

#include <charconv>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

namespace mxvoip::server {
namespace {

class Reader {
  public:
    explicit Reader(std::string source) : source_(std::move(source)) {}

    [[noreturn]] void fail(const YAML::Node& node, const std::string& key,
                           const std::string& msg) const {
        std::ostringstream out;
        out << source_;
        if (node.Mark().line >= 0) out << ":" << node.Mark().line + 1;
        out << ": " << key << ": " << msg;
        throw ConfigError(out.str());
    }

    // A map of named settings (`timeouts:`, `limits:`): each key must be one of `targets`,
    // and `read(node, full key)` gives its value.
    template <typename T, typename Read>
    void settings(const YAML::Node& n, const std::string& key, const char* what,
                  const std::map<std::string, T*>& targets, Read read) const {
        if (!n.IsMap()) fail(n, key, std::string("must be a map of ") + what);
        for (auto it : n) {
            auto sub = it.first.as<std::string>();
            auto full = key + "." + sub;
            auto target = targets.find(sub);
            if (target == targets.end()) fail(it.first, full, "unknown key");
            *target->second = read(it.second, full);
        }
    }

    std::string str(const YAML::Node& n, const std::string& key) const {
        if (!n.IsScalar()) fail(n, key, "must be a string");
        return n.Scalar();
    }
    bool boolean(const YAML::Node& n, const std::string& key) const {
        bool v;
        if (!n.IsScalar() || !YAML::convert<bool>::decode(n, v))
            fail(n, key, "must be true or false");
        return v;
    }
    double number(const YAML::Node& n, const std::string& key, double min) const {
        double v;
        if (!n.IsScalar() || !YAML::convert<double>::decode(n, v)) fail(n, key, "must be a number");
        if (!(v >= min)) fail(n, key, "must be at least " + std::to_string(min));
        return v;
    }
    std::uint64_t integer(const YAML::Node& n, const std::string& key, std::uint64_t min,
                          std::uint64_t max) const {
        if (!n.IsScalar()) fail(n, key, "must be a whole number");
        const std::string& s = n.Scalar();
        std::uint64_t v = 0;
        auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (ec != std::errc() || p != s.data() + s.size())
            fail(n, key, "must be a whole number, got '" + s + "'");
        if (v < min || v > max)
            fail(n, key, "must be between " + std::to_string(min) + " and " + std::to_string(max));
        return v;
    }
    // Sizes as Synapse writes them: 1048576, 512K, 10M.
    std::size_t size(const YAML::Node& n, const std::string& key) const {
        if (!n.IsScalar()) fail(n, key, "must be a size such as 1M");
        std::string s = n.Scalar();
        std::uint64_t mult = 1;
        if (!s.empty() && (s.back() == 'K' || s.back() == 'k'))
            mult = 1024, s.pop_back();
        else if (!s.empty() && (s.back() == 'M' || s.back() == 'm'))
            mult = 1024 * 1024, s.pop_back();
        std::uint64_t v = 0;
        auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (s.empty() || ec != std::errc() || p != s.data() + s.size() || v == 0)
            fail(n, key, "must be a size such as 65536, 512K or 10M");
        v *= mult;
        if (v < 65536 + 1024) fail(n, key, "must be at least 66560 bytes (an event may be 65536)");
        return v;
    }

    RateLimit rate(const YAML::Node& n, const std::string& key) const {
        if (!n.IsMap()) fail(n, key, "must be a map with per_second and burst_count");
        RateLimit r{-1, -1};
        for (auto it : n) {
            auto k = it.first.as<std::string>();
            if (k == "per_second")
                r.per_second = number(it.second, key + ".per_second", 0);
            else if (k == "burst_count")
                r.burst_count = number(it.second, key + ".burst_count", 1);
            else
                fail(it.first, key + "." + k, "unknown key");
        }
        if (r.per_second < 0) fail(n, key + ".per_second", "is required");
        if (r.burst_count < 0) fail(n, key + ".burst_count", "is required");
        return r;
    }

    ListenAddress address(const YAML::Node& n, const std::string& key) const {
        std::string s = str(n, key);
        ListenAddress a;
        std::string port;
        if (!s.empty() && s.front() == '[') {
            auto close = s.find(']');
            if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':')
                fail(n, key, "must be host:port or [v6]:port, got '" + s + "'");
            a.host = s.substr(1, close - 1);
            port = s.substr(close + 2);
        } else {
            auto colon = s.rfind(':');
            if (colon == std::string::npos || colon == 0)
                fail(n, key, "must be host:port, got '" + s + "'");
            a.host = s.substr(0, colon);
            port = s.substr(colon + 1);
        }
        unsigned v = 0;
        auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), v);
        if (port.empty() || ec != std::errc() || p != port.data() + port.size() || v > 65535)
            fail(n, key, "port must be 0 to 65535, got '" + port + "'");
        a.port = static_cast<std::uint16_t>(v);
        return a;
    }

  private:
    std::string source_;
};

void finish(Config& c) {
    if (c.public_baseurl.empty()) {
        c.public_baseurl_derived = true;
        const auto& a = c.listen.front();
        std::string host = a.host == "0.0.0.0" || a.host == "::" ? "localhost" : a.host;
        if (host.find(':') != std::string::npos) host = "[" + host + "]";
        c.public_baseurl = "http://" + host + ":" + std::to_string(a.port) + "/";
    }
    if (c.public_baseurl.back() != '/') c.public_baseurl += '/';
}

}  // namespace

Config development_config() {
    Config c;
    c.development_defaults = true;
    c.source = "(development defaults)";
    finish(c);
    return c;
}

namespace {

Config read_config(const std::string& text, const std::string& source) {
    Reader r(source);
    YAML::Node root;
    try {
        root = YAML::Load(text);
    } catch (const YAML::Exception& e) {
        throw ConfigError(source + ":" + std::to_string(e.mark.line + 1) +
                          ": not valid YAML: " + e.msg);
    }
    Config c;
    c.source = source;
    bool inline_secret = false;
    YAML::Node secret_path_node;
    bool secret_path = false;
    if (root.IsNull()) {
        finish(c);
        return c;
    }
    if (!root.IsMap()) throw ConfigError(source + ": the top level must be a map of keys");

    const std::map<std::string, std::function<void(const YAML::Node&, const std::string&)>> keys{
        {"server_name",
         [&](const YAML::Node& n, const std::string& k) {
             c.server_name = r.str(n, k);
             if (c.server_name.empty() ||
                 c.server_name.find_first_of("/@!#$ ") != std::string::npos)
                 r.fail(n, k, "must be a host name such as example.org");
         }},
        {"listen",
         [&](const YAML::Node& n, const std::string& k) {
             if (!n.IsSequence() || n.size() == 0) r.fail(n, k, "must be a list of host:port");
             c.listen.clear();
             for (auto item : n) {
                 // "host:port", or {address: "host:port", x_forwarded: true}.
                 if (!item.IsMap()) {
                     c.listen.push_back(r.address(item, k));
                     continue;
                 }
                 if (!item["address"]) r.fail(item, k + ".address", "is required");
                 ListenAddress a = r.address(item["address"], k + ".address");
                 for (auto field : item) {
                     auto name = field.first.as<std::string>();
                     if (name == "x_forwarded")
                         a.x_forwarded = r.boolean(field.second, k + ".x_forwarded");
                     else if (name != "address")
                         r.fail(field.first, k + "." + name, "unknown key");
                 }
                 c.listen.push_back(a);
             }
         }},
        {"trusted_proxies",
         [&](const YAML::Node& n, const std::string& k) {
             if (!n.IsSequence()) r.fail(n, k, "must be a list of addresses or networks");
             c.trusted_proxies.clear();
             for (auto item : n) c.trusted_proxies.push_back(r.str(item, k));
             try {
                 TrustedProxies check(c.trusted_proxies);
             } catch (const std::invalid_argument& e) {
                 r.fail(n, k, e.what());
             }
         }},
        {"public_baseurl",
         [&](const YAML::Node& n, const std::string& k) {
             c.public_baseurl = r.str(n, k);
             if (c.public_baseurl.rfind("http://", 0) != 0 &&
                 c.public_baseurl.rfind("https://", 0) != 0)
                 r.fail(n, k, "must start with http:// or https://");
         }},
        {"database",
         [&](const YAML::Node& n, const std::string& k) {
             if (!n.IsMap()) r.fail(n, k, "must be a map with backend and its settings");
             for (auto it : n) {
                 auto sub = it.first.as<std::string>();
                 auto full = k + "." + sub;
                 if (sub == "backend") {
                     c.database.backend = r.str(it.second, full);
                     if (c.database.backend != "sqlite" && c.database.backend != "postgres")
                         r.fail(it.second, full, "must be sqlite or postgres");
                 } else if (sub == "dsn") {
                     c.database.dsn = r.str(it.second, full);
                 } else if (sub == "shared") {
                     c.database.shared = r.boolean(it.second, full);
                 } else if (sub == "feed_grace") {
                     auto d = parse_duration(r.str(it.second, full));
                     if (!d.error.empty()) r.fail(it.second, full, d.error);
                     if (d.seconds < 1 || d.seconds > 86400)
                         r.fail(it.second, full, "must be between 1s and 1d");
                     c.database.feed_grace_s = d.seconds;
                 } else if (sub == "path") {
                     c.database.path = r.str(it.second, full);
                     if (c.database.path.empty()) r.fail(it.second, full, "must not be empty");
                 } else if (sub == "synchronous") {
                     c.database.synchronous = r.str(it.second, full);
                     if (c.database.synchronous != "full" && c.database.synchronous != "normal")
                         r.fail(it.second, full, "must be full or normal");
                 } else {
                     r.fail(it.first, full, "unknown key");
                 }
             }
             if (c.database.backend == "postgres" && c.database.dsn.empty())
                 r.fail(n, k, "backend postgres needs a dsn (a libpq connection string)");
             if (c.database.shared && c.database.backend != "postgres")
                 r.fail(n, k, "shared needs backend postgres (SQLite serves one process)");
         }},
        {"enable_registration",
         [&](const YAML::Node& n, const std::string& k) {
             c.enable_registration = r.boolean(n, k);
         }},
        {"allow_guest_access",
         [&](const YAML::Node& n, const std::string& k) {
             c.allow_guest_access = r.boolean(n, k);
         }},
        {"user_directory",
         [&](const YAML::Node& n, const std::string& k) {
             r.settings<bool>(
                 n, k, "user directory settings",
                 {{"search_all_users", &c.user_directory_search_all_users}},
                 [&](const YAML::Node& v, const std::string& full) { return r.boolean(v, full); });
         }},
        {"presence",
         [&](const YAML::Node& n, const std::string& k) {
             r.settings<bool>(
                 n, k, "presence settings", {{"enabled", &c.presence_enabled}},
                 [&](const YAML::Node& v, const std::string& full) { return r.boolean(v, full); });
         }},
        {"push",
         [&](const YAML::Node& n, const std::string& k) {
             if (!n.IsMap()) r.fail(n, k, "must be a map of push settings");
             for (auto it : n) {
                 auto sub = it.first.as<std::string>();
                 auto full = k + "." + sub;
                 const auto& v = it.second;
                 if (sub == "allow_private_addresses")
                     c.push.allow_private_addresses = r.boolean(v, full);
                 else if (sub == "queue_per_pusher")
                     c.push.queue_per_pusher =
                         static_cast<std::size_t>(r.integer(v, full, 1, 100'000));
                 else if (sub == "retry_initial_ms")
                     c.push.retry_initial_ms =
                         static_cast<std::int64_t>(r.integer(v, full, 10, 3'600'000));
                 else if (sub == "retry_max_ms")
                     c.push.retry_max_ms =
                         static_cast<std::int64_t>(r.integer(v, full, 10, 86'400'000));
                 else
                     r.fail(it.first, full, "unknown key");
             }
             if (c.push.retry_max_ms < c.push.retry_initial_ms)
                 r.fail(n, k, "retry_max_ms must be at least retry_initial_ms");
         }},
        {"rc_message",
         [&](const YAML::Node& n, const std::string& k) { c.rc_message = r.rate(n, k); }},
        {"rc_login",
         [&](const YAML::Node& n, const std::string& k) {
             // Synapse's shape (address, account, failed_attempts), or one limit that is the
             // per-address one.
             if (!n.IsMap() || n["per_second"] || n["burst_count"]) {
                 c.rc_login = r.rate(n, k);
                 return;
             }
             r.settings(
                 n, k, "rate limits (address, account, failed_attempts)",
                 std::map<std::string, RateLimit*>{{"address", &c.rc_login},
                                                   {"account", &c.rc_login_account},
                                                   {"failed_attempts", &c.rc_login_failed}},
                 [&](const YAML::Node& v, const std::string& key) { return r.rate(v, key); });
         }},
        {"rc_registration",
         [&](const YAML::Node& n, const std::string& k) { c.rc_registration = r.rate(n, k); }},
        {"max_request_body_size",
         [&](const YAML::Node& n, const std::string& k) {
             c.max_request_body_size = r.size(n, k);
         }},
        {"log_level",
         [&](const YAML::Node& n, const std::string& k) {
             c.log_level = r.str(n, k);
             static const char* levels[] = {"trace", "debug",    "info", "warn",
                                            "error", "critical", "off"};
             if (std::find(std::begin(levels), std::end(levels), c.log_level) == std::end(levels))
                 r.fail(n, k, "must be one of trace, debug, info, warn, error, critical, off");
         }},
        {"password_hash_cost",
         [&](const YAML::Node& n, const std::string& k) {
             c.password_hash_cost = r.str(n, k);
             if (c.password_hash_cost != "interactive" && c.password_hash_cost != "moderate" &&
                 c.password_hash_cost != "min")
                 r.fail(n, k, "must be interactive, moderate or min");
         }},
        {"turn_uris",
         [&](const YAML::Node& n, const std::string& k) {
             if (!n.IsSequence()) r.fail(n, k, "must be a list of turn: or turns: URIs");
             for (auto item : n) {
                 std::string uri = r.str(item, k);
                 if (auto problem = turn_uri_problem(uri))
                     r.fail(item, k, "'" + uri + "' " + *problem);
                 c.turn.uris.push_back(uri);
             }
         }},
        {"turn_shared_secret",
         [&](const YAML::Node& n, const std::string& k) {
             inline_secret = true;
             c.turn.shared_secret = r.str(n, k);
             if (c.turn.shared_secret.empty()) r.fail(n, k, "must not be empty");
         }},
        {"turn_shared_secret_path",
         [&](const YAML::Node& n, const std::string& k) {
             secret_path_node = n;
             secret_path = true;
             std::string path = r.str(n, k);
             // A secret is a short file: not a device or a pipe that never ends.
             std::error_code ec;
             auto status = std::filesystem::status(path, ec);
             if (ec || !std::filesystem::exists(status)) r.fail(n, k, "cannot read '" + path + "'");
             if (!std::filesystem::is_regular_file(status))
                 r.fail(n, k, "'" + path + "' is not a regular file");
             if (std::filesystem::file_size(path, ec) > 4096 || ec)
                 r.fail(n, k, "'" + path + "' is larger than a secret (4 KiB)");
             std::ifstream in(path);
             if (!in) r.fail(n, k, "cannot read '" + path + "'");
             std::stringstream text;
             text << in.rdbuf();
             std::string s = text.str();
             // A trailing newline would silently become part of the secret: coturn's would not
             // match.
             auto first = s.find_first_not_of(" \t\r\n");
             auto last = s.find_last_not_of(" \t\r\n");
             if (first == std::string::npos) r.fail(n, k, "'" + path + "' is empty");
             c.turn.shared_secret = s.substr(first, last - first + 1);
         }},
        {"turn_username",
         [&](const YAML::Node& n, const std::string& k) { c.turn.username = r.str(n, k); }},
        {"turn_password",
         [&](const YAML::Node& n, const std::string& k) { c.turn.password = r.str(n, k); }},
        {"turn_user_lifetime",
         [&](const YAML::Node& n, const std::string& k) {
             auto d = parse_duration(r.str(n, k));
             if (!d.error.empty()) r.fail(n, k, d.error);
             c.turn.user_lifetime_s = d.seconds;
             if (d.seconds < 600)
                 c.warnings.push_back(
                     source + ":" + std::to_string(n.Mark().line + 1) + ": turn_user_lifetime " +
                     n.Scalar() +
                     " is under 10 minutes: matrix-js-sdk refetches credentials only "
                     "when fewer than 10 minutes remain, so calls may start with expired ones");
         }},
        {"turn_allow_guests",
         [&](const YAML::Node& n, const std::string& k) { c.turn.allow_guests = r.boolean(n, k); }},
        {"rc_turn", [&](const YAML::Node& n, const std::string& k) { c.rc_turn = r.rate(n, k); }},
        {"worker_threads",
         [&](const YAML::Node& n, const std::string& k) {
             c.worker_threads = static_cast<unsigned>(r.integer(n, k, 0, 256));
         }},
        {"timeouts",
         [&](const YAML::Node& n, const std::string& k) {
             r.settings<std::int64_t>(n, k, "durations",
                                      {{"header_read", &c.timeouts.header_read_s},
                                       {"keep_alive", &c.timeouts.keep_alive_s},
                                       {"write", &c.timeouts.write_s},
                                       {"shutdown", &c.timeouts.shutdown_s}},
                                      [&](const YAML::Node& v, const std::string& full) {
                                          auto d = parse_duration(r.str(v, full));
                                          if (!d.error.empty()) r.fail(v, full, d.error);
                                          if (d.seconds < 1 || d.seconds > 3600)
                                              r.fail(v, full, "must be between 1s and 1h");
                                          return d.seconds;
                                      });
         }},
        {"caches",
         [&](const YAML::Node& n, const std::string& k) {
             r.settings<std::size_t>(
                 n, k, "caches",
                 {{"accounts", &c.caches.accounts},
                  {"account_data", &c.caches.account_data},
                  {"filters", &c.caches.filters},
                  {"keys", &c.caches.keys},
                  {"memberships", &c.caches.memberships},
                  {"notifications", &c.caches.notifications},
                  {"push_rules", &c.caches.push_rules},
                  {"pushers", &c.caches.pushers},
                  {"receipts", &c.caches.receipts},
                  {"rooms", &c.caches.rooms},
                  {"to_device", &c.caches.to_device},
                  {"tokens", &c.caches.tokens}},
                 [&](const YAML::Node& v, const std::string& full) {
                     return static_cast<std::size_t>(r.integer(v, full, 1, 100'000'000));
                 });
         }},
        {"limits",
         [&](const YAML::Node& n, const std::string& k) {
             r.settings<std::size_t>(
                 n, k, "limits",
                 {{"to_device_per_device", &c.limits.to_device_per_device},
                  {"txn_ids_per_device", &c.limits.txn_ids_per_device},
                  {"one_time_keys_per_device", &c.limits.one_time_keys_per_device},
                  {"filters_per_user", &c.limits.filters_per_user},
                  {"account_data_per_user", &c.limits.account_data_per_user},
                  {"create_room_invites", &c.limits.create_room_invites},
                  {"create_room_initial_state", &c.limits.create_room_initial_state},
                  {"syncs_per_user", &c.limits.syncs_per_user},
                  {"connections", &c.limits.connections},
                  {"connections_per_address", &c.limits.connections_per_address},
                  {"pushers_per_user", &c.limits.pushers_per_user},
                  {"backup_versions_per_user", &c.limits.backup_versions_per_user},
                  {"backup_keys_per_version", &c.limits.backup_keys_per_version},
                  {"aliases_per_room", &c.limits.aliases_per_room}},
                 [&](const YAML::Node& v, const std::string& full) {
                     return static_cast<std::size_t>(r.integer(v, full, 1, 1'000'000));
                 });
         }},
    };
    for (auto it : root) {
        auto key = it.first.as<std::string>();
        auto handler = keys.find(key);
        if (handler == keys.end()) r.fail(it.first, key, "unknown key");
        handler->second(it.second, key);
    }
    if (inline_secret && secret_path)
        r.fail(secret_path_node, "turn_shared_secret_path",
               "set either turn_shared_secret or turn_shared_secret_path, not both");
    const auto& t = c.turn;
    bool has_static = !t.username.empty() || !t.password.empty();
    if (has_static && (t.username.empty() || t.password.empty()))
        throw ConfigError(source + ": turn_username and turn_password go together");
    if (has_static && !t.shared_secret.empty())
        throw ConfigError(
            source +
            ": set either turn_shared_secret(_path) or turn_username/turn_password, not both");
    if (!t.uris.empty() && t.shared_secret.empty() && !has_static)
        throw ConfigError(
            source +
            ": turn_uris is set but there are no credentials: add turn_shared_secret (the "
            "static-auth-secret of coturn's use-auth-secret) or turn_username/turn_password");
    if (t.uris.empty() && (!t.shared_secret.empty() || has_static))
        throw ConfigError(
            source +
            ": TURN credentials are set but turn_uris is empty: clients would get no servers");
    finish(c);
    return c;
}

}  // namespace

Config parse_config(const std::string& text, const std::string& source) {
    try {
        return read_config(text, source);
    } catch (const YAML::Exception& e) {
        // What the checks above do not name: a key that is not text, a value yaml-cpp
        // cannot convert.
        throw ConfigError(source + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
    }
}

Config load_config(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw ConfigError(path + ": cannot read the file");
    std::stringstream text;
    text << in.rdbuf();
    return parse_config(text.str(), path);
}

}  // namespace mxvoip::server
