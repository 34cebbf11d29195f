#include "mxvoip/client/call_driver.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "mxvoip/client/direct_chats.hpp"

namespace mxvoip::client {

using asio::use_awaitable;

namespace {

const json::object* object_at(const json::object& o, const char* key) {
    const json::value* v = o.if_contains(key);
    return v && v->is_object() ? &v->as_object() : nullptr;
}

const json::array* array_at(const json::object& o, const char* key) {
    const json::value* v = o.if_contains(key);
    return v && v->is_array() ? &v->as_array() : nullptr;
}

std::string string_at(const json::object& o, const char* key) {
    const json::value* v = o.if_contains(key);
    return v && v->is_string() ? std::string(v->as_string()) : std::string();
}

// Crypto state ages by the wall clock: room keys rotate by age across restarts.
crypto::Ms unix_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::vector<std::string> strings_at(const json::object& o, const char* key) {
    std::vector<std::string> out;
    if (const json::array* a = array_at(o, key))
        for (const auto& v : *a)
            if (v.is_string()) out.emplace_back(v.get_string());
    return out;
}

// A call event for the call manager: `content` is the event's, or its decryption's.
call::RoomEvent room_event(const std::string& room_id, const json::object& ev, std::string type,
                           json::object content) {
    call::RoomEvent event{room_id, string_at(ev, "sender"), std::move(type), std::move(content)};
    if (const json::object* u = object_at(ev, "unsigned")) {
        if (const json::value* a = u->if_contains("age"); a && a->is_int64())
            event.age_ms = a->as_int64();
        event.from_this_device = u->contains("transaction_id");
    }
    return event;
}

// Undecryptable events kept for their room key, and for how long.
constexpr std::size_t kMaxUndecrypted = 256;
constexpr call::Ms kUndecryptedWait = 60000;

}  // namespace

CallDriver::CallDriver(asio::any_io_executor ex, MatrixClient& client, media::MediaEngine& engine,
                       DriverOptions options, CallObserver& observer)
    : ex_(ex),
      client_(client),
      engine_(engine),
      opt_(std::move(options)),
      observer_(observer),
      manager_([&] {
          call::CallManager::Options o{client.session().user_id, client.session().device_id};
          o.invite_lifetime = opt_.invite_lifetime;
          return o;
      }()),
      outbox_signal_(std::make_unique<asio::steady_timer>(ex)) {}

CallDriver::~CallDriver() {
    for (auto& [id, s] : sessions_) s->close();
}

call::Ms CallDriver::now() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - epoch_).count();
}

const CallInfo* CallDriver::info(const std::string& call_id) const {
    auto it = calls_.find(call_id);
    return it == calls_.end() ? nullptr : &it->second;
}

std::set<std::string> CallDriver::joined(const std::string& room_id) const {
    auto it = rooms_.find(room_id);
    return it == rooms_.end() ? std::set<std::string>{} : it->second.joined;
}

bool CallDriver::encrypted(const std::string& room_id) const {
    auto it = rooms_.find(room_id);
    return it != rooms_.end() && it->second.encrypted;
}

bool CallDriver::invited_to(const std::string& room_id) const {
    return invites_.count(room_id);
}

void CallDriver::stop() {
    stopping_ = true;
    outbox_signal_->cancel();
}

// ---- user actions ------------------------------------------------------------------------

std::string CallDriver::place_call(const std::string& room_id, const std::string& invitee) {
    // Call ids: random, opaque, and compared in glare (VOIP-NOTES.md).
    std::string id = "mxv" + random_token(21);
    feed(call::PlaceCall{id, room_id, invitee});
    if (manager_.state(id)) return id;
    // The other side's call was ringing in this room: placing a call answered it instead.
    for (const auto& [other, c] : calls_)
        if (c.room_id == room_id && c.state != call::CallState::ended) return other;
    return id;
}
void CallDriver::answer(const std::string& call_id) {
    feed(call::AnswerCall{call_id});
}
void CallDriver::reject(const std::string& call_id) {
    feed(call::RejectCall{call_id});
}
void CallDriver::hang_up(const std::string& call_id) {
    feed(call::HangUpCall{call_id});
}
void CallDriver::set_hold(const std::string& call_id, bool hold) {
    feed(call::SetHold{call_id, hold});
}
void CallDriver::set_screenshare(const std::string& call_id, bool on) {
    feed(call::SetScreenshare{call_id, on});
}

