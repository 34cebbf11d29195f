#pragma once

// Who may see which of a room's events: the spec's history visibility rules, as a pure
// function of the room's membership and m.room.history_visibility changes.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mxvoip::server {

// A room's history as far as visibility needs it: each user's membership changes and the
// room's history_visibility changes, each as (stream position, value), oldest first.
class RoomHistory {
  public:
    using Changes = std::vector<std::pair<std::int64_t, std::string>>;

    // Records a member event for `user`, or a history_visibility event (`user` null). Events
    // must come in stream order; one at or before the last recorded for the same key is
    // ignored, so replaying state already known is harmless.
    void record_membership(const std::string& user, std::int64_t stream, std::string membership);
    void record_visibility(std::int64_t stream, std::string visibility);

    // Whether `user` ever had a membership in the room (joined, invited, left, banned).
    bool knows(const std::string& user) const { return members_.count(user) != 0; }
    // The visibility in force now ("shared" when the room never set one).
    std::string_view current_visibility() const;

    // Whether `user` may see the event at `stream` (the spec's algorithm, with the state
    // before the event):
    // 1. history_visibility world_readable: yes;
    // 2. the user's membership was join: yes;
    // 3. shared, and the user joined at any point after the event: yes;
    // 4. invited, and the user's membership was invite: yes;
    // otherwise no. For the user's own member event the membership after it counts too, and
    // for a history_visibility event the visibility after it. A value the spec does not
    // define is treated as "joined".
    bool may_see(const std::string& user, std::int64_t stream, std::string_view type,
                 const std::optional<std::string>& state_key) const;

    // Where the user's current membership began: the first of their newest run of member
    // events with the same membership (a new display name does not start a new join); 0 when
    // the user never had one.
    std::int64_t membership_since(const std::string& user) const;

    // Calls f(user, membership) for each membership change with a stream in (after, upto].
    template <typename F>
    void for_each_change(std::int64_t after, std::int64_t upto, F&& f) const {
        for (const auto& [user, changes] : members_)
            for (auto it = changes.rbegin(); it != changes.rend() && it->first > after; ++it)
                if (it->first <= upto) f(user, it->second);
    }

  private:
    Changes visibility_;
    std::unordered_map<std::string, Changes> members_;
};

}  // namespace mxvoip::server
