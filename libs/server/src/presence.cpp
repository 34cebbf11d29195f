#include "presence.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "json_out.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/json.hpp"

namespace mxvoip::server {

namespace json = boost::json;
using proto::MatrixError;
namespace errcode = proto::errcode;

namespace {

constexpr auto kTick = std::chrono::seconds(5);

bool is_presence(std::string_view p) {
    return p == "online" || p == "unavailable" || p == "offline";
}

}  // namespace

Presence::Presence(Core& core, Accounts& accounts, Rooms& rooms)
    : core_(core), accounts_(accounts), rooms_(rooms) {
    rooms_.on_appended([this](const Room&, const EventPtr& ev) { appended_locked(ev); });
    // A change another process made: what others see follows (its timeouts are that
    // process's to apply, where the user syncs).
    core_.on_change("presence", [this](const store::ChangeRecord& c, const store::EventRecord*,
                                       std::vector<std::string>& wake) {
        if (!core_.config().presence_enabled) return;
        std::optional<store::PresenceRecord> p;
        try {
            p = core_.store().presence_of({c.key}).front();
        } catch (const std::exception& e) {
            spdlog::warn("the presence of {} could not be read: {}", c.key, e.what());
        }
        if (!p) return;
        if (!users_.count(c.key)) trim_locked();
        State& st = users_[c.key];
        if (p->stream <= st.stream) return;
        st.presence = p->presence;
        st.status_msg = p->status_msg;
        st.stream = p->stream;
        st.last_active = std::max(st.last_active, p->last_active_ts);
        if (st.in_flight == 0) {
            st.wanted = st.presence;
            st.wanted_status = st.status_msg;
        }
        auto audience = audience_locked(c.key);
        wake.insert(wake.end(), audience.begin(), audience.end());
    });
}

std::vector<std::string> Presence::audience_locked(const std::string& user) const {
    // Whoever shares a joined room with the user sees it, and the user's own devices.
    std::vector<std::string> out{user};
    for (const auto& [room_id, m] : rooms_.memberships_or_skip_locked(user)) {
        if (m.membership != "join") continue;
        if (const Room* room = rooms_.find_or_skip_locked(room_id))
            for (const auto& [member, mm] : room->membership)
                if (mm == "join" && member != user) out.push_back(member);
    }
    return out;
}

Presence::State Presence::from_record(const store::PresenceRecord& p) {
    State st;
    st.presence = st.wanted = p.presence;
    st.chosen = p.presence == "unavailable" ? "unavailable" : "online";
    st.status_msg = st.wanted_status = p.status_msg;
    st.last_active = p.last_active_ts;
    st.stream = p.stream;
    return st;
}

void Presence::load(store::Snapshot& snap) {
    std::lock_guard lock(core_.mu);
    // Every change after it is held (applied here, or fed from another process).
    horizon_ = snap.max_stream;
    if (!core_.config().presence_enabled) return;
    const std::int64_t now = core_.now_ms();
    // The users not offline: whoever else is offline, as of a change at or before the horizon.
    for (const auto& p : snap.presence) {
        State& st = users_[p.user_id] = from_record(p);
        // Nobody syncs across a restart: who was present goes offline unless they come back.
        st.last_sync = now;
        if (st.wanted != "offline") present_.insert(p.user_id);
    }
}

Presence::State& Presence::state_locked(const std::string& user) {
    if (auto it = users_.find(user); it != users_.end()) return it->second;
    // Read under the lock: a change of it applies under it too, so none overtakes the read.
    auto p = core_.store().presence_of({user}).front();
    trim_locked();
    return users_[user] = p ? from_record(*p) : State{};
}

void Presence::trim_locked() {
    if (users_.size() < kHeld) return;
    // Those the timer, a change in flight or a running /sync needs stay.
    std::vector<std::pair<StreamId, const std::string*>> idle;
    for (const auto& [user, st] : users_)
        if (st.in_flight == 0 && st.syncing == 0 && !present_.count(user))
            idle.emplace_back(st.stream, &user);
    if (idle.size() < 2) return;
    auto middle = idle.begin() + static_cast<std::ptrdiff_t>(idle.size() / 2);
    std::nth_element(idle.begin(), middle, idle.end());
    StreamId newest = 0;
    std::vector<std::string> gone;
    for (auto it = idle.begin(); it != middle; ++it) {
        newest = std::max(newest, it->first);
        gone.push_back(*it->second);
    }
    for (const auto& user : gone) users_.erase(user);
    horizon_ = std::max(horizon_, newest);
    spdlog::info(
        "presence: {} users let go of, {} held; changes at or before {} are read from "
        "the database",
        gone.size(), users_.size(), horizon_);
}

void Presence::start(asio::any_io_executor ex) {
    std::lock_guard lock(core_.mu);
    timer_.emplace(std::move(ex));
    arm_locked();
}

void Presence::stop() {
    std::lock_guard lock(core_.mu);
    stopped_ = true;
    if (timer_) timer_->cancel();
}

void Presence::arm_locked() {
    if (!timer_ || stopped_ || armed_ || present_.empty()) return;
    armed_ = true;
    timer_->expires_after(kTick);
    timer_->async_wait([this](boost::system::error_code ec) {
        if (!ec) tick();
    });
}

void Presence::tick() {
    std::lock_guard lock(core_.mu);
    armed_ = false;
    if (stopped_) return;
    const std::int64_t now = core_.now_ms();
    std::vector<std::pair<std::string, std::string>> changes;
    for (const auto& user : present_) {
        const State& st = users_[user];
        if (st.syncing == 0 && now - st.last_sync > kSyncGoneMs)
            changes.emplace_back(user, "offline");
        else if (st.wanted == "online" && st.last_active && now - st.last_active > kIdleMs)
            changes.emplace_back(user, "unavailable");
    }
    for (const auto& [user, presence] : changes)
        if (auto d = change_locked(user, users_[user], presence))
            core_.transact_locked(std::move(*d));
    arm_locked();
}

std::optional<Decision> Presence::change_locked(const std::string& user, State& st,
                                                const std::string& presence,
                                                std::optional<std::string> status, bool force) {
    if (!force && st.wanted == presence && (!status || *status == st.wanted_status))
        return std::nullopt;
    st.wanted = presence;
    if (status) st.wanted_status = std::move(*status);
    st.in_flight++;
    // The timer looks at whoever the last change leaves present.
    if (presence == "offline") {
        present_.erase(user);
    } else {
        present_.insert(user);
        arm_locked();
    }
    Decision d;
    d.streams = 1;
    d.decide = [record =
                    store::PresenceRecord{0, user, presence, st.wanted_status, st.last_active}](
                   store::Txn& txn, StreamId position) {
        store::PutPresence put{record};
        put.presence.stream = position;
        txn.write(put);
    };
    d.applied = [this, user, presence, status = st.wanted_status](StreamId position) {
        State& st = users_[user];
        if (position > st.stream) {
            st.presence = presence;
            st.status_msg = status;
            st.stream = position;
        }
        return audience_locked(user);
    };
    d.settled = [this, user] {
        State& st = users_[user];
        if (--st.in_flight > 0) return;
        // Nothing in flight: what is seen is what is wanted (a change not stored is undone).
        st.wanted = st.presence;
        st.wanted_status = st.status_msg;
        if (st.wanted == "offline") present_.erase(user);
    };
    return d;
}

void Presence::appended_locked(const EventPtr& ev) {
    if (!core_.config().presence_enabled) return;
    auto it = users_.find(ev->sender);
    if (it == users_.end()) return;
    State& st = it->second;
    st.last_active = core_.now_ms();
    // An idle user who acts is back; one who chose to be unavailable stays so.
    if (st.wanted == "unavailable" && st.chosen != "unavailable")
        if (auto d = change_locked(ev->sender, st, "online")) core_.transact_locked(std::move(*d));
}

void Presence::sync_started_locked(const std::string& user, const std::string& set_presence) {
    if (!core_.config().presence_enabled) return;
    State& st = state_locked(user);
    st.syncing++;
    st.last_sync = core_.now_ms();
    if (set_presence == "offline" || st.wanted != "offline") return;
    st.last_active = core_.now_ms();
    bool away = set_presence == "unavailable" || st.chosen == "unavailable";
    if (auto d = change_locked(user, st, away ? "unavailable" : "online"))
        core_.transact_locked(std::move(*d));
}

void Presence::sync_ended_locked(const std::string& user) {
    if (!core_.config().presence_enabled) return;
    auto it = users_.find(user);
    if (it == users_.end()) return;
    it->second.syncing = std::max(0, it->second.syncing - 1);
    it->second.last_sync = core_.now_ms();
}

void Presence::append_event(std::string& out, const std::string& user, const State& st,
                            std::int64_t now) const {
    out += "{\"type\":\"m.presence\",\"sender\":";
    append_quoted(out, user);
    out += ",\"content\":{\"presence\":\"" + st.presence + "\"";
    if (st.last_active) {
        std::int64_t ago = std::max<std::int64_t>(0, now - st.last_active);
        out += ",\"last_active_ago\":" + std::to_string(ago);
        out += ",\"currently_active\":";
        out += st.presence == "online" && ago < kCurrentlyActiveMs ? "true" : "false";
    }
    if (!st.status_msg.empty()) {
        out += ",\"status_msg\":";
        append_quoted(out, st.status_msg);
    }
    out += "}}";
}

bool Presence::render_locked(std::string& out, const std::string& user, StreamId since,
                             StreamId upto, bool initial, const EventFilter* filter) const {
    if (!core_.config().presence_enabled) return false;
    std::unordered_set<std::string> seen;
    const std::int64_t now = core_.now_ms();
    bool any = false;
    auto show = [&](const std::string& who, const State& st) {
        if (st.stream > upto || st.stream == 0) return;
        if (initial ? st.presence == "offline" && st.status_msg.empty() : st.stream <= since)
            return;
        if (any) out += ',';
        any = true;
        append_event(out, who, st, now);
    };
    // Whoever is not held changed at or before the horizon: read when that may be shown.
    const bool older = initial || since < horizon_;
    std::vector<std::string> missing;
    auto consider = [&](const std::string& who) {
        if (!seen.insert(who).second) return;
        if (filter && !filter->allows_sender(who)) return;
        if (auto it = users_.find(who); it != users_.end())
            show(who, it->second);
        else if (older)
            missing.push_back(who);
    };
    consider(user);
    for (const auto& [room_id, m] : rooms_.memberships_locked(user)) {
        if (m.membership != "join") continue;
        if (const Room* room = rooms_.find_locked(room_id))
            for (const auto& [member, mm] : room->membership)
                if (mm == "join") consider(member);
    }
    if (!missing.empty()) {
        auto read = core_.store().presence_of(missing);
        for (std::size_t i = 0; i < missing.size(); ++i)
            if (read[i]) show(missing[i], from_record(*read[i]));
    }
    return any;
}

asio::awaitable<Response> Presence::put_status(Request& req) {
    require_own_path(req, 0);
    const std::string& user = req.session->user_id;
    std::string presence(proto::req_string(req.json, "presence"));
    if (!is_presence(presence))
        throw MatrixError(400, errcode::invalid_param,
                          "presence must be online, unavailable or offline");
    std::string status(proto::opt_string(req.json, "status_msg").value_or(""));
    if (status.size() > kMaxStatusBytes)
        throw MatrixError(400, errcode::invalid_param, "status_msg is longer than 1024 bytes");
    if (!core_.config().presence_enabled) co_return Response{};
    Decision d;
    {
        std::lock_guard lock(core_.mu);
        State& st = state_locked(user);
        st.chosen = presence;
        if (presence == "online") st.last_active = core_.now_ms();
        // A user who sets presence without syncing counts as present until the sync timeout.
        st.last_sync = std::max(st.last_sync, core_.now_ms());
        d = *change_locked(user, st, presence, std::move(status), true);
    }
    co_await core_.transact(std::move(d));
    co_return Response{};
}

asio::awaitable<Response> Presence::get_status(Request& req) {
    const std::string& target = req.params[0];
    const std::string& me = req.session->user_id;
    std::string out;
    accounts_.preload({target});
    {
        std::lock_guard lock(core_.mu);
        if (!accounts_.exists_locked(target))
            throw MatrixError(404, errcode::not_found, "Unknown user " + target);
        bool shares = target == me;
        for (const auto& [room_id, m] : rooms_.memberships_locked(me)) {
            if (shares) break;
            if (m.membership != "join") continue;
            if (const Room* room = rooms_.find_locked(room_id))
                shares = room->membership_of(target) == "join";
        }
        if (!shares)
            throw MatrixError(403, errcode::forbidden,
                              "You are not allowed to see the presence of " + target);
        if (!core_.config().presence_enabled)
            co_return Response{200, "{\"presence\":\"offline\"}", {}};
        // Not held: changed at or before the horizon, and read (never stored: offline).
        State read;
        const State* st = &read;
        if (auto it = users_.find(target); it != users_.end())
            st = &it->second;
        else if (auto p = core_.store().presence_of({target}).front())
            read = from_record(*p);
        append_event(out, target, *st, core_.now_ms());
    }
    // The event's content is the answer.
    auto doc = json::parse(out);
    co_return json_response(doc.at("content"));
}

}  // namespace mxvoip::server