void CallDriver::refresh_stats(const std::string& call_id) {
    auto s = sessions_.find(call_id);
    auto c = calls_.find(call_id);
    if (s == sessions_.end() || c == calls_.end()) return;
    c->second.last_stats = s->second->stats();
    c->second.relay = c->second.relay || c->second.last_stats.relay;
}

// ---- the state machine -------------------------------------------------------------------

void CallDriver::feed(const call::Input& in) {
    std::vector<call::Action> actions = manager_.handle(in, now());
    for (auto& a : actions) execute(a);
}

void CallDriver::execute(call::Action& a) {
    if (auto* send = std::get_if<call::SendEvent>(&a)) {
        outbox_.push_back(std::move(*send));
        outbox_signal_->cancel();
    } else if (auto* m = std::get_if<call::MediaCommand>(&a)) {
        media_command(*m);
    } else if (auto* t = std::get_if<call::StartTimer>(&a)) {
        auto timer =
            std::make_unique<asio::steady_timer>(ex_, epoch_ + std::chrono::milliseconds(t->at));
        std::uint64_t id = t->timer_id;
        timer->async_wait([this, id](boost::system::error_code ec) {
            if (ec) return;
            timers_.erase(id);
            feed(call::TimerFired{id});
        });
        timers_[id] = std::move(timer);
    } else if (auto* c = std::get_if<call::CancelTimer>(&a)) {
        timers_.erase(c->timer_id);  // destroying the timer cancels its wait
    } else if (auto* s = std::get_if<call::StateChanged>(&a)) {
        CallInfo& info = calls_[s->call_id];
        info.call_id = s->call_id;
        if (info.room_id.empty()) info.room_id = manager_.room(s->call_id).value_or("");
        info.state = s->state;
        if (auto d = manager_.direction(s->call_id)) info.direction = *d;
        if (s->state == call::CallState::ringing) info.signalled_at = Clock::now();
        if (s->state == call::CallState::connected && !info.connected_at)
            info.connected_at = Clock::now();
        if (s->state == call::CallState::ended) {
            info.end_reason = s->end_reason;
            info.ended_by_remote = s->ended_by_remote;
            // Another of our devices took the call: what this one still has queued for it
            // (an answer, candidates) must not go out.
            if (s->end_reason == "answered_elsewhere" || s->end_reason == "rejected_elsewhere")
                std::erase_if(outbox_,
                              [&](const call::SendEvent& e) { return e.call_id == s->call_id; });
        }
        observer_.on_state(info);
    } else if (auto* d = std::get_if<call::Dropped>(&a)) {
        observer_.on_log("call " + d->call_id + ": " + d->why);
    } else if (auto* n = std::get_if<call::Nonconforming>(&a)) {
        observer_.on_log("call " + n->call_id + ": non-conforming peer: " + n->what);
    } else if (auto* r = std::get_if<call::RemoteStreamsChanged>(&a)) {
        streams_changed(r->call_id, r->metadata);
    }
}

// ---- media -------------------------------------------------------------------------------

media::MediaSession* CallDriver::session_for(const std::string& call_id, bool create) {
    auto it = sessions_.find(call_id);
    if (it != sessions_.end()) return it->second.get();
    if (!create) return nullptr;
    media::SessionOptions o = opt_.media;
    if (turn_ && !turn_->uris.empty()) o.turn = {{turn_->uris, turn_->username, turn_->password}};
    auto sink = [this, call_id](media::Event ev) {
        asio::post(ex_, [this, call_id, ev = std::move(ev)]() mutable {
            on_media(call_id, std::move(ev));
        });
    };
    try {
        auto s = engine_.create_session(o, sink);
        media::MediaSession* raw = s.get();
        sessions_[call_id] = std::move(s);
        return raw;
    } catch (const std::exception& e) {
        calls_[call_id].media_error = e.what();
        observer_.on_log("call " + call_id + ": media: " + e.what());
        return nullptr;
    }
}

void CallDriver::close_session(const std::string& call_id) {
    auto it = sessions_.find(call_id);
    if (it == sessions_.end()) return;
    refresh_stats(call_id);
    it->second->close();
    sessions_.erase(it);
}

