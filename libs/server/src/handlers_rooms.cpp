#include <spdlog/spdlog.h>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "homeserver.hpp"
#include "json_out.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/ids.hpp"
#include "mxvoip/proto/json.hpp"

namespace mxvoip::server {

using proto::MatrixError;
namespace errcode = proto::errcode;

namespace {

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

asio::awaitable<Response> Homeserver::create_room(Request& req) {
    const Session& s = *req.session;
    if (s.is_guest)
        throw MatrixError(403, errcode::guest_access_forbidden, "Guests cannot create rooms");
    auto body = proto::parse_json_object(req.body);
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
        if (std::to_string(v) != version || v < 4 || v > 11)
            throw MatrixError(400, errcode::unsupported_room_version,
                              "Room version " + version + " is not supported");
    }
    if (proto::opt_string(body, "room_alias_name"))
        throw MatrixError(400, errcode::invalid_param,
                          "Room aliases are not supported by this server");
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
    check_length(proto::opt_array(body, "invite"), "invite", config_.limits.create_room_invites);
    check_length(proto::opt_array(body, "initial_state"), "initial_state",
                 config_.limits.create_room_initial_state);
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
    std::uint64_t ticket = 0;
    {
        std::lock_guard lock(mu_);
        for (const auto& u : invites)
            if (!users_.count(u) && proto::parse_user_id(u)->server_name == config_.server_name)
                throw MatrixError(404, errcode::not_found, "Unknown user " + u);
        do {
            room_id = "!" + random_letters(18) + ":" + config_.server_name;
        } while (rooms_.count(room_id));
        Room& room = rooms_[room_id];
        room.id = room_id;
        room.version = version;
        PendingWrite w;
        w.mutations.push_back(store::PutRoom{{room_id, version}});
        const User& me = users_.at(s.user_id);
        try {
            json::object create;
            if (const auto* creation = proto::opt_object(body, "creation_content"))
                for (const auto& kv : *creation) create[kv.key()] = kv.value();
            // The room version is the one chosen above, whatever creation_content says.
            create["room_version"] = version;
            if (std::stoi(version) < 11) create["creator"] = s.user_id;  // v11 dropped it
            append_event_locked(room, s.user_id, {"m.room.create", "", std::move(create)}, w, {},
                                {}, true);
            json::object join{{"membership", "join"}};
            if (!me.record.displayname.empty()) join["displayname"] = me.record.displayname;
            if (!me.record.avatar_url.empty()) join["avatar_url"] = me.record.avatar_url;
            append_event_locked(room, s.user_id, {"m.room.member", s.user_id, std::move(join)}, w);
            append_event_locked(room, s.user_id, {"m.room.power_levels", "", std::move(power)}, w);
            std::string join_rule = preset == "public_chat" ? "public" : "invite";
            append_event_locked(room, s.user_id,
                                {"m.room.join_rules", "", {{"join_rule", join_rule}}}, w);
            append_event_locked(
                room, s.user_id,
                {"m.room.history_visibility", "", {{"history_visibility", "shared"}}}, w);
            if (preset != "public_chat")
                append_event_locked(room, s.user_id,
                                    {"m.room.guest_access", "", {{"guest_access", "can_join"}}}, w);
            for (auto& ev : initial_state) append_event_locked(room, s.user_id, std::move(ev), w);
            if (name)
                append_event_locked(room, s.user_id, {"m.room.name", "", {{"name", *name}}}, w);
            if (topic)
                append_event_locked(room, s.user_id, {"m.room.topic", "", {{"topic", *topic}}}, w);
            for (const auto& u : invites) {
                json::object content{{"membership", "invite"}};
                if (is_direct) content["is_direct"] = true;
                if (auto it = users_.find(u);
                    it != users_.end() && !it->second.record.displayname.empty())
                    content["displayname"] = it->second.record.displayname;
                append_event_locked(room, s.user_id, {"m.room.member", u, std::move(content)}, w);
            }
        } catch (...) {
            // Nothing was submitted: forget the half-built room and the users' view of it.
            for (const auto& [user, m] : room.membership)
                if (auto it = users_.find(user); it != users_.end())
                    it->second.rooms.erase(room_id);
            rooms_.erase(room_id);
            throw;
        }
        ticket = submit_locked(std::move(w));
    }
    co_await durable(ticket);
    spdlog::info("{} created room {} ({}{})", s.user_id, room_id, preset,
                 is_direct ? ", direct" : "");
    co_return json_response(json::object{{"room_id", room_id}});
}

asio::awaitable<Response> Homeserver::membership_change(Request& req, const std::string& room_id,
                                                        const std::string& target,
                                                        const std::string& membership,
                                                        json::object& extra) {
    const Session& s = *req.session;
    std::uint64_t ticket = 0;
    {
        std::lock_guard lock(mu_);
        Room& room = room_or_throw(room_id);
        // Joining again, or inviting someone already invited, changes nothing: answer as Synapse
        // does.
        if (room.membership_of(target) == membership && membership != "join") co_return Response{};
        json::object content = std::move(extra);
        content["membership"] = membership;
        if (membership == "join" || membership == "invite") {
            if (auto it = users_.find(target); it != users_.end()) {
                if (!it->second.record.displayname.empty())
                    content["displayname"] = it->second.record.displayname;
                if (!it->second.record.avatar_url.empty())
                    content["avatar_url"] = it->second.record.avatar_url;
            } else if (proto::parse_user_id(target)->server_name == config_.server_name) {
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
        PendingWrite w;
        append_event_locked(room, s.user_id, {"m.room.member", target, std::move(content)}, w);
        ticket = submit_locked(std::move(w));
    }
    co_await durable(ticket);
    spdlog::info("{}: {} {} in {}", s.user_id, target, membership, room_id);
    if (membership == "join") co_return json_response(json::object{{"room_id", room_id}});
    co_return Response{};
}

asio::awaitable<Response> Homeserver::invite(Request& req) {
    auto body = proto::parse_json_object(req.body);
    std::string target(proto::req_string(body, "user_id"));
    if (!proto::parse_user_id(target))
        throw MatrixError(400, errcode::invalid_param, "user_id is not a user id");
    json::object extra;
    if (auto reason = proto::opt_string(body, "reason")) extra["reason"] = *reason;
    const std::string membership = "invite";
    co_return co_await membership_change(req, req.params[0], target, membership, extra);
}

asio::awaitable<Response> Homeserver::join(Request& req) {
    const std::string& id = req.params[0];
    if (!id.empty() && id[0] == '#')
        throw MatrixError(404, errcode::not_found, "Room alias " + id + " not found");
    if (!proto::is_valid_room_id(id))
        throw MatrixError(400, errcode::invalid_param, id + " is not a room id");
    json::object extra;
    if (!req.body.empty()) {
        auto body = proto::parse_json_object(req.body);
        if (auto reason = proto::opt_string(body, "reason")) extra["reason"] = *reason;
    }
    const std::string membership = "join";
    co_return co_await membership_change(req, id, req.session->user_id, membership, extra);
}

asio::awaitable<Response> Homeserver::leave(Request& req) {
    json::object extra;
    if (!req.body.empty()) {
        auto body = proto::parse_json_object(req.body);
        if (auto reason = proto::opt_string(body, "reason")) extra["reason"] = *reason;
    }
    const std::string membership = "leave";
    co_return co_await membership_change(req, req.params[0], req.session->user_id, membership,
                                         extra);
}

asio::awaitable<Response> Homeserver::joined_rooms(Request& req) {
    json::array rooms;
    {
        std::lock_guard lock(mu_);
        for (const auto& [id, m] : users_.at(req.session->user_id).rooms)
            if (m.membership == "join") rooms.push_back(json::string(id));
    }
    co_return json_response(json::object{{"joined_rooms", rooms}});
}

asio::awaitable<Response> Homeserver::send_event(Request& req) {
    const Session& s = *req.session;
    const std::string& room_id = req.params[0];
    const std::string& type = req.params[1];
    const std::string& txn = req.params[2];
    if (txn.empty()) throw MatrixError(400, errcode::invalid_param, "Empty transaction id");
    auto content = proto::parse_json_object(req.body);
    std::string txn_key = s.device_key() + '\n' + room_id + '\n' + txn;
    // A retry answers the first attempt's event id (its response waits, as every response
    // does, until that event is durable).
    {
        std::lock_guard lock(mu_);
        if (auto it = txns_.find(txn_key); it != txns_.end())
            co_return json_response(json::object{{"event_id", it->second.event_id}});
    }
    std::uint64_t ticket = 0;
    std::string event_id;
    {
        std::lock_guard lock(mu_);
        if (auto it = txns_.find(txn_key); it != txns_.end())
            co_return json_response(json::object{{"event_id", it->second.event_id}});
        Room& room = room_or_throw(room_id);
        PendingWrite w;
        auto ev = append_event_locked(room, s.user_id, {type, std::nullopt, std::move(content)}, w,
                                      s.device_key(), txn);
        event_id = ev->event_id;
        txns_[txn_key] = TxnEntry{event_id, ev->stream, ev->origin_server_ts};
        txn_order_.emplace_back(ev->origin_server_ts, txn_key);
        while (!txn_order_.empty() &&
               txn_order_.front().first < ev->origin_server_ts - 24 * 3600 * 1000) {
            txns_.erase(txn_order_.front().second);
            txn_order_.pop_front();
        }
        ticket = submit_locked(std::move(w));
    }
    co_await durable(ticket);
    co_return Response{200, "{\"event_id\":" + quoted(event_id) + "}", {}};
}

asio::awaitable<Response> Homeserver::put_state(Request& req) {
    const Session& s = *req.session;
    const std::string& room_id = req.params[0];
    const std::string& type = req.params[1];
    std::string state_key = req.params.size() > 2 ? req.params[2] : std::string();
    auto content = proto::parse_json_object(req.body);
    std::uint64_t ticket = 0;
    std::string event_id;
    {
        std::lock_guard lock(mu_);
        Room& room = room_or_throw(room_id);
        // The same state from the same member again changes nothing: the event there is
        // answers (as Synapse does), rather than a copy of it.
        if (auto prev = room.state_event(type, state_key);
            prev && prev->sender == s.user_id && room.membership_of(s.user_id) == "join" &&
            json::parse(prev->content()) == json::value(content))
            co_return Response{200, "{\"event_id\":" + quoted(prev->event_id) + "}", {}};
        PendingWrite w;
        auto ev = append_event_locked(room, s.user_id, {type, state_key, std::move(content)}, w);
        event_id = ev->event_id;
        ticket = submit_locked(std::move(w));
    }
    co_await durable(ticket);
    co_return Response{200, "{\"event_id\":" + quoted(event_id) + "}", {}};
}

asio::awaitable<Response> Homeserver::get_state_event(Request& req) {
    const std::string& room_id = req.params[0];
    const std::string& type = req.params[1];
    std::string state_key = req.params.size() > 2 ? req.params[2] : std::string();
    std::optional<StreamId> horizon;
    {
        std::lock_guard lock(mu_);
        Room& room = room_or_throw(room_id);
        horizon = state_horizon_locked(room, req.session->user_id);
        if (!horizon) {
            auto ev = room.state_event(type, state_key);
            if (!ev) throw MatrixError(404, errcode::not_found, "Event not found.");
            co_return Response{200, std::string(ev->content()), {}};
        }
    }
    // A former member reads the state as it was when they left.
    for (const auto& r : store_.state_at(room_id, *horizon))
        if (r.type == type && r.state_key == state_key)
            co_return Response{200, json::serialize(json::parse(r.json).at("content")), {}};
    throw MatrixError(404, errcode::not_found, "Event not found.");
}

asio::awaitable<Response> Homeserver::get_state(Request& req) {
    const std::string& room_id = req.params[0];
    std::string out = "[";
    std::optional<StreamId> horizon;
    {
        std::lock_guard lock(mu_);
        Room& room = room_or_throw(room_id);
        horizon = state_horizon_locked(room, req.session->user_id);
        if (!horizon)
            for (const auto& [_, ev] : room.state) {
                if (out.size() > 1) out += ',';
                render_event(out, *ev, {});
            }
    }
    if (horizon)
        for (const auto& r : store_.state_at(room_id, *horizon)) {
            if (out.size() > 1) out += ',';
            render_record(out, r);
        }
    out += ']';
    co_return Response{200, std::move(out), {}};
}

asio::awaitable<Response> Homeserver::get_members(Request& req) {
    const std::string& room_id = req.params[0];
    const std::string* only = req.query_param("membership");
    const std::string* exclude = req.query_param("not_membership");
    auto wanted = [&](std::string_view m) {
        return !(only && m != *only) && !(exclude && m == *exclude);
    };
    std::string out = "{\"chunk\":[";
    bool first = true;
    std::optional<StreamId> horizon;
    {
        std::lock_guard lock(mu_);
        Room& room = room_or_throw(room_id);
        horizon = state_horizon_locked(room, req.session->user_id);
        if (!horizon)
            for (const auto& [key, ev] : room.state) {
                if (key.first != "m.room.member" || !wanted(room.membership_of(key.second)))
                    continue;
                if (!first) out += ',';
                first = false;
                render_event(out, *ev, {});
            }
    }
    // A former member gets the member list as it was when they left.
    if (horizon)
        for (const auto& r : store_.state_at(room_id, *horizon)) {
            if (r.type != "m.room.member") continue;
            auto content = json::parse(r.json).at("content");
            auto m = proto::opt_string(content.as_object(), "membership");
            if (!wanted(m ? *m : "leave")) continue;
            if (!first) out += ',';
            first = false;
            render_record(out, r);
        }
    out += "]}";
    co_return Response{200, std::move(out), {}};
}

asio::awaitable<Response> Homeserver::get_messages(Request& req) {
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
    StreamId from;
    StreamId visible;
    {
        std::lock_guard lock(mu_);
        Room& room = room_or_throw(room_id);
        require_reader_locked(room, req.session->user_id);
        from = req.query_param("from") ? parse_token(*req.query_param("from"))
                                       : (dir == "b" ? visible_ : 0);
        from = std::min(from, visible_);
        visible = visible_;
    }
    std::vector<store::EventRecord> rows;
    if (dir == "b") {
        rows = store_.events_before(room_id, from + 1, limit);
        if (to) std::erase_if(rows, [&](const auto& r) { return r.stream <= *to; });
    } else {
        rows = store_.events_after(room_id, from, limit);
        if (to) std::erase_if(rows, [&](const auto& r) { return r.stream > *to; });
        std::erase_if(rows, [&](const auto& r) { return r.stream > visible; });
    }
    std::string out = "{\"chunk\":[";
    StreamId end = from;
    {
        // What the user may not see is left out; the page still moves past it.
        std::lock_guard lock(mu_);
        const RoomHistory& history = room_or_throw(room_id).history;
        bool first = true;
        for (const auto& r : rows) {
            end = dir == "b" ? r.stream - 1 : r.stream;
            if (!history.may_see(req.session->user_id, r.stream, r.type, r.state_key)) continue;
            if (!first) out += ',';
            first = false;
            render_record(out, r);
        }
    }
    out += "],\"start\":\"" + make_token(from) + "\"";
    if (!rows.empty() && static_cast<int>(rows.size()) == limit)
        out += ",\"end\":\"" + make_token(end) + "\"";
    out += '}';
    co_return Response{200, std::move(out), {}};
}

asio::awaitable<Response> Homeserver::get_event(Request& req) {
    const std::string& room_id = req.params[0];
    {
        std::lock_guard lock(mu_);
        Room& room = room_or_throw(room_id);
        require_reader_locked(room, req.session->user_id);
    }
    auto stream = event_id_stream(req.params[1]);
    std::optional<store::EventRecord> row;
    if (stream) row = store_.event_at(*stream);
    bool visible = row && row->event_id == req.params[1] && row->room_id == room_id;
    if (visible) {
        std::lock_guard lock(mu_);
        visible = room_or_throw(room_id).history.may_see(req.session->user_id, row->stream,
                                                         row->type, row->state_key);
    }
    if (!visible) throw MatrixError(404, errcode::not_found, "Event not found.");
    std::string out;
    render_record(out, *row);
    co_return Response{200, std::move(out), {}};
}

}  // namespace mxvoip::server
