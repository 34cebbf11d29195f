#include "account_data.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <memory>

#include "filter.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/json.hpp"

namespace mxvoip::server {

namespace json = boost::json;
using proto::MatrixError;
namespace errcode = proto::errcode;

namespace {
std::string filter_key(const std::string& user_id, std::int64_t id) {
    return std::to_string(id) + ' ' + user_id;
}
}  // namespace

AccountData::AccountData(Core& core, Rooms& rooms)
    : core_(core),
      rooms_(rooms),
      // Held by a request: not forgotten, so what commits meanwhile reaches it.
      entries_(core.config().caches.account_data, [](const Held& h) { return h.use_count() > 1; }),
      filters_(core.config().caches.filters) {
    // Another process wrote the user's account data: what is held is read again, in place (a
    // request holding it sees the change, as it would one made here); the user's /syncs wake.
    core_.on_change("account_data", [this](const store::ChangeRecord& c, const store::EventRecord*,
                                           std::vector<std::string>& wake) {
        wake.push_back(c.key);
        loading_.written(c.key);
        auto* held = entries_.get(c.key);
        if (!held) return;
        try {
            AccountDataEntries read;
            for (auto& r : core_.store().account_data(c.key))
                read[{std::move(r.room_id), std::move(r.type)}] =
                    AccountDataEntry{r.stream, std::move(r.content)};
            **held = std::move(read);
        } catch (const std::exception& e) {
            spdlog::warn("the account data of {} could not be read again: {}", c.key, e.what());
            if (held->use_count() == 1) entries_.erase(c.key);
        }
    });
}

std::shared_ptr<const AccountDataEntries> AccountData::entries(const std::string& user_id) {
    for (;;) {
        ReadsInFlight<std::string>::Ticket ticket = 0;
        {
            std::lock_guard lock(core_.mu);
            if (auto* held = entries_.get(user_id)) return *held;
            ticket = loading_.started(user_id);
        }
        std::vector<store::AccountDataRecord> rows;
        std::exception_ptr failed;
        try {
            rows = core_.store().account_data(user_id);
        } catch (...) {
            failed = std::current_exception();
        }
        std::lock_guard lock(core_.mu);
        const bool overtaken = loading_.overtaken(user_id, ticket);
        if (failed) std::rethrow_exception(failed);
        if (auto* held = entries_.get(user_id)) return *held;  // another reader was first
        if (overtaken) continue;
        auto read = std::make_shared<AccountDataEntries>();
        for (auto& r : rows)
            (*read)[{std::move(r.room_id), std::move(r.type)}] =
                AccountDataEntry{r.stream, std::move(r.content)};
        return entries_.put(user_id, std::move(read));
    }
}

std::optional<std::string> AccountData::filter(const std::string& user_id, std::int64_t id) {
    std::string key = filter_key(user_id, id);
    {
        std::lock_guard lock(core_.mu);
        if (const auto* cached = filters_.get(key)) return *cached;
    }
    auto stored = core_.store().filter(user_id, id);
    if (stored) {
        std::lock_guard lock(core_.mu);
        filters_.put(key, *stored);
    }
    return stored;
}

asio::awaitable<Response> AccountData::post_filter(Request& req) {
    require_own_path(req, 0);
    SyncFilter::parse(req.json);  // a filter /sync would refuse is refused now, not stored
    // Decided in the transaction: identical filters share an id (clients post the same one at
    // every start), and a new one takes the next id unless the user has as many as are kept.
    struct Decided {
        std::string user, text;
        std::size_t most = 0;
        std::int64_t id = -1;
    };
    auto d = std::make_shared<Decided>(Decided{req.session->user_id, json::serialize(req.json),
                                               core_.config().limits.filters_per_user});
    Decision decision;
    decision.users = {d->user};  // two processes never give two filters one id
    decision.decide = [d](store::Txn& txn, StreamId) {
        if (auto found = txn.filter_id(d->user, d->text)) {
            d->id = *found;
            return;
        }
        std::int64_t next = txn.next_filter_id(d->user);
        if (static_cast<std::size_t>(next) >= d->most)
            throw MatrixError(403, errcode::forbidden,
                              "This user has " + std::to_string(next) +
                                  " filters, the most the server keeps (limits.filters_per_user)");
        txn.write(store::PutFilter{{d->user, next, d->text}});
        d->id = next;
    };
    decision.applied = [this, d](StreamId) {
        filters_.put(filter_key(d->user, d->id), d->text);
        return std::vector<std::string>{};
    };
    co_await core_.transact(std::move(decision));
    co_return json_response(json::object{{"filter_id", std::to_string(d->id)}});
}

asio::awaitable<Response> AccountData::get_filter(Request& req) {
    require_own_path(req, 0);
    std::int64_t id = 0;
    try {
        std::size_t used = 0;
        id = std::stoll(req.params[1], &used);
        if (used != req.params[1].size() || id < 0) throw std::invalid_argument("filter id");
    } catch (...) {
        throw MatrixError(404, errcode::not_found, "No such filter");
    }
    auto text = filter(req.session->user_id, id);
    if (!text) throw MatrixError(404, errcode::not_found, "No such filter");
    co_return Response{200, std::move(*text), {}};
}

asio::awaitable<Response> AccountData::get_account_data(Request& req) {
    require_own_path(req, 0);
    std::string room = req.params.size() == 3 ? req.params[1] : std::string();
    const std::string& type = req.params.back();
    auto data = entries(req.session->user_id);
    std::lock_guard lock(core_.mu);
    auto it = data->find({room, type});
    if (it == data->end()) throw MatrixError(404, errcode::not_found, "Account data not found");
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
    if (!room.empty()) {
        std::lock_guard lock(core_.mu);
        if (!rooms_.exists_locked(room))
            throw MatrixError(404, errcode::not_found, "Unknown room " + room);
    }
    Put entry{req.session->user_id, room, type, std::move(text)};
    co_await put(std::move(entry));
    co_return Response{};
}

asio::awaitable<void> AccountData::put(Put&& entry) {
    auto e = std::make_shared<Put>(std::move(entry));
    Decision decision;
    decision.streams = 1;
    decision.decide = [this, e](store::Txn& txn, StreamId stream) { decide_put(txn, *e, stream); };
    decision.applied = [this, e](StreamId stream) {
        applied_locked(*e, stream);
        return std::vector<std::string>{e->user};
    };
    return core_.transact(std::move(decision));
}

void AccountData::decide_put(store::Txn& txn, const Put& e, StreamId stream) const {
    const std::size_t most = core_.config().limits.account_data_per_user;
    if (!txn.account_data(e.user, e.room, e.type)) {
        auto held = static_cast<std::size_t>(txn.account_data_count(e.user));
        if (held >= most)
            throw MatrixError(403, errcode::forbidden,
                              "This user has " + std::to_string(held) +
                                  " account data entries, the most the server keeps "
                                  "(limits.account_data_per_user)");
    }
    txn.write(store::PutAccountData{{stream, e.user, e.room, e.type, e.content}});
}

void AccountData::applied_locked(const Put& e, StreamId stream) {
    auto* cached = entries_.get(e.user);
    if (!cached) {
        // Not held: the store has it. A read of it under way is made again.
        loading_.written(e.user);
        return;
    }
    auto& held = (**cached)[{e.room, e.type}];
    // Writes commit and apply in submission order, which is stream order; the guard only
    // keeps a newer entry should that ever not hold.
    if (stream > held.stream) held = AccountDataEntry{stream, e.content};
}

}  // namespace mxvoip::server
