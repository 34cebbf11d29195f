#pragma once

// Room events as the modules hold and render them, their ids, and stream tokens.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "mxvoip/store/store.hpp"

namespace mxvoip::server {

using store::StreamId;

// A room event as held in memory: the stored record, immutable once created, shared between
// the room's state map, its recent-timeline window and responses being built. Its `json` is the
// client format and starts with {"content":. A state event that replaced earlier state ends
// with the fixed part of its "unsigned" (prev_content, prev_sender, replaces_state, in that
// order, so the JSON ends in "}}); the parts that change per response are added when it is
// rendered.
struct Event : store::EventRecord {
    std::size_t content_len = 0;  // json.substr(11, content_len) is the content
    std::string redacts;          // an m.room.redaction's target, also a top-level key

    std::string_view content() const { return std::string_view(json).substr(11, content_len); }
};
using EventPtr = std::shared_ptr<const Event>;

// The client-format JSON of `e` (without "unsigned") around `content`, already serialised.
std::string build_event_json(const Event& e, std::string_view content);
// Adds to a state event's JSON what it replaced: `prev`'s content, sender and id.
void add_replaced_state(Event& e, const Event& prev);
// An event read from the store, as held in memory.
EventPtr to_event(store::EventRecord&& r);

// Appends the event, held in memory or read from the store, with its "unsigned" part: its age
// at `now_ms`, and its transaction id when `device_key` is the device that sent it.
void render_event(std::string& out, const store::EventRecord& ev, const std::string& device_key,
                  std::int64_t now_ms);

// Event ids look like room-v4 ids ("$" + 43 url-safe base64 characters) and are opaque to
// clients; the first 8 of their 32 bytes are the event's stream position, the rest random.
// That lets the store find an event by id without an index on ids.
std::string new_event_id(StreamId stream);
std::optional<StreamId> event_id_stream(std::string_view event_id);

// Stream tokens ("s<stream>", the position just after that event) for since, next_batch,
// prev_batch and /messages. A malformed token is M_INVALID_PARAM.
std::string make_token(StreamId s);
StreamId parse_token(const std::string& token);

// Separator for hand-built JSON arrays and objects.
struct Comma {
    bool first = true;
    void operator()(std::string& out) {
        if (!first) out += ',';
        first = false;
    }
};

}  // namespace mxvoip::server
