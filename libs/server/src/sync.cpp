#include <spdlog/spdlog.h>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "sync.hpp"

#include <algorithm>
#include <limits>

#include "json_out.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/json.hpp"

namespace mxvoip::server {

namespace json = boost::json;
using proto::MatrixError;
namespace errcode = proto::errcode;

namespace {

constexpr std::int64_t kMaxSyncTimeoutMs = 5 * 60 * 1000;
// A parked /sync woken only by the echo of the requesting device's own events waits this much
// longer for something else before answering. The device already has those events' ids from
// its PUT responses; answering each echo at once costs a response and a new request per event,
// which under call load is two of the five HTTP exchanges an event causes.
constexpr auto kEchoCoalesce = std::chrono::milliseconds(100);
// How far back a /sync reads a room's events from the store for a timeline filter that lets
// few of them through.
constexpr int kFilteredReadBack = 1000;

}  // namespace

Sync::Filter Sync::resolve_filter(const Session& s, const Request& req) const {
    Filter f;
    const std::string* param = req.query_param("filter");
    if (!param || param->empty()) return f;
    json::object filter;
    if (param->front() == '{') {
        filter = proto::parse_json_object(*param);
    } else {
        std::size_t id = 0;
        try {
            std::size_t used = 0;
            id = std::stoul(*param, &used);
            if (used != param->size()) throw std::invalid_argument("filter");
        } catch (...) {
            throw MatrixError(400, errcode::invalid_param,
                              "filter must be a filter id or a JSON object");
        }
        auto text = id <= static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max())
                        ? account_data_.filter(s.user_id, static_cast<std::int64_t>(id))
                        : std::nullopt;
        if (!text) throw MatrixError(404, errcode::not_found, "No such filter");
        filter = json::parse(*text).as_object();
    }
    f.spec = SyncFilter::parse(filter);
    if (f.spec.timeline.limit) f.timeline_limit = *f.spec.timeline.limit;
    return f;
}

void Sync::render_timeline_locked(std::string& out, const Room& room, const Session& s,
                                  StreamId since, StreamId upto, const Filter& f, bool& limited,
                                  StreamId& first_stream, Shown& shown) {
    const std::string device_key = s.device_key();
    const std::int64_t now = core_.now_ms();
    auto may_see = [&](StreamId stream, const std::string& type,
                       const std::optional<std::string>& state_key) {
        return room.history.may_see(s.user_id, stream, type, state_key);
    };
    const EventFilter& wanted = f.spec.timeline;
    std::vector<EventPtr> events;
    for (auto it = room.recent.rbegin(); it != room.recent.rend(); ++it) {
        const auto& ev = *it;
        if (ev->stream > upto) continue;
        if (ev->stream <= since) break;
        if (!may_see(ev->stream, ev->type, ev->state_key)) continue;
        if (!wanted.allows(ev->type, ev->sender, room.id, ev->content())) continue;
        events.push_back(ev);
        if (static_cast<int>(events.size()) > f.timeline_limit) break;
    }
    limited = static_cast<int>(events.size()) > f.timeline_limit;
    if (limited) events.pop_back();
    std::reverse(events.begin(), events.end());
    std::vector<store::EventRecord> older;
    if (!limited && since < room.evicted_upto) {
        // The in-memory window does not reach back to `since`: the rest comes from the store
        // (which may hold events committed but not yet visible: a room read meanwhile).
        StreamId before =
            events.empty() ? std::min(room.evicted_upto, upto) + 1 : events.front()->stream;
        const int want = f.timeline_limit - static_cast<int>(events.size());
        // Read back page by page until the filter let `want` (and one more, to tell whether the
        // timeline is limited) through, `since` is reached or the room begins; a filter that
        // lets little through reads at most kFilteredReadBack events, and the timeline is then
        // limited (the client pages back with /messages).
        const int page = std::max(want + 1, 50);
        int read = 0;
        for (bool done = false; !done;) {
            auto rows = core_.store().events_before(room.id, before, page);
            done = static_cast<int>(rows.size()) < page;
            for (auto& r : rows) {
                if (r.stream <= since) {
                    done = true;
                    break;
                }
                before = r.stream;
                ++read;
                if (!may_see(r.stream, r.type, r.state_key)) continue;
                if (!wanted.allows(r.type, r.sender, room.id,
                                   wanted.contains_url
                                       ? json::serialize(json::parse(r.json).at("content"))
                                       : std::string("{}")))
                    continue;
                older.push_back(std::move(r));
                if (static_cast<int>(older.size()) > want) {
                    done = true;
                    break;
                }
            }
            if (!done && read >= kFilteredReadBack) {
                limited = true;
                done = true;
            }
        }
        if (static_cast<int>(older.size()) > want) {
            limited = true;
            older.resize(want);
        }
        std::reverse(older.begin(), older.end());
    }
    first_stream = !older.empty()    ? older.front().stream
                   : !events.empty() ? events.front()->stream
                                     : upto + 1;
    out += "\"timeline\":{\"events\":[";
    Comma comma;
    for (const auto& r : older) {
        comma(out);
        render_event(out, r, device_key, now);
        shown.senders.insert(r.sender);
        shown.streams.insert(r.stream);
    }
    for (const auto& ev : events) {
        comma(out);
        render_event(out, *ev, device_key, now);
        shown.senders.insert(ev->sender);
        shown.streams.insert(ev->stream);
    }
    out += "],\"limited\":";
    out += limited ? "true" : "false";
    out += ",\"prev_batch\":\"" + make_token(first_stream - 1) + "\"}";
}

