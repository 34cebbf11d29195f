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

std::vector<Route> make_routes() {
    std::vector<Route> routes;
    auto add = [&](verb m, const std::vector<std::string_view>& prefixes, std::string_view path,
                   bool auth, Handler h, RateClass rate = RateClass::none) {
        for (auto prefix : prefixes)
            routes.push_back(
                Route{m, split(std::string(prefix) + std::string(path)), auth, h, rate});
    };
    // Every write a user makes counts against rc_message; reads are not limited.
    constexpr auto write = RateClass::message;
    const std::vector<std::string_view> cs{"/_matrix/client/r0", "/_matrix/client/v3"};
    using H = Homeserver;

    add(verb::get, {"/_matrix/client"}, "/versions", false, &H::versions);
    add(verb::get, {"/.well-known/matrix"}, "/client", false, &H::well_known);
    add(verb::get, cs, "/capabilities", true, &H::capabilities);

    add(verb::get, cs, "/login", false, &H::login_flows);
    add(verb::post, cs, "/login", false, &H::login, RateClass::login);
    add(verb::post, cs, "/logout", true, &H::logout);
    add(verb::post, cs, "/logout/all", true, &H::logout_all);
    add(verb::get, cs, "/account/whoami", true, &H::whoami);
    add(verb::post, cs, "/register", false, &H::register_account, RateClass::registration);
    add(verb::get, cs, "/register/available", false, &H::register_available,
        RateClass::registration);

    add(verb::post, cs, "/createRoom", true, &H::create_room, write);
    add(verb::post, cs, "/rooms/*/invite", true, &H::invite, write);
    add(verb::post, cs, "/join/*", true, &H::join, write);
    add(verb::post, cs, "/rooms/*/join", true, &H::join, write);
    add(verb::post, cs, "/rooms/*/leave", true, &H::leave, write);
    add(verb::get, cs, "/joined_rooms", true, &H::joined_rooms);
    add(verb::put, cs, "/rooms/*/send/*/*", true, &H::send_event, write);
    add(verb::put, cs, "/rooms/*/state/*", true, &H::put_state, write);
    add(verb::put, cs, "/rooms/*/state/*/*", true, &H::put_state, write);
    add(verb::get, cs, "/rooms/*/state/*", true, &H::get_state_event);
    add(verb::get, cs, "/rooms/*/state/*/*", true, &H::get_state_event);
    add(verb::get, cs, "/rooms/*/state", true, &H::get_state);
    add(verb::get, cs, "/rooms/*/members", true, &H::get_members);
    add(verb::get, cs, "/rooms/*/messages", true, &H::get_messages);
    add(verb::get, cs, "/rooms/*/event/*", true, &H::get_event);

    add(verb::get, cs, "/sync", true, &H::sync);
    add(verb::post, cs, "/user/*/filter", true, &H::post_filter, write);
    add(verb::get, cs, "/user/*/filter/*", true, &H::get_filter);
    add(verb::get, cs, "/pushrules/", true, &H::push_rules);
    add(verb::get, cs, "/pushrules", true, &H::push_rules);
    add(verb::get, cs, "/user/*/account_data/*", true, &H::get_account_data);
    add(verb::put, cs, "/user/*/account_data/*", true, &H::put_account_data, write);
    add(verb::get, cs, "/user/*/rooms/*/account_data/*", true, &H::get_account_data);
    add(verb::put, cs, "/user/*/rooms/*/account_data/*", true, &H::put_account_data, write);
    add(verb::get, cs, "/profile/*", false, &H::get_profile);
    add(verb::get, cs, "/profile/*/*", false, &H::get_profile_field);
    add(verb::put, cs, "/profile/*/*", true, &H::put_profile_field, write);
    add(verb::put, cs, "/sendToDevice/*/*", true, &H::send_to_device, write);
    // Every path clients have used for TURN credentials, back to the first spec (api/v1).
    add(verb::get,
        {"/_matrix/client/r0", "/_matrix/client/v3", "/_matrix/client/unstable",
         "/_matrix/client/api/v1"},
        "/voip/turnServer", true, &H::turn_server, RateClass::turn);
    add(verb::get, {"/_matrix/client/api/v1"}, "/turnServer", true, &H::turn_server,
        RateClass::turn);
    return routes;
}

}  // namespace mxvoip::server