void CallDriver::report_local_streams(const std::string& call_id) {
    media::MediaSession* s = session_for(call_id, false);
    if (!s) return;
    media::LocalStreamIds ids = s->local_streams();
    proto::SdpStreamMetadata meta;
    meta[ids.usermedia].purpose = std::string(proto::kPurposeUsermedia);
    if (!ids.screenshare.empty())
        meta[ids.screenshare].purpose = std::string(proto::kPurposeScreenshare);
    feed(call::LocalStreams{call_id, meta});
}

void CallDriver::media_command(call::MediaCommand& m) {
    using Op = call::MediaOp;
    const std::string& id = m.call_id;
    bool creates = m.op == Op::create_offer || m.op == Op::create_answer;
    media::MediaSession* s = session_for(id, creates);
    if (!s) {
        if (m.op == Op::close || m.op == Op::transfer_media) {
            if (m.op == Op::transfer_media) close_session(m.from_call_id);
            return;
        }
        observer_.on_log("call " + id + ": no media session for this step");
        if (creates) {
            // Without media the call cannot go on.
            asio::post(ex_, [this, id] { feed(call::HangUpCall{id, "user_media_failed"}); });
        }
        return;
    }
    try {
        switch (m.op) {
            case Op::create_offer:
                report_local_streams(id);
                s->create_offer();
                break;
            case Op::create_answer:
                report_local_streams(id);
                s->create_answer(m.sdp);
                break;
            case Op::set_remote_description:
                s->set_remote_answer(m.sdp);
                break;
            case Op::add_remote_candidate:
                s->add_remote_candidate(
                    static_cast<unsigned>(m.candidate.sdp_mline_index.value_or(0)),
                    m.candidate.candidate);
                break;
            case Op::transfer_media:
                // Test sources cost nothing to recreate: the old session goes, the surviving call
                // makes its own when it answers.
                close_session(m.from_call_id);
                break;
            case Op::rollback:
                s->rollback();
                break;
            case Op::hold:
            case Op::resume:
                s->set_hold(m.op == Op::hold);
                asio::post(ex_, [this, id] { feed(call::NegotiationNeeded{id}); });
                break;
            case Op::add_screenshare:
            case Op::remove_screenshare:
                s->set_screenshare(m.op == Op::add_screenshare, m.replace_camera);
                report_local_streams(id);
                if (!m.replace_camera)
                    asio::post(ex_, [this, id] { feed(call::NegotiationNeeded{id}); });
                break;
            case Op::ice_restart:
                if (!s->can_restart_ice()) {
                    observer_.on_log("call " + id + ": this media engine cannot restart ICE");
                    asio::post(ex_, [this, id] {
                        feed(call::IceStateChanged{id, call::IceState::failed});
                    });
                }
                break;
            case Op::close:
                close_session(id);
                break;
        }
    } catch (const std::exception& e) {
        // The engine failed mid-call (say, a pipeline that cannot be built): the call ends as
        // a media failure, not the program.
        CallInfo& info = calls_[id];
        if (info.media_error.empty()) info.media_error = e.what();
        observer_.on_log("call " + id + ": media failed: " + e.what());
        std::string call_id = id;
        asio::post(ex_, [this, call_id] { feed(call::HangUpCall{call_id, "user_media_failed"}); });
    }
}

void CallDriver::on_media(const std::string& call_id, media::Event ev) {
    if (!sessions_.count(call_id)) return;  // closed meanwhile
    if (auto* d = std::get_if<media::DescriptionReady>(&ev)) {
        feed(call::LocalDescription{call_id, d->type, std::move(d->sdp)});
    } else if (auto* c = std::get_if<media::CandidateReady>(&ev)) {
        proto::Candidate cand;
        cand.candidate = std::move(c->candidate);
        cand.sdp_mid = c->mid;
        cand.sdp_mline_index = c->mline;
        feed(call::LocalCandidate{call_id, std::move(cand)});
    } else if (std::get_if<media::GatheringComplete>(&ev)) {
        feed(call::GatheringDone{call_id});
    } else if (auto* i = std::get_if<media::IceChanged>(&ev)) {
        feed(call::IceStateChanged{call_id, i->state});
    } else if (auto* t = std::get_if<media::RemoteTrackAdded>(&ev)) {
        stream_seen(call_id, t->stream_id, t->kind);
    } else if (auto* f = std::get_if<media::FirstFrame>(&ev)) {
        CallInfo& info = calls_[call_id];
        if (info.first_frame_at.emplace(f->kind, Clock::now()).second)
            info.first_frame_unix_ms[f->kind] =
                std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
    } else if (auto* e = std::get_if<media::MediaFailed>(&ev)) {
        CallInfo& info = calls_[call_id];
        observer_.on_log("call " + call_id + ": media failed: " + e->what);
        if (info.media_error.empty()) info.media_error = e->what;
        feed(call::HangUpCall{call_id, "user_media_failed"});
    }
}