void Sync::render_state(std::string& out, const Room& room, StreamId after, StreamId upto,
                        const Session& s, const Filter& f, const Shown& shown) const {
    out += "\"state\":{\"events\":[";
    const std::int64_t now = core_.now_ms();
    const std::string device_key = s.device_key();
    const EventFilter& wanted = f.spec.state;
    Comma comma;
    for (const auto& [key, ev] : room.state) {
        if (ev->stream > upto || shown.streams.count(ev->stream)) continue;
        if (wanted.lazy_load_members && key.first == "m.room.member") {
            if (key.second != s.user_id && !shown.senders.count(key.second)) continue;
        } else if (ev->stream <= after) {
            continue;
        }
        if (!wanted.allows(ev->type, ev->sender, room.id, ev->content())) continue;
        comma(out);
        render_event(out, *ev, device_key, now);
    }
    out += "]}";
}

bool Sync::state_left_out_locked(const Room& room, StreamId since, StreamId upto, const Filter& f,
                                 const Shown& shown) const {
    for (const auto& [_, ev] : room.state)
        if (ev->stream > since && ev->stream <= upto && !shown.streams.count(ev->stream) &&
            f.spec.state.allows(ev->type, ev->sender, room.id, ev->content()))
            return true;
    return false;
}

bool Sync::only_own_echo_locked(const Session& s, StreamId since,
                                const AccountDataEntries& account_data) const {
    const std::string dkey = s.device_key();
    const StreamId visible = core_.visible_locked();
    bool any = false;
    for (const auto& [room_id, m] : rooms_.memberships_locked(s.user_id)) {
        if (m.stream > since && m.stream <= visible) return false;  // a membership change
        if (m.membership != "join") continue;
        const Room& room = *rooms_.find_locked(room_id);
        for (auto it = room.recent.rbegin(); it != room.recent.rend() && (*it)->stream > since;
             ++it) {
            if ((*it)->stream > visible) continue;
            if ((*it)->txn_device_key != dkey) return false;
            any = true;
        }
        if (room.evicted_upto > since) return false;  // older events, in the store only
        std::string ephemeral;
        if (receipts_.render_locked(ephemeral, room_id, s.user_id, since, visible, false) ||
            typing_.render_locked(ephemeral, room, since, visible, false))
            return false;
    }
    for (const auto& [_, data] : account_data)
        if (data.stream > since && data.stream <= visible) return false;
    if (to_device_.has_new_locked(s, since, visible)) return false;
    if (std::string scratch; presence_.render_locked(scratch, s.user_id, since, visible, false))
        return false;
    auto devices = keys_.device_list_delta_locked(s.user_id, since, visible);
    if (!devices.changed.empty() || !devices.left.empty()) return false;
    return any;
}

namespace {
// Whether a room of the user's is in a /sync: a joined room always; an invite, and a room
// left, kicked or banned from, once, in the first sync after it happened (left rooms in an
// initial sync only when the filter asks for them).
bool shown_in_sync(const RoomMembership& m, StreamId since, bool initial, bool include_leave) {
    if (m.membership == "join") return true;
    if (m.membership == "invite") return initial || m.stream > since;
    return initial ? include_leave : m.stream > since;
}
}  // namespace

