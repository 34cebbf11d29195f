#pragma once

// Server-side key backup (room_keys): versions of a user's backup, each with its algorithm and
// auth_data, and the room keys uploaded to it, encrypted by the client. The metadata that
// decides whether an upload replaces a key is held here; the keys themselves are read from the
// store when a client restores them.
#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <utility>

#include "core.hpp"
#include "http_types.hpp"

namespace mxvoip::server {

class KeyBackup {
  public:
    explicit KeyBackup(Core& core) : core_(core) {}

    void load(store::Snapshot& snap);

    asio::awaitable<Response> create_version(Request&);
    asio::awaitable<Response> get_version(Request&);  // the latest, or the path's
    asio::awaitable<Response> put_version(Request&);
    asio::awaitable<Response> delete_version(Request&);
    asio::awaitable<Response> put_keys(Request&);  // all rooms, one room or one session
    asio::awaitable<Response> get_keys(Request&);
    asio::awaitable<Response> delete_keys(Request&);

  private:
    struct Meta {
        bool is_verified = false;
        std::int64_t first_message_index = 0;
        std::int64_t forwarded_count = 0;
    };
    struct Version {
        std::string algorithm;
        std::string auth_data;
        std::int64_t etag = 0;
        bool deleted = false;
        std::map<std::pair<std::string, std::string>, Meta> keys;  // by (room, session)
    };
    using Versions = std::map<std::int64_t, Version>;  // every version ever made, deleted too

    // The version a request names (?version= or the path), 404 when it does not exist (any
    // more).
    Version& version_locked(const std::string& user, const std::string& text, std::int64_t& number);
    std::int64_t latest_locked(const std::string& user) const;  // 0: none
    store::BackupVersionRecord record(const std::string& user, std::int64_t number,
                                      const Version& v) const;
    static std::string counts(const Version& v);

    Core& core_;
    std::unordered_map<std::string, Versions> users_;
};

}  // namespace mxvoip::server
