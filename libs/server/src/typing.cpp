#include "typing.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <limits>
#include <set>

#include "json_out.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/json.hpp"

namespace mxvoip::server {

namespace json = boost::json;
using proto::MatrixError;
namespace errcode = proto::errcode;

Typing::Typing(Core& core, Rooms& rooms) : core_(core), rooms_(rooms) {
    core_.on_change("typing", [this](const store::ChangeRecord& c, const store::EventRecord*,
                                     std::vector<std::string>& wake) { fed_locked(c, wake); });
}

void Typing::start(asio::any_io_executor ex) {
    std::lock_guard lock(core_.mu);
    timer_.emplace(std::move(ex));
    arm_locked();
}

void Typing::stop() {
    std::lock_guard lock(core_.mu);
    stopped_ = true;
    if (timer_) timer_->cancel();
}

asio::awaitable<Response> Typing::put_typing(Request& req) {
    require_own_path(req, 1);
    const std::string& room_id = req.params[0];
    const std::string& user = req.session->user_id;
    auto typing_field = proto::opt_bool(req.json, "typing");
    if (!typing_field) throw MatrixError(400, errcode::bad_json, "typing (a boolean) is required");
    bool typing = *typing_field;
    std::int64_t timeout = kDefaultTimeoutMs;
    if (typing)
        if (auto t = proto::opt_int(req.json, "timeout"))
            timeout = std::clamp<std::int64_t>(*t, 0, kMaxTimeoutMs);
    std::optional<Decision> change;
    {
        std::lock_guard lock(core_.mu);
        const Room& room = rooms_.room_or_throw_locked(room_id);
        if (room.membership_of(user) != "join")
            throw MatrixError(403, errcode::forbidden, "You are not joined to this room");
        auto& state = rooms_typing_[room_id];
        if (typing) {
            // Renewing a typing notification changes nothing anyone sees.
            const bool fresh = state.until.count(user) == 0;
            state.until[user] = core_.now_ms() + timeout;
            arm_locked();
            if (fresh) change = changed(room_id);
        } else if (state.until.erase(user) > 0) {
            change = changed(room_id);
        }
    }
    if (change) co_await core_.transact(std::move(*change));
    co_return Response{};
}

Decision Typing::changed(const std::string& room_id) {
    Decision d;
    d.streams = 1;  // the position, and for other processes sharing the database who types
    if (core_.shared()) {
        std::string key = room_id;
        for (const auto& [user, _] : rooms_typing_[room_id].until) key += '\n' + user;
        d.decide = [key](store::Txn& txn, StreamId position) {
            txn.write(store::PutChange{{position, "typing", key}});
        };
    }
    d.applied = [this, room_id](StreamId position) {
        std::vector<std::string> wake;
        auto& state = rooms_typing_[room_id];
        state.stream = std::max(state.stream, position);
        if (const Room* room = rooms_.find_or_skip_locked(room_id))
            for (const auto& [member, m] : room->membership)
                if (m == "join") wake.push_back(member);
        return wake;
    };
    return d;
}

void Typing::arm_locked() {
    if (!timer_ || stopped_) return;
    std::int64_t next = std::numeric_limits<std::int64_t>::max();
    for (const auto& [_, state] : rooms_typing_)
        for (const auto& [__, until] : state.until) next = std::min(next, until);
    if (next == std::numeric_limits<std::int64_t>::max() || (armed_for_ && armed_for_ <= next))
        return;
    armed_for_ = next;
    timer_->expires_after(
        std::chrono::milliseconds(std::max<std::int64_t>(0, next - core_.now_ms())));
    timer_->async_wait([this](boost::system::error_code ec) {
        if (!ec) expire();
    });
}

void Typing::expire() {
    std::lock_guard lock(core_.mu);
    armed_for_ = 0;
    if (stopped_) return;
    const std::int64_t now = core_.now_ms();
    // A room's entry stays when nobody types any more: its last change is what a /sync that
    // has not seen it yet still has to report.
    for (auto& [room_id, state] : rooms_typing_) {
        if (!std::erase_if(state.until, [&](const auto& kv) { return kv.second <= now; })) continue;
        core_.transact_locked(changed(room_id));
    }
    arm_locked();
}

bool Typing::render_locked(std::string& out, const Room& room, StreamId since, StreamId upto,
                           bool fresh) const {
    auto it = rooms_typing_.find(room.id);
    if (it == rooms_typing_.end() || it->second.stream > upto) return false;
    const RoomTyping& state = it->second;
    std::set<std::string> typing;
    for (const auto& [user, _] : state.until) typing.insert(user);
    for (const auto& [_, users] : state.elsewhere) typing.insert(users.begin(), users.end());
    if (fresh ? typing.empty() : state.stream <= since) return false;
    out += "{\"type\":\"m.typing\",\"content\":{\"user_ids\":[";
    Comma comma;
    for (const auto& user : typing) {
        if (room.membership_of(user) != "join") continue;
        comma(out);
        append_quoted(out, user);
    }
    out += "]}}";
    return true;
}

void Typing::fed_locked(const store::ChangeRecord& c, std::vector<std::string>& wake) {
    std::vector<std::string> users;
    std::size_t start = 0;
    for (;;) {
        auto end = c.key.find('\n', start);
        users.push_back(c.key.substr(start, end == std::string::npos ? end : end - start));
        if (end == std::string::npos) break;
        start = end + 1;
    }
    const std::string room_id = std::move(users.front());
    users.erase(users.begin());
    auto& state = rooms_typing_[room_id];
    if (users.empty())
        state.elsewhere.erase(c.instance);
    else
        state.elsewhere[c.instance] = std::move(users);
    state.stream = std::max(state.stream, c.stream);
    if (const Room* room = rooms_.find_or_skip_locked(room_id))
        for (const auto& [member, m] : room->membership)
            if (m == "join") wake.push_back(member);
}

}  // namespace mxvoip::server