bool Sync::build_locked(const Session& s, StreamId since, bool initial, const Filter& f,
                        bool full_state, const AccountDataEntries& account_data,
                        const Keys::UserKeys& keys, std::string& out) {
    const StreamId upto = core_.visible_locked();
    const std::string dkey = s.device_key();
    bool has_content = false;

    std::string join, invite, leave;
    Comma join_comma, invite_comma, leave_comma;
    for (const auto& [room_id, m] : rooms_.memberships_locked(s.user_id)) {
        if (m.stream > upto) continue;  // its membership change is still being committed
        if (!f.spec.room_rooms.allows_room(room_id)) continue;
        if (!shown_in_sync(m, since, initial, f.spec.include_leave)) continue;
        const Room* found = rooms_.find_locked(room_id);
        if (!found) continue;
        const Room& room = *found;
        if (m.membership == "join") {
            // Newly joined rooms get their history from the start; full_state re-sends the
            // state but keeps the timeline incremental.
            bool joined_since = initial || m.stream > since;
            bool fresh = joined_since || full_state;
            std::string entry;
            bool limited = false;
            StreamId first = 0;
            Shown shown;
            entry += '{';
            render_timeline_locked(entry, room, s, joined_since ? 0 : since, upto, f, limited,
                                   first, shown);
            bool timeline_empty = first > upto;
            std::string room_data;
            Comma ad_comma;
            for (auto it = account_data.lower_bound({room_id, ""});
                 it != account_data.end() && it->first.first == room_id; ++it) {
                if (!fresh && it->second.stream <= since) continue;
                if (it->second.stream > upto) continue;
                if (!f.spec.room_account_data.allows_type(it->first.second)) continue;
                ad_comma(room_data);
                room_data += "{\"type\":" + quoted(it->first.second) +
                             ",\"content\":" + it->second.content + "}";
            }
            std::string ephemeral;
            if (f.spec.ephemeral.allows_type("m.receipt"))
                receipts_.render_locked(ephemeral, room_id, s.user_id, since, upto, fresh);
            std::string typing;
            if (f.spec.ephemeral.allows_type("m.typing") &&
                typing_.render_locked(typing, room, since, upto, fresh))
                ephemeral += (ephemeral.empty() ? "" : ",") + typing;
            const bool state_news = !fresh && state_left_out_locked(room, since, upto, f, shown);
            if (!fresh && timeline_empty && room_data.empty() && ephemeral.empty() && !state_news)
                continue;
            entry += ',';
            if (fresh)
                render_state(entry, room, 0, upto, s, f, shown);
            else if (limited || state_news || f.spec.state.lazy_load_members)
                render_state(entry, room, since, upto, s, f, shown);
            else
                entry += "\"state\":{\"events\":[]}";
            std::size_t joined = 0, invited = 0;
            // Heroes: the first five other members joined or invited, in the stream order of
            // their member events (the spec's order, and the same after a restart).
            std::vector<std::pair<StreamId, const std::string*>> others;
            for (const auto& [member, mm] : room.membership) {
                if (mm == "join") ++joined;
                if (mm == "invite") ++invited;
                if ((mm == "join" || mm == "invite") && member != s.user_id)
                    if (auto ev = room.state_event("m.room.member", member))
                        others.emplace_back(ev->stream, &member);
            }
            auto five = others.begin() + std::min<std::size_t>(others.size(), 5);
            std::partial_sort(others.begin(), five, others.end());
            std::string heroes;
            Comma hero_comma;
            for (auto it = others.begin(); it != five; ++it) {
                hero_comma(heroes);
                append_quoted(heroes, *it->second);
            }
            entry += ",\"account_data\":{\"events\":[" + room_data + "]}";
            entry += ",\"ephemeral\":{\"events\":[" + ephemeral + "]}";
            entry += ',';
            notifications_.render_counts_locked(entry, room, s.user_id);
            entry += ",\"summary\":{\"m.heroes\":[" + heroes +
                     "],\"m.joined_member_count\":" + std::to_string(joined) +
                     ",\"m.invited_member_count\":" + std::to_string(invited) + "}}";
            join_comma(join);
            append_quoted(join, room_id);
            join += ':';
            join += entry;
        } else if (m.membership == "invite") {
            invite_comma(invite);
            append_quoted(invite, room_id);
            invite += ":{\"invite_state\":{\"events\":[";
            Comma c;
            static const char* kStripped[] = {
                "m.room.create",          "m.room.join_rules", "m.room.name", "m.room.avatar",
                "m.room.canonical_alias", "m.room.encryption", "m.room.topic"};
            for (const char* type : kStripped) {
                if (auto ev = room.state_event(type, ""); ev && ev->stream <= upto) {
                    c(invite);
                    invite += "{\"content\":";
                    invite += ev->content();
                    invite += ",\"sender\":" + quoted(ev->sender) +
                              ",\"state_key\":\"\",\"type\":" + quoted(ev->type) + "}";
                }
            }
            auto me = room.state_event("m.room.member", s.user_id);
            if (me) {
                if (auto inviter = room.state_event("m.room.member", me->sender);
                    inviter && inviter != me) {
                    c(invite);
                    invite += "{\"content\":";
                    invite += inviter->content();
                    invite += ",\"sender\":" + quoted(inviter->sender) +
                              ",\"state_key\":" + quoted(me->sender) +
                              ",\"type\":\"m.room.member\"}";
                }
                c(invite);
                render_event(invite, *me, dkey, core_.now_ms());
            }
            invite += "]}}";
        } else {
            leave_comma(leave);
            append_quoted(leave, room_id);
            leave += ":{";
            bool limited = false;
            StreamId first = 0;
            Shown shown;
            render_timeline_locked(leave, room, s, initial ? 0 : since, m.stream, f, limited, first,
                                   shown);
            leave += ",\"state\":{\"events\":[]},\"account_data\":{\"events\":[]}}";
        }
    }

    std::string global;
    Comma global_comma;
    for (auto it = account_data.lower_bound({"", ""});
         it != account_data.end() && it->first.first.empty(); ++it) {
        if ((!initial && it->second.stream <= since) || it->second.stream > upto) continue;
        if (!f.spec.account_data.allows_type(it->first.second)) continue;
        global_comma(global);
        global +=
            "{\"type\":" + quoted(it->first.second) + ",\"content\":" + it->second.content + "}";
    }
    std::string to_device;
    to_device_.render_locked(to_device, s, since, upto);
    // Whose devices to look up again (an initial sync looks up everyone it meets anyway).
    std::string device_lists = ",\"device_lists\":{\"changed\":[";
    bool devices_changed = false;
    {
        Keys::DeviceListDelta delta;
        if (!initial) delta = keys_.device_list_delta_locked(s.user_id, since, upto);
        devices_changed = !delta.changed.empty() || !delta.left.empty();
        Comma c;
        for (const auto& u : delta.changed) {
            c(device_lists);
            append_quoted(device_lists, u);
        }
        device_lists += "],\"left\":[";
        Comma l;
        for (const auto& u : delta.left) {
            l(device_lists);
            append_quoted(device_lists, u);
        }
        device_lists += "]}";
    }
    has_content = !join.empty() || !invite.empty() || !leave.empty() || !global.empty() ||
                  !to_device.empty() || devices_changed;
    std::string presence;
    if (f.spec.presence.allows_type("m.presence"))
        presence_.render_locked(presence, s.user_id, since, upto, initial, &f.spec.presence);
    has_content = has_content || !presence.empty();

    out.reserve(join.size() + invite.size() + leave.size() + global.size() + to_device.size() +
                400);
    out += "{\"next_batch\":\"" + make_token(upto) + "\"";
    out += ",\"rooms\":{\"join\":{" + join + "},\"invite\":{" + invite + "},\"leave\":{" + leave +
           "},\"knock\":{}}";
    out += ",\"account_data\":{\"events\":[" + global + "]}";
    out += ",\"to_device\":{\"events\":[" + to_device + "]}";
    out += ",\"presence\":{\"events\":[" + presence + "]}";
    out += device_lists;
    keys_.render_key_counts_locked(out, s, keys);
    out += '}';
    return has_content;
}

