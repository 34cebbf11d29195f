#include "rooms.hpp"

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>

#include <algorithm>
#include <exception>
#include <limits>

#include "auth_rules.hpp"
#include "filter.hpp"
#include "json_out.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/ids.hpp"
#include "mxvoip/proto/json.hpp"
#include "mxvoip/server/crypto.hpp"
#include "redaction.hpp"

namespace mxvoip::server {

namespace json = boost::json;
using proto::MatrixError;
namespace errcode = proto::errcode;

namespace {

Response event_id_response(const std::string& event_id) {
    return Response{200, "{\"event_id\":" + quoted(event_id) + "}", {}};
}

// A membership change with no rule about its target's membership (Append::target_must_be),
// named: a coroutine's arguments are no temporaries (GCC 12).
const std::string kNoRule;

json::object default_power_levels(const std::string& creator) {
    return json::object{
        {"users", {{creator, 100}}},
        {"users_default", 0},
        {"events",
         {{"m.room.name", 50},
          {"m.room.power_levels", 100},
          {"m.room.history_visibility", 100},
          {"m.room.canonical_alias", 50},
          {"m.room.avatar", 50},
          {"m.room.tombstone", 100},
          {"m.room.server_acl", 100},
          {"m.room.encryption", 100}}},
        {"events_default", 0},
        {"state_default", 50},
        {"ban", 50},
        {"kick", 50},
        {"redact", 50},
        {"invite", 0},
        {"historical", 100},
    };
}

}  // namespace

asio::awaitable<Response> Rooms::create_room(Request& req) {
    const Session& s = *req.session;
    if (s.is_guest)
        throw MatrixError(403, errcode::guest_access_forbidden, "Guests cannot create rooms");
    const auto& body = req.json;
    std::string preset(proto::opt_string(body, "preset").value_or(""));
    std::string visibility(proto::opt_string(body, "visibility").value_or("private"));
    if (visibility != "private" && visibility != "public")
        throw MatrixError(400, errcode::invalid_param, "visibility must be private or public");
    if (preset.empty()) preset = visibility == "public" ? "public_chat" : "private_chat";
    if (preset != "private_chat" && preset != "trusted_private_chat" && preset != "public_chat")
        throw MatrixError(400, errcode::invalid_param, "Unknown preset " + preset);
    std::string version(proto::opt_string(body, "room_version").value_or("10"));
    {
        int v = 0;
        try {
            v = std::stoi(version);
        } catch (...) {
        }
        if (std::to_string(v) != version || v < 1 || v > 11)
            throw MatrixError(400, errcode::unsupported_room_version,
                              "Room version " + version + " is not supported");
    }
    std::string alias;
    if (auto name = proto::opt_string(body, "room_alias_name")) {
        alias = "#" + std::string(*name) + ":" + core_.config().server_name;
        if (name->find(':') != std::string_view::npos || !proto::is_valid_room_alias(alias))
            throw MatrixError(400, errcode::invalid_param,
                              "room_alias_name is not the local part of a valid room alias");
        // Refused at once when it is taken already; the room's decision checks it again.
        if (core_.store().room_alias(alias))
            throw MatrixError(400, errcode::room_in_use, "Room alias " + alias + " is taken");
    }
    bool is_direct = proto::opt_bool(body, "is_direct").value_or(false);
    auto name = proto::opt_string(body, "name");
    auto topic = proto::opt_string(body, "topic");
    std::vector<std::string> invites;
    auto check_length = [&](const json::array* arr, const char* key, std::size_t limit) {
        if (arr && arr->size() > limit)
            throw MatrixError(
                400, errcode::invalid_param,
                std::string(key) + " has more than " + std::to_string(limit) + " entries");
    };
    check_length(proto::opt_array(body, "invite"), "invite",
                 core_.config().limits.create_room_invites);
    check_length(proto::opt_array(body, "initial_state"), "initial_state",
                 core_.config().limits.create_room_initial_state);
    if (const auto* arr = proto::opt_array(body, "invite")) {
        for (const auto& v : *arr) {
            if (!v.is_string() || !proto::parse_user_id(v.get_string()))
                throw MatrixError(400, errcode::invalid_param, "invite must be a list of user ids");
            invites.emplace_back(v.get_string());
        }
    }
    std::vector<NewEvent> initial_state;
    if (const auto* arr = proto::opt_array(body, "initial_state")) {
        for (const auto& v : *arr) {
            if (!v.is_object())
                throw MatrixError(400, errcode::bad_json, "initial_state entries must be objects");
            const auto& o = v.get_object();
            const auto* content = proto::opt_object(o, "content");
            if (!content)
                throw MatrixError(400, errcode::missing_param,
                                  "initial_state entry needs 'content'");
            initial_state.push_back(
                NewEvent{std::string(proto::req_string(o, "type")),
                         std::string(proto::opt_string(o, "state_key").value_or("")), *content});
        }
    }
    json::object power = default_power_levels(s.user_id);
    if (preset == "trusted_private_chat")
        for (const auto& u : invites) power["users"].as_object()[u] = 100;
    if (const auto* override_pl = proto::opt_object(body, "power_level_content_override"))
        for (const auto& kv : *override_pl) power[kv.key()] = kv.value();
    if (const auto* creation = proto::opt_object(body, "creation_content");
        creation && creation->contains("creator"))
        throw MatrixError(400, errcode::bad_json, "creation_content may not set 'creator'");

    std::string room_id;
    RoomWrite write;
    {
        std::vector<std::string> accounts = invites;
        accounts.push_back(s.user_id);
        accounts_.preload(accounts);
    }
    {
        std::lock_guard lock(core_.mu);
        for (const auto& u : invites)
            if (!accounts_.exists_locked(u) &&
                proto::parse_user_id(u)->server_name == core_.config().server_name)
                throw MatrixError(404, errcode::not_found, "Unknown user " + u);
        // 18 random letters (over 100 bits): the decision refuses a room that exists.
        room_id = "!" + random_letters(18) + ":" + core_.config().server_name;
        write.create = store::RoomRecord{room_id, version};
        auto add = [&](std::string type, std::optional<std::string> state_key,
                       json::object content) {
            write.events.push_back(
                Append{room_id, s.user_id,
                       NewEvent{std::move(type), std::move(state_key), std::move(content)}});
        };
        const store::UserRecord& me = *accounts_.find_locked(s.user_id);
        json::object create;
        if (const auto* creation = proto::opt_object(body, "creation_content"))
            for (const auto& kv : *creation) create[kv.key()] = kv.value();
        // The room version is the one chosen above, whatever creation_content says.
        create["room_version"] = version;
        if (std::stoi(version) < 11) create["creator"] = s.user_id;  // v11 dropped it
        add("m.room.create", "", std::move(create));
        json::object join{{"membership", "join"}};
        if (!me.displayname.empty()) join["displayname"] = me.displayname;
        if (!me.avatar_url.empty()) join["avatar_url"] = me.avatar_url;
        add("m.room.member", s.user_id, std::move(join));
        add("m.room.power_levels", "", std::move(power));
        if (!alias.empty()) {
            // Written with the room, and checked in its decision (Rooms::decide): of two
            // createRooms with one alias, the second is refused.
            store::RoomAliasRecord record{alias, room_id, s.user_id};
            write.mutations.push_back(store::PutRoomAlias{record});
            add("m.room.canonical_alias", "", {{"alias", alias}});
        }
        std::string join_rule = preset == "public_chat" ? "public" : "invite";
        add("m.room.join_rules", "", {{"join_rule", join_rule}});
        add("m.room.history_visibility", "", {{"history_visibility", "shared"}});
        if (preset != "public_chat") add("m.room.guest_access", "", {{"guest_access", "can_join"}});
        for (auto& ev : initial_state)
            add(std::move(ev.type), std::move(ev.state_key), std::move(ev.content));
        if (name) add("m.room.name", "", {{"name", *name}});
        if (topic) add("m.room.topic", "", {{"topic", *topic}});
        for (const auto& u : invites) {
            json::object content{{"membership", "invite"}};
            if (is_direct) content["is_direct"] = true;
            if (const auto* invitee = accounts_.find_locked(u);
                invitee && !invitee->displayname.empty())
                content["displayname"] = invitee->displayname;
            add("m.room.member", u, std::move(content));
        }
        for (const auto& f : creating_) f(room_id, body, write);
    }
    co_await append(write);
    spdlog::info("{} created room {} ({}{})", s.user_id, room_id, preset,
                 is_direct ? ", direct" : "");
    co_return json_response(json::object{{"room_id", room_id}});
}

asio::awaitable<Response> Rooms::membership_change(Request& req, const std::string& room_id,
                                                   const std::string& target,
                                                   const std::string& membership,
                                                   json::object& extra,
                                                   const std::string& target_must_be) {
    const Session& s = *req.session;
    preload({room_id});
    accounts_.preload({target});
    RoomWrite write;
    {
        std::lock_guard lock(core_.mu);
        Room& room = room_or_throw_locked(room_id);
        check_target(room, target, target_must_be);
        // Joining again, or inviting someone already invited, changes nothing: answer as Synapse
        // does.
        if (room.membership_of(target) == membership && membership != "join") co_return Response{};
        json::object content = std::move(extra);
        content["membership"] = membership;
        if (membership == "join" || membership == "invite") {
            if (const auto* u = accounts_.find_locked(target)) {
                if (!u->displayname.empty()) content["displayname"] = u->displayname;
                if (!u->avatar_url.empty()) content["avatar_url"] = u->avatar_url;
            } else if (proto::parse_user_id(target)->server_name == core_.config().server_name) {
                throw MatrixError(404, errcode::not_found, "Unknown user " + target);
            }
        }
        if (membership == "join") {
            // Keep is_direct from the invite, as clients read it from their own member event.
            if (auto prev = room.state_event("m.room.member", target)) {
                auto old = json::parse(prev->content());
                if (old.is_object() && old.as_object().contains("is_direct") &&
                    room.membership_of(target) == "invite")
                    content["is_direct"] = old.as_object().at("is_direct");
            }
        }
        // Joining again with nothing changed is answered with the join there is (Synapse does
        // the same); a new displayname or avatar makes a new member event.
        if (membership == "join" && room.membership_of(target) == "join")
            if (auto prev = room.state_event("m.room.member", target);
                prev && json::parse(prev->content()) == json::value(content))
                co_return json_response(json::object{{"room_id", room_id}});
        write.events.push_back(Append{room_id,
                                      s.user_id,
                                      NewEvent{"m.room.member", target, std::move(content)},
                                      {},
                                      {},
                                      target_must_be});
    }
    co_await append(write);
    spdlog::info("{}: {} {} in {}", s.user_id, target, membership, room_id);
    if (membership == "join") co_return json_response(json::object{{"room_id", room_id}});
    co_return Response{};
}

asio::awaitable<Response> Rooms::invite(Request& req) {
    const auto& body = req.json;
    std::string target(proto::req_string(body, "user_id"));
    if (!proto::parse_user_id(target))
        throw MatrixError(400, errcode::invalid_param, "user_id is not a user id");
    json::object extra;
    if (auto reason = proto::opt_string(body, "reason")) extra["reason"] = *reason;
    const std::string membership = "invite";
    co_return co_await membership_change(req, req.params[0], target, membership, extra, kNoRule);
}

asio::awaitable<Response> Rooms::join(Request& req) {
    std::string id = req.params[0];
    if (!id.empty() && id[0] == '#') {
        if (!proto::is_valid_room_alias(id))
            throw MatrixError(400, errcode::invalid_param, id + " is not a room alias");
        auto a = core_.store().room_alias(id);
        if (!a) throw MatrixError(404, errcode::not_found, "Room alias " + id + " not found");
        id = a->room_id;
    }
    if (!proto::is_valid_room_id(id))
        throw MatrixError(400, errcode::invalid_param, id + " is not a room id");
    json::object extra;
    if (auto reason = proto::opt_string(req.json, "reason")) extra["reason"] = *reason;
    const std::string membership = "join";
    co_return co_await membership_change(req, id, req.session->user_id, membership, extra, kNoRule);
}

asio::awaitable<Response> Rooms::leave(Request& req) {
    json::object extra;
    if (auto reason = proto::opt_string(req.json, "reason")) extra["reason"] = *reason;
    const std::string membership = "leave";
    co_return co_await membership_change(req, req.params[0], req.session->user_id, membership,
                                         extra, kNoRule);
}

asio::awaitable<Response> Rooms::moderate(Request& req, const std::string& membership,
                                          const std::string& target_must_be) {
    std::string target(proto::req_string(req.json, "user_id"));
    if (!proto::parse_user_id(target))
        throw MatrixError(400, errcode::invalid_param, "user_id is not a user id");
    json::object extra;
    if (auto reason = proto::opt_string(req.json, "reason")) extra["reason"] = *reason;
    co_return co_await membership_change(req, req.params[0], target, membership, extra,
                                         target_must_be);
}

asio::awaitable<Response> Rooms::kick(Request& req) {
    const std::string membership = "leave", must_be = "member";
    co_return co_await moderate(req, membership, must_be);
}

asio::awaitable<Response> Rooms::ban(Request& req) {
    const std::string membership = "ban", must_be;
    co_return co_await moderate(req, membership, must_be);
}

asio::awaitable<Response> Rooms::unban(Request& req) {
    const std::string membership = "leave", must_be = "banned";
    co_return co_await moderate(req, membership, must_be);
}

asio::awaitable<Response> Rooms::joined_rooms(Request& req) {
    json::array rooms;
    {
        std::lock_guard lock(core_.mu);
        for (const auto& [id, m] : memberships_locked(req.session->user_id))
            if (m.membership == "join") rooms.push_back(json::string(id));
    }
    co_return json_response(json::object{{"joined_rooms", rooms}});
}

asio::awaitable<Response> Rooms::send_event(Request& req) {
    const Session& s = *req.session;
    const std::string& room_id = req.params[0];
    const std::string& type = req.params[1];
    const std::string& txn = req.params[2];
    if (txn.empty()) throw MatrixError(400, errcode::invalid_param, "Empty transaction id");
    if (type == "m.room.redaction")
        throw MatrixError(400, errcode::invalid_param,
                          "Redactions are sent with PUT /rooms/{roomId}/redact/{eventId}/{txnId}");
    json::object content = req.json;
    const std::string device = s.device_key();
    const std::string txn_key = room_id + '\n' + txn;
    recall_txns(s);
    preload({room_id});
    {
        std::lock_guard lock(core_.mu);
        room_or_throw_locked(room_id);
    }
    if (auto retry = co_await claim_txn(device, txn_key)) co_return std::move(*retry);
    RoomWrite write;
    write.events.push_back(
        Append{room_id, s.user_id, NewEvent{type, std::nullopt, std::move(content)}, device, txn});
    auto events = co_await append(write);
    co_return event_id_response(events.at(0)->event_id);
}

asio::awaitable<Response> Rooms::put_state(Request& req) {
    const Session& s = *req.session;
    const std::string& room_id = req.params[0];
    const std::string& type = req.params[1];
    std::string state_key = req.params.size() > 2 ? req.params[2] : std::string();
    json::object content = req.json;
    preload({room_id});
    RoomWrite write;
    {
        std::lock_guard lock(core_.mu);
        Room& room = room_or_throw_locked(room_id);
        // The same state from the same member again changes nothing: the event there is
        // answers (as Synapse does), rather than a copy of it.
        if (auto prev = room.state_event(type, state_key);
            prev && prev->sender == s.user_id && room.membership_of(s.user_id) == "join" &&
            json::parse(prev->content()) == json::value(content))
            co_return event_id_response(prev->event_id);
        write.events.push_back(
            Append{room_id, s.user_id, NewEvent{type, state_key, std::move(content)}});
    }
    auto events = co_await append(write);
    co_return event_id_response(events.at(0)->event_id);
}

asio::awaitable<Response> Rooms::get_state_event(Request& req) {
    const std::string& room_id = req.params[0];
    const std::string& type = req.params[1];
    std::string state_key = req.params.size() > 2 ? req.params[2] : std::string();
    std::optional<StreamId> horizon;
    preload({room_id});
    {
        std::lock_guard lock(core_.mu);
        Room& room = room_or_throw_locked(room_id);
        horizon = state_horizon_locked(room, req.session->user_id);
        if (!horizon) {
            auto ev = room.state_event(type, state_key);
            if (!ev) throw MatrixError(404, errcode::not_found, "Event not found.");
            co_return Response{200, std::string(ev->content()), {}};
        }
    }
    // A former member reads the state as it was when they left.
    for (const auto& r : core_.store().state_at(room_id, *horizon))
        if (r.type == type && r.state_key == state_key)
            co_return Response{200, json::serialize(json::parse(r.json).at("content")), {}};
    throw MatrixError(404, errcode::not_found, "Event not found.");
}

asio::awaitable<Response> Rooms::get_state(Request& req) {
    const std::int64_t now = core_.now_ms();
    const std::string& room_id = req.params[0];
    std::string out = "[";
    std::optional<StreamId> horizon;
    preload({room_id});
    {
        std::lock_guard lock(core_.mu);
        Room& room = room_or_throw_locked(room_id);
        horizon = state_horizon_locked(room, req.session->user_id);
        if (!horizon)
            for (const auto& [_, ev] : room.state) {
                if (out.size() > 1) out += ',';
                render_event(out, *ev, {}, now);
            }
    }
    if (horizon)
        for (const auto& r : core_.store().state_at(room_id, *horizon)) {
            if (out.size() > 1) out += ',';
            render_event(out, r, {}, now);
        }
    out += ']';
    co_return Response{200, std::move(out), {}};
}

asio::awaitable<Response> Rooms::get_members(Request& req) {
    const std::int64_t now = core_.now_ms();
    const std::string& room_id = req.params[0];
    const std::string* only = req.query_param("membership");
    const std::string* exclude = req.query_param("not_membership");
    auto wanted = [&](std::string_view m) {
        return !(only && m != *only) && !(exclude && m == *exclude);
    };
    std::string out = "{\"chunk\":[";
    bool first = true;
    std::optional<StreamId> horizon;
    preload({room_id});
    {
        std::lock_guard lock(core_.mu);
        Room& room = room_or_throw_locked(room_id);
        horizon = state_horizon_locked(room, req.session->user_id);
        if (!horizon)
            for (const auto& [key, ev] : room.state) {
                if (key.first != "m.room.member" || !wanted(room.membership_of(key.second)))
                    continue;
                if (!first) out += ',';
                first = false;
                render_event(out, *ev, {}, now);
            }
    }
    // A former member gets the member list as it was when they left.
    if (horizon)
        for (const auto& r : core_.store().state_at(room_id, *horizon)) {
            if (r.type != "m.room.member") continue;
            auto content = json::parse(r.json).at("content");
            auto m = proto::opt_string(content.as_object(), "membership");
            if (!wanted(m ? *m : "leave")) continue;
            if (!first) out += ',';
            first = false;
            render_event(out, r, {}, now);
        }
    out += "]}";
    co_return Response{200, std::move(out), {}};
}

asio::awaitable<Response> Rooms::get_messages(Request& req) {
    const std::string device_key = req.session->device_key();  // its own events show their txn id
    const std::int64_t now = core_.now_ms();
    const std::string& room_id = req.params[0];
    std::string dir = req.query_param("dir") ? *req.query_param("dir") : "b";
    if (dir != "b" && dir != "f")
        throw MatrixError(400, errcode::invalid_param, "dir must be b or f");
    int limit = 10;
    if (const auto* l = req.query_param("limit")) {
        try {
            limit = std::clamp(std::stoi(*l), 1, 1000);
        } catch (...) {
            throw MatrixError(400, errcode::invalid_param, "limit must be a number");
        }
    }
    std::optional<StreamId> to;
    if (const auto* t = req.query_param("to")) to = parse_token(*t);
    EventFilter filter;
    if (const auto* f = req.query_param("filter"))
        filter = EventFilter::parse(proto::parse_json_object(*f));
    if (filter.limit) limit = std::clamp(*filter.limit, 1, limit);
    StreamId from;
    StreamId visible;
    preload({room_id});
    {
        std::lock_guard lock(core_.mu);
        Room& room = room_or_throw_locked(room_id);
        require_reader_locked(room, req.session->user_id);
        from = req.query_param("from") ? parse_token(*req.query_param("from"))
                                       : (dir == "b" ? core_.visible_locked() : 0);
        from = std::min(from, core_.visible_locked());
        visible = core_.visible_locked();
    }
    std::vector<store::EventRecord> rows;
    if (dir == "b") {
        rows = core_.store().events_before(room_id, from + 1, limit);
        if (to) std::erase_if(rows, [&](const auto& r) { return r.stream <= *to; });
    } else {
        rows = core_.store().events_after(room_id, from, limit);
        if (to) std::erase_if(rows, [&](const auto& r) { return r.stream > *to; });
        std::erase_if(rows, [&](const auto& r) { return r.stream > visible; });
    }
    std::string out = "{\"chunk\":[";
    StreamId end = from;
    {
        // What the user may not see or the filter leaves out is skipped; the page still moves
        // past it.
        std::lock_guard lock(core_.mu);
        const Room& room = room_or_throw_locked(room_id);
        std::set<std::string> senders;
        Comma comma;
        for (const auto& r : rows) {
            end = dir == "b" ? r.stream - 1 : r.stream;
            if (!room.history.may_see(req.session->user_id, r.stream, r.type, r.state_key))
                continue;
            if (!filter.allows(r.type, r.sender, r.room_id,
                               filter.contains_url
                                   ? json::serialize(json::parse(r.json).at("content"))
                                   : std::string("{}")))
                continue;
            comma(out);
            render_event(out, r, device_key, now);
            senders.insert(r.sender);
        }
        out += "],\"start\":\"" + make_token(from) + "\"";
        if (!rows.empty() && static_cast<int>(rows.size()) == limit)
            out += ",\"end\":\"" + make_token(end) + "\"";
        // Lazy-loaded members: the member events of the chunk's senders, as they are now.
        if (filter.lazy_load_members) {
            out += ",\"state\":[";
            Comma state_comma;
            for (const auto& sender : senders)
                if (auto ev = room.state_event("m.room.member", sender)) {
                    state_comma(out);
                    render_event(out, *ev, device_key, now);
                }
            out += ']';
        }
    }
    out += '}';
    co_return Response{200, std::move(out), {}};
}

asio::awaitable<Response> Rooms::get_event(Request& req) {
    const std::string& room_id = req.params[0];
    preload({room_id});
    {
        std::lock_guard lock(core_.mu);
        Room& room = room_or_throw_locked(room_id);
        require_reader_locked(room, req.session->user_id);
    }
    auto stream = event_id_stream(req.params[1]);
    std::optional<store::EventRecord> row;
    if (stream) row = core_.store().event_at(*stream);
    bool visible = row && row->event_id == req.params[1] && row->room_id == room_id;
    if (visible) {
        std::lock_guard lock(core_.mu);
        visible = room_or_throw_locked(room_id).history.may_see(req.session->user_id, row->stream,
                                                                row->type, row->state_key);
    }
    if (!visible) throw MatrixError(404, errcode::not_found, "Event not found.");
    std::string out;
    render_event(out, *row, req.session->device_key(), core_.now_ms());
    co_return Response{200, std::move(out), {}};
}

// ---------------------------------------------------------------------------------------------
// The model

namespace {

// Whether the state event is one RoomState::open() reads.
bool opens(const Event& ev) {
    return ev.state_key && ev.state_key->empty() &&
           (ev.type == "m.room.join_rules" || ev.type == "m.room.history_visibility");
}

bool has_float(const json::value& v) {
    switch (v.kind()) {
        case json::kind::double_:
            return true;
        case json::kind::array:
            return std::any_of(v.get_array().begin(), v.get_array().end(), has_float);
        case json::kind::object:
            return std::any_of(v.get_object().begin(), v.get_object().end(),
                               [](const auto& kv) { return has_float(kv.value()); });
        default:
            return false;
    }
}

}  // namespace

Rooms::Rooms(Core& core, Accounts& accounts)
    : core_(core),
      accounts_(accounts),
      rooms_(core.config().caches.rooms, [](const Room& r) { return r.writes_in_flight > 0; }),
      // Held by a /sync: not let go, so what commits meanwhile reaches it.
      memberships_(core.config().caches.memberships,
                   [](const HeldMemberships& h) { return h.use_count() > 1; }),
      txns_(core.config().limits.txn_ids_per_device) {
    core_.on_change("event", [this](const store::ChangeRecord&, const store::EventRecord* event,
                                    std::vector<std::string>& wake) { fed_locked(*event, wake); });
    // A device that signed out sends nothing more: its transaction ids go with it, also
    // from the store, where a device signing in again with the same id would recall them.
    accounts_.on_device_removed([this](const std::string& user, const std::string& device) {
        const std::string key = Session{user, device}.device_key();
        Accounts::DeviceRemoval r;
        r.write = [key, since = core_.now_ms() - TxnIds::kLifetimeMs](StreamId, store::Txn& txn) {
            txn.write(store::ForgetTxns{key, since});
        };
        r.applied = [this, key](StreamId) {
            txns_.forget_device(key);
            return std::vector<std::string>{};
        };
        return r;
    });
}

namespace {
// A member event's membership, as the room's state reads it.
std::string membership_value(std::string value) {
    return value.empty() ? "leave" : value;
}
}  // namespace

Memberships Rooms::fold_memberships(std::vector<store::HistoryRecord> events) {
    Memberships out;
    for (auto& h : events) {
        // A membership dates from the event that changed it, as while running (a new display
        // name is not a new join).
        std::string membership = membership_value(std::move(h.value));
        auto [m, fresh] = out.try_emplace(std::move(h.room_id));
        if (fresh || m->second.membership != membership)
            m->second = RoomMembership{std::move(membership), h.stream};
    }
    return out;
}

void Rooms::preload_memberships(const std::vector<std::string>& user_ids) const {
    std::vector<std::string> missing;
    std::vector<ReadsInFlight<std::string>::Ticket> tickets;
    {
        std::lock_guard lock(core_.mu);
        for (const auto& user : user_ids) {
            if (memberships_.get(user) || !accounts_.is_local(user) ||
                std::find(missing.begin(), missing.end(), user) != missing.end())
                continue;
            missing.push_back(user);
            tickets.push_back(memberships_loading_.started(user));
        }
    }
    std::vector<Memberships> read;
    std::exception_ptr failed;
    try {
        for (const auto& user : missing)
            read.push_back(fold_memberships(core_.store().memberships_of(user)));
    } catch (...) {
        failed = std::current_exception();
    }
    std::lock_guard lock(core_.mu);
    for (std::size_t i = 0; i < missing.size(); ++i) {
        const bool overtaken = memberships_loading_.overtaken(missing[i], tickets[i]);
        // One a membership change overtook is read under the lock when it is used.
        if (failed || overtaken || memberships_.get(missing[i])) continue;
        memberships_.hold(missing[i], std::make_shared<Memberships>(std::move(read[i])));
    }
    trim_later_locked();
    if (failed) std::rethrow_exception(failed);
}

std::shared_ptr<const void> Rooms::hold_memberships(const std::string& user_id) const {
    for (;;) {
        preload_memberships({user_id});
        std::lock_guard lock(core_.mu);
        if (auto* held = memberships_.get(user_id)) return *held;
        if (!accounts_.is_local(user_id)) return nullptr;
        // A change overtook the read: read again.
    }
}

void Rooms::recall_txns(const Session& s) {
    const std::string device = s.device_key();
    {
        std::lock_guard lock(core_.mu);
        if (txns_.recalled(device)) return;
    }
    const auto limit = static_cast<int>(
        std::min<std::size_t>(txns_.per_device(), std::numeric_limits<int>::max()));
    auto rows = core_.store().device_txns(device, core_.now_ms() - TxnIds::kLifetimeMs, limit);
    std::vector<TxnIds::Stored> stored;
    stored.reserve(rows.size());
    for (auto& r : rows)
        stored.push_back({r.room_id + '\n' + r.txn_id, std::move(r.event_id), r.ts});
    std::lock_guard lock(core_.mu);
    // A device that signed out meanwhile sends nothing more: nothing to keep for it.
    if (accounts_.has_device_locked(s.user_id, s.device_id))
        txns_.recall(device, std::move(stored));
}

std::optional<Response> Rooms::retried_locked(const std::string& device,
                                              const std::string& txn_key) {
    // The first attempt's event id; its response waits, as every response does, until that
    // event is durable.
    if (const auto* first = txns_.find(device, txn_key, core_.now_ms()))
        return event_id_response(*first);
    return std::nullopt;
}

asio::awaitable<std::optional<Response>> Rooms::claim_txn(const std::string& device,
                                                          const std::string& txn_key) {
    for (;;) {
        std::uint64_t first_attempt = 0;
        {
            std::lock_guard lock(core_.mu);
            if (auto retry = retried_locked(device, txn_key)) co_return retry;
            if (!txns_.in_flight(device, txn_key)) {
                txns_.claim(device, txn_key);
                co_return std::nullopt;
            }
            first_attempt = core_.submitted();
        }
        // The first attempt is being written: its outcome is known once what was submitted
        // so far settled (remembered when it was stored, released either way).
        co_await core_.durable(first_attempt);
    }
}

void Rooms::start(asio::any_io_executor ex) {
    std::lock_guard lock(core_.mu);
    trims_ = std::move(ex);
    trim_later_locked();
}

Room* Rooms::get_locked(const std::string& room_id) const {
    if (Room* held = rooms_.get(room_id)) {
        if (held->stale && held->writes_in_flight == 0) refresh_locked(*held);
        return held;
    }
    // Read under the lock: the room cannot change meanwhile, and what commits meanwhile (its
    // applied step waits for the lock) is in what is read, up to `upto`, and not applied
    // twice (Room::loaded_upto).
    auto loaded = core_.store().room(room_id);
    if (!loaded) return nullptr;
    return &hold_locked(std::move(*loaded));
}

void Rooms::refresh_locked(Room& room) const {
    auto loaded = core_.store().room(room.id);
    if (!loaded) return;
    Room fresh = build_room(std::move(*loaded));
    fresh.writes_in_flight = room.writes_in_flight;
    room = std::move(fresh);
    spdlog::debug("room {} read again: another process appended to it", room.id);
}

Room& Rooms::hold_locked(store::RoomLoad&& loaded) const {
    Room room = build_room(std::move(loaded));
    const std::string id = room.id;
    Room& held = rooms_.hold(id, std::move(room));
    spdlog::debug("room {} read from the database ({} held)", id, rooms_.size());
    trim_later_locked();
    return held;
}

Room Rooms::build_room(store::RoomLoad&& loaded) {
    Room room;
    room.id = loaded.room.room_id;
    room.version = std::move(loaded.room.room_version);
    for (auto& h : loaded.history) {
        if (h.type == "m.room.member")
            room.history.record_membership(h.state_key, h.stream,
                                           membership_value(std::move(h.value)));
        else if (h.state_key.empty())
            room.history.record_visibility(h.stream, std::move(h.value));
    }
    // The history first: the current state replays its last entries, which are then ignored.
    for (auto& r : loaded.state) room.apply_state(to_event(std::move(r)));
    // Its timeline starts empty, everything up to here in the store, where the timeline
    // readers find it, and fills as events come.
    room.evicted_upto = loaded.upto;
    room.loaded_upto = loaded.upto;
    room.last_event = loaded.upto;
    return room;
}

void Rooms::preload(const std::vector<std::string>& room_ids) const {
    std::vector<std::string> missing;
    std::vector<ReadsInFlight<std::string>::Ticket> tickets;
    {
        std::lock_guard lock(core_.mu);
        for (const auto& id : room_ids)
            if (!rooms_.get(id) && std::find(missing.begin(), missing.end(), id) == missing.end()) {
                missing.push_back(id);
                tickets.push_back(rooms_loading_.started(id));
            }
    }
    for (std::size_t i = 0; i < missing.size(); ++i) {
        // Read without the lock, so a room read does not hold up every other request.
        std::optional<store::RoomLoad> loaded;
        std::exception_ptr failed;
        try {
            loaded = core_.store().room(missing[i]);
        } catch (...) {
            failed = std::current_exception();
        }
        std::lock_guard lock(core_.mu);
        if (failed) {
            for (std::size_t j = i; j < missing.size(); ++j)
                rooms_loading_.overtaken(missing[j], tickets[j]);
            std::rethrow_exception(failed);
        }
        // An event applied since the read began may not be in it (applied to a room held
        // then, let go since): then the room is read again, under the lock, when it is used.
        const bool overtaken = rooms_loading_.overtaken(missing[i], tickets[i]);
        if (!loaded || overtaken) continue;
        if (rooms_.get(missing[i])) continue;  // read meanwhile (by a write that holds it, say)
        hold_locked(std::move(*loaded));
    }
}

const Room* Rooms::find_locked(const std::string& room_id) const {
    return get_locked(room_id);
}

const Room* Rooms::find_or_skip_locked(const std::string& room_id) const noexcept {
    try {
        return get_locked(room_id);
    } catch (const std::exception& e) {
        spdlog::warn("room {} could not be read ({}); passed over", room_id, e.what());
        return nullptr;
    }
}

void Rooms::trim_later_locked() const {
    if (trim_pending_ || !trims_ ||
        (rooms_.size() <= rooms_.capacity() && memberships_.size() <= memberships_.capacity()))
        return;
    trim_pending_ = true;
    asio::post(*trims_, [this] {
        std::lock_guard lock(core_.mu);
        trim_pending_ = false;
        if (auto dropped = rooms_.trim())
            spdlog::debug("{} rooms let go ({} held)", dropped, rooms_.size());
        if (auto dropped = memberships_.trim())
            spdlog::debug("the memberships of {} users let go ({} held)", dropped,
                          memberships_.size());
    });
}

namespace {
const Memberships kNoMemberships;
}  // namespace

const Memberships& Rooms::memberships_locked(const std::string& user_id) const {
    if (auto* held = memberships_.get(user_id)) return **held;
    if (!accounts_.is_local(user_id)) return kNoMemberships;  // remote users have none here
    // Read under the lock: what commits meanwhile waits to be applied, and applying what the
    // read already has changes nothing. Let go only in trim_later_locked's handler.
    auto read = fold_memberships(core_.store().memberships_of(user_id));
    const Memberships& held =
        *memberships_.hold(user_id, std::make_shared<Memberships>(std::move(read)));
    trim_later_locked();
    return held;
}

const Memberships& Rooms::memberships_or_skip_locked(const std::string& user_id) const noexcept {
    try {
        return memberships_locked(user_id);
    } catch (const std::exception& e) {
        spdlog::warn("the memberships of {} could not be read ({}); passed over", user_id,
                     e.what());
        return kNoMemberships;
    }
}

Room& Rooms::room_or_throw_locked(const std::string& room_id) {
    Room* room = get_locked(room_id);
    if (!room) throw MatrixError(404, errcode::not_found, "Unknown room " + room_id);
    return *room;
}

void Rooms::require_reader_locked(const Room& room, const std::string& user) const {
    if (room.history.knows(user) || room.history.current_visibility() == "world_readable") return;
    throw MatrixError(403, errcode::forbidden, "You are not in this room");
}

std::optional<StreamId> Rooms::state_horizon_locked(const Room& room,
                                                    const std::string& user) const {
    const std::string& m = room.membership_of(user);
    if (m == "join" || room.history.current_visibility() == "world_readable") return std::nullopt;
    if (m == "leave" || m == "ban") {
        const auto& mine = memberships_locked(user);
        if (auto r = mine.find(room.id); r != mine.end()) return r->second.stream;
    }
    throw MatrixError(403, errcode::forbidden, "You are not in this room");
}

void Rooms::apply_state_locked(Room& room, const EventPtr& ev) {
    room.apply_state(ev);
}

void Rooms::apply_locked(Room& room, const EventPtr& ev) {
    rooms_loading_.written(room.id);
    // Read again, it has the event (committed before).
    if (room.stale) refresh_locked(room);
    room.last_event = std::max(room.last_event, ev->stream);
    // A room read from the store after the event committed has it already.
    if (ev->stream > room.loaded_upto) {
        apply_state_locked(room, ev);
        room.add_to_timeline(ev);
    }
    membership_changed_locked(ev);
}

void Rooms::membership_changed_locked(const EventPtr& ev) {
    if (ev->type != "m.room.member" || !ev->state_key) return;
    const std::string& user = *ev->state_key;
    if (!accounts_.is_local(user)) return;  // remote users have no memberships here
    auto* held = memberships_.get(user);
    if (!held) {
        memberships_loading_.written(user);  // read whole, with it, when next needed
        return;
    }
    // A user's membership of a room dates from the event that changed it: a new displayname
    // (join to join) is a state change for the sync, not a new join.
    std::string membership;
    if (auto v = json::parse(ev->content()); v.is_object())
        if (const auto* m = v.get_object().if_contains("membership"); m && m->is_string())
            membership = m->get_string();
    membership = membership_value(std::move(membership));
    auto [it, fresh] = (*held)->try_emplace(ev->room_id);
    if (!fresh && ev->stream <= it->second.stream) return;  // known already (fed twice)
    if (fresh || it->second.membership != membership)
        it->second = RoomMembership{std::move(membership), ev->stream};
}

EventPtr Rooms::build_event_locked(const RoomState& room, const Append& a, StreamId stream,
                                   bool creating, store::Txn& txn) const {
    const NewEvent& ev = a.ev;
    if (!proto::is_valid_event_type(ev.type))
        throw MatrixError(400, errcode::bad_json, "Invalid event type");
    if (ev.state_key && ev.state_key->size() > 255)
        throw MatrixError(400, errcode::bad_json, "state_key is longer than 255 bytes");
    if (has_float(json::value(ev.content)))
        throw MatrixError(400, errcode::bad_json,
                          "Event content must not contain floating-point numbers");
    if (!creating) {
        const auto* account = accounts_.find_locked(a.sender);
        if (auto refusal = event_auth_refusal(room, a.sender, account && account->is_guest, ev))
            throw *refusal;
        check_canonical_alias(room, ev, txn);
    }
    auto e = std::make_shared<Event>();
    e->stream = stream;
    e->event_id = new_event_id(stream);
    e->room_id = room.id;
    e->type = ev.type;
    e->state_key = ev.state_key;
    e->sender = a.sender;
    e->origin_server_ts = core_.now_ms();
    std::string content = json::serialize(ev.content);
    e->content_len = content.size();
    e->txn_device_key = a.txn_device_key;
    e->txn_id = a.txn_id;
    if (e->type == "m.room.redaction")
        if (const auto* r = ev.content.if_contains("redacts"); r && r->is_string())
            e->redacts = r->get_string();
    e->json = build_event_json(*e, content);
    if (e->json.size() > 65536)
        throw MatrixError(413, errcode::too_large, "Event is larger than 65536 bytes");
    if (e->state_key)
        if (auto prev = room.state_event(e->type, *e->state_key)) add_replaced_state(*e, *prev);
    return e;
}

void Rooms::check_target(const RoomState& room, const std::string& target,
                         const std::string& must_be) {
    const std::string& m = room.membership_of(target);
    if (must_be == "member" && m != "join" && m != "invite")
        throw MatrixError(403, errcode::forbidden, target + " is not in the room");
    if (must_be == "banned" && m != "ban")
        throw MatrixError(403, errcode::forbidden, target + " is not banned from the room");
}

// What a RoomWrite's decision made, for its applied step and its request.
struct Rooms::Decided {
    std::vector<EventPtr> events;  // in stream order
    EventPtr redacted;             // RoomWrite::redacts as the redaction left it
    // Appends whose client transaction another process wrote already: the event it made.
    std::vector<EventPtr> retried;
};

const RoomState* Rooms::decided_state_locked(const std::string& room_id, store::Txn& txn) {
    if (auto it = staged_.find(room_id); it != staged_.end()) return it->second.get();
    Room* room = get_locked(room_id);
    // Once per room and transaction, before any write of it appends to the room (whose row
    // it holds locked: nothing else is appended meanwhile).
    if (!room || !core_.shared() || !checked_.insert(room_id).second) return room;
    if (txn.room_last_event(room_id) == room->last_event) return room;
    auto loaded = core_.store().room(room_id);
    if (!loaded) return room;
    room->stale = true;
    auto fresh = std::make_shared<RoomState>(build_room(std::move(*loaded)));
    const RoomState* out = fresh.get();
    staged_[room_id] = std::move(fresh);
    return out;
}

void Rooms::decide(const RoomWrite& write, store::Txn& txn, StreamId first, Decided& out) {
    // What decisions before this one in the transaction made of the rooms holds only for
    // that transaction: made again (after an outage), they are made again.
    if (txn.serial() != staged_txn_) {
        staged_.clear();
        checked_.clear();
        staged_txn_ = txn.serial();
    }
    out = Decided{};
    // The aliases the write makes (a new room's) were written first, unless another write
    // made them before (on a shared database, another process's that committed meanwhile):
    // then it keeps them, and this write is refused.
    for (const auto& m : write.mutations)
        if (const auto* a = std::get_if<store::PutRoomAlias>(&m))
            if (auto row = txn.room_alias(a->alias.alias); !row || row->room_id != a->alias.room_id)
                throw MatrixError(400, errcode::room_in_use,
                                  "Room alias " + a->alias.alias + " is taken");
    // The rooms this write changes the state of: copies, staged once it is written.
    std::unordered_map<std::string, std::shared_ptr<RoomState>> changed;
    std::set<std::string> opening;  // of those, the rooms whose openness may change
    std::vector<store::PutRoomOpen> opened;
    {
        std::lock_guard lock(core_.mu);
        auto current = [&](const std::string& room_id) -> const RoomState* {
            if (auto it = changed.find(room_id); it != changed.end()) return it->second.get();
            return decided_state_locked(room_id, txn);
        };
        auto writable = [&](const std::string& room_id) -> RoomState& {
            auto& slot = changed[room_id];
            if (!slot) slot = std::make_shared<RoomState>(*decided_state_locked(room_id, txn));
            return *slot;
        };
        if (write.create) {
            if (current(write.create->room_id))
                throw MatrixError(400, errcode::room_in_use, "The room exists already");
            auto room = std::make_shared<RoomState>();
            room->id = write.create->room_id;
            room->version = write.create->room_version;
            changed.emplace(room->id, std::move(room));
        }
        for (std::size_t i = 0; i < write.events.size(); ++i) {
            const Append& a = write.events[i];
            // A retry that reached another process first: the room's row is locked, so the
            // first attempt, if there was one, has committed, and this answers with it.
            if (core_.shared() && !a.txn_id.empty())
                if (auto first_attempt = txn.txn_event(a.txn_device_key, a.room_id, a.txn_id,
                                                       core_.now_ms() - TxnIds::kLifetimeMs)) {
                    out.retried.push_back(to_event(std::move(*first_attempt)));
                    continue;
                }
            const RoomState* room = current(a.room_id);
            try {
                if (!room) throw MatrixError(404, errcode::not_found, "Unknown room " + a.room_id);
                if (write.redacts) {
                    const Event& target = *write.redacts;
                    if (target.type == "m.room.create")
                        throw MatrixError(403, errcode::forbidden,
                                          "The room's creation cannot be redacted");
                    if (target.sender != a.sender &&
                        room->power.user_level(a.sender) < room->power.redact)
                        throw MatrixError(
                            403, errcode::forbidden,
                            "Your power level is too low to redact other users' events");
                }
                if (a.ev.state_key) check_target(*room, *a.ev.state_key, a.target_must_be);
                EventPtr ev = build_event_locked(*room, a, first + static_cast<StreamId>(i),
                                                 write.create && i == 0, txn);
                if (ev->state_key) {
                    writable(a.room_id).apply_state(ev);
                    if (opens(*ev)) opening.insert(a.room_id);
                }
                out.events.push_back(std::move(ev));
            } catch (const MatrixError&) {
                if (!write.each_on_its_own) throw;
            }
        }
        if (write.redacts && !out.events.empty()) {
            const RoomState* room = current(write.redacts->room_id);
            out.redacted = redacted_form(room->version, *write.redacts, out.events.front());
            const Event& target = *write.redacts;
            // The state derived from it follows (power levels...).
            if (target.state_key)
                if (auto now = room->state_event(target.type, *target.state_key);
                    now && now->event_id == target.event_id) {
                    writable(target.room_id).apply_state(out.redacted);
                    if (opens(target)) opening.insert(target.room_id);
                }
        }
        // Whether anyone may join or read a room follows its join rule and history visibility
        // (the user directory searches the members of those who may).
        for (const auto& [room_id, state] : changed) {
            if (!opening.count(room_id)) continue;
            const bool made = write.create && room_id == write.create->room_id;
            const RoomState* before = made ? nullptr : decided_state_locked(room_id, txn);
            const bool was = before && before->open();
            if (state->open() != was) opened.push_back(store::PutRoomOpen{room_id, !was});
        }
    }
    if (write.create) txn.write(store::PutRoom{*write.create});
    for (const auto& ev : out.events) txn.write(store::PutEvent{*ev});
    if (out.redacted) txn.write(store::RedactEvent{out.redacted->stream, out.redacted->json});
    for (const auto& m : opened) txn.write(m);
    for (auto& [room_id, room] : changed) staged_[room_id] = std::move(room);
}

std::vector<std::string> Rooms::applied_locked(const RoomWrite& write, const Decided& out) {
    std::vector<std::string> wake;
    if (write.create) {
        Room room;
        room.id = write.create->room_id;
        room.version = write.create->room_version;
        rooms_.hold(write.create->room_id, std::move(room));
        trim_later_locked();
    }
    for (const auto& ev : out.events) {
        // Held since the write was submitted (Room::writes_in_flight), or made just now.
        Room& room = *get_locked(ev->room_id);
        appended_locked(room, ev, wake);
        if (!ev->txn_id.empty())
            txns_.remember(ev->txn_device_key, ev->room_id + '\n' + ev->txn_id, ev->event_id,
                           ev->origin_server_ts);
    }
    if (const auto& redacted = out.redacted)
        redacted_locked(*get_locked(redacted->room_id), redacted);
    for (const auto& ev : out.retried)
        txns_.remember(ev->txn_device_key, ev->room_id + '\n' + ev->txn_id, ev->event_id,
                       ev->origin_server_ts);
    return wake;
}

void Rooms::appended_locked(Room& room, const EventPtr& ev, std::vector<std::string>& wake) {
    apply_locked(room, ev);
    // Whose /sync learns of it: the room's members and invitees, and the member event's
    // target.
    for (const auto& [user, m] : room.membership)
        if (m == "join" || m == "invite") wake.push_back(user);
    if (ev->type == "m.room.member" && ev->state_key) wake.push_back(*ev->state_key);
    for (const auto& f : appended_) f(room, ev);
}

void Rooms::redacted_locked(Room& room, const EventPtr& redacted) {
    for (auto& r : room.recent)
        if (r->event_id == redacted->event_id) r = redacted;
    // What is derived from it follows; a member event keeps its membership.
    if (redacted->state_key)
        if (auto now = room.state_event(redacted->type, *redacted->state_key);
            now && now->event_id == redacted->event_id)
            apply_state_locked(room, redacted);
    for (const auto& f : redacted_) f(room, redacted);
}

void Rooms::fed_locked(store::EventRecord record, std::vector<std::string>& wake) {
    EventPtr ev = to_event(std::move(record));
    Room* room = nullptr;
    try {
        // Read if it is not held (then with this event already): the listeners learn of it
        // as of one committed here, and /syncs parked on its members wake.
        room = get_locked(ev->room_id);
    } catch (const std::exception& e) {
        spdlog::warn("room {} could not be read for an event of another process: {}", ev->room_id,
                     e.what());
    }
    if (!room) {
        rooms_loading_.written(ev->room_id);
        membership_changed_locked(ev);
        if (ev->type == "m.room.member" && ev->state_key) wake.push_back(*ev->state_key);
        return;
    }
    appended_locked(*room, ev, wake);
    if (ev->type != "m.room.redaction" || ev->redacts.empty()) return;
    if (EventPtr target = find_event_locked(*room, ev->redacts))
        redacted_locked(*room, redacted_form(room->version, *target, ev));
}

asio::awaitable<std::vector<EventPtr>> Rooms::append(RoomWrite& write) {
    auto decided = std::make_shared<Decided>();
    auto shared = std::make_shared<RoomWrite>(std::move(write));
    // The rooms it writes to stay in memory until it settled: its decision and its applied
    // step find them there (a room that does not exist is the decision's to refuse).
    std::vector<std::string> room_ids;
    for (const auto& a : shared->events)
        if ((!shared->create || a.room_id != shared->create->room_id) &&
            std::find(room_ids.begin(), room_ids.end(), a.room_id) == room_ids.end())
            room_ids.push_back(a.room_id);
    preload(room_ids);
    // The senders' accounts too: the decision asks whether a sender is a guest.
    std::vector<std::string> senders;
    for (const auto& a : shared->events)
        if (std::find(senders.begin(), senders.end(), a.sender) == senders.end())
            senders.push_back(a.sender);
    accounts_.preload(senders);
    auto held = std::make_shared<std::vector<std::string>>();
    auto release = [this, held] {  // under the lock
        for (const auto& room_id : *held)
            if (Room* room = rooms_.get(room_id)) --room->writes_in_flight;
    };
    {
        std::lock_guard lock(core_.mu);
        try {
            for (const auto& room_id : room_ids)
                if (Room* room = get_locked(room_id)) {
                    ++room->writes_in_flight;
                    held->push_back(room_id);
                }
        } catch (...) {
            release();  // a room could not be read: nothing is written, none stays held
            throw;
        }
    }
    if (core_.shared())
        for (auto& c : Core::changes_of(shared->mutations)) shared->changes.push_back(std::move(c));
    Decision d;
    const std::size_t changes = core_.shared() ? shared->changes.size() : 0;
    d.streams = shared->events.size() + changes;
    d.rooms = room_ids;
    // The decision reads the aliases among them.
    d.mutations = shared->mutations;
    d.decide = [this, shared, decided, changes](store::Txn& txn, StreamId first) {
        decide(*shared, txn, first, *decided);
        if (changes)
            Core::put_changes(txn, shared->changes,
                              first + static_cast<StreamId>(shared->events.size()));
    };
    d.applied = [this, shared, decided](StreamId) {
        if (shared->applied) shared->applied();
        return applied_locked(*shared, *decided);
    };
    // The client transactions its events carry were claimed (claim_txn).
    d.settled = [this, shared, release] {
        for (const auto& a : shared->events)
            if (!a.txn_id.empty()) txns_.settled(a.txn_device_key, a.room_id + '\n' + a.txn_id);
        release();
        trim_later_locked();
    };
    co_await core_.transact(std::move(d));
    std::vector<EventPtr> events = std::move(decided->events);
    events.insert(events.end(), decided->retried.begin(), decided->retried.end());
    co_return events;
}

// ---------------------------------------------------------------------------------------------
// Aliases

void Rooms::require_local_alias(const std::string& alias) const {
    if (!proto::is_valid_room_alias(alias))
        throw MatrixError(400, errcode::invalid_param, alias + " is not a room alias");
    if (alias.substr(alias.find(':') + 1) != core_.config().server_name)
        throw MatrixError(400, errcode::invalid_param,
                          "Room alias " + alias + " is not on this server");
}

void Rooms::check_canonical_alias(const RoomState& room, const NewEvent& ev, store::Txn& txn) {
    if (ev.type != "m.room.canonical_alias" || !ev.state_key || !ev.state_key->empty()) return;
    // Each alias named is read once, however often it is named; the first that does not
    // point here refuses the event, so at most limits.aliases_per_room are read.
    std::set<std::string, std::less<>> checked;
    auto check = [&](const json::value& v) {
        if (!v.is_string() || !proto::is_valid_room_alias(v.get_string()))
            throw MatrixError(400, errcode::invalid_param,
                              "m.room.canonical_alias names something that is not a room alias");
        const std::string alias(v.get_string());
        if (!checked.insert(alias).second) return;
        if (auto a = txn.room_alias(alias); !a || a->room_id != room.id)
            throw MatrixError(400, errcode::bad_alias,
                              "Room alias " + alias + " does not point to this room");
    };
    if (const auto* alias = ev.content.if_contains("alias"); alias && !alias->is_null())
        check(*alias);
    if (const auto* alt = ev.content.if_contains("alt_aliases"); alt && !alt->is_null()) {
        if (!alt->is_array())
            throw MatrixError(400, errcode::invalid_param, "alt_aliases must be a list");
        for (const auto& a : alt->get_array()) check(a);
    }
}

// ---------------------------------------------------------------------------------------------
// Redactions

EventPtr Rooms::find_event_locked(const Room& room, const std::string& event_id) const {
    for (const auto& e : room.recent)
        if (e->event_id == event_id) return e;
    for (const auto& [_, e] : room.state)
        if (e->event_id == event_id) return e;
    return nullptr;
}

EventPtr Rooms::redacted_form(const std::string& version, const Event& target,
                              const EventPtr& redaction) {
    const json::object original = json::parse(target.json).as_object();
    const json::object kept =
        redacted_content(target.type, original.at("content").as_object(), version);
    auto e = std::make_shared<Event>(Event{static_cast<const store::EventRecord&>(target)});
    if (std::stoi(version) >= 11) e->redacts = target.redacts;
    const std::string content = json::serialize(kept);
    e->json = build_event_json(*e, content);
    e->content_len = content.size();
    // Of "unsigned", a redacted event keeps only what it replaced and says what redacted it.
    e->json.pop_back();
    e->json += ",\"unsigned\":{";
    if (const auto* u = original.if_contains("unsigned"); u && u->is_object())
        if (const auto* replaces = u->get_object().if_contains("replaces_state")) {
            e->json += "\"replaces_state\":";
            e->json += json::serialize(*replaces);
            e->json += ',';
        }
    e->json += "\"redacted_because\":";
    e->json += redaction->json;
    e->json += "}}";
    return e;
}

asio::awaitable<Response> Rooms::redact(Request& req) {
    const Session& s = *req.session;
    const std::string& room_id = req.params[0];
    const std::string& target_id = req.params[1];
    const std::string& txn = req.params[2];
    if (txn.empty()) throw MatrixError(400, errcode::invalid_param, "Empty transaction id");
    json::object content;
    if (const auto* reason = req.json.if_contains("reason")) {
        if (!reason->is_string()) throw MatrixError(400, errcode::bad_json, "reason must be text");
        content["reason"] = *reason;
    }
    const std::string device = s.device_key();
    const std::string txn_key = room_id + '\n' + txn;
    recall_txns(s);
    preload({room_id});
    EventPtr target;
    {
        std::lock_guard lock(core_.mu);
        if (auto retry = retried_locked(device, txn_key)) co_return std::move(*retry);
        Room& room = room_or_throw_locked(room_id);
        if (room.membership_of(s.user_id) != "join")
            throw MatrixError(403, errcode::forbidden, "You are not in this room");
        target = find_event_locked(room, target_id);
    }
    if (!target) {
        // An older event: read from the store, outside the lock.
        std::optional<store::EventRecord> row;
        if (auto stream = event_id_stream(target_id)) row = core_.store().event_at(*stream);
        if (!row || row->event_id != target_id || row->room_id != room_id)
            throw MatrixError(404, errcode::not_found, "Event not found in this room");
        target = to_event(std::move(*row));
    }
    // Whether the sender may redact it is decided with the redaction, against the room's
    // power levels then.
    if (auto retry = co_await claim_txn(device, txn_key)) co_return std::move(*retry);
    content["redacts"] = target_id;
    RoomWrite write;
    write.events.push_back(Append{room_id, s.user_id,
                                  NewEvent{"m.room.redaction", std::nullopt, std::move(content)},
                                  device, txn});
    write.redacts = target;
    auto events = co_await append(write);
    spdlog::info("{} redacted {} in {}", s.user_id, target_id, room_id);
    co_return event_id_response(events.at(0)->event_id);
}

// ---------------------------------------------------------------------------------------------
// Context

asio::awaitable<Response> Rooms::get_context(Request& req) {
    const std::string device_key = req.session->device_key();  // its own events show their txn id
    const std::int64_t now = core_.now_ms();
    const std::string& room_id = req.params[0];
    const std::string& user = req.session->user_id;
    int limit = 10;
    if (const auto* l = req.query_param("limit")) {
        try {
            std::size_t used = 0;
            limit = std::stoi(*l, &used);
            if (used != l->size() || limit < 0) throw std::invalid_argument("limit");
        } catch (...) {
            throw MatrixError(400, errcode::invalid_param, "limit must be a number");
        }
        limit = std::min(limit, 100);
    }
    EventFilter filter;
    if (const auto* f = req.query_param("filter"))
        filter = EventFilter::parse(proto::parse_json_object(*f));
    if (filter.limit) limit = std::min(limit, *filter.limit);
    StreamId visible;
    preload({room_id});
    {
        std::lock_guard lock(core_.mu);
        require_reader_locked(room_or_throw_locked(room_id), user);
        visible = core_.visible_locked();
    }
    std::optional<store::EventRecord> target;
    if (auto stream = event_id_stream(req.params[1]); stream && *stream <= visible)
        target = core_.store().event_at(*stream);
    if (!target || target->event_id != req.params[1] || target->room_id != room_id)
        throw MatrixError(404, errcode::not_found, "Event not found.");
    // Half the limit before the event, the rest after, as Synapse does. Events the user may not
    // see or the filter leaves out are skipped, and the page moves past them.
    const int want_before = limit / 2;
    const int want_after = limit - want_before;
    auto before = core_.store().events_before(room_id, target->stream, want_before * 2 + 10);
    auto after = core_.store().events_after(room_id, target->stream, want_after * 2 + 10);
    std::erase_if(after, [&](const auto& r) { return r.stream > visible; });
    std::vector<const store::EventRecord*> shown_before, shown_after;
    StreamId start = target->stream - 1;
    StreamId end = target->stream;
    std::vector<store::EventRecord> state;
    {
        std::lock_guard lock(core_.mu);
        const RoomHistory& history = room_or_throw_locked(room_id).history;
        if (!history.may_see(user, target->stream, target->type, target->state_key))
            throw MatrixError(404, errcode::not_found, "Event not found.");
        auto shown = [&](const store::EventRecord& r) {
            return history.may_see(user, r.stream, r.type, r.state_key) &&
                   filter.allows(r.type, r.sender, r.room_id,
                                 json::serialize(json::parse(r.json).at("content")));
        };
        for (const auto& r : before) {
            if (static_cast<int>(shown_before.size()) == want_before) break;
            start = r.stream - 1;
            if (shown(r)) shown_before.push_back(&r);
        }
        for (const auto& r : after) {
            if (static_cast<int>(shown_after.size()) == want_after) break;
            end = r.stream;
            if (shown(r)) shown_after.push_back(&r);
        }
    }
    // The state at the last event returned; with lazy_load_members only the members who sent
    // the events returned.
    state = core_.store().state_at(room_id, end);
    if (filter.lazy_load_members) {
        std::set<std::string> senders{target->sender};
        for (const auto* r : shown_before) senders.insert(r->sender);
        for (const auto* r : shown_after) senders.insert(r->sender);
        std::erase_if(state, [&](const auto& r) {
            return r.type == "m.room.member" && r.state_key && !senders.count(*r.state_key);
        });
    }
    std::string out = "{\"event\":";
    render_event(out, *target, device_key, now);
    auto list = [&](const char* name, const std::vector<const store::EventRecord*>& rows) {
        out += ",\"";
        out += name;
        out += "\":[";
        Comma comma;
        for (const auto* r : rows) {
            comma(out);
            render_event(out, *r, device_key, now);
        }
        out += ']';
    };
    list("events_before", shown_before);
    list("events_after", shown_after);
    out += ",\"start\":\"" + make_token(start) + "\",\"end\":\"" + make_token(end) + "\"";
    out += ",\"state\":[";
    Comma comma;
    {
        std::lock_guard lock(core_.mu);
        const RoomHistory& history = room_or_throw_locked(room_id).history;
        for (const auto& r : state) {
            if (!history.may_see(user, r.stream, r.type, r.state_key)) continue;
            comma(out);
            render_event(out, r, device_key, now);
        }
    }
    out += "]}";
    co_return Response{200, std::move(out), {}};
}

}  // namespace mxvoip::server
