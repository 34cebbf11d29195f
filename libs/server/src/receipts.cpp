#include "receipts.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "json_out.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/json.hpp"

namespace mxvoip::server {

namespace json = boost::json;
using proto::MatrixError;
namespace errcode = proto::errcode;

namespace {

// The thread an event belongs to by its content: the root's id, or empty for the main timeline.
std::string thread_of(std::string_view content) {
    json::error_code ec;
    auto v = json::parse(content, ec);
    if (ec || !v.is_object()) return {};
    const auto* rel = v.get_object().if_contains("m.relates_to");
    if (!rel || !rel->is_object()) return {};
    const auto& r = rel->get_object();
    const auto* type = r.if_contains("rel_type");
    const auto* id = r.if_contains("event_id");
    if (!type || !id || !type->is_string() || !id->is_string() || type->get_string() != "m.thread")
        return {};
    return std::string(id->get_string());
}

}  // namespace

Receipts::Receipts(Core& core, Rooms& rooms, AccountData& account_data)
    : core_(core),
      rooms_(rooms),
      account_data_(account_data),
      rooms_receipts_(core.config().caches.receipts) {
    // A receipt another process recorded: as one recorded here, once it committed.
    core_.on_change("receipt", [this](const store::ChangeRecord& c, const store::EventRecord*,
                                      std::vector<std::string>& wake) {
        std::optional<store::ReceiptRecord> r;
        try {
            r = core_.store().receipt_at(c.key, c.stream);
        } catch (const std::exception& e) {
            spdlog::warn("a receipt of another process could not be read: {}", e.what());
            // Not lost: the room's receipts held are read again when next used.
            loading_.written(c.key);
            rooms_receipts_.erase(c.key);
        }
        if (!r) return;  // replaced since
        Put p{r->room_id, r->user_id, r->receipt_type, r->thread_id,
              Target{r->event_id, event_id_stream(r->event_id).value_or(0)}};
        applied_locked(p, r->stream, r->ts, wake);
    });
}

Receipts::RoomReceipts Receipts::from_records(std::vector<store::ReceiptRecord> rows) {
    RoomReceipts room;
    for (auto& r : rows) {
        Key key{std::move(r.user_id), std::move(r.receipt_type), std::move(r.thread_id)};
        auto event_stream = event_id_stream(r.event_id).value_or(0);
        room.by_stream[r.stream] = key;
        room.by_key[std::move(key)] = Receipt{std::move(r.event_id), event_stream, r.ts, r.stream};
    }
    return room;
}

void Receipts::preload(const std::vector<std::string>& room_ids) {
    std::vector<std::string> missing;
    std::vector<ReadsInFlight<std::string>::Ticket> tickets;
    {
        std::lock_guard lock(core_.mu);
        for (const auto& room_id : room_ids) {
            if (rooms_receipts_.get(room_id) ||
                std::find(missing.begin(), missing.end(), room_id) != missing.end())
                continue;
            missing.push_back(room_id);
            tickets.push_back(loading_.started(room_id));
        }
    }
    if (missing.empty()) return;
    std::vector<std::vector<store::ReceiptRecord>> read;
    std::exception_ptr failed;
    try {
        read = core_.store().receipts_of(missing);
    } catch (...) {
        failed = std::current_exception();
    }
    std::lock_guard lock(core_.mu);
    for (std::size_t i = 0; i < missing.size(); ++i) {
        const bool overtaken = loading_.overtaken(missing[i], tickets[i]);
        // One a receipt overtook is read under the lock when it is used.
        if (failed || overtaken || rooms_receipts_.get(missing[i])) continue;
        spdlog::debug("the receipts of {} read from the database ({})", missing[i], read[i].size());
        // Held, not put: the rooms read for one /sync do not push each other out (trim_locked).
        rooms_receipts_.hold(missing[i], from_records(std::move(read[i])));
    }
    if (failed) std::rethrow_exception(failed);
}

const Receipts::RoomReceipts& Receipts::room_locked(const std::string& room_id) const {
    if (const RoomReceipts* held = rooms_receipts_.get(room_id)) return *held;
    auto read = core_.store().receipts_of({room_id});
    spdlog::debug("the receipts of {} read from the database under the lock ({})", room_id,
                  read[0].size());
    return rooms_receipts_.put(room_id, from_records(std::move(read[0])));
}

asio::awaitable<Receipts::Target> Receipts::check_target(const std::string& room_id,
                                                         const std::string& user,
                                                         const std::string& event_id,
                                                         const std::string& thread) {
    auto stream = event_id_stream(event_id);
    std::optional<std::string> content;  // the event's, when it is in the room
    std::string type;
    std::optional<std::string> state_key;
    StreamId visible_upto = 0;
    {
        std::lock_guard lock(core_.mu);
        const Room& room = rooms_.room_or_throw_locked(room_id);
        if (room.membership_of(user) != "join")
            throw MatrixError(403, errcode::forbidden, "You are not joined to this room");
        visible_upto = core_.visible_locked();
        if (stream)
            for (const auto& ev : room.recent)
                if (ev->stream == *stream && ev->event_id == event_id) {
                    content = std::string(ev->content());
                    type = ev->type;
                    state_key = ev->state_key;
                }
    }
    if (!content && stream && *stream <= visible_upto)
        if (auto row = core_.store().event_at(*stream);
            row && row->event_id == event_id && row->room_id == room_id) {
            content = json::serialize(json::parse(row->json).at("content"));
            type = row->type;
            state_key = row->state_key;
        }
    bool visible = false;
    if (content && *stream <= visible_upto) {
        std::lock_guard lock(core_.mu);
        visible =
            rooms_.room_or_throw_locked(room_id).history.may_see(user, *stream, type, state_key);
    }
    if (!visible) throw MatrixError(404, errcode::not_found, "Event not found.");
    if (!thread.empty()) {
        std::string in = thread_of(*content);
        bool related = thread == "main" ? in.empty() : (event_id == thread || in == thread);
        if (!related)
            throw MatrixError(400, errcode::invalid_param, "The event is not in thread " + thread);
    }
    co_return Target{event_id, *stream};
}

asio::awaitable<void> Receipts::put(std::vector<Put> receipts) {
    struct Decided {
        std::vector<Put> receipts;
        std::vector<bool> written;
        std::int64_t ts = 0;
    };
    auto d = std::make_shared<Decided>();
    d->receipts = std::move(receipts);
    d->ts = core_.now_ms();
    Decision decision;
    decision.streams = d->receipts.size();
    decision.decide = [d](store::Txn& txn, StreamId first) {
        std::vector<bool> written;
        for (std::size_t i = 0; i < d->receipts.size(); ++i) {
            const Put& p = d->receipts[i];
            auto existing = txn.receipt(p.room_id, p.user, p.type, p.thread);
            if (existing &&
                event_id_stream(existing->event_id).value_or(0) >= p.target.event_stream) {
                written.push_back(false);  // it already points at this event or a later one
                continue;
            }
            if (!existing && !p.thread.empty()) {
                auto threads = txn.receipt_threads(p.room_id, p.user, p.type);
                if (threads >= static_cast<std::int64_t>(kThreadsPerUser))
                    throw MatrixError(403, errcode::forbidden,
                                      "You have receipts in " + std::to_string(threads) +
                                          " threads of this room, the most the server keeps");
            }
            const StreamId stream = first + static_cast<StreamId>(i);
            txn.write(store::PutReceipt{
                {stream, p.room_id, p.user, p.type, p.thread, p.target.event_id, d->ts}});
            written.push_back(true);
        }
        d->written = std::move(written);
    };
    decision.applied = [this, d](StreamId first) {
        std::vector<std::string> wake;
        for (std::size_t i = 0; i < d->receipts.size(); ++i)
            if (d->written[i])
                applied_locked(d->receipts[i], first + static_cast<StreamId>(i), d->ts, wake);
        return wake;
    };
    return core_.transact(std::move(decision));
}

void Receipts::applied_locked(const Put& p, StreamId stream, std::int64_t ts,
                              std::vector<std::string>& wake) {
    const bool main = p.thread.empty() || p.thread == "main";
    StreamId read_upto = p.target.event_stream;  // at least: the listeners' positions only grow
    if (RoomReceipts* room = rooms_receipts_.get(p.room_id)) {
        Key key{p.user, p.type, p.thread};
        auto it = room->by_key.find(key);
        // Committed in stream order: a receipt held is older, unless read with a later one (or
        // with this one: then it is told of all the same).
        if (it != room->by_key.end()) {
            if (it->second.stream > stream) return;
            room->by_stream.erase(it->second.stream);
        }
        room->by_stream[stream] = key;
        room->by_key[key] = Receipt{p.target.event_id, p.target.event_stream, ts, stream};
        if (main) read_upto = read_upto_locked(p.room_id, p.user);
    } else {
        loading_.written(p.room_id);  // a read in flight may miss it: it is made again
    }
    if (main)
        for (const auto& f : read_listeners_) f(p.room_id, p.user, read_upto);
    // A private receipt is for its owner's devices only.
    if (p.type == "m.read.private") {
        wake.push_back(p.user);
        return;
    }
    if (const Room* joined = rooms_.find_or_skip_locked(p.room_id))
        for (const auto& [member, m] : joined->membership)
            if (m == "join") wake.push_back(member);
}

asio::awaitable<Response> Receipts::post_receipt(Request& req) {
    const std::string& room_id = req.params[0];
    const std::string& type = req.params[1];
    const std::string& event_id = req.params[2];
    const std::string& user = req.session->user_id;
    if (type != "m.read" && type != "m.read.private" && type != "m.fully_read")
        throw MatrixError(400, errcode::invalid_param,
                          "Receipt type must be m.read, m.read.private or m.fully_read");
    std::string thread;
    if (const auto* t = req.json.if_contains("thread_id")) {
        if (!t->is_string() || t->get_string().empty())
            throw MatrixError(400, errcode::invalid_param, "thread_id must be a non-empty string");
        if (type == "m.fully_read")
            throw MatrixError(400, errcode::invalid_param,
                              "m.fully_read is not threaded: it takes no thread_id");
        thread = t->get_string();
    }
    Target target = co_await check_target(room_id, user, event_id, thread);
    if (type == "m.fully_read") {
        AccountData::Put marker{user, room_id, type,
                                json::serialize(json::object{{"event_id", event_id}})};
        co_await account_data_.put(std::move(marker));
        co_return Response{};
    }
    std::vector<Put> receipts{Put{room_id, user, type, thread, std::move(target)}};
    co_await put(std::move(receipts));
    co_return Response{};
}

asio::awaitable<Response> Receipts::read_markers(Request& req) {
    const std::string& room_id = req.params[0];
    const std::string& user = req.session->user_id;
    static const char* kFields[] = {"m.fully_read", "m.read", "m.read.private"};
    std::vector<std::pair<std::string, Target>> marks;
    for (const char* field : kFields) {
        const auto* v = req.json.if_contains(field);
        if (!v) continue;
        if (!v->is_string())
            throw MatrixError(400, errcode::bad_json, std::string(field) + " must be an event id");
        std::string event_id(v->get_string());
        Target target = co_await check_target(room_id, user, event_id, {});
        marks.emplace_back(field, std::move(target));
    }
    // The read marker is account data, decided in its own transaction; the receipts are
    // written together. Each is durable before the response.
    std::optional<AccountData::Put> fully_read;
    std::vector<Put> receipts;
    for (const auto& [field, target] : marks) {
        if (field == "m.fully_read")
            fully_read = AccountData::Put{
                user, room_id, field, json::serialize(json::object{{"event_id", target.event_id}})};
        else
            receipts.push_back(Put{room_id, user, field, {}, target});
    }
    if (fully_read) co_await account_data_.put(std::move(*fully_read));
    if (!receipts.empty()) co_await put(std::move(receipts));
    co_return Response{};
}

StreamId Receipts::read_upto_locked(const std::string& room_id, const std::string& user) const {
    const RoomReceipts* room = nullptr;
    try {
        room = &room_locked(room_id);
    } catch (const std::exception& e) {
        // Asked after a commit too, where there is no request to answer 503: counted as read
        // up to the user's join (logged), until their next receipt.
        spdlog::warn("the receipts of {} could not be read: {}", room_id, e.what());
        return 0;
    }
    StreamId upto = 0;
    for (const char* type : {"m.read", "m.read.private"})
        for (const char* thread : {"", "main"})
            if (auto it = room->by_key.find({user, type, thread}); it != room->by_key.end())
                upto = std::max(upto, it->second.event_stream);
    return upto;
}

bool Receipts::render_locked(std::string& out, const std::string& room_id, const std::string& user,
                             StreamId since, StreamId upto, bool fresh) const {
    const RoomReceipts& room = room_locked(room_id);
    // event id -> receipt type -> user -> {ts, thread_id}
    json::object content;
    auto begin = fresh ? room.by_stream.begin() : room.by_stream.upper_bound(since);
    for (auto it = begin; it != room.by_stream.end() && it->first <= upto; ++it) {
        const auto& [who, type, thread] = it->second;
        if (type == "m.read.private" && who != user) continue;
        const Receipt& r = room.by_key.at(it->second);
        json::object data{{"ts", r.ts}};
        if (!thread.empty()) data["thread_id"] = thread;
        json::value& by_type = content[r.event_id];
        if (!by_type.is_object()) by_type.emplace_object();
        json::value& by_user = by_type.as_object()[type];
        if (!by_user.is_object()) by_user.emplace_object();
        by_user.as_object()[who] = std::move(data);
    }
    if (content.empty()) return false;
    out += "{\"type\":\"m.receipt\",\"content\":";
    out += json::serialize(content);
    out += '}';
    return true;
}

}  // namespace mxvoip::server
