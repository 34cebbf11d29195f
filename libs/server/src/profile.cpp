#include "profile.hpp"

#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/json.hpp"

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
    PendingWrite w;
    std::uint64_t ticket = 0;
    {
        std::lock_guard lock(core_.mu);
        store::UserRecord profile = *accounts_.find_locked(user_id);
        (field == "displayname" ? profile.displayname : profile.avatar_url) = value;
        accounts_.set_profile_locked(user_id, profile.displayname, profile.avatar_url, w);
        // Every joined room learns the new profile through a fresh membership event.
        for (const auto& [room_id, m] : rooms_.memberships_locked(user_id)) {
            if (m.membership != "join") continue;
            json::object content{{"membership", "join"}};
            if (!profile.displayname.empty()) content["displayname"] = profile.displayname;
            if (!profile.avatar_url.empty()) content["avatar_url"] = profile.avatar_url;
            rooms_.append_event_locked(rooms_.room_or_throw_locked(room_id), user_id,
                                       NewEvent{"m.room.member", user_id, std::move(content)}, w);
        }
        ticket = core_.submit_locked(std::move(w));
    }
    co_await core_.durable(ticket);
    co_return Response{};
}

}  // namespace mxvoip::server
