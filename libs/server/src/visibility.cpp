#include "visibility.hpp"

#include <algorithm>

namespace mxvoip::server {

namespace {

void record(RoomHistory::Changes& changes, std::int64_t stream, std::string value) {
    if (!changes.empty() && changes.back().first >= stream) return;
    changes.emplace_back(stream, std::move(value));
}

// The value in force just before `stream` (inclusive: at `stream`), or `fallback`.
std::string_view at(const RoomHistory::Changes& changes, std::int64_t stream, bool inclusive,
                    std::string_view fallback) {
    auto it = std::partition_point(changes.begin(), changes.end(), [&](const auto& c) {
        return inclusive ? c.first <= stream : c.first < stream;
    });
    return it == changes.begin() ? fallback : std::string_view(std::prev(it)->second);
}

bool allowed(std::string_view membership, std::string_view visibility, bool joined_later) {
    if (visibility == "world_readable") return true;
    if (membership == "join") return true;
    if (visibility == "shared") return joined_later;
    if (visibility == "invited") return membership == "invite";
    return false;  // "joined", or a value the spec does not define
}

}  // namespace

void RoomHistory::record_membership(const std::string& user, std::int64_t stream,
                                    std::string membership) {
    record(members_[user], stream, std::move(membership));
}

void RoomHistory::record_visibility(std::int64_t stream, std::string visibility) {
    record(visibility_, stream, std::move(visibility));
}

std::int64_t RoomHistory::membership_since(const std::string& user) const {
    auto it = members_.find(user);
    if (it == members_.end() || it->second.empty()) return 0;
    const auto& changes = it->second;
    auto run = changes.rbegin();
    while (std::next(run) != changes.rend() && std::next(run)->second == run->second) ++run;
    return run->first;
}

std::string_view RoomHistory::current_visibility() const {
    return visibility_.empty() ? std::string_view("shared")
                               : std::string_view(visibility_.back().second);
}

bool RoomHistory::may_see(const std::string& user, std::int64_t stream, std::string_view type,
                          const std::optional<std::string>& state_key) const {
    static const Changes kNone;
    auto found = members_.find(user);
    const Changes& mine = found == members_.end() ? kNone : found->second;
    // The common case: joined before the event and never changed since.
    if (!mine.empty() && mine.back().second == "join" && mine.back().first < stream) return true;
    bool joined_later = std::any_of(mine.begin(), mine.end(), [&](const auto& c) {
        return c.first > stream && c.second == "join";
    });
    bool own_member = type == "m.room.member" && state_key && *state_key == user;
    bool visibility_event = type == "m.room.history_visibility" && state_key && state_key->empty();
    for (bool membership_after : {false, true}) {
        if (membership_after && !own_member) break;
        std::string_view m = at(mine, stream, membership_after, "leave");
        for (bool visibility_after : {false, true}) {
            if (visibility_after && !visibility_event) break;
            if (allowed(m, at(visibility_, stream, visibility_after, "shared"), joined_later))
                return true;
        }
    }
    return false;
}

}  // namespace mxvoip::server
