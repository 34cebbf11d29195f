#pragma once

// Push rules as the spec defines them (client-server API, "Push rules"), as pure functions:
// the predefined rule set, evaluation of a rule set against an event for one user, and the
// checks on a rule a user adds. The Notifications module holds each user's rules.
#include <boost/json.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace mxvoip::server::push {

namespace json = boost::json;

// The kinds, from the most to the least important.
inline constexpr std::string_view kKinds[] = {"override", "content", "room", "sender", "underride"};
bool is_kind(std::string_view kind);

// The predefined rule set of the current spec for `user_id`, in GET /pushrules/ form
// ({"global": {kind: [rule...]}}), with the ids of older spec versions matrix-js-sdk expects.
json::object default_rules(const std::string& user_id);
// The same with the placeholders @@USER@@ (the owner's id) and @@LOCALPART@@ left in, which
// evaluate() resolves: one rule set shared by every user who changed nothing.
json::object default_rules_template();

// What the evaluation needs to know beyond the event.
struct Context {
    std::string user_id;
    std::string display_name;  // the user's display name in the room; empty: none
    std::size_t member_count = 0;
    // sender_notification_permission: whether the sender's power level reaches
    // notifications[key] of the room's power levels.
    std::function<bool(std::string_view key)> sender_may_notify;
};

struct Outcome {
    bool notify = false;
    bool highlight = false;
    std::optional<std::string> sound;
    json::array actions;  // of the rule that matched
    std::string rule_id;  // empty: no rule matched
};

// The actions of the first enabled rule of `rules` (GET /pushrules/ form) that matches `event`
// (client format: type, sender, state_key, room_id, content).
Outcome evaluate(const json::object& rules, const json::object& event, const Context& ctx);

// The spec's glob-style matching ('*' any run, '?' one character), case-insensitively (ASCII),
// of the whole value, or of any run of words in it when `words` (content.body).
bool glob_matches(std::string_view pattern, std::string_view value, bool words);

// A rule a user puts (PUT /pushrules/global/{kind}/{ruleId}), checked and in stored form;
// throws M_INVALID_PARAM / M_BAD_JSON / M_MISSING_PARAM for what the spec refuses.
json::object make_user_rule(std::string_view kind, const std::string& rule_id,
                            const json::object& body);
// Checks an actions array (for PUT .../actions too).
void check_actions(const json::value& actions);

}  // namespace mxvoip::server::push
