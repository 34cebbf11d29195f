#include "events.hpp"

#include <boost/json.hpp>

#include <algorithm>

#include "json_out.hpp"
#include "mxvoip/proto/base64.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/server/crypto.hpp"

namespace mxvoip::server {

namespace json = boost::json;
using proto::MatrixError;
namespace errcode = proto::errcode;

std::string build_event_json(const Event& e, std::string_view content) {
    std::string j;
    j.reserve(content.size() + 200);
    j += "{\"content\":";
    j += content;
    j += ",\"event_id\":";
    append_quoted(j, e.event_id);
    j += ",\"origin_server_ts\":";
    j += std::to_string(e.origin_server_ts);
    if (!e.redacts.empty()) {
        j += ",\"redacts\":";
        append_quoted(j, e.redacts);
    }
    j += ",\"room_id\":";
    append_quoted(j, e.room_id);
    j += ",\"sender\":";
    append_quoted(j, e.sender);
    if (e.state_key) {
        j += ",\"state_key\":";
        append_quoted(j, *e.state_key);
    }
    j += ",\"type\":";
    append_quoted(j, e.type);
    j += '}';
    return j;
}

void add_replaced_state(Event& e, const Event& prev) {
    e.json.pop_back();
    e.json += ",\"unsigned\":{\"prev_content\":";
    e.json += prev.content();
    e.json += ",\"prev_sender\":";
    append_quoted(e.json, prev.sender);
    e.json += ",\"replaces_state\":";
    append_quoted(e.json, prev.event_id);
    e.json += "}}";
}

EventPtr to_event(store::EventRecord&& r) {
    auto e = std::make_shared<Event>(Event{std::move(r)});
    json::object stored = json::parse(e->json).as_object();
    if (const auto* r = stored.if_contains("redacts"); r && r->is_string())
        e->redacts = r->get_string();
    std::string content = json::serialize(stored["content"]);
    e->json = build_event_json(*e, content);
    e->content_len = content.size();
    if (const auto* u = stored.if_contains("unsigned");
        u && u->is_object() && !u->get_object().empty()) {
        e->json.pop_back();
        e->json += ",\"unsigned\":";
        e->json += json::serialize(*u);
        e->json += '}';
    }
    return e;
}

namespace {

// Opens the event's "unsigned" object for more members: its stored part (a JSON ending in
// "}}", see Event) or a new one.
void open_unsigned(std::string& out, const std::string& json) {
    if (json.ends_with("}}")) {
        out.append(json, 0, json.size() - 2);
        out += ',';
    } else {
        out.append(json, 0, json.size() - 1);
        out += ",\"unsigned\":{";
    }
}

}  // namespace

void render_event(std::string& out, const store::EventRecord& ev, const std::string& device_key,
                  std::int64_t now_ms) {
    open_unsigned(out, ev.json);
    out += "\"age\":";
    out += std::to_string(std::max<std::int64_t>(0, now_ms - ev.origin_server_ts));
    if (!device_key.empty() && ev.txn_device_key == device_key) {
        out += ",\"transaction_id\":";
        append_quoted(out, ev.txn_id);
    }
    out += "}}";
}

std::string new_event_id(StreamId stream) {
    std::string raw = random_bytes(32);
    for (int i = 0; i < 8; ++i)
        raw[i] = static_cast<char>((static_cast<std::uint64_t>(stream) >> (56 - 8 * i)) & 0xff);
    return "$" + proto::base64url_encode(raw);
}

std::optional<StreamId> event_id_stream(std::string_view event_id) {
    if (event_id.size() != 44 || event_id[0] != '$') return std::nullopt;
    auto raw = proto::base64_decode(event_id.substr(1));
    if (!raw || raw->size() != 32) return std::nullopt;
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = v << 8 | static_cast<unsigned char>((*raw)[i]);
    if (v > static_cast<std::uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<StreamId>(v);
}

std::string make_token(StreamId s) {
    return "s" + std::to_string(s);
}

StreamId parse_token(const std::string& token) {
    if (token.size() < 2 || token[0] != 's')
        throw MatrixError(400, errcode::invalid_param, "Invalid token '" + token + "'");
    try {
        std::size_t used = 0;
        long long v = std::stoll(token.substr(1), &used);
        if (used != token.size() - 1 || v < 0) throw std::invalid_argument("token");
        return v;
    } catch (const std::exception&) {
        throw MatrixError(400, errcode::invalid_param, "Invalid token '" + token + "'");
    }
}

}  // namespace mxvoip::server
