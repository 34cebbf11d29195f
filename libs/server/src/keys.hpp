#pragma once

// End-to-end encryption keys: each device's identity keys, one-time keys and fallback keys
// (upload, query, claim), cross-signing keys and signatures, and the device lists that tell
// users whose devices changed. The server holds public keys only and never sees what they
// encrypt. Every write is decided in its transaction and cached once it committed; a user's
// keys are read from the store when first needed and held per user (caches.keys), the
// one-time keys themselves not at all: a claim takes them in its transaction.
#include <boost/asio/awaitable.hpp>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>

#include "accounts.hpp"
#include "core.hpp"
#include "http_types.hpp"
#include "lru_cache.hpp"
#include "reads_in_flight.hpp"
#include "rooms.hpp"

namespace mxvoip::server {

class Keys {
  public:
    // Registers with `accounts` to drop a device's keys when it goes away; asks it for the
    // password when cross-signing keys are replaced.
    Keys(Core& core, Accounts& accounts, Rooms& rooms);

    // Changes up to the snapshot's position are read from the store when a /sync needs them.
    void load(const store::Snapshot& snap);

    asio::awaitable<Response> upload(Request&);
    asio::awaitable<Response> query(Request&);
    asio::awaitable<Response> claim(Request&);
    asio::awaitable<Response> changes(Request&);
    asio::awaitable<Response> upload_signing_keys(Request&);
    asio::awaitable<Response> upload_signatures(Request&);

    struct Fallback {
        std::string key_id;
        std::string json;
        bool used = false;
    };
    struct DeviceKeys {
        std::string keys;  // the device keys as uploaded; empty before the first upload
        std::map<std::string, std::int64_t> one_time;  // unclaimed one-time keys, by algorithm
        std::map<std::string, Fallback> fallback;      // by algorithm
    };
    // Signatures added later to one key, by (signer user, signer key id).
    using Signatures = std::map<std::pair<std::string, std::string>, std::string>;
    // A user's keys as held in memory.
    struct UserKeys {
        std::map<std::string, DeviceKeys> devices;         // by device id
        std::map<std::string, std::string> cross_signing;  // by usage, as uploaded
        std::map<std::string, Signatures> signatures;  // by key: a device id or master public key
    };
    // The user's keys, read from the store when they are not held. Takes the lock (call it
    // without). While the caller holds the result it stays held, so the writes that commit
    // meanwhile reach it.
    std::shared_ptr<const UserKeys> keys_of(const std::string& user);

    // The users whose device lists `user` should refresh, and those it no longer shares a room
    // with, for changes in (since, upto].
    struct DeviceListDelta {
        std::set<std::string> changed;
        std::set<std::string> left;
    };
    // The device-list changes this process does not hold (before its start, or let go) are
    // read from the store: held by hold_older_changes, else under the lock (StoreUnavailable
    // when the database cannot be reached).
    DeviceListDelta device_list_delta_locked(const std::string& user, StreamId since,
                                             StreamId upto) const;
    // Reads, without the lock, the device-list changes after `since` that this process does
    // not hold, and keeps them while the result is held (a /sync, while it runs): nothing to
    // read when `since` is past them. Call it without the lock; throws as the store does.
    std::shared_ptr<const void> hold_older_changes(StreamId since);
    // Device-list changes held at most (user and position each); past it the older half is
    // let go, to be read from the store when a /sync needs them.
    static constexpr std::size_t kChangesHeld = 100000;
    // ,"device_one_time_keys_count":{...},"device_unused_fallback_key_types":[...] of the
    // session's device, from its user's keys (keys_of).
    void render_key_counts_locked(std::string& out, const Session& s, const UserKeys& keys) const;

  private:
    using Held = std::shared_ptr<UserKeys>;
    // keys_of() for several users at once: those not held are read in one go.
    std::map<std::string, std::shared_ptr<const UserKeys>> keys_of(std::set<std::string> users);
    // The user's keys if they are held, for a write that committed to change them; when they
    // are not, a read of them under way is made again (it may have missed the write).
    UserKeys* written_locked(const std::string& user);
    // The users who share a joined room with `user`, and `user`.
    std::set<std::string> audience_locked(const std::string& user) const;
    // The user's device list changed at `position` (committed): everyone who shares a room
    // with them is to be woken.
    std::vector<std::string> device_list_changed_locked(const std::string& user, StreamId position);

    Core& core_;
    Accounts& accounts_;
    Rooms& rooms_;
    LruCache<std::string, Held> users_;  // by user
    // Users whose keys are being read from the store: a read that a write overtook is made
    // again.
    ReadsInFlight<std::string> loading_;
    // Device-list changes after horizon_, by user: their latest. Those at or before it are read
    // from the store (Store::device_lists_changed), which keeps each user's latest.
    std::unordered_map<std::string, StreamId> changed_;
    StreamId horizon_ = 0;
    // What the store has of changes in (since, horizon]: each user's newest.
    struct OlderChanges {
        StreamId since = 0;
        StreamId horizon = 0;
        std::unordered_map<std::string, StreamId> users;
    };
    std::shared_ptr<const OlderChanges> older_changes_locked(StreamId since) const;
    std::shared_ptr<OlderChanges> read_older_changes(StreamId since, StreamId horizon) const;
    // Those held by /syncs, by since (the expired go when another is held).
    std::map<StreamId, std::weak_ptr<const OlderChanges>> older_;
};

}  // namespace mxvoip::server
