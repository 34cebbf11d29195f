#include "directory.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>

#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/ids.hpp"
#include "mxvoip/proto/json.hpp"

namespace mxvoip::server {

namespace json = boost::json;
using proto::MatrixError;
namespace errcode = proto::errcode;

Directory::Directory(Core& core, Rooms& rooms) : core_(core), rooms_(rooms) {
    // createRoom with "visibility": "public" publishes the room, in the room's write.
    rooms_.on_creating([](const std::string& room_id, const json::object& body, RoomWrite& write) {
        if (proto::opt_string(body, "visibility").value_or("private") == "public")
            write.mutations.push_back(store::PutRoomVisibility{room_id, true});
    });
}

bool Directory::may_edit_locked(const Room& room, const std::string& user) const {
    return room.membership_of(user) == "join" &&
           room.power.user_level(user) >= room.power.event_level("m.room.canonical_alias", true);
}

asio::awaitable<Response> Directory::put_alias(Request& req) {
    const std::string& alias = req.params[0];
    rooms_.require_local_alias(alias);
    std::string room_id(proto::req_string(req.json, "room_id"));
    {
        std::lock_guard lock(core_.mu);
        const Room* room = rooms_.find_locked(room_id);
        if (!room) throw MatrixError(404, errcode::not_found, "Unknown room " + room_id);
        if (room->membership_of(req.session->user_id) != "join")
            throw MatrixError(403, errcode::forbidden,
                              "You must be in the room to make an alias for it");
    }
    // Decided under the room's row lock: its count of aliases holds until the commit. No
    // process holds aliases: each use reads them.
    store::RoomAliasRecord record{alias, room_id, req.session->user_id};
    Decision d;
    d.rooms = {room_id};
    d.decide = [record, limit = core_.config().limits.aliases_per_room](store::Txn& txn, StreamId) {
        auto taken = [&] {
            return MatrixError(409, errcode::unknown,
                               "Room alias " + record.alias + " already exists");
        };
        if (txn.room_alias(record.alias)) throw taken();
        if (auto n = txn.room_alias_count(record.room_id); n >= static_cast<std::int64_t>(limit))
            throw MatrixError(400, errcode::limit_exceeded,
                              "The room has " + std::to_string(n) + " aliases already");
        txn.write(store::PutRoomAlias{record});
        // Another process that made it at the same time, for any room, keeps it: the write
        // above waited for its commit and left its alias as it was.
        if (auto row = txn.room_alias(record.alias);
            !row || row->room_id != record.room_id || row->creator != record.creator)
            throw taken();
    };
    co_await core_.transact(std::move(d));
    spdlog::info("{} made alias {} for {}", req.session->user_id, alias, room_id);
    co_return json_response(json::object{});
}

asio::awaitable<Response> Directory::get_alias(Request& req) {
    const std::string& alias = req.params[0];
    if (!proto::is_valid_room_alias(alias))
        throw MatrixError(400, errcode::invalid_param, alias + " is not a room alias");
    auto a = core_.store().room_alias(alias);
    if (!a) throw MatrixError(404, errcode::not_found, "Room alias " + alias + " not found");
    co_return json_response(
        json::object{{"room_id", a->room_id},
                     {"servers", json::array{json::string(core_.config().server_name)}}});
}

asio::awaitable<Response> Directory::delete_alias(Request& req) {
    const std::string& alias = req.params[0];
    const std::string& user = req.session->user_id;
    rooms_.require_local_alias(alias);
    auto a = core_.store().room_alias(alias);
    if (!a) throw MatrixError(404, errcode::not_found, "Room alias " + alias + " not found");
    const std::string room_id = a->room_id;
    rooms_.preload({room_id});
    RoomWrite write;
    {
        std::lock_guard lock(core_.mu);
        const Room* room = rooms_.find_locked(room_id);
        const bool may_edit = room && may_edit_locked(*room, user);
        if (a->creator != user && !may_edit)
            throw MatrixError(403, errcode::forbidden,
                              "Only the alias's creator or a room moderator may delete it");
        // The room's canonical alias no longer names it, when the user may change that (the
        // alias goes either way, as the spec recommends).
        if (auto canonical = room ? room->state_event("m.room.canonical_alias", "") : nullptr) {
            json::object content = json::parse(canonical->content()).as_object();
            bool changed = false;
            if (const auto* v = content.if_contains("alias");
                v && v->is_string() && v->get_string() == alias) {
                content.erase("alias");
                changed = true;
            }
            if (auto* alt = content.if_contains("alt_aliases"); alt && alt->is_array()) {
                auto& list = alt->as_array();
                auto before = list.size();
                list.erase(std::remove(list.begin(), list.end(), json::value(alias)), list.end());
                changed = changed || list.size() != before;
            }
            if (changed && room->power.user_level(user) >=
                               room->power.event_level("m.room.canonical_alias", true))
                write.events.push_back(Append{
                    room_id, user, NewEvent{"m.room.canonical_alias", "", std::move(content)}});
        }
        write.mutations.push_back(store::DeleteRoomAlias{alias});
    }
    // The alias goes whatever becomes of the event (left out should the user's power have
    // changed meanwhile).
    write.each_on_its_own = true;
    co_await rooms_.append(write);
    spdlog::info("{} deleted alias {}", user, alias);
    co_return json_response(json::object{});
}

asio::awaitable<Response> Directory::room_aliases(Request& req) {
    const std::string& room_id = req.params[0];
    rooms_.preload({room_id});
    {
        std::lock_guard lock(core_.mu);
        const Room* room = rooms_.find_locked(room_id);
        if (!room) throw MatrixError(404, errcode::not_found, "Unknown room " + room_id);
        if (room->membership_of(req.session->user_id) != "join" &&
            room->history.current_visibility() != "world_readable")
            throw MatrixError(403, errcode::forbidden, "You are not in this room");
    }
    json::array aliases;
    for (auto& a : core_.store().room_aliases_of(room_id)) aliases.emplace_back(json::string(a));
    co_return json_response(json::object{{"aliases", std::move(aliases)}});
}

asio::awaitable<Response> Directory::get_visibility(Request& req) {
    const std::string& room_id = req.params[0];
    {
        std::lock_guard lock(core_.mu);
        if (!rooms_.find_locked(room_id))
            throw MatrixError(404, errcode::not_found, "Unknown room " + room_id);
    }
    co_return json_response(
        json::object{{"visibility", core_.store().room_published(room_id) ? "public" : "private"}});
}

asio::awaitable<Response> Directory::put_visibility(Request& req) {
    const std::string& room_id = req.params[0];
    std::string visibility(proto::opt_string(req.json, "visibility").value_or("public"));
    if (visibility != "public" && visibility != "private")
        throw MatrixError(400, errcode::invalid_param, "visibility must be public or private");
    {
        std::lock_guard lock(core_.mu);
        const Room* room = rooms_.find_locked(room_id);
        if (!room) throw MatrixError(404, errcode::not_found, "Unknown room " + room_id);
        if (!may_edit_locked(*room, req.session->user_id))
            throw MatrixError(403, errcode::forbidden,
                              "Your power level is too low to change the room's visibility");
    }
    const bool publish = visibility == "public";
    Decision d = core_.decision_of({store::PutRoomVisibility{room_id, publish}});
    co_await core_.transact(std::move(d));
    spdlog::info("{} made {} {} in the directory", req.session->user_id, room_id, visibility);
    co_return json_response(json::object{});
}

namespace {

struct Entry {
    std::size_t joined = 0;
    json::object chunk;
    std::string haystack;  // lower-case name, topic and aliases for generic_search_term
};

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

std::optional<json::object> state_content(const Room& room, const char* type) {
    auto ev = room.state_event(type, "");
    if (!ev) return std::nullopt;
    auto v = json::parse(ev->content());
    if (!v.is_object()) return std::nullopt;
    return std::move(v.as_object());
}

std::optional<std::size_t> parse_since(const std::string& since) {
    if (since.empty()) return 0;
    if (since.size() < 2 || since[0] != 'p')
        throw MatrixError(400, errcode::invalid_param, "Invalid since token");
    try {
        std::size_t used = 0;
        auto v = std::stoull(since.substr(1), &used);
        if (used != since.size() - 1) throw std::invalid_argument("since");
        return static_cast<std::size_t>(v);
    } catch (...) {
        throw MatrixError(400, errcode::invalid_param, "Invalid since token");
    }
}

}  // namespace

asio::awaitable<Response> Directory::public_rooms(Request& req) {
    const bool post = req.method == boost::beast::http::verb::post;
    if (const auto* server = req.query_param("server");
        server && !server->empty() && *server != core_.config().server_name)
        throw MatrixError(400, errcode::invalid_param,
                          "This server does not federate: it lists only its own rooms");
    std::int64_t limit = 0;  // no limit
    std::string since;
    std::string term;
    std::optional<json::array> room_types;
    bool other_network = false;
    if (post) {
        const auto& body = req.json;
        limit = proto::opt_int(body, "limit").value_or(0);
        since = std::string(proto::opt_string(body, "since").value_or(""));
        if (const auto* filter = proto::opt_object(body, "filter")) {
            term =
                lower(std::string(proto::opt_string(*filter, "generic_search_term").value_or("")));
            if (const auto* types = proto::opt_array(*filter, "room_types")) room_types = *types;
        }
        // Without bridges, a third-party network has no rooms.
        other_network = proto::opt_string(body, "third_party_instance_id").has_value();
    } else {
        if (const auto* l = req.query_param("limit")) {
            try {
                limit = std::stoll(*l);
            } catch (...) {
                throw MatrixError(400, errcode::invalid_param, "limit must be a number");
            }
        }
        if (const auto* s = req.query_param("since")) since = *s;
    }
    if (limit < 0) throw MatrixError(400, errcode::invalid_param, "limit must not be negative");
    limit = limit == 0 ? 1000 : std::min<std::int64_t>(limit, 1000);
    std::size_t offset = *parse_since(since);

    // The published rooms not held in memory are read before the lock is taken.
    std::vector<std::string> published = core_.store().published_rooms();
    rooms_.preload(published);
    std::vector<Entry> entries;
    {
        std::lock_guard lock(core_.mu);
        for (const auto& id : published) {
            const Room* room = rooms_.find_locked(id);
            if (!room || other_network) continue;
            const bool world_readable = room->history.current_visibility() == "world_readable";
            // Only rooms anyone can join or read are listed (as Synapse does).
            if (room->join_rule != "public" && room->join_rule != "knock" && !world_readable)
                continue;
            Entry e;
            for (const auto& [_, m] : room->membership) e.joined += m == "join";
            json::object& c = e.chunk;
            c["room_id"] = id;
            c["num_joined_members"] = e.joined;
            c["world_readable"] = world_readable;
            c["guest_can_join"] = room->guest_access == "can_join";
            c["join_rule"] = room->join_rule;
            std::optional<std::string> type;
            if (auto create = state_content(*room, "m.room.create"))
                if (const auto* t = create->if_contains("type"); t && t->is_string())
                    type = std::string(t->get_string());
            if (type) c["room_type"] = *type;
            if (room_types) {
                bool wanted = false;
                for (const auto& t : *room_types)
                    wanted = wanted || (t.is_null() && !type) ||
                             (t.is_string() && type && t.get_string() == *type);
                if (!wanted) continue;
            }
            auto copy = [&](const char* state, const char* key, const char* field) {
                if (auto content = state_content(*room, state))
                    if (const auto* v = content->if_contains(key);
                        v && v->is_string() && !v->get_string().empty()) {
                        c[field] = *v;
                        e.haystack += lower(std::string(v->get_string()));
                        e.haystack += '\n';
                    }
            };
            copy("m.room.name", "name", "name");
            copy("m.room.topic", "topic", "topic");
            copy("m.room.avatar", "url", "avatar_url");
            copy("m.room.canonical_alias", "alias", "canonical_alias");
            if (!term.empty() && e.haystack.find(term) == std::string::npos) continue;
            entries.push_back(std::move(e));
        }
    }
    // Largest first, then by room id: a stable order for paging.
    std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
        if (a.joined != b.joined) return a.joined > b.joined;
        return a.chunk.at("room_id").get_string() < b.chunk.at("room_id").get_string();
    });
    json::array chunk;
    const std::size_t total = entries.size();
    const std::size_t first = std::min(offset, total);
    const std::size_t last = std::min(total, first + static_cast<std::size_t>(limit));
    for (std::size_t i = first; i < last; ++i) chunk.push_back(std::move(entries[i].chunk));
    json::object out{{"chunk", std::move(chunk)}, {"total_room_count_estimate", total}};
    if (last < total) out["next_batch"] = "p" + std::to_string(last);
    if (first > 0)
        out["prev_batch"] =
            "p" + std::to_string(first > static_cast<std::size_t>(limit) ? first - limit : 0);
    co_return json_response(out);
}

}  // namespace mxvoip::server
