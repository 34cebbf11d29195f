#pragma once

#include <boost/asio/awaitable.hpp>
#include <string>
#include <vector>

#include "mxvoip/client/matrix_client.hpp"

namespace mxvoip::client {

// m.direct, the account data in which a user's clients record their direct chats: an object
// from the other user's id to the rooms that are direct chats with them.

// The rooms m.direct lists as direct chats with `user`, in its order.
asio::awaitable<std::vector<std::string>> direct_chats_with(MatrixClient& client, std::string user);

// Records `room` as a direct chat with `user`. m.direct is read afresh just before it is
// written, so the entries other devices added are kept.
asio::awaitable<void> remember_direct_chat(MatrixClient& client, std::string user,
                                           std::string room);

}  // namespace mxvoip::client
