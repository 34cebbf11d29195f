#include "accounts.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <unordered_set>

#include "blocking.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/ids.hpp"
#include "mxvoip/proto/json.hpp"

namespace mxvoip::server {

namespace json = boost::json;
using proto::MatrixError;
namespace errcode = proto::errcode;

namespace {
constexpr std::size_t kMaxPasswordBytes = 512;
}  // namespace

Accounts::Accounts(Core& core)
    : core_(core),
      hash_cost_(parse_hash_cost(core.config().password_hash_cost)),
      rc_login_account_(core.config().rc_login_account, &core.processes()),
      rc_login_failed_(core.config().rc_login_failed, &core.processes()),
      users_(core.config().caches.accounts),
      tokens_(core.config().caches.tokens) {
    // Another process changed the account (signed a device in or out, renamed one): what is
    // held of it goes, and is read again when it is used; a token signed out there is refused
    // here from now on.
    core_.on_change("account", [this](const store::ChangeRecord& c, const store::EventRecord*,
                                      std::vector<std::string>&) {
        const std::string& user = c.key;
        users_.erase(user);
        loading_.written(user);
        tokens_.erase_if([&](const std::string&, const Session& s) { return s.user_id == user; });
        ++revocations_;
    });
}

void Accounts::start(asio::any_io_executor ex) {
    std::lock_guard lock(core_.mu);
    trims_ = std::move(ex);
    trim_later_locked();
}

void Accounts::trim_later_locked() const {
    if (trim_pending_ || !trims_ || users_.size() <= users_.capacity()) return;
    trim_pending_ = true;
    asio::post(*trims_, [this] {
        std::lock_guard lock(core_.mu);
        trim_pending_ = false;
        users_.trim();
    });
}

Accounts::Held Accounts::make_account(store::AccountLoad&& loaded) {
    auto account = std::make_shared<Account>();
    account->record = std::move(*loaded.user);
    for (auto& d : loaded.devices) account->devices[d.device_id] = std::move(d.display_name);
    return account;
}

bool Accounts::is_local(std::string_view user_id) const {
    const std::string& server = core_.config().server_name;
    return user_id.size() > server.size() + 1 && user_id.ends_with(server) &&
           user_id[user_id.size() - server.size() - 1] == ':' &&
           user_id.find(':') == user_id.size() - server.size() - 1;
}

std::optional<Session> Accounts::authenticate(const std::string& token) {
    // Keyed by the token's SHA-256: a lookup reveals nothing about stored tokens.
    const std::string hash = sha256_hex(token);
    for (;;) {
        std::uint64_t revocations = 0;
        std::optional<Session> held;
        {
            std::lock_guard lock(core_.mu);
            if (const Session* s = tokens_.get(hash)) {
                if (users_.get(s->user_id)) return *s;
                held = *s;
            }
            revocations = revocations_;
        }
        if (held) {
            // The handler will want the account: read now, without the lock.
            preload({held->user_id});
            return held;
        }
        // Read without the lock: a request with a token not held does not hold up the others.
        auto read = core_.store().session(hash);
        if (!read) return std::nullopt;
        Session s{read->user_id, read->device_id, read->is_guest};
        preload({s.user_id});
        std::lock_guard lock(core_.mu);
        // A sign-out applied meanwhile may have been of this token: read it again.
        if (revocations_ != revocations) continue;
        tokens_.put(hash, s);
        return s;
    }
}

void Accounts::preload(const std::vector<std::string>& user_ids) {
    std::vector<std::string> missing;
    std::vector<ReadsInFlight<std::string>::Ticket> tickets;
    {
        std::lock_guard lock(core_.mu);
        std::unordered_set<std::string_view> asked;
        for (const auto& user : user_ids) {
            if (!asked.insert(user).second || users_.get(user) || !is_local(user)) continue;
            missing.push_back(user);
            tickets.push_back(loading_.started(user));
        }
    }
    if (missing.empty()) return;
    std::vector<store::AccountLoad> read;
    std::exception_ptr failed;
    try {
        read = core_.store().accounts(missing);
    } catch (...) {
        failed = std::current_exception();
    }
    std::lock_guard lock(core_.mu);
    for (std::size_t i = 0; i < missing.size(); ++i) {
        const bool overtaken = loading_.overtaken(missing[i], tickets[i]);
        // One a write overtook is left to be read under the lock when it is used.
        if (failed || overtaken || !read[i].user || users_.get(missing[i])) continue;
        users_.hold(missing[i], make_account(std::move(read[i])));
    }
    trim_later_locked();
    if (failed) std::rethrow_exception(failed);
}

bool Accounts::exists(const std::string& user_id) {
    preload({user_id});
    std::lock_guard lock(core_.mu);
    return exists_locked(user_id);
}

Accounts::Account* Accounts::account_locked(const std::string& user_id) const {
    if (Held* held = users_.get(user_id)) return held->get();
    if (!is_local(user_id)) return nullptr;
    // Read under the lock: what commits meanwhile waits to be applied, and applying what the
    // read already has changes nothing (every applied step sets, none adds).
    auto read = core_.store().accounts({user_id});
    if (!read[0].user) return nullptr;
    Account* account = users_.hold(user_id, make_account(std::move(read[0]))).get();
    trim_later_locked();
    return account;
}

Accounts::Account* Accounts::written_locked(const std::string& user_id) {
    if (Held* held = users_.get(user_id)) return held->get();
    loading_.written(user_id);
    return nullptr;
}

void Accounts::revoked_locked(const std::vector<std::string>& token_hashes) {
    for (const auto& hash : token_hashes) tokens_.erase(hash);
    ++revocations_;
}

const store::UserRecord* Accounts::find_locked(const std::string& user_id) const {
    const Account* account = account_locked(user_id);
    return account ? &account->record : nullptr;
}

std::vector<std::string> Accounts::devices_locked(const std::string& user_id) const {
    std::vector<std::string> out;
    if (const Account* account = account_locked(user_id))
        for (const auto& [device, _] : account->devices) out.push_back(device);
    return out;
}

bool Accounts::has_device_locked(const std::string& user_id, const std::string& device) const {
    const Account* account = account_locked(user_id);
    return account && account->devices.count(device);
}

std::string Accounts::device_display_name_locked(const std::string& user_id,
                                                 const std::string& device) const {
    const Account* account = account_locked(user_id);
    if (!account) return {};
    auto d = account->devices.find(device);
    return d == account->devices.end() ? std::string() : d->second;
}

void Accounts::profile_applied_locked(const store::PutProfile& change) {
    Account* account = written_locked(change.user_id);
    if (!account) return;
    if (change.displayname) account->record.displayname = *change.displayname;
    if (change.avatar_url) account->record.avatar_url = *change.avatar_url;
}

asio::awaitable<void> Accounts::sign_out(const std::string& user_id,
                                         std::vector<std::string> devices) {
    struct Part {
        std::string device;
        DeviceRemoval removal;          // a module's part; none: the account's own (its tokens)
        StreamId position_offset = -1;  // from the write's first position; -1: takes none
        bool tokens() const { return !removal.write && !removal.applied; }
    };
    auto parts = std::make_shared<std::vector<Part>>();
    std::size_t positions = 0;
    preload({user_id});
    {
        std::lock_guard lock(core_.mu);
        for (const auto& device : devices) {
            if (!has_device_locked(user_id, device)) continue;  // signed out already
            // The account's own part: its tokens, and the change other processes sharing the
            // database read (a position only then: one process's sign-ins take none).
            parts->push_back(
                {device, {}, core_.shared() ? static_cast<StreamId>(positions++) : -1});
            for (const auto& f : device_removed_) {
                Part part{device, f(user_id, device), -1};
                if (part.removal.takes_position)
                    part.position_offset = static_cast<StreamId>(positions++);
                parts->push_back(std::move(part));
            }
        }
    }
    if (parts->empty()) co_return;
    Decision d;
    d.streams = positions;
    // What is decided about a device's data under the user's lock (a pusher) finds it
    // signed in or signed out, never half-way.
    d.users = {user_id};
    // Decided: the hashes of the tokens signed out.
    auto revoked = std::make_shared<std::vector<std::string>>();
    d.decide = [user_id, parts, revoked](store::Txn& txn, StreamId first) {
        revoked->clear();
        for (const auto& p : *parts) {
            const StreamId position = p.position_offset < 0 ? 0 : first + p.position_offset;
            if (p.tokens()) {
                for (auto& hash : txn.token_hashes(user_id, p.device))
                    revoked->push_back(std::move(hash));
                txn.write(store::DeleteTokens{user_id, p.device});
                if (position) txn.write(store::PutChange{{position, "account", user_id}});
            } else if (p.removal.write) {
                p.removal.write(position, txn);
            }
        }
    };
    d.applied = [this, user_id, parts, revoked](StreamId first) {
        std::vector<std::string> wake;
        revoked_locked(*revoked);
        Account* account = written_locked(user_id);
        for (const auto& p : *parts) {
            const StreamId position = p.position_offset < 0 ? 0 : first + p.position_offset;
            if (!p.tokens()) {
                if (p.removal.applied) {
                    auto more = p.removal.applied(position);
                    wake.insert(wake.end(), more.begin(), more.end());
                }
                continue;
            }
            if (account) account->devices.erase(p.device);
        }
        return wake;
    };
    co_await core_.transact(std::move(d));
}

asio::awaitable<bool> Accounts::check_password(const std::string& user_id,
                                               const std::string& password) {
    if (auto wait = rc_login_failed_.check(user_id, core_.now_ms()))
        throw MatrixError(429, errcode::limit_exceeded, "Too many failed logins for this account",
                          *wait);
    std::string stored;
    preload({user_id});
    {
        std::lock_guard lock(core_.mu);
        if (const auto* u = find_locked(user_id)) stored = u->password_hash;
    }
    bool ok = false;
    if (password.size() <= kMaxPasswordBytes) {
        // A user who does not exist (or has no password) costs the same hash as one who does.
        std::function<bool()> job = [this, password, stored] {
            if (stored.empty()) {
                verify_password(password, unknown_user_hash());
                return false;
            }
            return verify_password(password, stored);
        };
        ok = co_await run_blocking<bool>(core_.blocking(), std::move(job));
    }
    if (!ok) rc_login_failed_.record(user_id, core_.now_ms());
    co_return ok;
}

const std::string& Accounts::unknown_user_hash() {
    std::call_once(unknown_user_hash_once_,
                   [this] { unknown_user_hash_ = hash_password(random_letters(32), hash_cost_); });
    return unknown_user_hash_;
}

asio::awaitable<Response> Accounts::login_flows(Request&) {
    co_return json_response(
        json::object{{"flows", json::array{json::object{{"type", "m.login.password"}}}}});
}

asio::awaitable<void> Accounts::sign_in(std::shared_ptr<SignIn> in) {
    Decision d;
    d.streams = core_.shared() ? 1 : 0;  // the change other processes read
    d.decide = [in](store::Txn& txn, StreamId position) {
        in->replaced.clear();
        if (position) txn.write(store::PutChange{{position, "account", in->user_id}});
        if (in->account) {
            // Decided here, against every account committed: two requests for one name,
            // wherever they run, make one account.
            if (txn.user_exists(in->user_id))
                throw MatrixError(400, errcode::user_in_use, "User ID already taken.");
            txn.write(store::PutUser{*in->account});
        }
        if (in->token_hash.empty()) return;
        // A client that logs in again with the same device id replaces that device's old
        // token; the device itself (its keys, its queued messages) stays.
        in->replaced = txn.token_hashes(in->user_id, in->device);
        txn.write(store::DeleteTokens{in->user_id, in->device});
        txn.write(store::PutToken{{in->token_hash, in->user_id, in->device, in->display_name}});
    };
    d.applied = [this, in](StreamId) {
        Account* account = written_locked(in->user_id);
        if (in->account && !account) {
            account = users_.hold(in->user_id, make_account({*in->account, {}})).get();
            trim_later_locked();
        }
        if (!in->token_hash.empty()) {
            if (!in->replaced.empty()) revoked_locked(in->replaced);
            if (account) {
                account->devices[in->device] = in->display_name;
                tokens_.put(in->token_hash,
                            Session{in->user_id, in->device, account->record.is_guest});
            }
        }
        return std::vector<std::string>{};
    };
    return core_.transact(std::move(d));
}

asio::awaitable<Response> Accounts::issue_login(const std::string& user_id,
                                                const std::optional<std::string>& device_id,
                                                const std::string& display_name) {
    std::shared_ptr<SignIn> in =
        std::make_shared<SignIn>(new_login(user_id, device_id, display_name));
    co_await sign_in(in);
    spdlog::info("login: {} on device {}", user_id, in->device);
    co_return login_response(*in);
}

Accounts::SignIn Accounts::new_login(const std::string& user_id,
                                     const std::optional<std::string>& device_id,
                                     const std::string& display_name) {
    SignIn in;
    in.user_id = user_id;
    in.device = device_id && !device_id->empty() ? *device_id : random_letters(10);
    in.token = new_access_token();
    in.token_hash = sha256_hex(in.token);
    in.display_name = display_name;
    // A device signing in again keeps its name unless it gives a new one.
    preload({user_id});
    std::lock_guard lock(core_.mu);
    if (in.display_name.empty()) in.display_name = device_display_name_locked(user_id, in.device);
    return in;
}

Response Accounts::login_response(const SignIn& in) const {
    return json_response(json::object{{"user_id", in.user_id},
                                      {"access_token", in.token},
                                      {"device_id", in.device},
                                      {"home_server", core_.config().server_name}});
}

asio::awaitable<Response> Accounts::login(Request& req) {
    const auto& body = req.json;
    const std::string& server_name = core_.config().server_name;
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
    std::string user_id = user.front() == '@' ? user : "@" + user + ":" + server_name;
    // Normalise the localpart as Synapse does: user ids are case-insensitive on login.
    if (auto parsed = proto::parse_user_id(user_id); parsed && parsed->server_name == server_name) {
        std::string lower(parsed->localpart);
        std::transform(lower.begin(), lower.end(), lower.begin(),
                       [](unsigned char c) { return std::tolower(c); });
        user_id = "@" + lower + ":" + server_name;
    }
    // Per account, whether it exists or not (so a refusal tells nothing): every attempt
    // (rc_login.account), and failed ones (rc_login.failed_attempts), which stop a password
    // being guessed from many addresses.
    if (auto wait = rc_login_account_.take(user_id, core_.now_ms()))
        throw MatrixError(429, errcode::limit_exceeded, "Too many logins for this account", *wait);
    bool ok = co_await check_password(user_id, password);
    if (!ok) {
        spdlog::info("login failed for {} from {}", user_id, req.remote);
        throw MatrixError(403, errcode::forbidden, "Invalid username or password");
    }
    std::optional<std::string> device =
        device_id ? std::optional<std::string>(*device_id) : std::nullopt;
    std::string display_name = display ? std::string(*display) : std::string();
    co_return co_await issue_login(user_id, device, display_name);
}

asio::awaitable<Response> Accounts::logout(Request& req) {
    const Session& s = *req.session;
    std::vector<std::string> devices{s.device_id};
    co_await sign_out(s.user_id, std::move(devices));
    spdlog::info("logout: {} device {}", s.user_id, s.device_id);
    co_return Response{};
}

asio::awaitable<Response> Accounts::logout_all(Request& req) {
    const Session& s = *req.session;
    std::vector<std::string> devices;
    preload({s.user_id});
    {
        std::lock_guard lock(core_.mu);
        devices = devices_locked(s.user_id);
    }
    co_await sign_out(s.user_id, std::move(devices));
    spdlog::info("logout: {} on all devices", s.user_id);
    co_return Response{};
}

asio::awaitable<Response> Accounts::whoami(Request& req) {
    const Session& s = *req.session;
    co_return json_response(
        json::object{{"user_id", s.user_id}, {"device_id", s.device_id}, {"is_guest", s.is_guest}});
}

asio::awaitable<Response> Accounts::register_available(Request& req) {
    const std::string* name = req.query_param("username");
    if (!name || name->empty())
        throw MatrixError(400, errcode::missing_param, "Missing 'username'");
    if (!proto::is_valid_new_localpart(*name))
        throw MatrixError(400, errcode::invalid_username,
                          "User ID can only contain a-z, 0-9, and ._=-/+");
    std::string user_id = "@" + *name + ":" + core_.config().server_name;
    if (exists(user_id)) throw MatrixError(400, errcode::user_in_use, "User ID already taken.");
    co_return json_response(json::object{{"available", true}});
}

asio::awaitable<Response> Accounts::register_account(Request& req) {
    const auto& body = req.json;
    const Config& config = core_.config();
    const std::string* kind = req.query_param("kind");
    bool guest = kind && *kind == "guest";
    if (kind && !guest && *kind != "user")
        throw MatrixError(400, errcode::invalid_param, "kind must be user or guest");
    if (guest ? !config.allow_guest_access : !config.enable_registration) {
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
            if (("@" + localpart + ":" + config.server_name).size() > 255)
                throw MatrixError(400, errcode::invalid_username,
                                  "User ID may not be longer than 255 characters");
            if (exists("@" + localpart + ":" + config.server_name))
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
        hash = co_await run_blocking<std::string>(core_.blocking(), std::move(job));
    }

    std::optional<std::string> device =
        device_id ? std::optional<std::string>(*device_id) : std::nullopt;
    std::string display_name = display ? std::string(*display) : std::string();
    // Generated ids are numeric, as Synapse makes them for guests and nameless accounts:
    // random, so that no process need know how many there are; one taken (by a name chosen
    // the same moment, or another generated one) is tried again with another.
    const bool generated = localpart.empty();
    for (int attempt = 0;; ++attempt) {
        if (generated) localpart = random_digits(10);
        const std::string user_id = "@" + localpart + ":" + config.server_name;
        if (generated && exists(user_id)) continue;
        // The account and, unless inhibit_login, its first device: one transaction.
        auto in = std::make_shared<SignIn>(
            inhibit_login ? SignIn{} : new_login(user_id, device, display_name));
        in->user_id = user_id;
        in->account = store::UserRecord{user_id, hash, guest, core_.now_ms(), localpart, ""};
        bool taken = false;
        try {
            co_await sign_in(in);
        } catch (const MatrixError& e) {
            if (!generated || attempt >= 10 || e.errcode != errcode::user_in_use) throw;
            taken = true;
        }
        if (taken) continue;
        spdlog::info("registered {}{}", user_id, guest ? " (guest)" : "");
        if (inhibit_login)
            co_return json_response(
                json::object{{"user_id", user_id}, {"home_server", config.server_name}});
        spdlog::info("login: {} on device {}", user_id, in->device);
        co_return login_response(*in);
    }
}

void Accounts::add_user_offline(store::Store& store, const Config& config,
                                const std::string& user_id, const std::string& password) {
    auto parsed = proto::parse_user_id(user_id);
    if (!parsed || parsed->server_name != config.server_name)
        throw std::runtime_error("user id must look like @name:" + config.server_name);
    if (!proto::is_valid_new_localpart(parsed->localpart))
        throw std::runtime_error("the localpart may only contain a-z, 0-9 and ._=-/+");
    if (password.empty()) throw std::runtime_error("the password is empty");
    if (store.accounts({user_id})[0].user) throw std::runtime_error(user_id + " already exists");
    std::string hash = hash_password(password, parse_hash_cost(config.password_hash_cost));
    std::vector<store::Mutation> m{
        store::PutUser{{user_id, hash, false, 0, std::string(parsed->localpart), ""}}};
    store.apply(m);
}

// ---------------------------------------------------------------------------------------------
// Devices and user-interactive auth

namespace {

json::object device_json(const std::string& id, const std::string& display_name) {
    json::object d{{"device_id", id}};
    if (!display_name.empty()) d["display_name"] = display_name;
    return d;
}

}  // namespace

asio::awaitable<std::optional<Response>> Accounts::password_auth(const Request& req) {
    const std::string& user_id = req.session->user_id;
    const auto* auth = proto::opt_object(req.json, "auth");
    std::string session(auth ? proto::opt_string(*auth, "session").value_or("") : "");
    if (session.empty()) session = random_letters(24);
    auto challenge = [&](const char* code, const std::string& error) {
        json::object body{
            {"flows", json::array{json::object{{"stages", json::array{"m.login.password"}}}}},
            {"params", json::object{}},
            {"session", session}};
        if (code) {
            body["errcode"] = code;
            body["error"] = error;
        }
        return std::optional<Response>(json_response(body, 401));
    };
    if (!auth) co_return challenge(nullptr, {});
    if (proto::opt_string(*auth, "type").value_or("") != "m.login.password")
        co_return challenge(errcode::unknown, "Only m.login.password is offered here");
    std::string who;
    if (const auto* id = proto::opt_object(*auth, "identifier"))
        who = proto::opt_string(*id, "user").value_or("");
    else
        who = proto::opt_string(*auth, "user").value_or("");
    if (!who.empty() && who.front() != '@') who = "@" + who + ":" + core_.config().server_name;
    std::string password(proto::opt_string(*auth, "password").value_or(""));
    if (who != user_id)
        co_return challenge(errcode::forbidden, "Authenticate as the user whose account this is");
    bool ok = co_await check_password(user_id, password);
    if (!ok) co_return challenge(errcode::forbidden, "Invalid password");
    co_return std::nullopt;
}

asio::awaitable<Response> Accounts::get_devices(Request& req) {
    json::array devices;
    preload({req.session->user_id});
    {
        std::lock_guard lock(core_.mu);
        if (const Account* account = account_locked(req.session->user_id))
            for (const auto& [id, name] : account->devices)
                devices.push_back(device_json(id, name));
    }
    co_return json_response(json::object{{"devices", devices}});
}

asio::awaitable<Response> Accounts::get_device(Request& req) {
    preload({req.session->user_id});
    std::lock_guard lock(core_.mu);
    const Account* account = account_locked(req.session->user_id);
    auto it = account ? account->devices.find(req.params[0]) : decltype(account->devices.end()){};
    if (!account || it == account->devices.end())
        throw MatrixError(404, errcode::not_found, "No such device");
    co_return json_response(device_json(it->first, it->second));
}

asio::awaitable<Response> Accounts::put_device(Request& req) {
    const Session& s = *req.session;
    auto name = proto::opt_string(req.json, "display_name");
    if (name && name->size() > 256)
        throw MatrixError(400, errcode::bad_json, "display_name is longer than 256 bytes");
    auto change = std::make_shared<store::PutDeviceName>(
        store::PutDeviceName{s.user_id, req.params[0], std::string(name.value_or(""))});
    Decision d;
    d.streams = core_.shared() ? 1 : 0;  // the change other processes read
    d.decide = [change, named = name.has_value()](store::Txn& txn, StreamId position) {
        if (!txn.device_exists(change->user_id, change->device_id))
            throw MatrixError(404, errcode::not_found, "No such device");
        if (!named) return;
        txn.write(*change);
        if (position) txn.write(store::PutChange{{position, "account", change->user_id}});
    };
    d.applied = [this, change, named = name.has_value()](StreamId) {
        if (named)
            if (Account* account = written_locked(change->user_id))
                if (auto it = account->devices.find(change->device_id);
                    it != account->devices.end())
                    it->second = change->display_name;
        return std::vector<std::string>{};
    };
    co_await core_.transact(std::move(d));
    co_return Response{};
}

asio::awaitable<Response> Accounts::delete_device(Request& req) {
    std::vector<std::string> devices{req.params[0]};
    preload({req.session->user_id});
    {
        std::lock_guard lock(core_.mu);
        if (!has_device_locked(req.session->user_id, devices[0]))
            throw MatrixError(404, errcode::not_found, "No such device");
    }
    co_return co_await remove_devices(req, std::move(devices));
}

asio::awaitable<Response> Accounts::delete_devices(Request& req) {
    const auto* list = proto::opt_array(req.json, "devices");
    if (!list) throw MatrixError(400, errcode::missing_param, "Missing 'devices'");
    std::vector<std::string> devices;
    for (const auto& d : *list) {
        if (!d.is_string()) throw MatrixError(400, errcode::bad_json, "devices lists device ids");
        devices.emplace_back(d.get_string());
    }
    co_return co_await remove_devices(req, std::move(devices));
}

asio::awaitable<Response> Accounts::remove_devices(Request& req, std::vector<std::string> devices) {
    if (auto challenge = co_await password_auth(req)) co_return std::move(*challenge);
    const Session& s = *req.session;
    // Devices that do not exist (any more) are already what the client asks for.
    const std::size_t asked = devices.size();
    co_await sign_out(s.user_id, std::move(devices));
    spdlog::info("{} deleted {} device(s)", s.user_id, asked);
    co_return Response{};
}

}  // namespace mxvoip::server
