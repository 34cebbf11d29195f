#pragma once

// What a user stores about themselves: account data (global and per room) and sync filters.
#include <boost/asio/awaitable.hpp>

#include <map>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core.hpp"
#include "http_types.hpp"
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
    // The filter's JSON, or nullptr when the user has no such filter.
    const std::string* filter_locked(const std::string& user_id, std::size_t id) const;

  private:
    Core& core_;
    Rooms& rooms_;
    std::unordered_map<std::string, AccountDataEntries> entries_;        // by user
    std::unordered_map<std::string, std::vector<std::string>> filters_;  // by user, by id
};

}  // namespace mxvoip::server
