#pragma once

// End-to-end encryption keys: each device's identity keys, one-time keys and fallback keys
// (upload, query, claim), and the device lists that tell users whose devices changed. The
// server holds public keys only and never sees what they encrypt.
#include <boost/asio/awaitable.hpp>

#include <deque>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>

#include "accounts.hpp"
#include "core.hpp"
#include "http_types.hpp"
#include "rooms.hpp"

namespace mxvoip::server {

class Keys {
  public:
    // Registers with `accounts` to drop a device's keys when it goes away; asks it for the
    // password when cross-signing keys are replaced.
    Keys(Core& core, Accounts& accounts, Rooms& rooms);

    void load(store::Snapshot& snap);

    asio::awaitable<Response> upload(Request&);
    asio::awaitable<Response> query(Request&);
    asio::awaitable<Response> claim(Request&);
    asio::awaitable<Response> changes(Request&);
    asio::awaitable<Response> upload_signing_keys(Request&);
    asio::awaitable<Response> upload_signatures(Request&);

    // The users whose device lists `user` should refresh, and those it no longer shares a room
    // with, for changes in (since, upto].
    struct DeviceListDelta {
        std::set<std::string> changed;
        std::set<std::string> left;
    };
    DeviceListDelta device_list_delta_locked(const std::string& user, StreamId since,
                                             StreamId upto) const;
    // ,"device_one_time_keys_count":{...},"device_unused_fallback_key_types":[...]
    void render_key_counts_locked(std::string& out, const Session& s) const;

  private:
    struct Fallback {
        std::string key_id;
        std::string json;
        bool used = false;
    };
    struct Device {
        std::string keys;  // the device keys as uploaded; empty before the first upload
        // By algorithm, oldest upload first: (key id, key JSON).
        std::map<std::string, std::deque<std::pair<std::string, std::string>>> one_time;
        std::map<std::string, Fallback> fallback;  // by algorithm
    };
    static std::string device_key(const std::string& user, const std::string& device) {
        return user + '|' + device;
    }
    // The users who share a joined room with `user`, and `user`.
    std::set<std::string> audience_locked(const std::string& user) const;
    // A device's keys arrived or went away: a new position in the user's device list, and the
    // syncs of everyone who shares a room with the user wake for it.
    void record_change_locked(const std::string& user, PendingWrite& w);
    std::string counts_json_locked(const Device* d) const;
    // The stored key (device keys or cross-signing key) with the added signatures `reader`
    // may see: those of the key's owner and the reader's own.
    std::string with_signatures_locked(const std::string& stored, const std::string& owner,
                                       const std::string& key, const std::string& reader) const;
    // (public key, its JSON) of the user's cross-signing key of `usage`, if any.
    const std::string* signing_key_locked(const std::string& user, const std::string& usage) const;

    Core& core_;
    Accounts& accounts_;
    Rooms& rooms_;
    std::unordered_map<std::string, Device> devices_;    // by user + '|' + device
    std::unordered_map<std::string, StreamId> changed_;  // by user: the latest change
    // By user, by usage (master, self_signing, user_signing): the key as uploaded.
    std::unordered_map<std::string, std::map<std::string, std::string>> cross_signing_;
    // Signatures added later, by (owner, device id or master public key), by (signer user,
    // signer key id).
    std::map<std::pair<std::string, std::string>,
             std::map<std::pair<std::string, std::string>, std::string>>
        signatures_;
};

}  // namespace mxvoip::server
