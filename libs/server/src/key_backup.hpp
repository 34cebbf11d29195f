#pragma once

// Server-side key backup (room_keys): versions of a user's backup, each with its algorithm and
// auth_data, and the room keys uploaded to it, encrypted by the client. Nothing is held in
// memory: every change is decided in its transaction against what is committed (with the
// user's data locked on a shared database, Decision::users), and reads go to the store. Key
// backups are read when a client starts and written as it receives room keys: rare next to
// messages, and not worth a cache to keep consistent across processes.
#include <boost/asio/awaitable.hpp>

#include <string>

#include "core.hpp"
#include "http_types.hpp"

namespace mxvoip::server {

class KeyBackup {
  public:
    explicit KeyBackup(Core& core) : core_(core) {}

    asio::awaitable<Response> create_version(Request&);
    asio::awaitable<Response> get_version(Request&);  // the latest, or the path's
    asio::awaitable<Response> put_version(Request&);
    asio::awaitable<Response> delete_version(Request&);
    asio::awaitable<Response> put_keys(Request&);  // all rooms, one room or one session
    asio::awaitable<Response> get_keys(Request&);
    asio::awaitable<Response> delete_keys(Request&);

  private:
    Core& core_;
};

}  // namespace mxvoip::server
