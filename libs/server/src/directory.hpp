#pragma once

// The room directory: room aliases (/directory/room/{alias}, /rooms/{id}/aliases; Rooms
// also resolves them for joins and checks them in m.room.canonical_alias) and the published
// room list (/directory/list/room/{id}, /publicRooms). Neither is held in memory: each use
// reads the store, so other processes sharing the database need not be told of a change.
#include <boost/asio/awaitable.hpp>

#include <string>

#include "core.hpp"
#include "http_types.hpp"
#include "rooms.hpp"

namespace mxvoip::server {

class Directory {
  public:
    Directory(Core& core, Rooms& rooms);

    asio::awaitable<Response> put_alias(Request&);
    asio::awaitable<Response> get_alias(Request&);
    asio::awaitable<Response> delete_alias(Request&);
    asio::awaitable<Response> room_aliases(Request&);
    asio::awaitable<Response> get_visibility(Request&);
    asio::awaitable<Response> put_visibility(Request&);
    asio::awaitable<Response> public_rooms(Request&);  // GET and POST

  private:
    // Who may publish a room, or delete an alias they did not make: a member whose power level
    // allows them to send m.room.canonical_alias (as in Synapse).
    bool may_edit_locked(const Room& room, const std::string& user) const;

    Core& core_;
    Rooms& rooms_;
};

}  // namespace mxvoip::server
