#pragma once

// Read receipts (m.read, m.read.private, threaded or not) and read markers: what each member
// has read of a room, served in /sync as the room's m.receipt ephemeral event. The fully-read
// marker is the room's m.fully_read account data.
//
// The receipts live in the store; each room's are read whole when first needed and held in an
// LruCache (caches.receipts rooms). Nothing of them is read at start.
#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "account_data.hpp"
#include "core.hpp"
#include "http_types.hpp"
#include "lru_cache.hpp"
#include "reads_in_flight.hpp"
#include "rooms.hpp"

namespace mxvoip::server {

class Receipts {
  public:
    // A user's distinct threads with a receipt of one type in one room.
    static constexpr std::size_t kThreadsPerUser = 100;

    Receipts(Core& core, Rooms& rooms, AccountData& account_data);

    // Reads the receipts of the rooms not held, without the lock (call it without), so that
    // what follows under the lock finds them: they are all held, past caches.receipts if need
    // be, until trim_locked(). A room that is let go meanwhile (by a read under the lock) is
    // read again under the lock when it is used. Throws as the store does.
    void preload(const std::vector<std::string>& room_ids);
    // Lets the least recently used rooms' receipts go, down to caches.receipts: once what a
    // preload was for has been rendered.
    void trim_locked() { rooms_receipts_.trim(); }

    asio::awaitable<Response> post_receipt(Request&);
    asio::awaitable<Response> read_markers(Request&);

    // The position of the newest event `user` has read in the room's main timeline (their
    // unthreaded or "main" m.read or m.read.private receipt); 0 when none.
    StreamId read_upto_locked(const std::string& room_id, const std::string& user) const;
    // Called when that position moves forward.
    using ReadListener =
        std::function<void(const std::string& room_id, const std::string& user, StreamId upto)>;
    void on_read(ReadListener f) { read_listeners_.push_back(std::move(f)); }

    // Appends the room's m.receipt event for `user` (receipts changed in (since, upto], or all
    // up to `upto` when `fresh`); false when there is none. Throws as the store does when the
    // room's receipts are not held and cannot be read.
    bool render_locked(std::string& out, const std::string& room_id, const std::string& user,
                       StreamId since, StreamId upto, bool fresh) const;

  private:
    struct Receipt {
        std::string event_id;
        StreamId event_stream = 0;  // the position of the event it points at
        std::int64_t ts = 0;
        StreamId stream = 0;  // the position of the receipt itself
    };
    using Key = std::tuple<std::string, std::string, std::string>;  // user, type, thread
    struct RoomReceipts {
        std::map<Key, Receipt> by_key;
        std::map<StreamId, Key> by_stream;
    };
    // What a receipt request names, checked against the room.
    struct Target {
        std::string event_id;
        StreamId event_stream = 0;
    };

    // Checks that `user` is joined and may see `event_id` of the room, and that the event
    // belongs to `thread` (empty: unthreaded, "main": the main timeline); 4xx otherwise.
    asio::awaitable<Target> check_target(const std::string& room_id, const std::string& user,
                                         const std::string& event_id, const std::string& thread);
    // One receipt to record.
    struct Put {
        std::string room_id, user, type, thread;
        Target target;
    };
    // Records the receipts in one transaction, each unless the user's receipt of that type
    // and thread already points at a later event (decided there, as is the limit of threads:
    // 403 past kThreadsPerUser); cached once committed. Not a coroutine (see Core::durable).
    asio::awaitable<void> put(std::vector<Put> receipts);
    // Once committed: the receipt in the room's (when they are held), the listeners told; whose
    // /syncs to wake.
    void applied_locked(const Put& p, StreamId stream, std::int64_t ts,
                        std::vector<std::string>& wake);
    // The room's receipts, read under the lock when they are not held (what commits meanwhile
    // waits to be applied, and applying a receipt read already changes nothing).
    const RoomReceipts& room_locked(const std::string& room_id) const;
    static RoomReceipts from_records(std::vector<store::ReceiptRecord> rows);

    Core& core_;
    Rooms& rooms_;
    AccountData& account_data_;
    mutable LruCache<std::string, RoomReceipts> rooms_receipts_;  // by room id
    ReadsInFlight<std::string> loading_;                          // by room id
    std::vector<ReadListener> read_listeners_;
};

}  // namespace mxvoip::server
