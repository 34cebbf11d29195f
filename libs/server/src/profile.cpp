#include "profile.hpp"

#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/json.hpp"

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

namespace mxvoip::server {

namespace json = boost::json;
using proto::MatrixError;
namespace errcode = proto::errcode;

namespace {

void check_profile_field(const std::string& field) {
    if (field != "displayname" && field != "avatar_url")
        throw MatrixError(404, errcode::unrecognized, "Unknown profile field " + field);
}

}  // namespace

asio::awaitable<Response> Profile::get_profile(Request& req) {
    accounts_.preload({req.params[0]});
    std::lock_guard lock(core_.mu);
    const auto* user = accounts_.find_locked(req.params[0]);
    if (!user) throw MatrixError(404, errcode::not_found, "Profile was not found");
    json::object out;
    if (!user->displayname.empty()) out["displayname"] = user->displayname;
    if (!user->avatar_url.empty()) out["avatar_url"] = user->avatar_url;
    co_return json_response(out);
}

asio::awaitable<Response> Profile::get_profile_field(Request& req) {
    const std::string& field = req.params[1];
    check_profile_field(field);
    accounts_.preload({req.params[0]});
    std::lock_guard lock(core_.mu);
    const auto* user = accounts_.find_locked(req.params[0]);
    if (!user) throw MatrixError(404, errcode::not_found, "Profile was not found");
    const std::string& v = field == "displayname" ? user->displayname : user->avatar_url;
    if (v.empty()) throw MatrixError(404, errcode::not_found, "The user has no " + field);
    co_return json_response(json::object{{field, v}});
}

asio::awaitable<Response> Profile::put_profile_field(Request& req) {
    require_own_path(req, 0);
    const std::string& field = req.params[1];
    check_profile_field(field);
    std::string value(proto::opt_string(req.json, field).value_or(""));
    if (value.size() > 256)
        throw MatrixError(400, errcode::bad_json, field + " is longer than 256 bytes");
    const std::string& user_id = req.session->user_id;
    // The profile and a fresh membership event in every joined room, in one transaction; a
    // room that no longer takes the event (the user was kicked meanwhile) is left out.
    RoomWrite write;
    write.each_on_its_own = true;
    // Only the field changed is written: two changes at once of the two fields both stay.
    auto change = std::make_shared<store::PutProfile>(
        store::PutProfile{user_id, field == "displayname" ? std::optional(value) : std::nullopt,
                          field == "avatar_url" ? std::optional(value) : std::nullopt});
    write.mutations.push_back(*change);
    write.changes.push_back({0, "account", user_id});  // the account the others hold
    write.applied = [this, change] { accounts_.profile_applied_locked(*change); };
    accounts_.preload({user_id});
    {
        std::lock_guard lock(core_.mu);
        const store::UserRecord* account = accounts_.find_locked(user_id);
        if (!account) throw MatrixError(404, errcode::not_found, "Profile was not found");
        store::UserRecord profile = *account;
        (field == "displayname" ? profile.displayname : profile.avatar_url) = value;
        for (const auto& [room_id, m] : rooms_.memberships_locked(user_id)) {
            if (m.membership != "join") continue;
            json::object content{{"membership", "join"}};
            if (!profile.displayname.empty()) content["displayname"] = profile.displayname;
            if (!profile.avatar_url.empty()) content["avatar_url"] = profile.avatar_url;
            write.events.push_back(
                Append{room_id, user_id, NewEvent{"m.room.member", user_id, std::move(content)}});
        }
    }
    co_await rooms_.append(write);
    co_return Response{};
}

namespace {

// What a search may ask for: a term a person types, and a page of results.
constexpr std::size_t kMaxSearchTerm = 256;
constexpr std::int64_t kMaxSearchResults = 50;

std::string ascii_lower(std::string_view s) {
    std::string out(s);
    for (char& c : out)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return out;
}

}  // namespace

asio::awaitable<Response> Profile::search_user_directory(Request& req) {
    std::string term = ascii_lower(proto::req_string(req.json, "search_term"));
    if (term.size() > kMaxSearchTerm)
        throw MatrixError(
            400, errcode::invalid_param,
            "search_term is longer than " + std::to_string(kMaxSearchTerm) + " bytes");
    std::int64_t limit = proto::opt_int(req.json, "limit").value_or(10);
    if (limit < 1) throw MatrixError(400, errcode::invalid_param, "limit must be at least 1");
    limit = std::min(limit, kMaxSearchResults);

    const std::string& me = req.session->user_id;
    // The rooms searched (the user's, and every room anyone may join or read) are read, if
    // they are not held, before the lock is taken.
    std::vector<std::string> searched = rooms_.open_rooms();
    const std::size_t open = searched.size();
    {
        std::lock_guard lock(core_.mu);
        for (const auto& [room_id, m] : rooms_.memberships_locked(me))
            if (m.membership == "join") searched.push_back(room_id);
    }
    rooms_.preload(searched);
    std::set<std::string> visible;
    {
        std::lock_guard lock(core_.mu);
        auto add_joined = [&](const Room& room) {
            for (const auto& [user, membership] : room.membership)
                if (membership == "join") visible.insert(user);
        };
        for (const auto& [room_id, m] : rooms_.memberships_locked(me))
            if (m.membership == "join")
                if (const Room* room = rooms_.find_locked(room_id)) add_joined(*room);
        for (std::size_t i = 0; i < open; ++i)
            if (const Room* room = rooms_.find_locked(searched[i])) add_joined(*room);
    }
    // Their profiles, and with user_directory_search_all_users the accounts that match
    // (searched in the database, at most a page of candidates per result asked for).
    std::map<std::string, store::UserRecord> matching;
    if (core_.config().user_directory_search_all_users)
        for (auto& u : core_.store().find_users(term, static_cast<int>(limit) * 20))
            matching.emplace(u.user_id, std::move(u));
    for (const auto& [user, _] : matching) visible.insert(user);
    std::vector<std::string> local;
    for (const auto& user : visible)
        if (!matching.count(user)) local.push_back(user);
    accounts_.preload(local);
    std::lock_guard lock(core_.mu);

    // Ranked: a name or user id that starts with the term before one that only contains it,
    // then users with a profile, then by user id.
    using Hit = std::tuple<int, int, std::string, const store::UserRecord*>;
    std::vector<Hit> hits;
    for (const auto& user : visible) {
        auto found = matching.find(user);
        const store::UserRecord* rec =
            found != matching.end() ? &found->second : accounts_.find_locked(user);
        std::string localpart = ascii_lower(user.substr(1, user.find(':') - 1));
        std::string id = ascii_lower(user);
        std::string name = rec ? ascii_lower(rec->displayname) : std::string();
        bool prefix = localpart.starts_with(term) || (!name.empty() && name.starts_with(term));
        // Any word of the display name may start with it too.
        for (std::size_t at = name.find(' '); !prefix && at != std::string::npos;
             at = name.find(' ', at + 1))
            prefix = std::string_view(name).substr(at + 1).starts_with(term);
        bool contains = id.find(term) != std::string::npos || name.find(term) != std::string::npos;
        if (!prefix && !contains) continue;
        bool has_profile = rec && (!rec->displayname.empty() || !rec->avatar_url.empty());
        hits.emplace_back(prefix ? 0 : 1, has_profile ? 0 : 1, user, rec);
    }
    std::sort(hits.begin(), hits.end());
    json::array results;
    for (const auto& [rank, profile, user, rec] : hits) {
        if (static_cast<std::int64_t>(results.size()) == limit) break;
        json::object r{{"user_id", user}};
        if (rec && !rec->displayname.empty()) r["display_name"] = rec->displayname;
        if (rec && !rec->avatar_url.empty()) r["avatar_url"] = rec->avatar_url;
        results.push_back(std::move(r));
    }
    bool limited = static_cast<std::int64_t>(hits.size()) > limit;
    co_return json_response(json::object{{"results", std::move(results)}, {"limited", limited}});
}

}  // namespace mxvoip::server