media::Kind CallInfo::setup_kind() const {
    for (const auto& [id, rs] : streams)
        if (rs.kinds.count(media::Kind::video)) return media::Kind::video;
    return media::Kind::audio;
}

std::optional<Clock::time_point> CallInfo::first_remote_media_at() const {
    auto it = first_frame_at.find(setup_kind());
    if (it == first_frame_at.end()) return std::nullopt;
    return it->second;
}

std::int64_t CallInfo::first_remote_media_unix_ms() const {
    auto it = first_frame_unix_ms.find(setup_kind());
    return it == first_frame_unix_ms.end() ? 0 : it->second;
}

void CallDriver::stream_seen(const std::string& call_id, const std::string& stream_id,
                             media::Kind kind) {
    CallInfo& info = calls_[call_id];
    bool first = info.streams.empty() || info.streams.count(stream_id) == info.streams.size();
    if (!manager_.use_remote_stream(call_id, stream_id, first)) {
        observer_.on_log("call " + call_id + ": ignoring remote stream '" + stream_id +
                         "' (not in the peer's stream metadata)");
        return;
    }
    RemoteStream& rs = info.streams[stream_id];
    rs.stream_id = stream_id;
    const auto& meta = remote_metadata_[call_id];
    auto it = meta.find(stream_id);
    rs.purpose = it != meta.end() ? it->second.purpose : std::string(proto::kPurposeUsermedia);
    if (!rs.kinds.insert(kind).second) return;
    if (!rs.removed) observer_.on_stream_added(info, rs, kind);
}

void CallDriver::streams_changed(const std::string& call_id, const proto::SdpStreamMetadata& m) {
    remote_metadata_[call_id] = m;
    CallInfo& info = calls_[call_id];
    for (auto& [id, rs] : info.streams) {
        auto it = m.find(id);
        if (it == m.end() && !rs.removed && !m.empty()) {
            rs.removed = true;
            observer_.on_stream_removed(info, rs);
        } else if (it != m.end()) {
            rs.purpose = it->second.purpose;
            if (rs.removed) {
                rs.removed = false;
                for (media::Kind k : rs.kinds) observer_.on_stream_added(info, rs, k);
            }
        }
    }
}

// ---- signalling --------------------------------------------------------------------------

asio::awaitable<void> CallDriver::send_loop() {
    while (!stopping_) {
        if (std::exchange(crypto_due_, false)) {
            co_await send_crypto_requests();
            continue;
        }
        if (outbox_.empty()) {
            outbox_signal_->expires_at(Clock::time_point::max());
            auto [ec] = co_await outbox_signal_->async_wait(asio::as_tuple(use_awaitable));
            (void)ec;
            continue;
        }
        call::SendEvent ev = std::move(outbox_.front());
        outbox_.pop_front();
        send_busy_ = true;
        try {
            if (opt_.crypto && encrypted(ev.room_id)) {
                co_await share_room_key(ev.room_id);
                json::object content =
                    opt_.crypto->encrypt(ev.room_id, ev.type, ev.content, unix_ms());
                std::string type = "m.room.encrypted";
                co_await client_.send_event(ev.room_id, type, std::move(content));
            } else {
                co_await client_.send_event(ev.room_id, ev.type, std::move(ev.content));
            }
            if (ev.type == "m.call.invite") calls_[ev.call_id].signalled_at = Clock::now();
        } catch (const std::exception& e) {
            send_busy_ = false;
            observer_.on_fatal("sending " + ev.type + " for call " + ev.call_id +
                               " failed: " + e.what());
            continue;
        }
        send_busy_ = false;
    }
}

