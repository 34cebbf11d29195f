#include "homeserver.hpp"

#include <spdlog/spdlog.h>
#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <charconv>

#include "auth_rules.hpp"
#include "json_out.hpp"
#include "mxvoip/proto/base64.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/ids.hpp"
#include "mxvoip/proto/json.hpp"

namespace mxvoip::server {

using proto::MatrixError;
namespace errcode = proto::errcode;

namespace {
constexpr std::size_t kTimelineWindow = 50;
constexpr std::int64_t kTxnLifetimeMs = 24 * 3600 * 1000;
const std::string kNoMembership = "leave";

// Room versions before 10 allow power levels written as strings of an integer.
bool integer_levels_only(const Room& room) {
    int version = 0;
    std::from_chars(room.version.data(), room.version.data() + room.version.size(), version);
    return version >= 10;
}

std::int64_t int_or(const json::object& obj, std::string_view key, std::int64_t fallback) {
    auto it = obj.find(key);
    if (it == obj.end()) return fallback;
    if (it->value().is_int64()) return it->value().get_int64();
    if (it->value().is_uint64()) return static_cast<std::int64_t>(it->value().get_uint64());
    if (it->value().is_string()) {  // old rooms carry levels as strings
        try {
            return std::stoll(std::string(it->value().get_string()));
        } catch (...) {
        }
    }
    return fallback;
}

std::string build_event_json(const Event& e, std::string_view content) {
    std::string j;
    j.reserve(content.size() + 200);
    j += "{\"content\":";
    j += content;
    j += ",\"event_id\":";
    append_quoted(j, e.event_id);
    j += ",\"origin_server_ts\":";
    j += std::to_string(e.origin_server_ts);
    j += ",\"room_id\":";
    append_quoted(j, e.room_id);
    j += ",\"sender\":";
    append_quoted(j, e.sender);
    if (e.state_key) {
        j += ",\"state_key\":";
        append_quoted(j, *e.state_key);
    }
    j += ",\"type\":";
    append_quoted(j, e.type);
    j += '}';
    return j;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Event ids

std::string new_event_id(StreamId stream) {
    std::string raw = random_bytes(32);
    for (int i = 0; i < 8; ++i)
        raw[i] = static_cast<char>((static_cast<std::uint64_t>(stream) >> (56 - 8 * i)) & 0xff);
    return "$" + proto::base64url_encode(raw);
}

std::optional<StreamId> event_id_stream(std::string_view event_id) {
    if (event_id.size() != 44 || event_id[0] != '$') return std::nullopt;
    auto raw = proto::base64_decode(event_id.substr(1));
    if (!raw || raw->size() != 32) return std::nullopt;
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = v << 8 | static_cast<unsigned char>((*raw)[i]);
    if (v > static_cast<std::uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<StreamId>(v);
}

// ---------------------------------------------------------------------------------------------
// Model helpers

std::int64_t PowerLevels::user_level(const std::string& user) const {
    auto it = users.find(user);
    return it == users.end() ? users_default : it->second;
}

std::int64_t PowerLevels::event_level(const std::string& type, bool is_state) const {
    auto it = events.find(type);
    if (it != events.end()) return it->second;
    return is_state ? state_default : events_default;
}

PowerLevels PowerLevels::parse(const json::object& c) {
    PowerLevels p;
    p.users_default = int_or(c, "users_default", 0);
    p.events_default = int_or(c, "events_default", 0);
    p.state_default = int_or(c, "state_default", 50);
    p.invite = int_or(c, "invite", 0);
    p.kick = int_or(c, "kick", 50);
    p.ban = int_or(c, "ban", 50);
    p.redact = int_or(c, "redact", 50);
    if (auto it = c.find("users"); it != c.end() && it->value().is_object())
        for (const auto& kv : it->value().get_object())
            p.users[std::string(kv.key())] = int_or(it->value().get_object(), kv.key(), 0);
    if (auto it = c.find("events"); it != c.end() && it->value().is_object())
        for (const auto& kv : it->value().get_object())
            p.events[std::string(kv.key())] = int_or(it->value().get_object(), kv.key(), 0);
    return p;
}

const std::string& Room::membership_of(const std::string& user) const {
    auto it = membership.find(user);
    return it == membership.end() ? kNoMembership : it->second;
}

EventPtr Room::state_event(const std::string& type, const std::string& key) const {
    auto it = state.find({type, key});
    return it == state.end() ? nullptr : it->second;
}

// ---------------------------------------------------------------------------------------------
// Commit pipeline

Homeserver::Homeserver(const Config& config, store::Store& store, asio::thread_pool& blocking,
                       Clock clock)
    : config_(config),
      store_(store),
      writer_(store),
      blocking_(blocking),
      clock_(std::move(clock)),
      hash_cost_(parse_hash_cost(config.password_hash_cost)),
      rc_message_(config.rc_message),
      rc_login_(config.rc_login),
      rc_login_account_(config.rc_login_account),
      rc_login_failed_(config.rc_login_failed),
      rc_registration_(config.rc_registration),
      rc_turn_(config.rc_turn) {
    json::array uris;
    for (const auto& u : config.turn.uris) uris.push_back(json::string(u));
    turn_uris_json_ = json::serialize(uris);
    load();
}

Homeserver::~Homeserver() {
    writer_.stop();
}

void Homeserver::stop_writer() {
    writer_.stop();
}

void Homeserver::load() {
    auto snap = store_.load(static_cast<int>(kTimelineWindow), now_ms() - kTxnLifetimeMs);
    for (auto& u : snap.users) {
        std::string id = u.user_id;
        users_[id].record = std::move(u);
    }
    for (auto& t : snap.tokens)
        tokens_[t.token_hash] = Session{t.user_id, t.device_id, users_[t.user_id].record.is_guest};
    for (auto& r : snap.rooms) {
        Room& room = rooms_[r.room_id];
        room.id = r.room_id;
        room.version = r.room_version;
    }
    auto to_event = [&](store::EventRecord&& r) {
        auto e = std::make_shared<Event>(Event{std::move(r)});
        std::string content = json::serialize(json::parse(e->json).as_object()["content"]);
        e->json = build_event_json(*e, content);
        e->content_len = content.size();
        return EventPtr(std::move(e));
    };
    // The history first: the current state replays its last entries, which are then ignored.
    for (auto& h : snap.history) {
        auto it = rooms_.find(h.room_id);
        if (it == rooms_.end()) continue;
        if (h.type == "m.room.member")
            it->second.history.record_membership(h.state_key, h.stream, std::move(h.value));
        else if (h.state_key.empty())
            it->second.history.record_visibility(h.stream, std::move(h.value));
    }
    std::unordered_map<std::string, EventPtr> by_id;
    for (auto& r : snap.state_events) {
        auto ev = to_event(std::move(r));
        auto it = rooms_.find(ev->room_id);
        if (it == rooms_.end()) continue;
        apply_event_locked(it->second, ev);
        by_id[ev->event_id] = ev;
    }
    for (auto& r : snap.recent_events) {
        auto it = rooms_.find(r.room_id);
        if (it == rooms_.end()) continue;
        auto known = by_id.find(r.event_id);
        EventPtr ev = known != by_id.end() ? known->second : to_event(std::move(r));
        it->second.recent.push_back(ev);
    }
    for (auto& [_, room] : rooms_) {
        // The store returned at most kTimelineWindow per room; anything older is "evicted".
        if (room.recent.size() >= kTimelineWindow)
            room.evicted_upto = room.recent.front()->stream - 1;
    }
    for (auto& t : snap.txns) {
        std::string key = t.device_key + '\n' + t.room_id + '\n' + t.txn_id;
        txns_[key] = TxnEntry{t.event_id, 0, t.ts};
        txn_order_.emplace_back(t.ts, key);
    }
    std::sort(txn_order_.begin(), txn_order_.end());
    for (auto& a : snap.account_data)
        users_[a.user_id].account_data[{a.room_id, a.type}] =
            AccountData{a.stream, std::move(a.content)};
    for (auto& m : snap.to_device)
        users_[m.user_id].to_device[m.device_id].push_back({m.stream, std::move(m.message)});
    for (auto& f : snap.filters) {
        auto& filters = users_[f.user_id].filters;
        if (filters.size() <= static_cast<std::size_t>(f.filter_id))
            filters.resize(f.filter_id + 1);
        filters[f.filter_id] = std::move(f.json);
    }
    std::erase_if(users_, [](const auto& kv) { return kv.second.record.user_id.empty(); });
    next_stream_ = snap.max_stream + 1;
    visible_ = snap.max_stream;
    spdlog::info("loaded {} users, {} rooms, stream position {}", users_.size(), rooms_.size(),
                 visible_);
}

std::uint64_t Homeserver::submit_locked(PendingWrite write) {
    return writer_.submit(
        std::move(write.mutations),
        [this, max_stream = write.max_stream, wake = std::move(write.wake)](std::exception_ptr e) {
            if (!e) return publish(max_stream, wake);
            std::string why = "unknown error";
            try {
                std::rethrow_exception(e);
            } catch (const std::exception& ex) {
                why = ex.what();
            } catch (...) {
            }
            // Only the first failure is the cause; the writer fails everything after it.
            std::call_once(fatal_once_, [&] {
                spdlog::critical("database write failed: {}; the server stops", why);
                if (on_fatal_) on_fatal_(why);
            });
        });
}

asio::awaitable<void> Homeserver::durable(std::uint64_t seq) {
    auto init = [this](auto handler, std::uint64_t seq) {
        // The executor is held with outstanding work, so a graceful shutdown waits for the
        // commit and the response instead of letting the I/O threads return under it.
        auto ex = asio::prefer(asio::get_associated_executor(handler),
                               asio::execution::outstanding_work.tracked);
        auto shared = std::make_shared<decltype(handler)>(std::move(handler));
        writer_.when_durable(seq, [shared, ex](std::exception_ptr e) {
            // What could not be stored is never confirmed: the client may retry once the
            // server is back.
            if (e)
                e = std::make_exception_ptr(MatrixError(
                    503, errcode::unknown, "The server could not store this request; try again"));
            asio::post(ex, [shared, e]() mutable { (*shared)(e); });
        });
    };
    return asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr)>(
        init, asio::use_awaitable, seq);
}

asio::awaitable<void> Homeserver::commit(PendingWrite&& write) {
    std::uint64_t seq = 0;
    {
        std::lock_guard lock(mu_);
        seq = submit_locked(std::move(write));
    }
    return durable(seq);
}

std::optional<std::uint64_t> Homeserver::unsettled() const {
    return writer_.pending();
}

void Homeserver::publish(StreamId max_stream, const std::vector<std::string>& wake) {
    std::lock_guard lock(mu_);
    if (max_stream > visible_) visible_ = max_stream;
    for (const auto& user : wake) {
        auto it = waiters_.find(user);
        if (it == waiters_.end()) continue;
        for (auto& w : it->second) asio::post(w->timer.get_executor(), [w] { w->timer.cancel(); });
        waiters_.erase(it);
    }
}

void Homeserver::wake_all() {
    std::lock_guard lock(mu_);
    shutting_down_ = true;
    for (auto& [_, list] : waiters_)
        for (auto& w : list) asio::post(w->timer.get_executor(), [w] { w->timer.cancel(); });
    waiters_.clear();
}

// ---------------------------------------------------------------------------------------------
// Auth and events

std::optional<Session> Homeserver::authenticate(const std::string& token) const {
    // The map is keyed by the token's SHA-256: a lookup reveals nothing about stored tokens.
    std::string hash = sha256_hex(token);
    std::lock_guard lock(mu_);
    auto it = tokens_.find(hash);
    if (it == tokens_.end()) return std::nullopt;
    return it->second;
}

const std::string& Homeserver::unknown_user_hash() {
    std::call_once(unknown_user_hash_once_,
                   [this] { unknown_user_hash_ = hash_password(random_letters(32), hash_cost_); });
    return unknown_user_hash_;
}

void Homeserver::rate_limit(RateClass rate, const Request& req) {
    std::optional<std::int64_t> wait;
    switch (rate) {
        case RateClass::none:
            return;
        case RateClass::message:
            wait = rc_message_.take(req.session->user_id, now_ms());
            break;
        case RateClass::login:
            wait = rc_login_.take(req.remote, now_ms());
            break;
        case RateClass::registration:
            wait = rc_registration_.check(req.remote, now_ms());
            break;
        case RateClass::turn:
            wait = rc_turn_.take(req.session->user_id, now_ms());
            break;
    }
    if (wait) throw MatrixError(429, errcode::limit_exceeded, "Too many requests", *wait);
}

Room& Homeserver::room_or_throw(const std::string& room_id) {
    auto it = rooms_.find(room_id);
    if (it == rooms_.end()) throw MatrixError(404, errcode::not_found, "Unknown room " + room_id);
    return it->second;
}

void Homeserver::require_reader_locked(const Room& room, const std::string& user) const {
    if (room.history.knows(user) || room.history.current_visibility() == "world_readable") return;
    throw MatrixError(403, errcode::forbidden, "You are not in this room");
}

std::optional<StreamId> Homeserver::state_horizon_locked(const Room& room,
                                                         const std::string& user) const {
    const std::string& m = room.membership_of(user);
    if (m == "join" || room.history.current_visibility() == "world_readable") return std::nullopt;
    if (m == "leave" || m == "ban")
        if (auto u = users_.find(user); u != users_.end())
            if (auto r = u->second.rooms.find(room.id); r != u->second.rooms.end())
                return r->second.stream;
    throw MatrixError(403, errcode::forbidden, "You are not in this room");
}

void Homeserver::check_auth_locked(const Room& room, const std::string& sender,
                                   const NewEvent& ev) const {
    const bool is_state = ev.state_key.has_value();
    const std::string& sender_m = room.membership_of(sender);
    if (ev.type == "m.room.create")
        throw MatrixError(403, errcode::forbidden, "m.room.create can only be sent by createRoom");
    if (ev.type == "m.room.member") {
        if (!is_state)
            throw MatrixError(400, errcode::bad_json,
                              "m.room.member is a state event: send it with a state_key");
        const std::string& target = *ev.state_key;
        if (!proto::parse_user_id(target))
            throw MatrixError(400, errcode::bad_json,
                              "state_key of m.room.member must be a user id");
        auto m = proto::opt_string(ev.content, "membership");
        if (!m) throw MatrixError(400, errcode::bad_json, "m.room.member needs a 'membership'");
        const std::string& target_m = room.membership_of(target);
        const auto& pl = room.power;
        if (*m == "join") {
            if (sender != target)
                throw MatrixError(403, errcode::forbidden, "Cannot force another user to join");
            if (target_m == "ban")
                throw MatrixError(403, errcode::forbidden, "You are banned from this room");
            if (auto u = users_.find(sender); target_m != "join" && u != users_.end() &&
                                              u->second.record.is_guest &&
                                              room.guest_access != "can_join")
                throw MatrixError(403, errcode::guest_access_forbidden,
                                  "Guests cannot join this room (m.room.guest_access)");
            if (target_m == "join" || target_m == "invite" || room.join_rule == "public") return;
            // The creator's own join directly after m.room.create.
            if (room.membership.empty() && sender == room.creator) return;
            throw MatrixError(403, errcode::forbidden, "You are not invited to this room.");
        }
        if (*m == "invite") {
            if (sender_m != "join")
                throw MatrixError(403, errcode::forbidden, "You are not in this room");
            if (target_m == "join")
                throw MatrixError(403, errcode::forbidden, target + " is already in the room.");
            if (target_m == "ban")
                throw MatrixError(403, errcode::forbidden, target + " is banned from the room");
            if (pl.user_level(sender) < pl.invite)
                throw MatrixError(403, errcode::forbidden,
                                  "You don't have permission to invite users");
            return;
        }
        if (*m == "leave") {
            if (sender == target) {
                if (target_m == "join" || target_m == "invite" || target_m == "knock") return;
                throw MatrixError(403, errcode::forbidden, "You are not in this room");
            }
            if (sender_m != "join")
                throw MatrixError(403, errcode::forbidden, "You are not in this room");
            if (target_m == "ban" ? pl.user_level(sender) < pl.ban
                                  : pl.user_level(sender) < pl.kick)
                throw MatrixError(403, errcode::forbidden,
                                  "You don't have permission to remove " + target);
            if (pl.user_level(sender) <= pl.user_level(target))
                throw MatrixError(403, errcode::forbidden,
                                  "Your power level is not above " + target + "'s");
            return;
        }
        if (*m == "ban") {
            if (sender_m != "join")
                throw MatrixError(403, errcode::forbidden, "You are not in this room");
            if (pl.user_level(sender) < pl.ban || pl.user_level(sender) <= pl.user_level(target))
                throw MatrixError(403, errcode::forbidden,
                                  "You don't have permission to ban " + target);
            return;
        }
        throw MatrixError(400, errcode::bad_json, "Unknown membership '" + std::string(*m) + "'");
    }
    if (sender_m != "join")
        throw MatrixError(403, errcode::forbidden, "User " + sender + " not in room " + room.id);
    const auto& pl = room.power;
    std::int64_t have = pl.user_level(sender);
    std::int64_t need = pl.event_level(ev.type, is_state);
    if (have < need)
        throw MatrixError(403, errcode::forbidden,
                          "You don't have permission to post " + ev.type + " (needs power " +
                              std::to_string(need) + ", you have " + std::to_string(have) + ")");
    if (is_state && !ev.state_key->empty() && ev.state_key->front() == '@' &&
        *ev.state_key != sender) {
        // Auth rules: a state key that starts with '@' belongs to that user alone.
        throw MatrixError(403, errcode::forbidden, "That state key belongs to another user");
    }
    if (ev.type == "m.room.power_levels") {
        std::optional<json::object> current;
        if (EventPtr pl_event = room.state_event("m.room.power_levels", ""))
            current = json::parse(pl_event->content()).as_object();
        if (auto refusal = power_levels_change_refusal(current ? &*current : nullptr, ev.content,
                                                       sender, have, integer_levels_only(room)))
            throw MatrixError(403, errcode::forbidden, *refusal);
    }
}

void Homeserver::rebuild_room_state_locked(Room& room, const EventPtr& ev) {
    if (!ev->state_key) return;
    json::object content;
    if (ev->type == "m.room.member" || ev->type == "m.room.power_levels" ||
        ev->type == "m.room.join_rules" || ev->type == "m.room.create" ||
        ev->type == "m.room.history_visibility" || ev->type == "m.room.guest_access") {
        auto v = json::parse(ev->content());
        if (v.is_object()) content = std::move(v.get_object());
    }
    if (ev->type == "m.room.member") {
        auto m = content.find("membership");
        std::string membership = m != content.end() && m->value().is_string()
                                     ? std::string(m->value().get_string())
                                     : std::string("leave");
        room.membership[*ev->state_key] = membership;
        room.history.record_membership(*ev->state_key, ev->stream, membership);
        // A user's membership of a room dates from the event that changed it: a new
        // displayname (join to join) is a state change for the sync, not a new join.
        if (auto u = users_.find(*ev->state_key); u != users_.end()) {
            auto [it, fresh] = u->second.rooms.try_emplace(room.id);
            if (fresh || it->second.membership != membership)
                it->second = RoomMembership{membership, ev->stream};
        }
    } else if (ev->type == "m.room.power_levels") {
        room.power = PowerLevels::parse(content);
        room.has_power_levels = true;
    } else if (ev->type == "m.room.join_rules") {
        auto jr = content.find("join_rule");
        room.join_rule = jr != content.end() && jr->value().is_string()
                             ? std::string(jr->value().get_string())
                             : std::string("invite");
    } else if (ev->type == "m.room.history_visibility" && ev->state_key->empty()) {
        auto v = content.find("history_visibility");
        room.history.record_visibility(ev->stream, v != content.end() && v->value().is_string()
                                                       ? std::string(v->value().get_string())
                                                       : std::string());
    } else if (ev->type == "m.room.guest_access" && ev->state_key->empty()) {
        auto g = content.find("guest_access");
        room.guest_access = g != content.end() && g->value().is_string()
                                ? std::string(g->value().get_string())
                                : std::string("forbidden");
    } else if (ev->type == "m.room.create") {
        room.creator = ev->sender;
        if (!room.has_power_levels) {
            // Before power levels exist, the creator has 100 (auth rules, "no power levels").
            room.power.users[ev->sender] = 100;
        }
    }
}

void Homeserver::apply_event_locked(Room& room, const EventPtr& ev) {
    if (ev->state_key) {
        room.state[{ev->type, *ev->state_key}] = ev;
        rebuild_room_state_locked(room, ev);
    }
}

void Homeserver::add_to_timeline_locked(Room& room, const EventPtr& ev) {
    room.recent.push_back(ev);
    while (room.recent.size() > kTimelineWindow) {
        room.evicted_upto = room.recent.front()->stream;
        room.recent.pop_front();
    }
}

void Homeserver::wake_room_locked(const Room& room, const EventPtr& ev,
                                  std::vector<std::string>& wake) const {
    for (const auto& [user, m] : room.membership)
        if (m == "join" || m == "invite") wake.push_back(user);
    if (ev->type == "m.room.member" && ev->state_key) wake.push_back(*ev->state_key);
}

namespace {
bool has_float(const json::value& v) {
    switch (v.kind()) {
        case json::kind::double_:
            return true;
        case json::kind::array:
            return std::any_of(v.get_array().begin(), v.get_array().end(), has_float);
        case json::kind::object:
            return std::any_of(v.get_object().begin(), v.get_object().end(),
                               [](const auto& kv) { return has_float(kv.value()); });
        default:
            return false;
    }
}
}  // namespace

EventPtr Homeserver::append_event_locked(Room& room, const std::string& sender, NewEvent ev,
                                         PendingWrite& w, const std::string& txn_device_key,
                                         const std::string& txn_id, bool creating) {
    if (!proto::is_valid_event_type(ev.type))
        throw MatrixError(400, errcode::bad_json, "Invalid event type");
    if (ev.state_key && ev.state_key->size() > 255)
        throw MatrixError(400, errcode::bad_json, "state_key is longer than 255 bytes");
    if (has_float(json::value(ev.content)))
        throw MatrixError(400, errcode::bad_json,
                          "Event content must not contain floating-point numbers");
    if (!creating) check_auth_locked(room, sender, ev);

    auto e = std::make_shared<Event>();
    e->stream = next_stream_;
    e->event_id = new_event_id(e->stream);
    e->room_id = room.id;
    e->type = std::move(ev.type);
    e->state_key = std::move(ev.state_key);
    e->sender = sender;
    e->origin_server_ts = now_ms();
    std::string content = json::serialize(ev.content);
    e->json = build_event_json(*e, content);
    e->content_len = content.size();
    e->txn_device_key = txn_device_key;
    e->txn_id = txn_id;
    if (e->json.size() > 65536)
        throw MatrixError(413, errcode::too_large, "Event is larger than 65536 bytes");
    ++next_stream_;

    EventPtr ptr = e;
    apply_event_locked(room, ptr);
    add_to_timeline_locked(room, ptr);
    wake_room_locked(room, ptr, w.wake);
    w.mutations.push_back(store::PutEvent{*ptr});
    w.max_stream = std::max(w.max_stream, ptr->stream);
    return ptr;
}

void Homeserver::check_user_path(const Request& req, std::size_t index) const {
    if (req.params.at(index) != req.session->user_id)
        throw MatrixError(403, errcode::forbidden, "Cannot access another user's data");
}

}  // namespace mxvoip::server
