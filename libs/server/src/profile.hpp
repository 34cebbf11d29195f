#pragma once

// Profiles: display names and avatars, and the user directory that searches them. The values
// live in the account records (Accounts); a change is also announced in every joined room
// with a new member event (Rooms).
#include <boost/asio/awaitable.hpp>

#include "accounts.hpp"
#include "core.hpp"
#include "http_types.hpp"
#include "rooms.hpp"

namespace mxvoip::server {

class Profile {
  public:
    Profile(Core& core, Accounts& accounts, Rooms& rooms)
        : core_(core), accounts_(accounts), rooms_(rooms) {}

    asio::awaitable<Response> get_profile(Request&);
    asio::awaitable<Response> get_profile_field(Request&);
    asio::awaitable<Response> put_profile_field(Request&);
    // POST /user_directory/search: users who share a room with the searcher or are joined to
    // a public or world-readable room (every local user with search_all_users), matched
    // case-insensitively on user id and display name.
    asio::awaitable<Response> search_user_directory(Request&);

  private:
    Core& core_;
    Accounts& accounts_;
    Rooms& rooms_;
};

}  // namespace mxvoip::server