asio::awaitable<bool> CallDriver::send_crypto_request(crypto::Request r) {
    static constexpr const char* kPaths[] = {"/_matrix/client/v3/keys/upload",
                                             "/_matrix/client/v3/keys/query",
                                             "/_matrix/client/v3/keys/claim"};
    json::object response;
    try {
        if (r.kind == crypto::RequestKind::to_device) {
            co_await client_.send_to_device(r.event_type, r.id, std::move(r.body));
        } else {
            std::string method = "POST";
            std::string target = kPaths[static_cast<int>(r.kind)];
            std::string body = json::serialize(r.body);
            json::value v = co_await client_.call(method, target, std::move(body));
            if (v.is_object()) response = std::move(v.as_object());
        }
    } catch (const ClientError& e) {
        opt_.crypto->mark_failed(r.id);
        observer_.on_log(std::string("encryption: a key request failed: ") + e.what());
        co_return false;
    }
    for (const auto& problem : opt_.crypto->mark_sent(r.id, response))
        observer_.on_log("encryption: " + problem);
    co_return true;
}

asio::awaitable<void> CallDriver::send_crypto_requests() {
    for (crypto::Request& r : opt_.crypto->outgoing_requests())
        co_await send_crypto_request(std::move(r));
}

// Before an event goes into an encrypted room: the members' devices known, an Olm session
// with each, the room's Megolm key with each.
asio::awaitable<void> CallDriver::share_room_key(std::string room_id) {
    auto room = rooms_.find(room_id);
    if (room == rooms_.end()) throw ClientError(0, "", "not in " + room_id);
    std::vector<std::string> members(room->second.joined.begin(), room->second.joined.end());
    crypto::RoomSettings settings = room->second.encryption;
    opt_.crypto->track_users(members);
    co_await send_crypto_requests();
    if (std::optional<crypto::Request> claim =
            opt_.crypto->claim_missing_sessions(members, unix_ms()))
        co_await send_crypto_request(std::move(*claim));
    crypto::Sharing sharing = opt_.crypto->share_room_key(room_id, members, settings, unix_ms());
    for (const auto& why : sharing.skipped)
        if (told_skipped_.insert(why).second)
            observer_.on_log("encryption: cannot share the key of " + room_id + " with " + why);
    for (crypto::Request& r : sharing.requests)
        if (!co_await send_crypto_request(std::move(r)))
            throw ClientError(0, "", "the room key of " + room_id + " could not be sent");
}

asio::awaitable<void> CallDriver::refresh_turn() {
    while (!stopping_) {
        std::chrono::seconds next{30};
        try {
            TurnCredentials t = co_await client_.turn_server();
            if (t.uris.empty()) observer_.on_log("the homeserver offers no TURN server");
            // Refresh at 80 % of the lifetime so a call never starts with stale credentials.
            if (t.ttl.count() > 0) next = std::max(std::chrono::seconds(10), t.ttl * 4 / 5);
            turn_ = std::move(t);
        } catch (const ClientError& e) {
            observer_.on_log(std::string("cannot fetch TURN credentials: ") + e.what());
        }
        asio::steady_timer timer(ex_, next);
        co_await timer.async_wait(use_awaitable);
    }
}

// Room keys and device changes first, so that this batch's events can be decrypted; then the
// events still waiting for a key, before this batch's own.
void CallDriver::receive_crypto(const json::object& sync, call::SyncBatch& batch) {
    crypto::SyncChanges c;
    if (const json::object* td = object_at(sync, "to_device"))
        if (const json::array* events = array_at(*td, "events")) c.to_device = *events;
    if (const json::object* lists = object_at(sync, "device_lists")) {
        c.changed = strings_at(*lists, "changed");
        c.left = strings_at(*lists, "left");
    }
    if (const json::object* counts = object_at(sync, "device_one_time_keys_count"))
        for (const auto& [alg, n] : *counts)
            if (n.is_int64()) c.one_time_key_counts[std::string(alg)] = n.as_int64();
    if (array_at(sync, "device_unused_fallback_key_types"))
        c.unused_fallback_key_types = strings_at(sync, "device_unused_fallback_key_types");
    for (const auto& problem : opt_.crypto->receive_sync(c, unix_ms()))
        observer_.on_log("encryption: " + problem);
    // Said once, when first seen (decrypt_into); dropped quietly when no key came.
    for (auto it = undecrypted_.begin(); it != undecrypted_.end();) {
        if (decrypt_into(it->room_id, it->event, batch, false) ||
            now() - it->first_seen > kUndecryptedWait)
            it = undecrypted_.erase(it);
        else
            ++it;
    }
}

