#include "notifications.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdint>
#include <optional>

#include "json_out.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/json.hpp"

namespace mxvoip::server {

namespace json = boost::json;
using proto::MatrixError;
namespace errcode = proto::errcode;

namespace {

json::array* kind_list(json::object& rules, std::string_view kind) {
    auto& global = rules["global"];
    if (!global.is_object()) global.emplace_object();
    auto& list = global.as_object()[kind];
    if (!list.is_array()) list.emplace_array();
    return &list.as_array();
}

const json::array* kind_list(const json::object& rules, std::string_view kind) {
    const auto* global = rules.if_contains("global");
    if (!global || !global->is_object()) return nullptr;
    const auto* list = global->get_object().if_contains(kind);
    return list && list->is_array() ? &list->get_array() : nullptr;
}

std::ptrdiff_t find_rule(const json::array& list, std::string_view id) {
    for (std::size_t i = 0; i < list.size(); ++i)
        if (list[i].is_object())
            if (const auto* r = list[i].get_object().if_contains("rule_id");
                r && r->is_string() && r->get_string() == id)
                return static_cast<std::ptrdiff_t>(i);
    return -1;
}

bool is_default(const json::value& rule) {
    const auto* d = rule.get_object().if_contains("default");
    return d && d->is_bool() && d->get_bool();
}

// The kind and rule id of /pushrules/{scope}/{kind}/{ruleId}[/...], checked.
std::pair<std::string, std::string> rule_path(const Request& req) {
    if (req.params.size() < 2)
        throw MatrixError(400, errcode::invalid_param, "A push rule path names a kind and a rule");
    if (!push::is_kind(req.params[0]))
        throw MatrixError(400, errcode::invalid_param, "Unknown push rule kind " + req.params[0]);
    return {req.params[0], req.params[1]};
}

}  // namespace

Notifications::Notifications(Core& core, Rooms& rooms, AccountData& account_data,
                             Receipts& receipts)
    : core_(core),
      rooms_(rooms),
      account_data_(account_data),
      receipts_(receipts),
      template_(std::make_shared<const json::object>(push::default_rules_template())),
      rules_(core.config().caches.push_rules),
      held_(core.config().caches.notifications) {
    rooms_.on_appended([this](const Room& room, const EventPtr& ev) { appended_locked(room, ev); });
    // GET /notifications serves an event as it is now.
    // Only the room's members (and invitees) can have it.
    rooms_.on_redacted([this](const Room& room, const EventPtr& redacted) {
        for (const auto& [user, _] : room.membership)
            if (Held* held = held_.peek(user))
                for (auto& r : held->recent)
                    if (r.event->event_id == redacted->event_id) r.event = redacted;
    });
    receipts_.on_read([this](const std::string& room_id, const std::string& user, StreamId upto) {
        read_locked(room_id, user, upto);
    });
    // Another process wrote the user's account data: their rules are read again when next
    // needed, in case they were what changed.
    core_.on_change("account_data", [this](const store::ChangeRecord& c, const store::EventRecord*,
                                           std::vector<std::string>&) { rules_.erase(c.key); });
}

Notifications::Rules Notifications::parse_rules(const std::string& user,
                                                const std::optional<std::string>& content) const {
    if (!content) return template_;
    json::error_code ec;
    auto stored = json::parse(*content, ec);
    if (ec || !stored.is_object()) {
        spdlog::warn(
            "the stored push rules of {} are not a JSON object; the predefined rules apply", user);
        return template_;
    }
    return std::make_shared<const json::object>(with_current_defaults(user, stored.get_object()));
}

Notifications::Rules Notifications::rules_locked(const std::string& user) const {
    if (const Rules* held = rules_.get(user)) return *held;
    // Read under the lock: a change of them applies under it too, so none overtakes the read.
    return rules_.put(user, parse_rules(user, core_.store().push_rules_of({user}).front()));
}

std::vector<Notifications::Rules> Notifications::rules_or_skip_locked(
    const std::vector<std::string>& users) const {
    std::vector<Rules> out(users.size());
    std::vector<std::string> missing;
    std::vector<std::size_t> at;
    for (std::size_t i = 0; i < users.size(); ++i) {
        if (const Rules* held = rules_.get(users[i])) {
            out[i] = *held;
        } else {
            missing.push_back(users[i]);
            at.push_back(i);
        }
    }
    if (missing.empty()) return out;
    try {
        auto read = core_.store().push_rules_of(missing);
        for (std::size_t j = 0; j < missing.size(); ++j)
            out[at[j]] = rules_.put(missing[j], parse_rules(missing[j], read[j]));
        spdlog::debug("push rules of {} users read from the database ({} held)", missing.size(),
                      rules_.size());
    } catch (const std::exception& e) {
        spdlog::warn("push rules of {} users not read ({}): they are not notified of this event",
                     missing.size(), e.what());
    }
    return out;
}

json::object Notifications::with_current_defaults(const std::string& user,
                                                  const json::object& stored) const {
    json::object out = push::default_rules(user);
    for (std::string_view kind : push::kKinds) {
        json::array* list = kind_list(out, kind);
        const json::array* mine = kind_list(stored, kind);
        if (!mine) continue;
        for (auto& rule : *list) {
            auto at = find_rule(*mine, rule.at("rule_id").as_string());
            if (at < 0 || !(*mine)[at].is_object()) continue;
            const auto& saved = (*mine)[at].get_object();
            if (const auto* e = saved.if_contains("enabled"); e && e->is_bool())
                rule.as_object()["enabled"] = *e;
            if (const auto* a = saved.if_contains("actions"); a && a->is_array())
                rule.as_object()["actions"] = *a;
        }
        // The user's own rules come before the predefined ones of their kind.
        json::array own;
        for (const auto& rule : *mine)
            if (rule.is_object() && !is_default(rule)) own.push_back(rule);
        own.insert(own.end(), list->begin(), list->end());
        *list = std::move(own);
    }
    return out;
}

json::object Notifications::user_rules_locked(const std::string& user) const {
    Rules rules = rules_locked(user);
    return rules == template_ ? push::default_rules(user) : *rules;
}

push::Outcome Notifications::evaluate_locked(const Room& room, const json::object& event,
                                             const std::string& sender, const std::string& user,
                                             const json::object& rules) const {
    push::Context ctx;
    ctx.user_id = user;
    for (const auto& [_, m] : room.membership) ctx.member_count += m == "join";
    if (const auto* content = event.if_contains("content");
        content && content->is_object() && content->get_object().contains("body"))
        if (auto me = room.state_event("m.room.member", user)) {
            auto member = json::parse(me->content());
            if (const auto* name = member.get_object().if_contains("displayname");
                name && name->is_string())
                ctx.display_name = name->get_string();
        }
    ctx.sender_may_notify = [&room, &sender](std::string_view key) {
        std::int64_t needed = 50;
        if (auto pl = room.state_event("m.room.power_levels", "")) {
            auto content = json::parse(pl->content());
            if (const auto* n = content.get_object().if_contains("notifications");
                n && n->is_object())
                if (const auto* level = n->get_object().if_contains(key)) {
                    if (level->is_int64())
                        needed = level->get_int64();
                    else if (level->is_string()) {
                        try {
                            needed = std::stoll(std::string(level->get_string()));
                        } catch (...) {
                        }
                    }
                }
        }
        return room.power.user_level(sender) >= needed;
    };
    return push::evaluate(rules, event, ctx);
}

Notifications::Held& Notifications::held_locked(const std::string& user) {
    if (Held* held = held_.get(user)) return *held;
    return held_.put(user, Held{});  // the least recently used goes, never this one
}

Notifications::Unread& Notifications::unread_locked(const Room& room, const std::string& user,
                                                    const Rules& rules) {
    auto& rooms = held_locked(user).unread;
    auto found = rooms.find(room.id);
    if (found != rooms.end()) return found->second;
    // Counted from what the room holds in memory, after the user's read position, or their
    // join when they sent no receipt since (what happened before it is not unread).
    Unread& unread = rooms[room.id];
    StreamId read = receipts_.read_upto_locked(room.id, user);
    const auto& mine = rooms_.memberships_or_skip_locked(user);
    if (auto m = mine.find(room.id); m != mine.end()) read = std::max(read, m->second.stream);
    auto count = [&](StreamId stream, const std::string& sender, const std::string& text) {
        if (stream <= read || sender == user) return;
        auto outcome = evaluate_locked(room, json::parse(text).as_object(), sender, user, *rules);
        if (outcome.notify) unread.events.emplace_back(stream, outcome.highlight);
    };
    if (room.evicted_upto > read) {
        // Older than the room's window (after a restart): from the store, newest first, as far
        // back as kScanLimit events.
        // Also asked after a commit (a new event counts for every member), where there is no
        // request to answer 503: without the database, what is in memory is counted (logged).
        std::vector<store::EventRecord> older;
        StreamId before = room.evicted_upto + 1;
        try {
            while (older.size() < kScanLimit) {
                auto page = core_.store().events_before(room.id, before, 500);
                for (auto& r : page)
                    if (r.stream > read) older.push_back(std::move(r));
                if (page.size() < 500 || page.back().stream <= read) break;
                before = page.back().stream;
            }
        } catch (const store::StoreError& e) {
            spdlog::warn("unread count of {} in {}: older events not read ({})", user, room.id,
                         e.what());
        }
        for (auto it = older.rbegin(); it != older.rend(); ++it)
            count(it->stream, it->sender, it->json);
    }
    for (const auto& ev : room.recent) count(ev->stream, ev->sender, ev->json);
    while (unread.events.size() > kUnreadPerRoom) unread.events.pop_front();
    return unread;
}

void Notifications::appended_locked(const Room& room, const EventPtr& ev) {
    std::vector<std::string> who;
    for (const auto& [user, m] : room.membership)
        if (m == "join" && user != ev->sender) who.push_back(user);
    // An invitee is not a member yet, but the invite is for them (.m.rule.invite_for_me).
    if (ev->type == "m.room.member" && ev->state_key && *ev->state_key != ev->sender &&
        room.membership_of(*ev->state_key) == "invite")
        who.push_back(*ev->state_key);
    if (who.empty()) return;
    auto event = json::parse(ev->json).as_object();
    const auto rules = rules_or_skip_locked(who);
    std::vector<std::string> notified;
    std::vector<push::Outcome> outcomes;
    for (std::size_t i = 0; i < who.size(); ++i) {
        const std::string* user = &who[i];
        Held* mine = held_.peek(*user);  // stays: only this user's entry is made below
        bool counted = mine && mine->unread.count(room.id);
        if (!rules[i]) {
            // Not evaluated (logged): the count is made again when next asked for.
            if (counted) mine->unread.erase(room.id);
            continue;
        }
        auto outcome = evaluate_locked(room, event, ev->sender, *user, *rules[i]);
        if (!outcome.notify) continue;
        if (room.membership_of(*user) == "join") {
            // A new count already holds it.
            Unread& unread = unread_locked(room, *user, rules[i]);
            if (counted) {
                unread.events.emplace_back(ev->stream, outcome.highlight);
                if (unread.events.size() > kUnreadPerRoom) unread.events.pop_front();
            }
        }
        auto& recent = held_locked(*user).recent;
        recent.push_back(Recent{room.id, ev, outcome.actions, core_.now_ms()});
        if (recent.size() > kRecentPerUser) recent.pop_front();
        notified.push_back(std::move(who[i]));
        outcomes.push_back(std::move(outcome));
    }
    if (notified.empty()) return;
    for (const auto& f : audience_listeners_) f(notified);
    for (std::size_t i = 0; i < notified.size(); ++i)
        for (const auto& f : listeners_) f(notified[i], room, ev, outcomes[i]);
}

void Notifications::read_locked(const std::string& room_id, const std::string& user,
                                StreamId upto) {
    Held* held = held_.peek(user);
    if (!held) return;
    auto it = held->unread.find(room_id);
    if (it == held->unread.end()) return;
    auto& events = it->second.events;
    while (!events.empty() && events.front().first <= upto) events.pop_front();
}

void Notifications::render_counts_locked(std::string& out, const Room& room,
                                         const std::string& user) {
    const Unread& unread = unread_locked(room, user, rules_locked(user));
    std::size_t highlights = 0;
    for (const auto& [_, h] : unread.events) highlights += h;
    out += "\"unread_notifications\":{\"highlight_count\":" + std::to_string(highlights) +
           ",\"notification_count\":" + std::to_string(unread.events.size()) + "}";
}

std::size_t Notifications::unread_total_locked(const std::string& user) {
    std::size_t total = 0;
    const Rules rules = rules_or_skip_locked({user}).front();
    for (const auto& [room_id, m] : rooms_.memberships_or_skip_locked(user)) {
        if (m.membership != "join") continue;
        if (!rules) {
            // Without the database, only the counts held.
            if (Held* mine = held_.peek(user))
                if (auto it = mine->unread.find(room_id); it != mine->unread.end())
                    total += it->second.events.size();
            continue;
        }
        if (const Room* room = rooms_.find_or_skip_locked(room_id))
            total += unread_locked(*room, user, rules).events.size();
    }
    return total;
}

// ---------------------------------------------------------------------------------------------
// The push rules API

asio::awaitable<Response> Notifications::get_rules(Request& req) {
    json::object rules;
    {
        std::lock_guard lock(core_.mu);
        rules = user_rules_locked(req.session->user_id);
    }
    co_return json_response(rules);
}

asio::awaitable<Response> Notifications::get_global_rules(Request& req) {
    json::object rules;
    {
        std::lock_guard lock(core_.mu);
        rules = user_rules_locked(req.session->user_id);
    }
    co_return json_response(rules["global"]);
}

asio::awaitable<Response> Notifications::get_rule(Request& req) {
    const auto path = rule_path(req);
    const std::string& kind = path.first;
    const std::string& id = path.second;
    json::value rule;
    {
        std::lock_guard lock(core_.mu);
        json::object rules = user_rules_locked(req.session->user_id);
        const json::array* list = kind_list(rules, kind);
        auto at = list ? find_rule(*list, id) : -1;
        if (at < 0) throw MatrixError(404, errcode::not_found, "The push rule was not found.");
        rule = (*list)[at];
    }
    co_return json_response(rule);
}

asio::awaitable<Response> Notifications::get_rule_enabled(Request& req) {
    co_return rule_attribute(req, "enabled");
}

asio::awaitable<Response> Notifications::get_rule_actions(Request& req) {
    co_return rule_attribute(req, "actions");
}

Response Notifications::rule_attribute(const Request& req, const char* attribute) {
    const auto path = rule_path(req);
    const std::string& kind = path.first;
    const std::string& id = path.second;
    json::object out;
    {
        std::lock_guard lock(core_.mu);
        json::object rules = user_rules_locked(req.session->user_id);
        const json::array* list = kind_list(rules, kind);
        auto at = list ? find_rule(*list, id) : -1;
        if (at < 0) throw MatrixError(404, errcode::not_found, "The push rule was not found.");
        const auto& rule = (*list)[at].get_object();
        if (const auto* v = rule.if_contains(attribute)) out[attribute] = *v;
    }
    return json_response(out);
}

asio::awaitable<void> Notifications::change(const std::string& user,
                                            const std::function<void(json::object&)>& edit) {
    // Read, changed and replaced in one transaction: two changes at once both count.
    struct Changed {
        AccountData::Put entry;
        json::object rules;
    };
    auto c = std::make_shared<Changed>();
    c->entry = {user, "", "m.push_rules", {}};
    Decision decision;
    decision.streams = 1;
    decision.decide = [this, c, &edit](store::Txn& txn, StreamId stream) {
        const std::string& user = c->entry.user;
        json::object rules = push::default_rules(user);
        if (auto stored = txn.account_data(user, "", "m.push_rules")) {
            json::error_code ec;
            auto v = json::parse(stored->content, ec);
            if (!ec && v.is_object()) rules = with_current_defaults(user, v.get_object());
        }
        edit(rules);
        std::string text = json::serialize(rules);
        if (text.size() > kMaxRuleSetBytes)
            throw MatrixError(413, errcode::too_large,
                              "The push rules would be larger than " +
                                  std::to_string(kMaxRuleSetBytes) + " bytes");
        c->entry.content = std::move(text);
        c->rules = std::move(rules);
        account_data_.decide_put(txn, c->entry, stream);
    };
    decision.applied = [this, c](StreamId stream) {
        account_data_.applied_locked(c->entry, stream);
        rules_.put(c->entry.user, std::make_shared<const json::object>(std::move(c->rules)));
        return std::vector<std::string>{c->entry.user};
    };
    co_await core_.transact(std::move(decision));
}

namespace {

json::value& existing_rule(json::object& rules, const std::string& kind, const std::string& id) {
    json::array* list = kind_list(rules, kind);
    auto at = find_rule(*list, id);
    if (at < 0) throw MatrixError(404, errcode::not_found, "The push rule was not found.");
    return (*list)[at];
}

}  // namespace

asio::awaitable<Response> Notifications::put_rule(Request& req) {
    const auto path = rule_path(req);
    const std::string& kind = path.first;
    const std::string& id = path.second;
    json::object rule = push::make_user_rule(kind, id, req.json);
    std::optional<std::string> before, after;
    if (const auto* b = req.query_param("before")) before = *b;
    if (const auto* a = req.query_param("after")) after = *a;
    std::function<void(json::object&)> edit = [&](json::object& rules) {
        json::array* list = kind_list(rules, kind);
        auto existing = find_rule(*list, id);
        std::size_t own = 0;
        for (std::string_view k : push::kKinds)
            for (const auto& r : *kind_list(rules, k)) own += !is_default(r);
        if (existing < 0 && own >= kUserRules)
            throw MatrixError(
                403, errcode::forbidden,
                "You have " + std::to_string(own) + " push rules, the most the server keeps");
        // Relative to another user rule of the same kind; otherwise where it was when it is
        // replaced, or first (the most important user rule) when it is new.
        auto anchor_of = [&](const std::string& anchor) {
            auto at = find_rule(*list, anchor);
            if (at < 0 || is_default((*list)[at]))
                throw MatrixError(400, errcode::unknown, "before/after rule not found: " + anchor);
            return at;
        };
        if (existing >= 0 && !before && !after) {
            (*list)[existing] = rule;
            return;
        }
        if (existing >= 0) list->erase(list->begin() + existing);
        std::ptrdiff_t at = 0;
        if (before)
            at = anchor_of(*before);
        else if (after)
            at = anchor_of(*after) + 1;
        list->insert(list->begin() + at, rule);
    };
    co_await change(req.session->user_id, edit);
    co_return Response{};
}

asio::awaitable<Response> Notifications::delete_rule(Request& req) {
    const auto path = rule_path(req);
    const std::string& kind = path.first;
    const std::string& id = path.second;
    std::function<void(json::object&)> edit = [&](json::object& rules) {
        json::array* list = kind_list(rules, kind);
        auto at = find_rule(*list, id);
        if (at < 0) throw MatrixError(404, errcode::not_found, "The push rule was not found.");
        if (is_default((*list)[at]))
            throw MatrixError(400, errcode::invalid_param,
                              "A predefined rule cannot be deleted; disable it instead");
        list->erase(list->begin() + at);
    };
    co_await change(req.session->user_id, edit);
    co_return Response{};
}

asio::awaitable<Response> Notifications::put_rule_enabled(Request& req) {
    const auto path = rule_path(req);
    const std::string& kind = path.first;
    const std::string& id = path.second;
    auto enabled = proto::opt_bool(req.json, "enabled");
    if (!enabled) throw MatrixError(400, errcode::missing_param, "enabled (a boolean) is required");
    std::function<void(json::object&)> edit = [&](json::object& rules) {
        existing_rule(rules, kind, id).as_object()["enabled"] = *enabled;
    };
    co_await change(req.session->user_id, edit);
    co_return Response{};
}

asio::awaitable<Response> Notifications::put_rule_actions(Request& req) {
    const auto path = rule_path(req);
    const std::string& kind = path.first;
    const std::string& id = path.second;
    const auto* actions = req.json.if_contains("actions");
    if (!actions) throw MatrixError(400, errcode::missing_param, "actions is required");
    push::check_actions(*actions);
    std::function<void(json::object&)> edit = [&](json::object& rules) {
        existing_rule(rules, kind, id).as_object()["actions"] = *actions;
    };
    co_await change(req.session->user_id, edit);
    co_return Response{};
}

asio::awaitable<Response> Notifications::get_notifications(Request& req) {
    const std::string& user = req.session->user_id;
    std::size_t limit = 20;
    if (const auto* l = req.query_param("limit")) {
        try {
            limit = static_cast<std::size_t>(std::clamp(std::stoll(*l), 1LL, 100LL));
        } catch (...) {
            throw MatrixError(400, errcode::invalid_param, "limit must be a number");
        }
    }
    StreamId from = INT64_MAX;
    if (const auto* f = req.query_param("from"); f && !f->empty()) {
        try {
            std::size_t used = 0;
            from = std::stoll(*f, &used);
            if (used != f->size()) throw std::invalid_argument("from");
        } catch (...) {
            throw MatrixError(400, errcode::invalid_param, "from must be a next_token");
        }
    }
    const auto* only = req.query_param("only");
    bool highlights_only = only && *only == "highlight";
    std::string out = "{\"notifications\":[";
    StreamId last = 0;
    std::size_t n = 0;
    bool more = false;
    {
        std::lock_guard lock(core_.mu);
        const std::int64_t now = core_.now_ms();
        if (const Held* held = held_.get(user))
            for (auto r = held->recent.rbegin(); r != held->recent.rend(); ++r) {
                if (r->event->stream >= from || r->event->stream > core_.visible_locked()) continue;
                bool highlight = false;
                for (const auto& a : r->actions)
                    if (a.is_object())
                        if (const auto* t = a.get_object().if_contains("set_tweak");
                            t && *t == "highlight") {
                            const auto* v = a.get_object().if_contains("value");
                            highlight = !v || (v->is_bool() && v->get_bool());
                        }
                if (highlights_only && !highlight) continue;
                if (n == limit) {
                    more = true;
                    break;
                }
                if (n++) out += ',';
                bool read = r->event->stream <= receipts_.read_upto_locked(r->room_id, user);
                out += "{\"actions\":" + json::serialize(r->actions) + ",\"event\":";
                render_event(out, *r->event, {}, now);
                out += ",\"read\":";
                out += read ? "true" : "false";
                out +=
                    ",\"room_id\":" + quoted(r->room_id) + ",\"ts\":" + std::to_string(r->ts) + "}";
                last = r->event->stream;
            }
    }
    out += ']';
    if (more) out += ",\"next_token\":\"" + std::to_string(last) + "\"";
    out += '}';
    co_return Response{200, std::move(out), {}};
}

}  // namespace mxvoip::server
