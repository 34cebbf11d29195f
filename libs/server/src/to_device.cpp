#include "to_device.hpp"

#include <spdlog/spdlog.h>

#include <cstdlib>
#include <iterator>

#include <algorithm>
#include <limits>
#include <map>
#include <optional>

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
    : core_(core), accounts_(accounts), txns_(core.config().limits.txn_ids_per_device) {
    // The device is gone: what waited for it never will be fetched, and it sends no retries.
    accounts_.on_device_removed([this](const std::string& user, const std::string& device) {
        Accounts::DeviceRemoval r;
        r.write = [user, device](StreamId, store::Txn& txn) {
            txn.write(store::DeleteToDevice{user, device, kEveryStream});
        };
        r.applied = [this, user, device](StreamId) {
            queues_.erase({user, device});
            txns_.forget_device(Session{user, device}.device_key());
            return std::vector<std::string>{};
        };
        return r;
    });
    // What another process queued for a device, in stream order, and what the device fetched
    // there (the key: user '|' device, and then '|' the position fetched up to).
    core_.on_change("to_device", [this](const store::ChangeRecord& c, const store::EventRecord*,
                                        std::vector<std::string>& wake) {
        std::optional<store::ToDeviceRecord> m;
        try {
            m = core_.store().to_device_at(c.stream);
        } catch (const std::exception& e) {
            spdlog::warn("a to-device message of another process could not be read: {}", e.what());
        }
        if (!m) return;  // fetched already, or the device signed out
        auto& q = queues_[{m->user_id, m->device_id}];
        auto at = q.end();
        while (at != q.begin() && std::prev(at)->stream > m->stream) --at;
        if (at != q.begin() && std::prev(at)->stream == m->stream) return;  // held already
        q.insert(at, {m->stream, std::move(m->message)});
        wake.push_back(m->user_id);
    });
    // An account another process changed: a device of it may have signed out there (and in
    // again, with the same id). A sign-out deletes its device's queue in its transaction, so
    // each queue of the user held here keeps, of what was queued up to the change, only what
    // the database still holds; what is queued after it comes through the feed later, or was
    // this process's own.
    core_.on_change("account", [this](const store::ChangeRecord& c, const store::EventRecord*,
                                      std::vector<std::string>&) {
        const std::string& user = c.key;
        for (auto it = queues_.lower_bound({user, ""});
             it != queues_.end() && it->first.first == user;) {
            auto& q = it->second;
            std::vector<StreamId> kept;
            try {
                kept = core_.store().to_device_queued(user, it->first.second, c.stream);
            } catch (const std::exception& e) {
                spdlog::warn("the to-device queue of a device of {} could not be read: {}", user,
                             e.what());
                ++it;
                continue;
            }
            std::erase_if(q, [&](const Message& m) {
                return m.stream <= c.stream &&
                       !std::binary_search(kept.begin(), kept.end(), m.stream);
            });
            it = q.empty() ? queues_.erase(it) : std::next(it);
        }
    });
    core_.on_change("to_device_ack", [this](const store::ChangeRecord& c, const store::EventRecord*,
                                            std::vector<std::string>&) {
        auto first = c.key.find('|');
        auto last = c.key.rfind('|');
        if (first == std::string::npos || last == first) return;
        Session s{c.key.substr(0, first), c.key.substr(first + 1, last - first - 1)};
        trim_locked(s, std::strtoll(c.key.c_str() + last + 1, nullptr, 10));
    });
}

void ToDevice::load(store::Snapshot& snap) {
    std::lock_guard lock(core_.mu);
    // A device that signed out took its messages with it (in the same transaction).
    for (auto& m : snap.to_device)
        queues_[{m.user_id, m.device_id}].push_back({m.stream, std::move(m.message)});
}

const std::deque<ToDevice::Message>* ToDevice::queue_locked(const Session& s) const {
    auto it = queues_.find({s.user_id, s.device_id});
    return it == queues_.end() ? nullptr : &it->second;
}

bool ToDevice::trim_locked(const Session& s, StreamId since) {
    auto it = queues_.find({s.user_id, s.device_id});
    if (it == queues_.end() || since <= 0) return false;
    auto& q = it->second;
    if (q.empty() || q.front().stream > since) return false;
    while (!q.empty() && q.front().stream <= since) q.pop_front();
    if (q.empty()) queues_.erase(it);
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
    const auto* q = queue_locked(s);
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
    const auto* q = queue_locked(s);
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
        std::map<DeviceKey, std::size_t> waiting;
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
            // since is applied after this, and takes the queue).
            if (d.written) {
                queues_[{d.user_id, d.device}].push_back({stream, std::move(d.message)});
                wake.push_back(d.user_id);
            }
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