bool CallDriver::decrypt_into(const std::string& room_id, const json::object& ev,
                              call::SyncBatch& batch, bool first_try) {
    crypto::Decryption d = opt_.crypto->decrypt(room_id, ev);
    if (d.event) {
        if (d.event->type.starts_with("m.call."))
            batch.events.push_back(
                room_event(room_id, ev, std::move(d.event->type), std::move(d.event->content)));
        return true;
    }
    if (first_try)
        observer_.on_log("encryption: cannot decrypt " + string_at(ev, "event_id") + " from " +
                         string_at(ev, "sender") + ": " + d.error +
                         (d.key_missing ? "; kept for a minute in case its key arrives" : ""));
    return !d.key_missing;
}

void CallDriver::process_sync(const json::object& sync) {
    const std::string& me = client_.session().user_id;
    call::SyncBatch batch;
    if (opt_.crypto) receive_crypto(sync, batch);
    // The first /sync of a new session: its timelines are history.
    const bool history = !synced_ && since_.empty();
    std::size_t unreadable_history = 0;
    const json::object* rooms = object_at(sync, "rooms");
    if (const json::object* join = rooms ? object_at(*rooms, "join") : nullptr) {
        for (const auto& [room_key, room_value] : *join) {
            if (!room_value.is_object()) continue;
            std::string room_id(room_key);
            Room before = rooms_[room_id];
            Room& room = rooms_[room_id];
            invites_.erase(room_id);
            for (const char* section : {"state", "timeline"}) {
                const json::object* sec = object_at(room_value.as_object(), section);
                const json::array* events = sec ? array_at(*sec, "events") : nullptr;
                if (!events) continue;
                for (const auto& v : *events) {
                    if (!v.is_object()) continue;
                    const json::object& ev = v.as_object();
                    std::string type = string_at(ev, "type");
                    const json::object* content = object_at(ev, "content");
                    if (!content) continue;
                    if (type == "m.room.member" && ev.contains("state_key")) {
                        std::string who = string_at(ev, "state_key");
                        if (string_at(*content, "membership") == "join")
                            room.joined.insert(who);
                        else
                            room.joined.erase(who);
                    } else if (type == "m.room.join_rules" && ev.contains("state_key")) {
                        room.is_public = string_at(*content, "join_rule") == "public";
                    } else if (type == "m.room.encryption" && ev.contains("state_key")) {
                        room.encrypted = true;
                        room.encryption.algorithm = string_at(*content, "algorithm");
                        const json::value* ms = content->if_contains("rotation_period_ms");
                        if (ms && ms->is_int64() && ms->as_int64() > 0)
                            room.encryption.rotation_period_ms = ms->as_int64();
                        const json::value* msgs = content->if_contains("rotation_period_msgs");
                        if (msgs && msgs->is_int64() && msgs->as_int64() > 0)
                            room.encryption.rotation_period_msgs = msgs->as_int64();
                    } else if (type == "m.room.encrypted" && opt_.crypto &&
                               std::string_view(section) == "timeline") {
                        if (history) {
                            // Sent before this device existed: its keys are not ours to have.
                            if (!decrypt_into(room_id, ev, batch, false)) ++unreadable_history;
                        } else if (!decrypt_into(room_id, ev, batch, true)) {
                            if (undecrypted_.size() == kMaxUndecrypted) undecrypted_.pop_front();
                            undecrypted_.push_back({room_id, ev, now()});
                        }
                    } else if (type == "m.room.encrypted" && !opt_.crypto && !room.told_encrypted &&
                               string_at(ev, "sender") != me) {
                        // Possibly a call invite: say why it will not ring, once per room.
                        room.told_encrypted = true;
                        observer_.on_log("encrypted events in " + room_id + " from " +
                                         string_at(ev, "sender") +
                                         " cannot be read: end-to-end encryption is off, so "
                                         "calls in that room do not reach this client");
                    } else if (type.rfind("m.call.", 0) == 0 &&
                               std::string_view(section) == "timeline") {
                        batch.events.push_back(room_event(room_id, ev, type, *content));
                    }
                }
            }
            if (room.joined != before.joined || room.is_public != before.is_public)
                feed(call::RoomChanged{room_id, room.is_public, room.joined});
            // The members of encrypted rooms are the devices room keys go to: keep them known.
            if (opt_.crypto && room.encrypted &&
                (room.joined != before.joined || !before.encrypted))
                opt_.crypto->track_users({room.joined.begin(), room.joined.end()});
        }
    }
    if (const json::object* invite = rooms ? object_at(*rooms, "invite") : nullptr) {
        for (const auto& [room_key, room_value] : *invite) {
            std::string room_id(room_key);
            if (invites_.count(room_id) || !room_value.is_object()) continue;
            invites_.insert(room_id);
            bool direct = false;
            std::string inviter;
            const json::object* st = object_at(room_value.as_object(), "invite_state");
            if (const json::array* events = st ? array_at(*st, "events") : nullptr) {
                for (const auto& v : *events) {
                    if (!v.is_object()) continue;
                    const json::object& ev = v.as_object();
                    const json::object* content = object_at(ev, "content");
                    if (string_at(ev, "type") == "m.room.member" &&
                        string_at(ev, "state_key") == me && content) {
                        const json::value* d = content->if_contains("is_direct");
                        direct = d && d->is_bool() && d->as_bool();
                        inviter = string_at(ev, "sender");
                    }
                }
            }
            if (!direct || !opt_.join_direct_invites) continue;
            observer_.on_log("joining the direct chat " + room_id + " with " + inviter);
            // Joined, and recorded in m.direct as the inviter's client did, so that calling
            // them later finds this room rather than making another.
            asio::co_spawn(
                ex_,
                [this, room_id, inviter]() -> asio::awaitable<void> {
                    try {
                        co_await client_.join(room_id);
                        if (!inviter.empty())
                            co_await remember_direct_chat(client_, inviter, room_id);
                    } catch (const ClientError& e) {
                        observer_.on_log("cannot join " + room_id + ": " + e.what());
                    }
                },
                asio::detached);
        }
    }
    if (unreadable_history)
        observer_.on_log("encryption: " + std::to_string(unreadable_history) +
                         " earlier encrypted events were not shared with this new device");
    if (opt_.crypto) {
        // Key uploads and device queries this batch made due go out from the send loop.
        crypto_due_ = true;
        outbox_signal_->cancel();
    }
    if (!batch.events.empty()) feed(call::SyncBatch{std::move(batch)});
}

