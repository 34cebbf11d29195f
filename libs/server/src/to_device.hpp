#pragma once

// Send-to-device messaging: a queue per signed-in device, filled by /sendToDevice, delivered
// in stream order by /sync and removed once the device's next `since` acknowledges it.
// The queues live in the store; each user's that a /sync read are cached (caches.to_device),
// and nothing of them is read at start.
#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>

#include "accounts.hpp"
#include "core.hpp"
#include "http_types.hpp"
#include "lru_cache.hpp"
#include "reads_in_flight.hpp"
#include "txn_ids.hpp"

namespace mxvoip::server {

class ToDevice {
  public:
    // Registers with `accounts` to drop a device's queue when it signs out.
    ToDevice(Core& core, Accounts& accounts);

    asio::awaitable<Response> send_to_device(Request&);

    // Holds the device's queue, read from the store when it is not cached: while the caller
    // keeps the result (a /sync, while it runs), the queue stays cached and what commits
    // meanwhile reaches it. Takes the lock (call it without); throws as the store does.
    std::shared_ptr<const void> hold(const Session& s);

    // The following need the device's queue held (hold()); one not held has nothing.
    // Removes what `since` acknowledged from the device's queue (and from the store).
    void acknowledge_locked(const Session& s, StreamId since);
    // Appends the device's messages in (since, upto] to `out`, comma-separated.
    void render_locked(std::string& out, const Session& s, StreamId since, StreamId upto) const;
    bool has_new_locked(const Session& s, StreamId since, StreamId upto) const;

  private:
    struct Message {
        StreamId stream = 0;
        std::string message;
    };
    using Queue = std::deque<Message>;
    // The user's devices whose queues were read (a device not in it may still have messages).
    struct UserQueues {
        std::unordered_map<std::string, Queue> devices;
    };
    using Held = std::shared_ptr<UserQueues>;

    Queue* queue_locked(const std::string& user, const std::string& device) const;
    // A write to the user's queues is applied: the device's queue if it is held (to apply it
    // to), and a read of the user's queues in flight is made again.
    Queue* written_locked(const std::string& user, const std::string& device);
    // Puts the message in its place by position, unless the queue has it already.
    static bool insert(Queue& q, StreamId stream, std::string message);
    // Lets the device's messages up to `since` go; whether there were any.
    bool trim_locked(const Session& s, StreamId since);

    Core& core_;
    Accounts& accounts_;
    mutable LruCache<std::string, Held> users_;  // by user id
    ReadsInFlight<std::string> loading_;         // by user id
    TxnIds txns_;                                // by sending device
};

}  // namespace mxvoip::server
