#pragma once

// /sync: renders what changed for a device since its last position from the rooms, account
// data, to-device, keys, receipts and typing modules, and parks the request until a relevant commit
// when nothing did.
#include <boost/asio/awaitable.hpp>

#include <set>
#include <string>

#include "account_data.hpp"
#include "core.hpp"
#include "filter.hpp"
#include "http_types.hpp"
#include "keys.hpp"
#include "notifications.hpp"
#include "presence.hpp"
#include "receipts.hpp"
#include "rooms.hpp"
#include "to_device.hpp"
#include "typing.hpp"

namespace mxvoip::server {

class Sync {
  public:
    Sync(Core& core, Rooms& rooms, AccountData& account_data, ToDevice& to_device, Keys& keys,
         Receipts& receipts, Typing& typing, Notifications& notifications, Presence& presence)
        : core_(core),
          rooms_(rooms),
          account_data_(account_data),
          to_device_(to_device),
          keys_(keys),
          receipts_(receipts),
          typing_(typing),
          notifications_(notifications),
          presence_(presence) {}

    asio::awaitable<Response> sync(Request&);

  private:
    struct Filter {
        SyncFilter spec;
        int timeline_limit = 10;  // 0 to 1000
    };
    Filter resolve_filter(const Session& s, const Request& req) const;
    bool build_locked(const Session& s, StreamId since, bool initial, const Filter& f,
                      bool full_state, const AccountDataEntries& account_data,
                      const Keys::UserKeys& keys, std::string& out);
    bool only_own_echo_locked(const Session& s, StreamId since,
                              const AccountDataEntries& account_data) const;
    // What a rendered timeline carried.
    struct Shown {
        std::set<std::string> senders;
        std::set<StreamId> streams;
    };
    // The room's events in (since, upto] that `s` may see and the filter allows, at most its
    // limit.
    void render_timeline_locked(std::string& out, const Room& room, const Session& s,
                                StreamId since, StreamId upto, const Filter& f, bool& limited,
                                StreamId& first_stream, Shown& shown);
    // Current state entries with stream in (after, upto] that the state filter allows and the
    // timeline does not carry: the state at the start of the timeline, and what the
    // timeline's filter left out (so a filtered timeline never hides a state change). With
    // lazy_load_members, of the member events only those of the timeline's senders (whatever
    // their stream: the client may never have been sent them) and of the user.
    void render_state(std::string& out, const Room& room, StreamId after, StreamId upto,
                      const Session& s, const Filter& f, const Shown& shown) const;
    // Whether a current state event in (since, upto] is missing from the timeline.
    bool state_left_out_locked(const Room& room, StreamId since, StreamId upto, const Filter& f,
                               const Shown& shown) const;

    Core& core_;
    Rooms& rooms_;
    AccountData& account_data_;
    ToDevice& to_device_;
    Keys& keys_;
    Receipts& receipts_;
    Typing& typing_;
    Notifications& notifications_;
    Presence& presence_;
};

}  // namespace mxvoip::server
