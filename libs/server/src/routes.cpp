#include "routes.hpp"

#include <sstream>

namespace mxvoip::server {

using boost::beast::http::verb;

Router::Router(std::vector<Route> routes) {
    for (auto& r : routes) {
        if (by_length_.size() <= r.segments.size()) by_length_.resize(r.segments.size() + 1);
        by_length_[r.segments.size()].push_back(std::move(r));
    }
}

void Router::match(verb method, const std::vector<std::string>& segments, const Route*& route,
                   bool& path_known, std::vector<std::string>& params) const {
    route = nullptr;
    path_known = false;
    if (segments.size() >= by_length_.size()) return;
    for (const auto& r : by_length_[segments.size()]) {
        bool ok = true;
        for (std::size_t i = 0; i < segments.size() && ok; ++i)
            ok = r.segments[i] == "*" || r.segments[i] == segments[i];
        if (!ok) continue;
        path_known = true;
        bool method_ok = r.method == method || (method == verb::head && r.method == verb::get);
        if (!method_ok) continue;
        route = &r;
        params.clear();
        for (std::size_t i = 0; i < segments.size(); ++i)
            if (r.segments[i] == "*") params.push_back(segments[i]);
        return;
    }
}

namespace {

std::vector<std::string> split(std::string_view pattern) {
    std::vector<std::string> out;
    std::stringstream in{std::string(pattern.substr(1))};
    std::string seg;
    while (std::getline(in, seg, '/')) out.push_back(seg);
    if (!pattern.empty() && pattern.back() == '/') out.emplace_back();
    return out;
}

}  // namespace

std::vector<Route> make_routes(Homeserver& hs) {
    std::vector<Route> routes;
    struct Options {
        RateClass rate = RateClass::none;
        Body body = Body::none;
        bool database = true;
    };
    auto add = [&](verb m, const std::vector<std::string_view>& prefixes, std::string_view path,
                   bool auth, const Handler& h, Options o = {}) {
        for (auto prefix : prefixes)
            routes.push_back(Route{m, split(std::string(prefix) + std::string(path)), auth, h,
                                   o.rate, o.body, o.database});
    };
    // A module's member function as a handler: the call returns the coroutine's awaitable.
    auto on = [](auto& module, auto member) -> Handler {
        return [&module, member](Request& r) { return (module.*member)(r); };
    };
    // Every write a user makes counts against rc_message; reads are not limited.
    constexpr Options write{RateClass::message, Body::object};
    constexpr Options write_optional_body{RateClass::message, Body::optional};
    const std::vector<std::string_view> cs{"/_matrix/client/r0", "/_matrix/client/v3"};

    auto& info = hs.info;
    constexpr Options no_database{.database = false};
    add(verb::get, {"/_matrix/client"}, "/versions", false, on(info, &ServerInfo::versions),
        no_database);
    add(verb::get, {"/.well-known/matrix"}, "/client", false, on(info, &ServerInfo::well_known),
        no_database);
    add(verb::get, {""}, "/health", false, on(info, &ServerInfo::health), no_database);
    add(verb::get, cs, "/capabilities", true, on(info, &ServerInfo::capabilities));
    add(verb::get, cs, "/thirdparty/protocols", true, on(info, &ServerInfo::thirdparty_protocols));
    for (const char* path :
         {"/thirdparty/protocol/*", "/thirdparty/location/*", "/thirdparty/user/*"})
        add(verb::get, cs, path, true, on(info, &ServerInfo::thirdparty_protocol));
    add(verb::get, cs, "/thirdparty/location", true, on(info, &ServerInfo::thirdparty_location));
    add(verb::get, cs, "/thirdparty/user", true, on(info, &ServerInfo::thirdparty_user));

    using A = Accounts;
    auto& accounts = hs.accounts;
    add(verb::get, cs, "/login", false, on(accounts, &A::login_flows));
    add(verb::post, cs, "/login", false, on(accounts, &A::login), {RateClass::login, Body::object});
    add(verb::post, cs, "/logout", true, on(accounts, &A::logout));
    add(verb::post, cs, "/logout/all", true, on(accounts, &A::logout_all));
    add(verb::get, cs, "/account/whoami", true, on(accounts, &A::whoami));
    add(verb::post, cs, "/register", false, on(accounts, &A::register_account),
        {RateClass::registration, Body::object});
    add(verb::get, cs, "/register/available", false, on(accounts, &A::register_available),
        {RateClass::registration});

    add(verb::get, cs, "/devices", true, on(accounts, &A::get_devices));
    add(verb::get, cs, "/devices/*", true, on(accounts, &A::get_device));
    add(verb::put, cs, "/devices/*", true, on(accounts, &A::put_device), write);
    add(verb::delete_, cs, "/devices/*", true, on(accounts, &A::delete_device),
        write_optional_body);
    add(verb::post, cs, "/delete_devices", true, on(accounts, &A::delete_devices), write);

    using R = Rooms;
    auto& rooms = hs.rooms;
    add(verb::post, cs, "/createRoom", true, on(rooms, &R::create_room), write);
    add(verb::post, cs, "/rooms/*/invite", true, on(rooms, &R::invite), write);
    add(verb::post, cs, "/join/*", true, on(rooms, &R::join), write_optional_body);
    add(verb::post, cs, "/rooms/*/join", true, on(rooms, &R::join), write_optional_body);
    add(verb::post, cs, "/rooms/*/leave", true, on(rooms, &R::leave), write_optional_body);
    add(verb::post, cs, "/rooms/*/kick", true, on(rooms, &R::kick), write);
    add(verb::post, cs, "/rooms/*/ban", true, on(rooms, &R::ban), write);
    add(verb::post, cs, "/rooms/*/unban", true, on(rooms, &R::unban), write);
    add(verb::get, cs, "/joined_rooms", true, on(rooms, &R::joined_rooms));
    add(verb::put, cs, "/rooms/*/send/*/*", true, on(rooms, &R::send_event), write);
    add(verb::put, cs, "/rooms/*/state/*", true, on(rooms, &R::put_state), write);
    add(verb::put, cs, "/rooms/*/state/*/*", true, on(rooms, &R::put_state), write);
    add(verb::get, cs, "/rooms/*/state/*", true, on(rooms, &R::get_state_event));
    add(verb::get, cs, "/rooms/*/state/*/*", true, on(rooms, &R::get_state_event));
    add(verb::get, cs, "/rooms/*/state", true, on(rooms, &R::get_state));
    add(verb::get, cs, "/rooms/*/members", true, on(rooms, &R::get_members));
    add(verb::get, cs, "/rooms/*/messages", true, on(rooms, &R::get_messages));
    add(verb::get, cs, "/rooms/*/event/*", true, on(rooms, &R::get_event));
    add(verb::get, cs, "/rooms/*/context/*", true, on(rooms, &R::get_context));
    add(verb::put, cs, "/rooms/*/redact/*/*", true, on(rooms, &R::redact), write_optional_body);

    auto& directory = hs.directory;
    add(verb::put, cs, "/directory/room/*", true, on(directory, &Directory::put_alias), write);
    add(verb::get, cs, "/directory/room/*", false, on(directory, &Directory::get_alias));
    add(verb::delete_, cs, "/directory/room/*", true, on(directory, &Directory::delete_alias),
        {RateClass::message});
    add(verb::get, cs, "/rooms/*/aliases", true, on(directory, &Directory::room_aliases));
    add(verb::get, cs, "/directory/list/room/*", false, on(directory, &Directory::get_visibility));
    add(verb::put, cs, "/directory/list/room/*", true, on(directory, &Directory::put_visibility),
        write);
    add(verb::get, cs, "/publicRooms", false, on(directory, &Directory::public_rooms));
    add(verb::post, cs, "/publicRooms", true, on(directory, &Directory::public_rooms),
        {RateClass::none, Body::object});

    add(verb::get, cs, "/sync", true, on(hs.sync, &Sync::sync));
    add(verb::post, cs, "/rooms/*/receipt/*/*", true, on(hs.receipts, &Receipts::post_receipt),
        write_optional_body);
    add(verb::post, cs, "/rooms/*/read_markers", true, on(hs.receipts, &Receipts::read_markers),
        write);
    add(verb::put, cs, "/rooms/*/typing/*", true, on(hs.typing, &Typing::put_typing), write);
    add(verb::put, cs, "/presence/*/status", true, on(hs.presence, &Presence::put_status), write);
    add(verb::get, cs, "/presence/*/status", true, on(hs.presence, &Presence::get_status));

    using D = AccountData;
    auto& data = hs.account_data;
    add(verb::post, cs, "/user/*/filter", true, on(data, &D::post_filter), write);
    add(verb::get, cs, "/user/*/filter/*", true, on(data, &D::get_filter));
    add(verb::get, cs, "/user/*/account_data/*", true, on(data, &D::get_account_data));
    add(verb::put, cs, "/user/*/account_data/*", true, on(data, &D::put_account_data), write);
    add(verb::get, cs, "/user/*/rooms/*/account_data/*", true, on(data, &D::get_account_data));
    add(verb::put, cs, "/user/*/rooms/*/account_data/*", true, on(data, &D::put_account_data),
        write);

    using N = Notifications;
    auto& notifications = hs.notifications;
    add(verb::get, cs, "/pushrules/", true, on(notifications, &N::get_rules));
    add(verb::get, cs, "/pushrules", true, on(notifications, &N::get_rules));
    add(verb::get, cs, "/pushrules/global/", true, on(notifications, &N::get_global_rules));
    add(verb::get, cs, "/pushrules/global/*/*", true, on(notifications, &N::get_rule));
    add(verb::put, cs, "/pushrules/global/*/*", true, on(notifications, &N::put_rule), write);
    add(verb::delete_, cs, "/pushrules/global/*/*", true, on(notifications, &N::delete_rule),
        {RateClass::message});
    add(verb::get, cs, "/pushrules/global/*/*/enabled", true,
        on(notifications, &N::get_rule_enabled));
    add(verb::get, cs, "/pushrules/global/*/*/actions", true,
        on(notifications, &N::get_rule_actions));
    add(verb::put, cs, "/pushrules/global/*/*/enabled", true,
        on(notifications, &N::put_rule_enabled), write);
    add(verb::put, cs, "/pushrules/global/*/*/actions", true,
        on(notifications, &N::put_rule_actions), write);
    add(verb::get, cs, "/notifications", true, on(notifications, &N::get_notifications));
    add(verb::get, cs, "/pushers", true, on(hs.pushers, &Pushers::get_pushers));
    add(verb::post, cs, "/pushers/set", true, on(hs.pushers, &Pushers::set_pusher), write);

    auto& profile = hs.profile;
    add(verb::get, cs, "/profile/*", false, on(profile, &Profile::get_profile));
    add(verb::get, cs, "/profile/*/*", false, on(profile, &Profile::get_profile_field));
    add(verb::put, cs, "/profile/*/*", true, on(profile, &Profile::put_profile_field), write);
    add(verb::post, cs, "/user_directory/search", true,
        on(profile, &Profile::search_user_directory), write);

    add(verb::put, cs, "/sendToDevice/*/*", true, on(hs.to_device, &ToDevice::send_to_device),
        write);

    auto& keys = hs.keys;
    add(verb::post, cs, "/keys/upload", true, on(keys, &Keys::upload), write);
    add(verb::post, cs, "/keys/query", true, on(keys, &Keys::query),
        {RateClass::none, Body::object});
    add(verb::post, cs, "/keys/claim", true, on(keys, &Keys::claim), write);
    add(verb::get, cs, "/keys/changes", true, on(keys, &Keys::changes));
    add(verb::post, cs, "/keys/device_signing/upload", true, on(keys, &Keys::upload_signing_keys),
        write);
    add(verb::post, cs, "/keys/signatures/upload", true, on(keys, &Keys::upload_signatures), write);

    using B = KeyBackup;
    auto& backup = hs.key_backup;
    add(verb::post, cs, "/room_keys/version", true, on(backup, &B::create_version), write);
    add(verb::get, cs, "/room_keys/version", true, on(backup, &B::get_version));
    add(verb::get, cs, "/room_keys/version/*", true, on(backup, &B::get_version));
    add(verb::put, cs, "/room_keys/version/*", true, on(backup, &B::put_version), write);
    add(verb::delete_, cs, "/room_keys/version/*", true, on(backup, &B::delete_version),
        {RateClass::message});
    for (const char* path : {"/room_keys/keys", "/room_keys/keys/*", "/room_keys/keys/*/*"}) {
        add(verb::put, cs, path, true, on(backup, &B::put_keys), write);
        add(verb::get, cs, path, true, on(backup, &B::get_keys));
        add(verb::delete_, cs, path, true, on(backup, &B::delete_keys), {RateClass::message});
    }

    // Every path clients have used for TURN credentials, back to the first spec (api/v1).
    auto turn = on(hs.voip, &Voip::turn_server);
    add(verb::get,
        {"/_matrix/client/r0", "/_matrix/client/v3", "/_matrix/client/unstable",
         "/_matrix/client/api/v1"},
        "/voip/turnServer", true, turn, {RateClass::turn});
    add(verb::get, {"/_matrix/client/api/v1"}, "/turnServer", true, turn, {RateClass::turn});
    return routes;
}

}  // namespace mxvoip::server
