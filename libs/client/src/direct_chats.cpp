#include "mxvoip/client/direct_chats.hpp"

#include <algorithm>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "mxvoip/client/call_driver.hpp"

namespace mxvoip::client {

asio::awaitable<std::vector<std::string>> direct_chats_with(MatrixClient& client,
                                                            std::string user) {
    std::string type = "m.direct";
    std::optional<json::object> direct = co_await client.account_data(type);
    std::vector<std::string> rooms;
    if (!direct) co_return rooms;
    if (const json::value* list = direct->if_contains(user); list && list->is_array())
        for (const auto& r : list->as_array())
            if (r.is_string()) rooms.emplace_back(r.as_string());
    co_return rooms;
}

asio::awaitable<void> remember_direct_chat(MatrixClient& client, std::string user,
                                           std::string room) {
    std::string type = "m.direct";
    std::optional<json::object> current = co_await client.account_data(type);
    json::object direct = current ? std::move(*current) : json::object{};
    json::array list;
    if (const json::value* rooms = direct.if_contains(user); rooms && rooms->is_array())
        list = rooms->as_array();
    if (std::find(list.begin(), list.end(), json::value(room)) != list.end()) co_return;
    list.emplace_back(room);
    direct[user] = std::move(list);
    co_await client.put_account_data(type, std::move(direct));
}

// ---- the direct chat to call someone in (CallDriver, which knows the rooms' members) -----

asio::awaitable<std::optional<std::string>> CallDriver::direct_chat_with(std::string user) {
    std::string me = client_.session().user_id;
    std::vector<std::string> rooms = co_await direct_chats_with(client_, user);
    // The newest first: an older one may have been left behind.
    for (auto it = rooms.rbegin(); it != rooms.rend(); ++it) {
        std::set<std::string> members = joined(*it);
        if (members.size() == 2 && members.count(me) && members.count(user)) co_return *it;
    }
    co_return std::nullopt;
}

asio::awaitable<std::string> CallDriver::create_direct_chat(std::string user) {
    std::string room = co_await client_.create_direct_room(user, opt_.crypto != nullptr);
    co_await remember_direct_chat(client_, user, room);
    co_return room;
}

asio::awaitable<bool> CallDriver::wait_for_join(std::string room_id, std::string user,
                                                Clock::duration timeout) {
    auto deadline = Clock::now() + timeout;
    asio::steady_timer timer(ex_);
    while (!joined(room_id).count(user)) {
        if (stopping_ || Clock::now() >= deadline) co_return false;
        timer.expires_after(std::chrono::milliseconds(20));
        co_await timer.async_wait(asio::use_awaitable);
    }
    co_return true;
}

}  // namespace mxvoip::client
