#pragma once

// What a user stores about themselves: account data (global and per room) and sync filters.
// Both are written commit-then-apply (Core::transact) and cached per user (caches.account_data,
// caches.filters): nothing of them is read at start, and what is not held is read from the
// store when it is needed.
#include <boost/asio/awaitable.hpp>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core.hpp"
#include "http_types.hpp"
#include "lru_cache.hpp"
#include "reads_in_flight.hpp"
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

    asio::awaitable<Response> get_account_data(Request&);
    asio::awaitable<Response> put_account_data(Request&);
    asio::awaitable<Response> post_filter(Request&);
    asio::awaitable<Response> get_filter(Request&);

    // The user's account data, read from the store when it is not cached. Takes the lock (call
    // it without). While the caller holds the result it stays cached, so the writes that
    // commit meanwhile reach it: take it again before each time the lock is taken to read it.
    std::shared_ptr<const AccountDataEntries> entries(const std::string& user_id);

    // One entry of a user's account data (`room` empty: global) as a write sets it.
    struct Put {
        std::string user, room, type, content;
    };
    // Sets the entry: decided in the transaction (403 past limits.account_data_per_user),
    // then cached, and the user's /syncs woken. Throws as Core::transact does.
    asio::awaitable<void> put(Put&& entry);
    // The same, as part of another module's Decision: the decision inside its `decide` (it
    // takes the position `stream`), and once committed, under the lock, the cache.
    void decide_put(store::Txn& txn, const Put& entry, StreamId stream) const;
    void applied_locked(const Put& entry, StreamId stream);
    // The filter's JSON, or nothing when the user has no such filter. Takes the lock; reads
    // the store when the filter is not cached.
    std::optional<std::string> filter(const std::string& user_id, std::int64_t id);

  private:
    Core& core_;
    Rooms& rooms_;
    using Held = std::shared_ptr<AccountDataEntries>;
    LruCache<std::string, Held> entries_;  // by user
    // Users whose account data is being read from the store: a read that a write overtook is
    // made again.
    ReadsInFlight<std::string> loading_;
    // Filters are written once and never change, so a cached one is never stale: the cache
    // is fed by commits and by reads of the store, and forgets what was not used lately.
    LruCache<std::string, std::string> filters_;  // by filter_key(user, id)
};

}  // namespace mxvoip::server
