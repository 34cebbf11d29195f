#include <spdlog/spdlog.h>

#include <limits>

#include "blocking.hpp"
#include "homeserver.hpp"
#include "json_out.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/ids.hpp"
#include "mxvoip/proto/json.hpp"

namespace mxvoip::server {

using proto::MatrixError;
namespace errcode = proto::errcode;

namespace {

constexpr std::size_t kMaxPasswordBytes = 512;
constexpr StreamId kEveryStream = std::numeric_limits<StreamId>::max();

}  // namespace

asio::awaitable<Response> Homeserver::versions(Request&) {
    static const std::string body = [] {
        json::array v{"r0.0.1", "r0.1.0", "r0.2.0", "r0.3.0",
                      "r0.4.0", "r0.5.0", "r0.6.0", "r0.6.1"};
        for (int i = 1; i <= 11; ++i) v.push_back(json::string("v1." + std::to_string(i)));
        return json::serialize(
            json::object{{"versions", v}, {"unstable_features", json::object{}}});
    }();
    co_return Response{200, body, {}};
}

asio::awaitable<Response> Homeserver::well_known(Request&) {
    co_return json_response(json::object{{"m.homeserver", {{"base_url", config_.public_baseurl}}}});
}

asio::awaitable<Response> Homeserver::capabilities(Request&) {
    json::object available;
    for (int v = 4; v <= 11; ++v) available[std::to_string(v)] = "stable";
    co_return json_response(
        json::object{{"capabilities",
                      {{"m.room_versions", {{"default", "10"}, {"available", available}}},
                       {"m.change_password", {{"enabled", false}}},
                       {"m.set_displayname", {{"enabled", true}}},
                       {"m.set_avatar_url", {{"enabled", true}}},
                       {"m.3pid_changes", {{"enabled", false}}}}}});
}

asio::awaitable<Response> Homeserver::login_flows(Request&) {
    co_return json_response(
        json::object{{"flows", json::array{json::object{{"type", "m.login.password"}}}}});
}

asio::awaitable<Response> Homeserver::issue_login(const std::string& user_id,
                                                  const std::optional<std::string>& device_id,
                                                  const std::string& display_name, bool is_guest) {
    std::string device = device_id && !device_id->empty() ? *device_id : random_letters(10);
    std::string token = new_access_token();
    std::string hash = sha256_hex(token);
    PendingWrite w;
    // A client that logs in again with the same device id replaces that device's old token.
    w.mutations.push_back(store::DeleteTokens{user_id, device});
    w.mutations.push_back(store::PutToken{{hash, user_id, device, display_name}});
    {
        std::lock_guard lock(mu_);
        std::erase_if(tokens_, [&](const auto& kv) {
            return kv.second.user_id == user_id && kv.second.device_id == device;
        });
        tokens_[hash] = Session{user_id, device, is_guest};
    }
    co_await commit(std::move(w));
    spdlog::info("login: {} on device {}", user_id, device);
    co_return json_response(json::object{{"user_id", user_id},
                                         {"access_token", token},
                                         {"device_id", device},
                                         {"home_server", config_.server_name}});
}

asio::awaitable<Response> Homeserver::login(Request& req) {
    auto body = proto::parse_json_object(req.body);
    auto type = proto::req_string(body, "type");
    if (type != "m.login.password")
        throw MatrixError(400, errcode::unknown, "Unknown login type " + std::string(type));
    std::string user;
    if (const auto* id = proto::opt_object(body, "identifier")) {
        auto id_type = proto::req_string(*id, "type");
        if (id_type != "m.id.user")
            throw MatrixError(400, errcode::unknown,
                              "Unknown identifier type " + std::string(id_type));
        user = proto::req_string(*id, "user");
    } else if (auto legacy = proto::opt_string(body, "user")) {
        user = *legacy;
    } else {
        throw MatrixError(400, errcode::missing_param, "Missing 'identifier'");
    }
    if (user.empty()) throw MatrixError(400, errcode::invalid_param, "The user must not be empty");
    std::string password(proto::req_string(body, "password"));
    auto device_id = proto::opt_string(body, "device_id");
    auto display = proto::opt_string(body, "initial_device_display_name");
    std::string user_id = user.front() == '@' ? user : "@" + user + ":" + config_.server_name;
    // Normalise the localpart as Synapse does: user ids are case-insensitive on login.
    if (auto parsed = proto::parse_user_id(user_id);
        parsed && parsed->server_name == config_.server_name) {
        std::string lower(parsed->localpart);
        std::transform(lower.begin(), lower.end(), lower.begin(),
                       [](unsigned char c) { return std::tolower(c); });
        user_id = "@" + lower + ":" + config_.server_name;
    }
    // Per account, whether it exists or not (so a refusal tells nothing): every attempt
    // (rc_login.account), and failed ones (rc_login.failed_attempts), which stop a password
    // being guessed from many addresses.
    if (auto wait = rc_login_account_.take(user_id, now_ms()))
        throw MatrixError(429, errcode::limit_exceeded, "Too many logins for this account", *wait);
    if (auto wait = rc_login_failed_.check(user_id, now_ms()))
        throw MatrixError(429, errcode::limit_exceeded, "Too many failed logins for this account",
                          *wait);
    std::string stored;
    {
        std::lock_guard lock(mu_);
        auto it = users_.find(user_id);
        if (it != users_.end()) stored = it->second.record.password_hash;
    }
    bool ok = false;
    if (password.size() <= kMaxPasswordBytes) {
        // A user who does not exist (or has no password) costs the same hash as one who
        // does: the response time must not tell which accounts exist.
        std::function<bool()> job = [this, password, stored] {
            if (stored.empty()) {
                verify_password(password, unknown_user_hash());
                return false;
            }
            return verify_password(password, stored);
        };
        ok = co_await run_blocking<bool>(blocking_, std::move(job));
    }
    if (!ok) {
        rc_login_failed_.record(user_id, now_ms());
        spdlog::info("login failed for {} from {}", user_id, req.remote);
        throw MatrixError(403, errcode::forbidden, "Invalid username or password");
    }
    std::optional<std::string> device =
        device_id ? std::optional<std::string>(*device_id) : std::nullopt;
    std::string display_name = display ? std::string(*display) : std::string();
    co_return co_await issue_login(user_id, device, display_name, false);
}

asio::awaitable<Response> Homeserver::logout(Request& req) {
    const Session& s = *req.session;
    PendingWrite w;
    w.mutations.push_back(store::DeleteTokens{s.user_id, s.device_id});
    // The device is gone: what waited for it never will be fetched.
    w.mutations.push_back(store::DeleteToDevice{s.user_id, s.device_id, kEveryStream});
    {
        std::lock_guard lock(mu_);
        std::erase_if(tokens_, [&](const auto& kv) {
            return kv.second.user_id == s.user_id && kv.second.device_id == s.device_id;
        });
        users_.at(s.user_id).to_device.erase(s.device_id);
    }
    co_await commit(std::move(w));
    spdlog::info("logout: {} device {}", s.user_id, s.device_id);
    co_return Response{};
}

asio::awaitable<Response> Homeserver::logout_all(Request& req) {
    const Session& s = *req.session;
    PendingWrite w;
    w.mutations.push_back(store::DeleteTokens{s.user_id, ""});
    {
        std::lock_guard lock(mu_);
        std::erase_if(tokens_, [&](const auto& kv) { return kv.second.user_id == s.user_id; });
        auto& queues = users_.at(s.user_id).to_device;
        for (const auto& [device, _] : queues)
            w.mutations.push_back(store::DeleteToDevice{s.user_id, device, kEveryStream});
        queues.clear();
    }
    co_await commit(std::move(w));
    spdlog::info("logout: {} on all devices", s.user_id);
    co_return Response{};
}

asio::awaitable<Response> Homeserver::whoami(Request& req) {
    const Session& s = *req.session;
    co_return json_response(
        json::object{{"user_id", s.user_id}, {"device_id", s.device_id}, {"is_guest", s.is_guest}});
}

asio::awaitable<Response> Homeserver::register_available(Request& req) {
    const std::string* name = req.query_param("username");
    if (!name || name->empty())
        throw MatrixError(400, errcode::missing_param, "Missing 'username'");
    if (!proto::is_valid_new_localpart(*name))
        throw MatrixError(400, errcode::invalid_username,
                          "User ID can only contain a-z, 0-9, and ._=-/+");
    std::string user_id = "@" + *name + ":" + config_.server_name;
    std::lock_guard lock(mu_);
    if (users_.count(user_id))
        throw MatrixError(400, errcode::user_in_use, "User ID already taken.");
    co_return json_response(json::object{{"available", true}});
}

asio::awaitable<Response> Homeserver::register_account(Request& req) {
    auto body = proto::parse_json_object(req.body);
    const std::string* kind = req.query_param("kind");
    bool guest = kind && *kind == "guest";
    if (kind && !guest && *kind != "user")
        throw MatrixError(400, errcode::invalid_param, "kind must be user or guest");
    if (guest ? !config_.allow_guest_access : !config_.enable_registration) {
        if (guest)
            throw MatrixError(403, errcode::guest_access_forbidden, "Guest access is disabled");
        throw MatrixError(403, errcode::forbidden, "Registration has been disabled");
    }

    std::string localpart;
    std::string password;
    if (!guest) {
        if (auto name = proto::opt_string(body, "username")) {
            localpart = *name;
            std::transform(localpart.begin(), localpart.end(), localpart.begin(),
                           [](unsigned char c) { return std::tolower(c); });
            if (!proto::is_valid_new_localpart(localpart))
                throw MatrixError(400, errcode::invalid_username,
                                  "User ID can only contain a-z, 0-9, and ._=-/+");
            if (("@" + localpart + ":" + config_.server_name).size() > 255)
                throw MatrixError(400, errcode::invalid_username,
                                  "User ID may not be longer than 255 characters");
            std::lock_guard lock(mu_);
            if (users_.count("@" + localpart + ":" + config_.server_name))
                throw MatrixError(400, errcode::user_in_use, "User ID already taken.");
        }
        const auto* auth = proto::opt_object(body, "auth");
        if (!auth) {
            // Interactive auth, first round: tell the client which flow completes it.
            // Any m.login.dummy completes the flow, so the session needs no server-side state.
            std::string session = random_letters(24);
            co_return json_response(
                json::object{
                    {"flows", json::array{json::object{{"stages", json::array{"m.login.dummy"}}}}},
                    {"params", json::object{}},
                    {"session", session}},
                401);
        }
        auto auth_type = proto::opt_string(*auth, "type");
        if (!auth_type || *auth_type != "m.login.dummy")
            throw MatrixError(401, errcode::unknown, "Unsupported auth type; use m.login.dummy");
        auto pw = proto::opt_string(body, "password");
        if (!pw || pw->empty())
            throw MatrixError(400, errcode::missing_param, "Missing 'password'");
        if (pw->size() > kMaxPasswordBytes)
            throw MatrixError(400, errcode::invalid_param, "Password is longer than 512 bytes");
        password = *pw;
    }
    auto device_id = proto::opt_string(body, "device_id");
    auto display = proto::opt_string(body, "initial_device_display_name");
    bool inhibit_login = proto::opt_bool(body, "inhibit_login").value_or(false);

    std::string hash;
    if (!guest) {
        auto cost = hash_cost_;
        std::function<std::string()> job = [password, cost] {
            return hash_password(password, cost);
        };
        hash = co_await run_blocking<std::string>(blocking_, std::move(job));
    }

    std::string user_id;
    {
        std::lock_guard lock(mu_);
        if (localpart.empty()) {
            // Generated ids are numeric, as Synapse does for guests and nameless accounts.
            do {
                localpart = std::to_string(++next_guest_ + users_.size());
            } while (users_.count("@" + localpart + ":" + config_.server_name));
        }
        user_id = "@" + localpart + ":" + config_.server_name;
        if (users_.count(user_id))
            throw MatrixError(400, errcode::user_in_use, "User ID already taken.");
        User& u = users_[user_id];
        u.record = store::UserRecord{user_id, hash, guest, now_ms(), localpart, ""};
    }
    {
        auto write =
            PendingWrite::of(store::PutUser{{user_id, hash, guest, now_ms(), localpart, ""}});
        co_await commit(std::move(write));
    }
    rc_registration_.record(req.remote, now_ms());
    spdlog::info("registered {}{}", user_id, guest ? " (guest)" : "");
    if (inhibit_login)
        co_return json_response(
            json::object{{"user_id", user_id}, {"home_server", config_.server_name}});
    std::optional<std::string> device =
        device_id ? std::optional<std::string>(*device_id) : std::nullopt;
    std::string display_name = display ? std::string(*display) : std::string();
    co_return co_await issue_login(user_id, device, display_name, guest);
}

void Homeserver::add_user_offline(store::Store& store, const Config& config,
                                  const std::string& user_id, const std::string& password) {
    auto parsed = proto::parse_user_id(user_id);
    if (!parsed || parsed->server_name != config.server_name)
        throw std::runtime_error("user id must look like @name:" + config.server_name);
    if (!proto::is_valid_new_localpart(parsed->localpart))
        throw std::runtime_error("the localpart may only contain a-z, 0-9 and ._=-/+");
    if (password.empty()) throw std::runtime_error("the password is empty");
    auto snap = store.load(0, 0);
    for (const auto& u : snap.users)
        if (u.user_id == user_id) throw std::runtime_error(user_id + " already exists");
    std::string hash = hash_password(password, parse_hash_cost(config.password_hash_cost));
    std::vector<store::Mutation> m{
        store::PutUser{{user_id, hash, false, 0, std::string(parsed->localpart), ""}}};
    store.apply(m);
}

// ---------------------------------------------------------------------------------------------
// Profile, filters, account data, push rules, to-device

asio::awaitable<Response> Homeserver::get_profile(Request& req) {
    std::lock_guard lock(mu_);
    auto it = users_.find(req.params[0]);
    if (it == users_.end()) throw MatrixError(404, errcode::not_found, "Profile was not found");
    json::object out;
    if (!it->second.record.displayname.empty()) out["displayname"] = it->second.record.displayname;
    if (!it->second.record.avatar_url.empty()) out["avatar_url"] = it->second.record.avatar_url;
    co_return json_response(out);
}

namespace {
void check_profile_field(const std::string& field) {
    if (field != "displayname" && field != "avatar_url")
        throw MatrixError(404, errcode::unrecognized, "Unknown profile field " + field);
}
}  // namespace

asio::awaitable<Response> Homeserver::get_profile_field(Request& req) {
    const std::string& field = req.params[1];
    check_profile_field(field);
    std::lock_guard lock(mu_);
    auto it = users_.find(req.params[0]);
    if (it == users_.end()) throw MatrixError(404, errcode::not_found, "Profile was not found");
    const std::string& v =
        field == "displayname" ? it->second.record.displayname : it->second.record.avatar_url;
    if (v.empty()) throw MatrixError(404, errcode::not_found, "The user has no " + field);
    co_return json_response(json::object{{field, v}});
}

asio::awaitable<Response> Homeserver::put_profile_field(Request& req) {
    check_user_path(req, 0);
    const std::string& field = req.params[1];
    check_profile_field(field);
    auto body = proto::parse_json_object(req.body);
    std::string value(proto::opt_string(body, field).value_or(""));
    if (value.size() > 256)
        throw MatrixError(400, errcode::bad_json, field + " is longer than 256 bytes");
    const std::string& user_id = req.session->user_id;
    PendingWrite w;
    std::uint64_t ticket = 0;
    {
        std::lock_guard lock(mu_);
        User& u = users_.at(user_id);
        (field == "displayname" ? u.record.displayname : u.record.avatar_url) = value;
        w.mutations.push_back(
            store::PutProfile{user_id, u.record.displayname, u.record.avatar_url});
        // Every joined room learns the new profile through a fresh membership event.
        for (const auto& [room_id, m] : u.rooms) {
            if (m.membership != "join") continue;
            Room& room = rooms_.at(room_id);
            json::object content{{"membership", "join"}};
            if (!u.record.displayname.empty()) content["displayname"] = u.record.displayname;
            if (!u.record.avatar_url.empty()) content["avatar_url"] = u.record.avatar_url;
            append_event_locked(room, user_id,
                                NewEvent{"m.room.member", user_id, std::move(content)}, w);
        }
        ticket = submit_locked(std::move(w));
    }
    co_await durable(ticket);
    co_return Response{};
}

asio::awaitable<Response> Homeserver::post_filter(Request& req) {
    check_user_path(req, 0);
    auto body = proto::parse_json_object(req.body);
    std::string text = json::serialize(body);
    std::int64_t id;
    {
        std::lock_guard lock(mu_);
        auto& filters = users_.at(req.session->user_id).filters;
        // Identical filters share an id: clients post the same one at every start.
        auto found = std::find(filters.begin(), filters.end(), text);
        if (found != filters.end())
            co_return json_response(
                json::object{{"filter_id", std::to_string(found - filters.begin())}});
        if (filters.size() >= config_.limits.filters_per_user)
            throw MatrixError(403, errcode::forbidden,
                              "This user has " + std::to_string(filters.size()) +
                                  " filters, the most the server keeps (limits.filters_per_user)");
        id = static_cast<std::int64_t>(filters.size());
        filters.push_back(text);
    }
    {
        auto write = PendingWrite::of(store::PutFilter{{req.session->user_id, id, text}});
        co_await commit(std::move(write));
    }
    co_return json_response(json::object{{"filter_id", std::to_string(id)}});
}

asio::awaitable<Response> Homeserver::get_filter(Request& req) {
    check_user_path(req, 0);
    std::lock_guard lock(mu_);
    const auto& filters = users_.at(req.session->user_id).filters;
    std::size_t id = 0;
    try {
        id = std::stoul(req.params[1]);
    } catch (...) {
        throw MatrixError(404, errcode::not_found, "No such filter");
    }
    if (id >= filters.size() || filters[id].empty())
        throw MatrixError(404, errcode::not_found, "No such filter");
    co_return Response{200, filters[id], {}};
}

asio::awaitable<Response> Homeserver::get_account_data(Request& req) {
    check_user_path(req, 0);
    std::string room = req.params.size() == 3 ? req.params[1] : std::string();
    const std::string& type = req.params.back();
    std::lock_guard lock(mu_);
    const auto& data = users_.at(req.session->user_id).account_data;
    auto it = data.find({room, type});
    if (it == data.end()) throw MatrixError(404, errcode::not_found, "Account data not found");
    co_return Response{200, it->second.content, {}};
}

asio::awaitable<Response> Homeserver::put_account_data(Request& req) {
    check_user_path(req, 0);
    std::string room = req.params.size() == 3 ? req.params[1] : std::string();
    const std::string& type = req.params.back();
    auto body = proto::parse_json_object(req.body);
    if (type == "m.fully_read" || type == "m.push_rules")
        throw MatrixError(400, errcode::bad_json,
                          "Cannot set " + type + " through the account data API");
    std::string text = json::serialize(body);
    if (text.size() > 65536)
        throw MatrixError(413, errcode::too_large, "Account data is larger than 65536 bytes");
    const std::string& user = req.session->user_id;
    std::uint64_t ticket = 0;
    {
        std::lock_guard lock(mu_);
        if (!room.empty() && !rooms_.count(room))
            throw MatrixError(404, errcode::not_found, "Unknown room " + room);
        auto& account_data = users_.at(user).account_data;
        if (!account_data.count({room, type}) &&
            account_data.size() >= config_.limits.account_data_per_user)
            throw MatrixError(403, errcode::forbidden,
                              "This user has " + std::to_string(account_data.size()) +
                                  " account data entries, the most the server keeps "
                                  "(limits.account_data_per_user)");
        StreamId stream = next_stream_++;
        account_data[{room, type}] = AccountData{stream, text};
        ticket = submit_locked(PendingWrite::of(
            store::PutAccountData{{stream, user, room, type, text}}, stream, {user}));
    }
    co_await durable(ticket);
    co_return Response{};
}

asio::awaitable<Response> Homeserver::push_rules(Request& req) {
    // The spec's default rule set (client-server API, "Predefined rules"), with the legacy and
    // unstable ids matrix-js-sdk still expects, in the order it expects them.
    static constexpr const char* kRules = R"({"global":{"override":[
{"rule_id":".m.rule.master","default":true,"enabled":false,"conditions":[],"actions":[]},
{"rule_id":".m.rule.suppress_notices","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"content.msgtype","pattern":"m.notice"}],"actions":[]},
{"rule_id":".m.rule.invite_for_me","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"type","pattern":"m.room.member"},{"kind":"event_match","key":"content.membership","pattern":"invite"},{"kind":"event_match","key":"state_key","pattern":"@@USER@@"}],"actions":["notify",{"set_tweak":"sound","value":"default"}]},
{"rule_id":".m.rule.member_event","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"type","pattern":"m.room.member"}],"actions":[]},
{"rule_id":".m.rule.is_user_mention","default":true,"enabled":true,"conditions":[{"kind":"event_property_contains","key":"content.m\\.mentions.user_ids","value":"@@USER@@"}],"actions":["notify",{"set_tweak":"sound","value":"default"},{"set_tweak":"highlight"}]},
{"rule_id":".m.rule.contains_display_name","default":true,"enabled":true,"conditions":[{"kind":"contains_display_name"}],"actions":["notify",{"set_tweak":"sound","value":"default"},{"set_tweak":"highlight"}]},
{"rule_id":".m.rule.is_room_mention","default":true,"enabled":true,"conditions":[{"kind":"event_property_is","key":"content.m\\.mentions.room","value":true},{"kind":"sender_notification_permission","key":"room"}],"actions":["notify",{"set_tweak":"highlight"}]},
{"rule_id":".m.rule.roomnotif","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"content.body","pattern":"@room"},{"kind":"sender_notification_permission","key":"room"}],"actions":["notify",{"set_tweak":"highlight"}]},
{"rule_id":".m.rule.tombstone","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"type","pattern":"m.room.tombstone"},{"kind":"event_match","key":"state_key","pattern":""}],"actions":["notify",{"set_tweak":"highlight"}]},
{"rule_id":".m.rule.reaction","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"type","pattern":"m.reaction"}],"actions":[]},
{"rule_id":".m.rule.room.server_acl","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"type","pattern":"m.room.server_acl"},{"kind":"event_match","key":"state_key","pattern":""}],"actions":[]},
{"rule_id":".org.matrix.msc3786.rule.room.server_acl","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"type","pattern":"m.room.server_acl"},{"kind":"event_match","key":"state_key","pattern":""}],"actions":[]},
{"rule_id":".m.rule.suppress_edits","default":true,"enabled":true,"conditions":[{"kind":"event_property_is","key":"content.m\\.relates_to.rel_type","value":"m.replace"}],"actions":[]}
],"content":[],"room":[],"sender":[],"underride":[
{"rule_id":".m.rule.call","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"type","pattern":"m.call.invite"}],"actions":["notify",{"set_tweak":"sound","value":"ring"}]},
{"rule_id":".org.matrix.msc3914.rule.room.call","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"type","pattern":"org.matrix.msc3401.call"},{"kind":"call_started"}],"actions":["notify",{"set_tweak":"sound","value":"default"}]},
{"rule_id":".m.rule.encrypted_room_one_to_one","default":true,"enabled":true,"conditions":[{"kind":"room_member_count","is":"2"},{"kind":"event_match","key":"type","pattern":"m.room.encrypted"}],"actions":["notify",{"set_tweak":"sound","value":"default"}]},
{"rule_id":".m.rule.room_one_to_one","default":true,"enabled":true,"conditions":[{"kind":"room_member_count","is":"2"},{"kind":"event_match","key":"type","pattern":"m.room.message"}],"actions":["notify",{"set_tweak":"sound","value":"default"}]},
{"rule_id":".m.rule.message","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"type","pattern":"m.room.message"}],"actions":["notify"]},
{"rule_id":".m.rule.encrypted","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"type","pattern":"m.room.encrypted"}],"actions":["notify"]}
]}})";
    std::string body = kRules;
    std::string user_json = json::serialize(json::string_view(req.session->user_id));
    std::string user_plain = user_json.substr(1, user_json.size() - 2);
    for (std::size_t pos; (pos = body.find("@@USER@@")) != std::string::npos;)
        body.replace(pos, 8, user_plain);
    co_return Response{200, std::move(body), {}};
}

asio::awaitable<Response> Homeserver::send_to_device(Request& req) {
    const Session& s = *req.session;
    const std::string& type = req.params[0];
    const std::string& txn = req.params[1];
    auto body = proto::parse_json_object(req.body);
    const auto* messages = proto::opt_object(body, "messages");
    if (!messages) throw MatrixError(400, errcode::missing_param, "Missing 'messages'");
    if (!proto::is_valid_event_type(type))
        throw MatrixError(400, errcode::bad_json, "Invalid event type");
    PendingWrite w;
    std::uint64_t ticket = 0;
    {
        std::lock_guard lock(mu_);
        std::string txn_key = s.device_key() + '\n' + txn;
        if (to_device_txns_.count(txn_key)) co_return Response{};
        // Every message is checked before any is queued: a request is refused whole.
        struct Delivery {
            User* user;
            std::string user_id;
            std::string device;
            std::string message;
        };
        std::vector<Delivery> deliveries;
        std::map<std::pair<std::string, std::string>, std::size_t> adding;
        for (const auto& [user_key, devices] : *messages) {
            std::string user(user_key);
            if (!devices.is_object())
                throw MatrixError(400, errcode::bad_json,
                                  "messages." + user + " must be an object");
            auto u = users_.find(user);
            if (u == users_.end()) continue;  // unknown or remote users: nothing to deliver here
            // Only to devices that exist (are signed in): a message for any other id would
            // wait for ever.
            std::vector<std::string> existing;
            for (const auto& [_, session] : tokens_)
                if (session.user_id == user) existing.push_back(session.device_id);
            std::sort(existing.begin(), existing.end());
            existing.erase(std::unique(existing.begin(), existing.end()), existing.end());
            for (const auto& [device_key_sv, content] : devices.get_object()) {
                if (!content.is_object())
                    throw MatrixError(400, errcode::bad_json,
                                      "each to-device message must be an object");
                std::string message = "{\"content\":" + json::serialize(content) +
                                      ",\"sender\":" + quoted(s.user_id) +
                                      ",\"type\":" + quoted(type) + "}";
                std::vector<std::string> targets;
                if (device_key_sv == "*")
                    targets = existing;
                else if (std::binary_search(existing.begin(), existing.end(), device_key_sv))
                    targets.emplace_back(device_key_sv);
                for (auto& device : targets) {
                    auto queue = u->second.to_device.find(device);
                    std::size_t waiting =
                        queue == u->second.to_device.end() ? 0 : queue->second.size();
                    if (waiting + ++adding[{user, device}] > config_.limits.to_device_per_device)
                        throw MatrixError(
                            429, errcode::limit_exceeded,
                            "Device " + device + " of " + user + " has " + std::to_string(waiting) +
                                " messages it has not fetched (limits.to_device_per_device)",
                            10000);
                    deliveries.push_back({&u->second, user, std::move(device), message});
                }
            }
        }
        for (auto& d : deliveries) {
            StreamId stream = next_stream_++;
            d.user->to_device[d.device].push_back({stream, d.message});
            w.mutations.push_back(store::PutToDevice{{stream, d.user_id, d.device, d.message}});
            w.max_stream = stream;
            w.wake.push_back(d.user_id);
        }
        std::int64_t now = now_ms();
        to_device_txns_.insert(txn_key);
        to_device_txn_order_.emplace_back(now, txn_key);
        while (to_device_txn_order_.front().first < now - 24 * 3600 * 1000) {
            to_device_txns_.erase(to_device_txn_order_.front().second);
            to_device_txn_order_.pop_front();
        }
        ticket = submit_locked(std::move(w));
    }
    co_await durable(ticket);
    co_return Response{};
}

}  // namespace mxvoip::server
