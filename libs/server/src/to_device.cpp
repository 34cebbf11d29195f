#include "to_device.hpp"

#include <spdlog/spdlog.h>

#include <cstdlib>
#include <iterator>

#include <algorithm>
#include <limits>
#include <map>
#include <optional>
#include <utility>

#include "json_out.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/ids.hpp"
#include "mxvoip/proto/json.hpp"

namespace mxvoip::server {

namespace json = boost::json;
using proto::MatrixError;
namespace errcode = proto::errcode;

namespace {
constexpr StreamId kEveryStream = std::numeric_limits<StreamId>::max();
}  // namespace

ToDevice::ToDevice(Core& core, Accounts& accounts)
    : core_(core),
      accounts_(accounts),
      // Held by a /sync: not forgotten, so what commits meanwhile reaches it.
      users_(core.config().caches.to_device, [](const Held& h) { return h.use_count() > 1; }),
      txns_(core.config().limits.txn_ids_per_device) {
    // The device is gone: what waited for it never will be fetched, and it sends no retries.
    accounts_.on_device_removed([this](const std::string& user, const std::string& device) {
        Accounts::DeviceRemoval r;
        r.write = [user, device](StreamId, store::Txn& txn) {
            txn.write(store::DeleteToDevice{user, device, kEveryStream});
        };
        r.applied = [this, user, device](StreamId) {
            written_locked(user, device);
            if (auto* held = users_.get(user)) (*held)->devices.erase(device);
            txns_.forget_device(Session{user, device}.device_key());
            return std::vector<std::string>{};
        };
        return r;
    });
    // What another process queued for a device (the key: user '|' device). A queue not held
    // here has no /sync here to wake, and is read whole when one comes.
    core_.on_change("to_device", [this](const store::ChangeRecord& c, const store::EventRecord*,
                                        std::vector<std::string>& wake) {
        auto bar = c.key.find('|');
        if (bar == std::string::npos) return;
        std::string user = c.key.substr(0, bar);
        Queue* q = written_locked(user, c.key.substr(bar + 1));
        if (!q) return;
        std::optional<store::ToDeviceRecord> m;
        try {
            m = core_.store().to_device_at(c.stream);
        } catch (const std::exception& e) {
            // Not lost: it is read with the queue once the user's /syncs let it go.
            spdlog::warn("a to-device message of another process could not be read: {}", e.what());
        }
        if (m && insert(*q, m->stream, std::move(m->message))) wake.push_back(std::move(user));
    });
    // An account another process changed: a device of it may have signed out there (and in
    // again, with the same id), which deleted its queue in the same transaction. What is held
    // of the user's queues is read again (what the database holds is the queue: what a /sync
    // here acknowledged and is not deleted yet is past its `since`, and never shown again).
    core_.on_change("account", [this](const store::ChangeRecord& c, const store::EventRecord*,
                                      std::vector<std::string>&) {
        const std::string& user = c.key;
        loading_.written(user);
        auto* held = users_.get(user);
        if (!held) return;
        if (held->use_count() == 1) {
            users_.erase(user);  // no /sync holds it: read when one comes
            return;
        }
        auto& devices = (*held)->devices;
        for (auto it = devices.begin(); it != devices.end();) {
            try {
                Queue read;
                for (auto& m : core_.store().to_device_of(user, it->first))
                    read.push_back({m.stream, std::move(m.message)});
                it->second = std::move(read);
                ++it;
            } catch (const std::exception& e) {
                spdlog::warn("the to-device queue of a device of {} could not be read: {}", user,
                             e.what());
                it = devices.erase(it);  // the /sync holding it shows nothing of it
            }
        }
    });
    core_.on_change("to_device_ack", [this](const store::ChangeRecord& c, const store::EventRecord*,
                                            std::vector<std::string>&) {
        auto first = c.key.find('|');
        auto last = c.key.rfind('|');
        if (first == std::string::npos || last == first) return;
        Session s{c.key.substr(0, first), c.key.substr(first + 1, last - first - 1)};
        loading_.written(s.user_id);
        trim_locked(s, std::strtoll(c.key.c_str() + last + 1, nullptr, 10));
    });
}

std::shared_ptr<const void> ToDevice::hold(const Session& s) {
    for (;;) {
        ReadsInFlight<std::string>::Ticket ticket = 0;
        {
            std::lock_guard lock(core_.mu);
            if (auto* held = users_.get(s.user_id); held && (*held)->devices.contains(s.device_id))
                return *held;
            ticket = loading_.started(s.user_id);
        }
        std::vector<store::ToDeviceRecord> rows;
        std::exception_ptr failed;
        try {
            rows = core_.store().to_device_of(s.user_id, s.device_id);
        } catch (...) {
            failed = std::current_exception();
        }
        std::lock_guard lock(core_.mu);
        const bool overtaken = loading_.overtaken(s.user_id, ticket);
        if (failed) std::rethrow_exception(failed);
        if (overtaken) continue;  // a write to the user's queues was applied meanwhile
        Held* held = users_.get(s.user_id);
        if (!held) held = &users_.put(s.user_id, std::make_shared<UserQueues>());
        auto [it, fresh] = (*held)->devices.try_emplace(s.device_id);
        if (fresh) {
            spdlog::debug("the to-device queue of {} {} read from the database ({} waiting)",
                          s.user_id, s.device_id, rows.size());
            for (auto& m : rows) it->second.push_back({m.stream, std::move(m.message)});
        }
        return *held;
    }
}

ToDevice::Queue* ToDevice::queue_locked(const std::string& user, const std::string& device) const {
    auto* held = users_.get(user);
    if (!held) return nullptr;
    auto it = (*held)->devices.find(device);
    return it == (*held)->devices.end() ? nullptr : &it->second;
}

ToDevice::Queue* ToDevice::written_locked(const std::string& user, const std::string& device) {
    loading_.written(user);
    return queue_locked(user, device);
}

bool ToDevice::insert(Queue& q, StreamId stream, std::string message) {
    auto at = q.end();
    while (at != q.begin() && std::prev(at)->stream > stream) --at;
    if (at != q.begin() && std::prev(at)->stream == stream) return false;  // held already
    q.insert(at, {stream, std::move(message)});
    return true;
}

bool ToDevice::trim_locked(const Session& s, StreamId since) {
    Queue* q = queue_locked(s.user_id, s.device_id);
    if (!q || since <= 0 || q->empty() || q->front().stream > since) return false;
    while (!q->empty() && q->front().stream <= since) q->pop_front();
    return true;
}

void ToDevice::acknowledge_locked(const Session& s, StreamId since) {
    if (!trim_locked(s, since)) return;
    Decision d;
    d.mutations.push_back(store::DeleteToDevice{s.user_id, s.device_id, since});
    if (core_.shared()) {
        // The other processes sharing the database let them go too.
        d.streams = 1;
        d.decide = [key = s.user_id + '|' + s.device_id + '|' + std::to_string(since)](
                       store::Txn& txn, StreamId position) {
            txn.write(store::PutChange{{position, "to_device_ack", key}});
        };
    }
    core_.transact_locked(std::move(d));
}

void ToDevice::render_locked(std::string& out, const Session& s, StreamId since,
                             StreamId upto) const {
    const Queue* q = queue_locked(s.user_id, s.device_id);
    if (!q) return;
    bool first = true;
    for (const auto& msg : *q) {
        if (msg.stream <= since || msg.stream > upto) continue;
        if (!first) out += ',';
        first = false;
        out += msg.message;
    }
}

bool ToDevice::has_new_locked(const Session& s, StreamId since, StreamId upto) const {
    const Queue* q = queue_locked(s.user_id, s.device_id);
    return q && std::any_of(q->begin(), q->end(),
                            [&](const Message& m) { return m.stream > since && m.stream <= upto; });
}

asio::awaitable<Response> ToDevice::send_to_device(Request& req) {
    const Session& s = *req.session;
    const std::string& type = req.params[0];
    const std::string& txn = req.params[1];
    const auto* messages = proto::opt_object(req.json, "messages");
    if (!messages) throw MatrixError(400, errcode::missing_param, "Missing 'messages'");
    if (!proto::is_valid_event_type(type))
        throw MatrixError(400, errcode::bad_json, "Invalid event type");
    struct Delivery {
        std::string user_id;
        std::string device;
        std::string message;
        bool written = false;  // set by the decision
    };
    auto deliveries = std::make_shared<std::vector<Delivery>>();
    const std::string sender = s.device_key();
    const std::int64_t now = core_.now_ms();
    {
        // The recipients' accounts (which devices they have) are read before the lock.
        std::vector<std::string> recipients;
        for (const auto& [user, _] : *messages) recipients.emplace_back(user);
        accounts_.preload(recipients);
    }
    for (;;) {
        std::uint64_t first_attempt = 0;
        {
            std::lock_guard lock(core_.mu);
            if (txns_.find(sender, txn, now)) co_return Response{};
            // A retry while the first attempt is being written waits for its outcome.
            if (txns_.in_flight(sender, txn)) {
                first_attempt = core_.submitted();
            } else {
                for (const auto& [user_key, devices] : *messages) {
                    std::string user(user_key);
                    if (!devices.is_object())
                        throw MatrixError(400, errcode::bad_json,
                                          "messages." + user + " must be an object");
                    if (!accounts_.exists_locked(user))
                        continue;  // unknown or remote: nothing to do here
                    // Only to devices that exist (are signed in): a message for any other id would
                    // wait for ever.
                    const std::vector<std::string> existing = accounts_.devices_locked(user);
                    for (const auto& [device_key_sv, content] : devices.get_object()) {
                        if (!content.is_object())
                            throw MatrixError(400, errcode::bad_json,
                                              "each to-device message must be an object");
                        std::string message = "{\"content\":" + json::serialize(content) +
                                              ",\"sender\":" + quoted(s.user_id) +
                                              ",\"type\":" + quoted(type) + "}";
                        std::vector<std::string> targets;
                        if (device_key_sv == "*")
                            targets = existing;
                        else if (std::binary_search(existing.begin(), existing.end(),
                                                    device_key_sv))
                            targets.emplace_back(device_key_sv);
                        for (auto& device : targets)
                            deliveries->push_back({user, std::move(device), message});
                    }
                }
                if (deliveries->empty()) {
                    txns_.remember(sender, txn, {}, now);
                    co_return Response{};
                }
                txns_.claim(sender, txn);
            }
        }
        if (!first_attempt) break;
        co_await core_.durable(first_attempt);
    }
    // Decided in the transaction: every message is checked against what waits for its device
    // before any is written, so a request is refused whole.
    const std::size_t per_device = core_.config().limits.to_device_per_device;
    Decision decision;
    decision.streams = deliveries->size();
    // On a shared database the transaction id is stored with the messages, and looked up
    // under the sender's lock: a retry through another process, even at the same moment,
    // finds the first attempt committed and delivers nothing again.
    std::optional<store::PutToDeviceTxn> remembered;
    if (core_.shared()) {
        decision.users = {s.user_id};
        remembered = store::PutToDeviceTxn{
            sender, txn, now, now - TxnIds::kLifetimeMs,
            static_cast<std::int64_t>(core_.config().limits.txn_ids_per_device)};
    }
    decision.decide = [deliveries, per_device, remembered](store::Txn& txn, StreamId first) {
        if (remembered && txn.to_device_txn(remembered->device_key, remembered->txn_id,
                                            remembered->forget_before)) {
            for (auto& d : *deliveries) d.written = false;
            return;
        }
        std::map<std::pair<std::string, std::string>, std::size_t> waiting;  // by device
        for (auto& d : *deliveries) {
            // A device that signed out since it was looked up gets nothing.
            d.written = txn.device_exists(d.user_id, d.device);
            if (!d.written) continue;
            auto [it, fresh] = waiting.try_emplace({d.user_id, d.device}, 0);
            if (fresh)
                it->second = static_cast<std::size_t>(txn.to_device_count(d.user_id, d.device));
            if (++it->second > per_device)
                throw MatrixError(429, errcode::limit_exceeded,
                                  "Device " + d.device + " of " + d.user_id + " has " +
                                      std::to_string(it->second - 1) +
                                      " messages it has not fetched (limits.to_device_per_device)",
                                  10000);
        }
        StreamId stream = first;
        for (const auto& d : *deliveries) {
            if (d.written) txn.write(store::PutToDevice{{stream, d.user_id, d.device, d.message}});
            ++stream;
        }
        if (remembered) txn.write(*remembered);
    };
    decision.applied = [this, deliveries, sender, txn, now](StreamId first) {
        std::vector<std::string> wake;
        StreamId stream = first;
        for (auto& d : *deliveries) {
            // Written: the device was signed in when it committed (a sign-out committed
            // since is applied after this, and takes the queue). A queue not held has no
            // /sync to wake, and is read whole when one comes.
            if (d.written)
                if (Queue* q = written_locked(d.user_id, d.device);
                    q && insert(*q, stream, std::move(d.message)))
                    wake.push_back(d.user_id);
            ++stream;
        }
        txns_.remember(sender, txn, {}, now);
        return wake;
    };
    decision.settled = [this, sender, txn] { txns_.settled(sender, txn); };
    co_await core_.transact(std::move(decision));
    co_return Response{};
}

}  // namespace mxvoip::server
