#include "account_data.hpp"

#include "filter.hpp"

#include <algorithm>

#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/json.hpp"

namespace mxvoip::server {

namespace json = boost::json;
using proto::MatrixError;
namespace errcode = proto::errcode;

AccountData::AccountData(Core& core, Rooms& rooms) : core_(core), rooms_(rooms) {}

void AccountData::load(store::Snapshot& snap) {
    std::lock_guard lock(core_.mu);
    for (auto& a : snap.account_data)
        entries_[a.user_id][{a.room_id, a.type}] = AccountDataEntry{a.stream, std::move(a.content)};
    for (auto& f : snap.filters) {
        auto& filters = filters_[f.user_id];
        if (filters.size() <= static_cast<std::size_t>(f.filter_id))
            filters.resize(f.filter_id + 1);
        filters[f.filter_id] = std::move(f.json);
    }
}

const AccountDataEntries& AccountData::entries_locked(const std::string& user_id) const {
    static const AccountDataEntries kNone;
    auto it = entries_.find(user_id);
    return it == entries_.end() ? kNone : it->second;
}

const std::string* AccountData::filter_locked(const std::string& user_id, std::size_t id) const {
    auto it = filters_.find(user_id);
    if (it == filters_.end() || id >= it->second.size() || it->second[id].empty()) return nullptr;
    return &it->second[id];
}

asio::awaitable<Response> AccountData::post_filter(Request& req) {
    require_own_path(req, 0);
    const auto& body = req.json;
    SyncFilter::parse(body);  // a filter /sync would refuse is refused now, not stored
    std::string text = json::serialize(body);
    std::int64_t id;
    {
        std::lock_guard lock(core_.mu);
        auto& filters = filters_[req.session->user_id];
        // Identical filters share an id: clients post the same one at every start.
        auto found = std::find(filters.begin(), filters.end(), text);
        if (found != filters.end())
            co_return json_response(
                json::object{{"filter_id", std::to_string(found - filters.begin())}});
        if (filters.size() >= core_.config().limits.filters_per_user)
            throw MatrixError(403, errcode::forbidden,
                              "This user has " + std::to_string(filters.size()) +
                                  " filters, the most the server keeps (limits.filters_per_user)");
        id = static_cast<std::int64_t>(filters.size());
        filters.push_back(text);
    }
    {
        auto write = PendingWrite::of(store::PutFilter{{req.session->user_id, id, text}});
        co_await core_.commit(std::move(write));
    }
    co_return json_response(json::object{{"filter_id", std::to_string(id)}});
}

asio::awaitable<Response> AccountData::get_filter(Request& req) {
    require_own_path(req, 0);
    std::lock_guard lock(core_.mu);
    std::size_t id = 0;
    try {
        id = std::stoul(req.params[1]);
    } catch (...) {
        throw MatrixError(404, errcode::not_found, "No such filter");
    }
    const std::string* filter = filter_locked(req.session->user_id, id);
    if (!filter) throw MatrixError(404, errcode::not_found, "No such filter");
    co_return Response{200, *filter, {}};
}

asio::awaitable<Response> AccountData::get_account_data(Request& req) {
    require_own_path(req, 0);
    std::string room = req.params.size() == 3 ? req.params[1] : std::string();
    const std::string& type = req.params.back();
    std::lock_guard lock(core_.mu);
    const auto& data = entries_locked(req.session->user_id);
    auto it = data.find({room, type});
    if (it == data.end()) throw MatrixError(404, errcode::not_found, "Account data not found");
    co_return Response{200, it->second.content, {}};
}

asio::awaitable<Response> AccountData::put_account_data(Request& req) {
    require_own_path(req, 0);
    std::string room = req.params.size() == 3 ? req.params[1] : std::string();
    const std::string& type = req.params.back();
    const auto& body = req.json;
    if (type == "m.fully_read" || type == "m.push_rules")
        throw MatrixError(400, errcode::bad_json,
                          "Cannot set " + type + " through the account data API");
    std::string text = json::serialize(body);
    if (text.size() > 65536)
        throw MatrixError(413, errcode::too_large, "Account data is larger than 65536 bytes");
    const std::string& user = req.session->user_id;
    std::uint64_t ticket = 0;
    {
        std::lock_guard lock(core_.mu);
        if (!room.empty() && !rooms_.find_locked(room))
            throw MatrixError(404, errcode::not_found, "Unknown room " + room);
        PendingWrite w;
        put_locked(user, room, type, std::move(text), w);
        ticket = core_.submit_locked(std::move(w));
    }
    co_await core_.durable(ticket);
    co_return Response{};
}

void AccountData::put_locked(const std::string& user, const std::string& room,
                             const std::string& type, std::string content, PendingWrite& w) {
    auto& account_data = entries_[user];
    if (!account_data.count({room, type}) &&
        account_data.size() >= core_.config().limits.account_data_per_user)
        throw MatrixError(403, errcode::forbidden,
                          "This user has " + std::to_string(account_data.size()) +
                              " account data entries, the most the server keeps "
                              "(limits.account_data_per_user)");
    StreamId stream = core_.allocate_stream_locked();
    account_data[{room, type}] = AccountDataEntry{stream, content};
    w.mutations.push_back(store::PutAccountData{{stream, user, room, type, std::move(content)}});
    w.max_stream = std::max(w.max_stream, stream);
    w.wake.push_back(user);
}

}  // namespace mxvoip::server
