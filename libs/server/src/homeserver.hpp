#pragma once

// The homeserver: its modules, each owning its state and its endpoints, over one Core.
// What each module reads or calls besides Core (there are no cycles):
//
//   ServerInfo, Voip   the configuration only
//   Accounts           -
//   ToDevice        -> Accounts     which devices exist; told when one signs out
//   Rooms           -> Accounts     who exists, who is a guest, profiles for member events
//   Directory       -> Rooms        aliases name rooms (Rooms keeps them: it resolves them for
//                                    joins and checks m.room.canonical_alias); the published
//                                    list describes rooms from their state
//   AccountData     -> Rooms        a room's account data needs the room
//   Profile         -> Accounts, Rooms   a change is a member event in every joined room
//   Keys            -> Accounts, Rooms   device lists follow who shares a room
//   KeyBackup          -
//   Receipts        -> Rooms, AccountData   receipts point into rooms; m.fully_read is
//                                            account data
//   Typing          -> Rooms        who is joined
//   Presence        -> Accounts, Rooms   who shares a room sees it; sending is activity
//   Notifications   -> Rooms, AccountData, Receipts   told of every event and every read
//                                            receipt; a user's push rules are account data
//   Pushers         -> Accounts, Notifications   told of every notification; a pusher goes
//                                            with its device
//   Sync            -> Rooms, AccountData, ToDevice, Keys, Receipts, Typing, Notifications,
//                      Presence
//
// The dispatch layer (dispatch.hpp) routes each request to one module's handler (routes.cpp).
#include <boost/asio/awaitable.hpp>
#include <boost/asio/thread_pool.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "account_data.hpp"
#include "accounts.hpp"
#include "core.hpp"
#include "directory.hpp"
#include "key_backup.hpp"
#include "keys.hpp"
#include "notifications.hpp"
#include "presence.hpp"
#include "profile.hpp"
#include "pushers.hpp"
#include "receipts.hpp"
#include "rooms.hpp"
#include "server_info.hpp"
#include "sync.hpp"
#include "to_device.hpp"
#include "typing.hpp"
#include "voip.hpp"

namespace mxvoip::server {

class Homeserver {
  public:
    // Loads the model from `store` (each module its part of one snapshot).
    Homeserver(const Config& config, store::Store& store, asio::thread_pool& blocking,
               Core::Clock clock);

    Core core;
    ServerInfo info;
    Accounts accounts;
    ToDevice to_device;
    Rooms rooms;
    Directory directory;
    AccountData account_data;
    Profile profile;
    Keys keys;
    KeyBackup key_backup;
    Receipts receipts;
    Typing typing;
    Presence presence;
    Notifications notifications;
    Pushers pushers;
    Sync sync;
    Voip voip;
};

}  // namespace mxvoip::server
