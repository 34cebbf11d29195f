#pragma once

// Send-to-device messaging: a queue per signed-in device, filled by /sendToDevice, delivered
// in stream order by /sync and removed once the device's next `since` acknowledges it.
#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <utility>

#include "accounts.hpp"
#include "core.hpp"
#include "http_types.hpp"
#include "txn_ids.hpp"

namespace mxvoip::server {

class ToDevice {
  public:
    // Registers with `accounts` to drop a device's queue when it signs out.
    ToDevice(Core& core, Accounts& accounts);

    void load(store::Snapshot& snap);

    asio::awaitable<Response> send_to_device(Request&);

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
    using DeviceKey = std::pair<std::string, std::string>;  // (user, device)
    const std::deque<Message>* queue_locked(const Session& s) const;
    // Lets the device's messages up to `since` go; whether there were any.
    bool trim_locked(const Session& s, StreamId since);

    Core& core_;
    Accounts& accounts_;
    // Ordered: a user's queues are side by side (an account change another process made).
    std::map<DeviceKey, std::deque<Message>> queues_;
    TxnIds txns_;  // by sending device
};

}  // namespace mxvoip::server
