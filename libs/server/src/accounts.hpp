#pragma once

// Accounts and devices: registration, login and logout, access tokens (kept hashed), and the
// user records (password hash, guest flag, profile). A device exists while it has a token.
// Nothing is read at start: an account (with its devices) and a token are read from the store
// when first needed and held in bounded caches (caches.accounts, caches.tokens); every write
// is decided in its transaction and reaches the caches once it committed.
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core.hpp"
#include "http_types.hpp"
#include "lru_cache.hpp"
#include "mxvoip/server/crypto.hpp"
#include "mxvoip/server/rate_limiter.hpp"
#include "reads_in_flight.hpp"

namespace mxvoip::server {

class Accounts {
  public:
    explicit Accounts(Core& core);
    // Accounts held past `caches.accounts` are let go on this executor, where no caller holds
    // one.
    void start(asio::any_io_executor ex);

    // The session a token belongs to (looked up by its SHA-256), read from the store when it
    // is not held; its account is read too, if it is not held. Takes the lock (call it
    // without); throws StoreUnavailable when the database cannot be reached.
    std::optional<Session> authenticate(const std::string& token);

    // Reads the accounts not held, without the lock, so that the *_locked functions below find
    // them. Takes the lock (call it without).
    void preload(const std::vector<std::string>& user_ids);
    // Whether the account exists. Takes the lock (call it without).
    bool exists(const std::string& user_id);
    // Whether the user id is of this server (whether or not there is such an account).
    bool is_local(std::string_view user_id) const;

    // The account, read from the store under the lock when it is not held (throws
    // StoreUnavailable when the database cannot be reached); nullptr when there is none. What
    // it returns stays valid until the lock is released.
    const store::UserRecord* find_locked(const std::string& user_id) const;
    bool exists_locked(const std::string& user_id) const { return find_locked(user_id); }
    // The user's signed-in devices, sorted.
    std::vector<std::string> devices_locked(const std::string& user_id) const;
    bool has_device_locked(const std::string& user_id, const std::string& device) const;
    std::string device_display_name_locked(const std::string& user_id,
                                           const std::string& device) const;
    // A profile change (the fields given), part of another write, once it committed.
    void profile_applied_locked(const store::PutProfile& change);
    // One module's part in signing a device out, written in the same transaction: what it
    // deletes for the device (`write`, given the stream position it took, if it asked for
    // one), and, once that committed, what it lets go of in memory (`applied`, under the lock;
    // returns whose parked /syncs to wake).
    struct DeviceRemoval {
        bool takes_position = false;
        std::function<void(StreamId position, store::Txn& txn)> write;
        std::function<std::vector<std::string>(StreamId position)> applied;
    };
    // Asked, under the lock, for each device about to sign out (reading only: nothing changes
    // before the removal committed).
    using DeviceRemoved =
        std::function<DeviceRemoval(const std::string& user, const std::string& device)>;
    void on_device_removed(DeviceRemoved f) { device_removed_.push_back(std::move(f)); }

    asio::awaitable<Response> login_flows(Request&);
    asio::awaitable<Response> login(Request&);
    asio::awaitable<Response> logout(Request&);
    asio::awaitable<Response> logout_all(Request&);
    asio::awaitable<Response> whoami(Request&);
    asio::awaitable<Response> register_account(Request&);
    asio::awaitable<Response> register_available(Request&);
    asio::awaitable<Response> get_devices(Request&);
    asio::awaitable<Response> get_device(Request&);
    asio::awaitable<Response> put_device(Request&);
    asio::awaitable<Response> delete_device(Request&);
    asio::awaitable<Response> delete_devices(Request&);

    // User-interactive auth with m.login.password, for what changes the account's security
    // (deleting devices, replacing cross-signing keys): the 401 that asks for it (or says the
    // password was wrong), or nothing once the request's `auth` carries the user's password.
    asio::awaitable<std::optional<Response>> password_auth(const Request& req);

    // Used by `mxvoip-server user add`: creates an account directly in the store.
    static void add_user_offline(store::Store& store, const Config& config,
                                 const std::string& user_id, const std::string& password);

  private:
    struct Account {
        store::UserRecord record;
        std::map<std::string, std::string> devices;  // signed in: device id -> display name
    };
    using Held = std::shared_ptr<Account>;
    static Held make_account(store::AccountLoad&& loaded);
    Account* account_locked(const std::string& user_id) const;
    // The account if it is held, for a write that committed to change it; when it is not, a
    // read of it under way is made again (it may have missed the write).
    Account* written_locked(const std::string& user_id);
    // Tokens signed out: forgotten, and a read of a token under way is made again.
    void revoked_locked(const std::vector<std::string>& token_hashes);
    void trim_later_locked() const;

    // An account made (register) and/or a device signed in, decided in one transaction and
    // applied once it committed.
    struct SignIn {
        std::optional<store::UserRecord> account;  // register: the account to make
        std::string user_id;
        std::string device;
        std::string token;       // empty: no login (register with inhibit_login)
        std::string token_hash;  // SHA-256 of the token
        std::string display_name;
        // Decided: the device's tokens this one replaces.
        std::vector<std::string> replaced;
    };
    // A new token for the device (a new device when none is named).
    SignIn new_login(const std::string& user_id, const std::optional<std::string>& device_id,
                     const std::string& display_name);
    // Writes it: 400 M_USER_IN_USE when the account to make exists. Not a coroutine (GCC 12:
    // see Core::durable).
    asio::awaitable<void> sign_in(std::shared_ptr<SignIn> in);
    asio::awaitable<Response> issue_login(const std::string& user_id,
                                          const std::optional<std::string>& device_id,
                                          const std::string& display_name);
    Response login_response(const SignIn& in) const;
    // Signs the user's devices out (those still signed in), in one transaction with what
    // every module deletes for them; applied once it committed.
    asio::awaitable<void> sign_out(const std::string& user_id, std::vector<std::string> devices);
    // Whether `password` is the account's, at the same cost whether or not the account exists
    // (the time must not tell); a failure counts against rc_login.failed_attempts, and once
    // that limit is reached the answer is 429.
    asio::awaitable<bool> check_password(const std::string& user_id, const std::string& password);
    asio::awaitable<Response> remove_devices(Request& req, std::vector<std::string> devices);
    // The hash a login for an unknown user is checked against (made on first use, at the
    // configured cost). On the blocking pool only.
    const std::string& unknown_user_hash();

    Core& core_;
    HashCost hash_cost_;
    RateLimiter rc_login_account_;
    RateLimiter rc_login_failed_;
    std::once_flag unknown_user_hash_once_;
    std::string unknown_user_hash_;
    std::vector<DeviceRemoved> device_removed_;

    // Accounts are held (LruCache::hold) when read under the lock, and trimmed in a handler
    // posted to `trims_`: a caller may hold an Account* until it releases the lock.
    mutable LruCache<std::string, Held> users_;
    // Users whose accounts are being read without the lock: a read that a write overtook is
    // dropped.
    ReadsInFlight<std::string> loading_;
    mutable std::optional<asio::any_io_executor> trims_;
    mutable bool trim_pending_ = false;
    LruCache<std::string, Session> tokens_;  // sha256 hex -> session
    std::uint64_t revocations_ = 0;          // sign-outs applied
};

}  // namespace mxvoip::server