asio::awaitable<Response> Sync::sync(Request& req) {
    const Session s = *req.session;
    // Without a since token the sync is an initial one; "s0" (a server with nothing in its
    // stream yet) is an incremental sync like any other and waits for something new.
    StreamId since = 0;
    bool initial = true;
    if (const auto* t = req.query_param("since"); t && !t->empty()) {
        since = parse_token(*t);
        initial = false;
    }
    std::int64_t timeout = 0;
    if (const auto* t = req.query_param("timeout")) {
        try {
            timeout = std::clamp<std::int64_t>(std::stoll(*t), 0, kMaxSyncTimeoutMs);
        } catch (...) {
            throw MatrixError(400, errcode::invalid_param,
                              "timeout must be a number of milliseconds");
        }
    }
    std::string set_presence = "online";
    if (const auto* p = req.query_param("set_presence")) {
        if (*p != "online" && *p != "unavailable" && *p != "offline")
            throw MatrixError(400, errcode::invalid_param,
                              "set_presence must be online, unavailable or offline");
        set_presence = *p;
    }
    const auto* fs = req.query_param("full_state");
    bool full_state = fs && *fs == "true";
    auto executor = co_await asio::this_coro::executor;

    std::string out;
    std::shared_ptr<Waiter> waiter;
    Filter filter;
    // While the /sync runs its user is syncing, which presence counts as being there.
    struct Syncing {
        Core& core;
        Presence& presence;
        const std::string& user;
        ~Syncing() {
            std::lock_guard lock(core.mu);
            presence.sync_ended_locked(user);
        }
    };
    filter = resolve_filter(s, req);
    {
        std::lock_guard lock(core_.mu);
        presence_.sync_started_locked(s.user_id, set_presence);
    }
    Syncing syncing{core_, presence_, s.user_id};
    // Held while the /sync runs, so it stays cached and what commits meanwhile reaches it.
    auto account_data = account_data_.entries(s.user_id);
    auto keys = keys_.keys_of(s.user_id);  // the same: the device's key counts
    auto to_device = to_device_.hold(s);   // the same: the device's to-device queue
    auto memberships = rooms_.hold_memberships(s.user_id);  // and the user's rooms
    // The device-list changes since `since` that are only in the store, read now.
    auto older_changes = initial ? nullptr : keys_.hold_older_changes(since);
    {
        // The rooms it shows (and their receipts) that are not held in memory are read now,
        // without the lock.
        std::vector<std::string> room_ids;
        {
            std::lock_guard lock(core_.mu);
            for (const auto& [room_id, m] : rooms_.memberships_locked(s.user_id))
                if (shown_in_sync(m, since, initial, filter.spec.include_leave))
                    room_ids.push_back(room_id);
        }
        rooms_.preload(room_ids);
        receipts_.preload(room_ids);
    }
    {
        std::lock_guard lock(core_.mu);
        // The receipts preloaded for this response are let go past caches.receipts once it is
        // built (or failed), still under the lock.
        struct TrimReceipts {
            Receipts& receipts;
            ~TrimReceipts() { receipts.trim_locked(); }
        } trim{receipts_};
        since = std::min(since, core_.visible_locked());
        // Using a since token acknowledges the to-device messages it covered.
        to_device_.acknowledge_locked(s, since);
        bool has = build_locked(s, since, initial, filter, full_state, *account_data, *keys, out);
        if (has || initial || full_state || timeout == 0 || core_.shutting_down_locked())
            co_return Response{200, std::move(out), {}};
        waiter = core_.park_locked(s.user_id, executor);
        if (!waiter) co_return Response{200, std::move(out), {}};
        spdlog::debug("/sync of {} waits up to {} ms for something after s{}", s.user_id, timeout,
                      since);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout);
    std::optional<std::chrono::steady_clock::time_point> coalesce_until;
    for (;;) {
        auto until = coalesce_until ? std::min(*coalesce_until, deadline) : deadline;
        waiter->timer.expires_at(until);
        boost::system::error_code ec;
        co_await waiter->timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        std::lock_guard lock(core_.mu);
        core_.unpark_locked(s.user_id, waiter);
        auto now = std::chrono::steady_clock::now();
        if (ec == asio::error::operation_aborted && !core_.shutting_down_locked() &&
            now < deadline && (!coalesce_until || now < *coalesce_until) &&
            only_own_echo_locked(s, since, *account_data)) {
            if (!coalesce_until) coalesce_until = now + kEchoCoalesce;
            core_.repark_locked(s.user_id, waiter);
            continue;
        }
        out.clear();
        build_locked(s, since, initial, filter, full_state, *account_data, *keys, out);
        break;
    }
    co_return Response{200, std::move(out), {}};
}

}  // namespace mxvoip::server
