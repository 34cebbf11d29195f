#include "to_device.hpp"

#include <algorithm>
#include <limits>
#include <map>

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
    accounts_.on_device_removed(
        [this](const std::string& user, const std::string& device, PendingWrite& w) {
            queues_.erase({user, device});
            w.mutations.push_back(store::DeleteToDevice{user, device, kEveryStream});
            txns_.forget_device(Session{user, device}.device_key());
        });
}

void ToDevice::load(store::Snapshot& snap) {
    std::lock_guard lock(core_.mu);
    // Messages for a device that is no longer signed in would never be fetched.
    for (auto& m : snap.to_device)
        if (accounts_.has_device_locked(m.user_id, m.device_id))
            queues_[{m.user_id, m.device_id}].push_back({m.stream, std::move(m.message)});
}

const std::deque<ToDevice::Message>* ToDevice::queue_locked(const Session& s) const {
    auto it = queues_.find({s.user_id, s.device_id});
    return it == queues_.end() ? nullptr : &it->second;
}

void ToDevice::acknowledge_locked(const Session& s, StreamId since) {
    auto it = queues_.find({s.user_id, s.device_id});
    if (it == queues_.end() || since <= 0) return;
    auto& q = it->second;
    if (q.empty() || q.front().stream > since) return;
    while (!q.empty() && q.front().stream <= since) q.pop_front();
    if (q.empty()) queues_.erase(it);
    core_.submit_locked(PendingWrite::of(store::DeleteToDevice{s.user_id, s.device_id, since}));
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
    const std::size_t per_device = core_.config().limits.to_device_per_device;
    PendingWrite w;
    std::uint64_t ticket = 0;
    {
        std::lock_guard lock(core_.mu);
        const std::string device = s.device_key();
        const std::int64_t now = core_.now_ms();
        if (txns_.find(device, txn, now)) co_return Response{};
        // Every message is checked before any is queued: a request is refused whole.
        struct Delivery {
            std::string user_id;
            std::string device;
            std::string message;
        };
        std::vector<Delivery> deliveries;
        std::map<DeviceKey, std::size_t> adding;
        for (const auto& [user_key, devices] : *messages) {
            std::string user(user_key);
            if (!devices.is_object())
                throw MatrixError(400, errcode::bad_json,
                                  "messages." + user + " must be an object");
            if (!accounts_.exists_locked(user)) continue;  // unknown or remote: nothing to do here
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
                else if (std::binary_search(existing.begin(), existing.end(), device_key_sv))
                    targets.emplace_back(device_key_sv);
                for (auto& device : targets) {
                    auto queue = queues_.find({user, device});
                    std::size_t waiting = queue == queues_.end() ? 0 : queue->second.size();
                    if (waiting + ++adding[{user, device}] > per_device)
                        throw MatrixError(
                            429, errcode::limit_exceeded,
                            "Device " + device + " of " + user + " has " + std::to_string(waiting) +
                                " messages it has not fetched (limits.to_device_per_device)",
                            10000);
                    deliveries.push_back({user, std::move(device), message});
                }
            }
        }
        for (auto& d : deliveries) {
            StreamId stream = core_.allocate_stream_locked();
            queues_[{d.user_id, d.device}].push_back({stream, d.message});
            w.mutations.push_back(store::PutToDevice{{stream, d.user_id, d.device, d.message}});
            w.max_stream = stream;
            w.wake.push_back(d.user_id);
        }
        txns_.remember(device, txn, {}, now);
        ticket = core_.submit_locked(std::move(w));
    }
    co_await core_.durable(ticket);
    co_return Response{};
}

}  // namespace mxvoip::server