asio::awaitable<void> CallDriver::run() {
    crypto_due_ = opt_.crypto != nullptr;  // device and one-time keys go up first
    asio::co_spawn(ex_, send_loop(), asio::detached);
    // The first TURN fetch happens before any call can be placed or answered.
    try {
        TurnCredentials t = co_await client_.turn_server();
        turn_ = std::move(t);
    } catch (const ClientError& e) {
        observer_.on_log(std::string("cannot fetch TURN credentials: ") + e.what());
    }
    asio::co_spawn(ex_, refresh_turn(), asio::detached);
    auto backoff = std::chrono::milliseconds(500);
    bool resuming = !opt_.resume_from.empty();
    if (resuming) since_ = opt_.resume_from;
    while (!stopping_) {
        std::optional<ClientError> failure;
        try {
            int timeout = synced_ ? opt_.sync_timeout_ms : 0;
            json::object sync = co_await client_.sync(since_, timeout, resuming);
            std::string next = string_at(sync, "next_batch");
            process_sync(sync);
            since_ = next;
            synced_ = true;
            resuming = false;
            observer_.on_sync_position(since_);
            backoff = std::chrono::milliseconds(500);
            continue;
        } catch (const ClientError& e) {
            failure = e;
        }
        if (failure->status == 401 || failure->status == 403) {
            observer_.on_fatal(std::string("/sync refused: ") + failure->what());
            co_return;
        }
        if (resuming && !failure->retryable()) {
            // A position this homeserver no longer knows (its database was reset): start over.
            observer_.on_log(std::string("cannot resume /sync where the last run stopped (") +
                             failure->what() + "): starting afresh");
            resuming = false;
            since_.clear();
            continue;
        }
        auto wait = failure->retry_after_ms > 0 ? std::chrono::milliseconds(failure->retry_after_ms)
                                                : backoff;
        observer_.on_log(std::string("/sync failed (") + failure->what() + "), retrying in " +
                         std::to_string(wait.count()) + " ms");
        backoff = std::min(backoff * 2, std::chrono::milliseconds(30000));
        asio::steady_timer timer(ex_, wait);
        co_await timer.async_wait(use_awaitable);
    }
}

}  // namespace mxvoip::client
