#pragma once

// What a user stores about themselves: account data (global and per room) and sync filters.
// Filters are written commit-then-apply (Core::transact) and cached (caches.filters).
#include <boost/asio/awaitable.hpp>

#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core.hpp"
#include "http_types.hpp"
#include "lru_cache.hpp"
#include "rooms.hpp"

namespace mxvoip::server {

struct AccountDataEntry {
    StreamId stream = 0;
    std::string content;
};
// By (room id or "" for global, type): a room's entries are contiguous, the global ones first.
using AccountDataEntries = std::map<std::pair<std::string, std::string>, AccountDataEntry>;

class AccountData {
  public:
    AccountData(Core& core, Rooms& rooms);

    void load(store::Snapshot& snap);

    asio::awaitable<Response> get_account_data(Request&);
    asio::awaitable<Response> put_account_data(Request&);
    asio::awaitable<Response> post_filter(Request&);
    asio::awaitable<Response> get_filter(Request&);

    const AccountDataEntries& entries_locked(const std::string& user_id) const;
    // Sets one entry (`room` empty: global) as part of `w`; 403 past
    // limits.account_data_per_user.
    void put_locked(const std::string& user, const std::string& room, const std::string& type,
                    std::string content, PendingWrite& w);
    // The filter's JSON, or nothing when the user has no such filter. Takes the lock; reads
    // the store when the filter is not cached.
    std::optional<std::string> filter(const std::string& user_id, std::int64_t id);

  private:
    Core& core_;
    Rooms& rooms_;
    std::unordered_map<std::string, AccountDataEntries> entries_;  // by user
    // Filters are written once and never change, so a cached one is never stale: the cache
    // is fed by commits and by reads of the store, and forgets what was not used lately.
    LruCache<std::string, std::string> filters_;  // by filter_key(user, id)
};

}  // namespace mxvoip::server
