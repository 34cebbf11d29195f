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
    // Registers with `accounts` to drop a device's keys when it goes away.
    Keys(Core& core, Accounts& accounts, Rooms& rooms);

    void load(store::Snapshot& snap);

    asio::awaitable<Response> upload(Request&);
    asio::awaitable<Response> query(Request&);
    asio::awaitable<Response> claim(Request&);
    asio::awaitable<Response> changes(Request&);

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

    Core& core_;
    Accounts& accounts_;
    Rooms& rooms_;
    std::unordered_map<std::string, Device> devices_;    // by user + '|' + device
    std::unordered_map<std::string, StreamId> changed_;  // by user: the latest change
};

}  // namespace mxvoip::server
