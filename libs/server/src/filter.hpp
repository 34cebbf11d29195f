#pragma once

// Event filters (the spec's Filter, RoomFilter and RoomEventFilter): which events a /sync,
// /messages or /context response carries. Pure: parsed from the client's JSON, then asked
// about each event.
#include <boost/json.hpp>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mxvoip::server {

// An EventFilter or RoomEventFilter. Lists that are absent allow everything; `not_` lists win
// over the allowing ones; types may end in or contain '*', which matches any characters.
struct EventFilter {
    std::optional<std::vector<std::string>> types, senders, rooms;
    std::vector<std::string> not_types, not_senders, not_rooms;
    std::optional<int> limit;  // clamped to 0..1000 as given
    std::optional<bool> contains_url;
    bool lazy_load_members = false;
    bool include_redundant_members = false;

    // 400 M_BAD_JSON for a field of the wrong type.
    static EventFilter parse(const boost::json::object& json);
    bool allows_type(std::string_view type) const;
    bool allows_sender(std::string_view sender) const;
    bool allows_room(std::string_view room_id) const;
    // Everything above, and contains_url read from the content (a JSON object's text).
    bool allows(std::string_view type, std::string_view sender, std::string_view room_id,
                std::string_view content) const;
};

// A /sync filter (the spec's Filter with its RoomFilter).
struct SyncFilter {
    EventFilter presence, account_data;
    EventFilter room_rooms;  // room.rooms / room.not_rooms
    EventFilter timeline, state, ephemeral, room_account_data;
    bool include_leave = false;
    bool client_format = true;  // event_format "client"; "federation" sets false
    static SyncFilter parse(const boost::json::object& json);
};

// '*' matches any run of characters.
bool glob_match(std::string_view pattern, std::string_view text);

}  // namespace mxvoip::server
