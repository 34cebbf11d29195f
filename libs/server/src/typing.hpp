#pragma once

// Typing notifications: who is typing in a room, until they stop or their timeout passes,
// served in /sync as the room's m.typing ephemeral event. Held in memory only: after a restart
// nobody is typing. A change takes a stream position like any other, so a /sync sees it once.
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>

#include "core.hpp"
#include "http_types.hpp"
#include "rooms.hpp"

namespace mxvoip::server {

class Typing {
  public:
    static constexpr std::int64_t kDefaultTimeoutMs = 30'000;
    static constexpr std::int64_t kMaxTimeoutMs = 120'000;

    Typing(Core& core, Rooms& rooms);

    // Timeouts are kept by a timer on `ex`; until start() a typing user stays typing until
    // they say otherwise. stop() cancels it for good (the server is shutting down).
    void start(asio::any_io_executor ex);
    void stop();

    asio::awaitable<Response> put_typing(Request&);

    // Appends the room's m.typing event when who is typing changed in (since, upto], or when
    // `fresh` and someone is; false when there is none.
    bool render_locked(std::string& out, const Room& room, StreamId since, StreamId upto,
                       bool fresh) const;

  private:
    struct RoomTyping {
        std::map<std::string, std::int64_t> until;  // user -> unix ms the typing ends
        StreamId stream = 0;                        // the last change
        // Who types through each other process sharing the database (its timer ends them).
        std::map<int, std::vector<std::string>> elsewhere;
    };
    // Who types in the room changed: a stream position, taken by a write of its own (nothing
    // else of typing is stored), and once it committed the change is the room's newest and
    // its members' /syncs wake.
    Decision changed(const std::string& room_id);
    // Another process's change (Core::on_change).
    void fed_locked(const store::ChangeRecord& c, std::vector<std::string>& wake);
    void arm_locked();
    void expire();

    Core& core_;
    Rooms& rooms_;
    std::unordered_map<std::string, RoomTyping> rooms_typing_;  // by room id
    std::optional<asio::steady_timer> timer_;
    std::int64_t armed_for_ = 0;  // the expiry the timer waits for; 0: none
    bool stopped_ = false;
};

}  // namespace mxvoip::server
