#include "push_rules.hpp"

#include <algorithm>
#include <cctype>
#include <vector>

#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/json.hpp"

namespace mxvoip::server::push {

using proto::MatrixError;
namespace errcode = proto::errcode;

namespace {

// The spec's predefined rules, in the order matrix-js-sdk expects them, with the legacy and
// unstable ids it still looks for. @@USER@@ and @@LOCALPART@@ stand for the rules' owner.
constexpr const char* kRules = R"({"global":{"override":[
{"rule_id":".m.rule.master","default":true,"enabled":false,"conditions":[],"actions":[]},
{"rule_id":".m.rule.suppress_notices","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"content.msgtype","pattern":"m.notice"}],"actions":[]},
{"rule_id":".m.rule.invite_for_me","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"type","pattern":"m.room.member"},{"kind":"event_match","key":"content.membership","pattern":"invite"},{"kind":"event_match","key":"state_key","pattern":"@@USER@@"}],"actions":["notify",{"set_tweak":"sound","value":"default"}]},
{"rule_id":".m.rule.member_event","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"type","pattern":"m.room.member"}],"actions":[]},
{"rule_id":".m.rule.is_user_mention","default":true,"enabled":true,"conditions":[{"kind":"event_property_contains","key":"content.m\\.mentions.user_ids","value":"@@USER@@"}],"actions":["notify",{"set_tweak":"sound","value":"default"},{"set_tweak":"highlight"}]},
{"rule_id":".m.rule.contains_display_name","default":true,"enabled":true,"conditions":[{"kind":"contains_display_name"}],"actions":["notify",{"set_tweak":"sound","value":"default"},{"set_tweak":"highlight"}]},
{"rule_id":".m.rule.is_room_mention","default":true,"enabled":true,"conditions":[{"kind":"event_property_is","key":"content.m\\.mentions.room","value":true},{"kind":"sender_notification_permission","key":"room"}],"actions":["notify",{"set_tweak":"highlight"}]},
{"rule_id":".m.rule.roomnotif","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"content.body","pattern":"@room"},{"kind":"sender_notification_permission","key":"room"}],"actions":["notify",{"set_tweak":"highlight"}]},
{"rule_id":".m.rule.tombstone","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"type","pattern":"m.room.tombstone"},{"kind":"event_match","key":"state_key","pattern":""}],"actions":["notify",{"set_tweak":"highlight"}]},
{"rule_id":".m.rule.reaction","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"type","pattern":"m.reaction"}],"actions":[]},
{"rule_id":".m.rule.room.server_acl","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"type","pattern":"m.room.server_acl"},{"kind":"event_match","key":"state_key","pattern":""}],"actions":[]},
{"rule_id":".org.matrix.msc3786.rule.room.server_acl","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"type","pattern":"m.room.server_acl"},{"kind":"event_match","key":"state_key","pattern":""}],"actions":[]},
{"rule_id":".m.rule.suppress_edits","default":true,"enabled":true,"conditions":[{"kind":"event_property_is","key":"content.m\\.relates_to.rel_type","value":"m.replace"}],"actions":[]}
],"content":[
{"rule_id":".m.rule.contains_user_name","default":true,"enabled":true,"pattern":"@@LOCALPART@@","actions":["notify",{"set_tweak":"sound","value":"default"},{"set_tweak":"highlight"}]}
],"room":[],"sender":[],"underride":[
{"rule_id":".m.rule.call","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"type","pattern":"m.call.invite"}],"actions":["notify",{"set_tweak":"sound","value":"ring"}]},
{"rule_id":".org.matrix.msc3914.rule.room.call","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"type","pattern":"org.matrix.msc3401.call"},{"kind":"call_started"}],"actions":["notify",{"set_tweak":"sound","value":"default"}]},
{"rule_id":".m.rule.encrypted_room_one_to_one","default":true,"enabled":true,"conditions":[{"kind":"room_member_count","is":"2"},{"kind":"event_match","key":"type","pattern":"m.room.encrypted"}],"actions":["notify",{"set_tweak":"sound","value":"default"}]},
{"rule_id":".m.rule.room_one_to_one","default":true,"enabled":true,"conditions":[{"kind":"room_member_count","is":"2"},{"kind":"event_match","key":"type","pattern":"m.room.message"}],"actions":["notify",{"set_tweak":"sound","value":"default"}]},
{"rule_id":".m.rule.message","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"type","pattern":"m.room.message"}],"actions":["notify"]},
{"rule_id":".m.rule.encrypted","default":true,"enabled":true,"conditions":[{"kind":"event_match","key":"type","pattern":"m.room.encrypted"}],"actions":["notify"]}
]}})";

// Rules that only apply to events without m.mentions (the spec's legacy mention rules).
bool is_legacy_mention_rule(std::string_view id) {
    return id == ".m.rule.contains_display_name" || id == ".m.rule.roomnotif" ||
           id == ".m.rule.contains_user_name";
}

char lower(char c) {
    return static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
}

bool is_word(char c) {
    // Bytes of multi-byte UTF-8 characters count as word characters, as letters would.
    auto u = static_cast<unsigned char>(c);
    return std::isalnum(u) || c == '_' || u >= 0x80;
}

// Matches `pattern` against value[from, ...): the glob must end where `at_end` accepts.
template <typename AtEnd>
bool glob_from(std::string_view p, std::string_view v, std::size_t from, AtEnd at_end) {
    std::size_t pi = 0, vi = from;
    std::size_t star = std::string_view::npos, star_v = 0;
    for (;;) {
        if (pi == p.size() && at_end(vi)) return true;
        if (pi < p.size() && p[pi] == '*') {
            star = pi++;
            star_v = vi;
            continue;
        }
        if (pi < p.size() && vi < v.size() && (p[pi] == '?' || lower(p[pi]) == lower(v[vi]))) {
            ++pi;
            ++vi;
            continue;
        }
        if (star == std::string_view::npos || star_v >= v.size()) return false;
        pi = star + 1;
        vi = ++star_v;
    }
}

// A dotted key ("content.m\.relates_to.rel_type") split into its fields.
std::vector<std::string> split_key(std::string_view key) {
    std::vector<std::string> out(1);
    for (std::size_t i = 0; i < key.size(); ++i) {
        if (key[i] == '\\' && i + 1 < key.size() && (key[i + 1] == '.' || key[i + 1] == '\\'))
            out.back() += key[++i];
        else if (key[i] == '.')
            out.emplace_back();
        else
            out.back() += key[i];
    }
    return out;
}

const json::value* property(const json::object& event, std::string_view key) {
    const json::object* at = &event;
    const json::value* v = nullptr;
    for (const auto& field : split_key(key)) {
        if (!at) return nullptr;
        v = at->if_contains(field);
        if (!v) return nullptr;
        at = v->if_object();
    }
    return v;
}

// Equality for the non-compound values event_property_is and _contains compare.
bool same_value(const json::value& a, const json::value& b) {
    if (a.is_string() && b.is_string()) return a.get_string() == b.get_string();
    if (a.is_int64() && b.is_int64()) return a.get_int64() == b.get_int64();
    if (a.is_bool() && b.is_bool()) return a.get_bool() == b.get_bool();
    return a.is_null() && b.is_null();
}

bool member_count_matches(std::string_view is, std::size_t count) {
    std::string_view op = "==";
    for (std::string_view candidate : {"==", "<=", ">=", "<", ">"})
        if (is.starts_with(candidate)) {
            op = candidate;
            is.remove_prefix(candidate.size());
            break;
        }
    if (is.empty() ||
        !std::all_of(is.begin(), is.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
        is.size() > 15)
        return false;
    auto n = static_cast<std::size_t>(std::stoull(std::string(is)));
    if (op == "==") return count == n;
    if (op == "<=") return count <= n;
    if (op == ">=") return count >= n;
    if (op == "<") return count < n;
    return count > n;
}

// Whether `name` occurs in `body` as whole words, ignoring ASCII case.
bool contains_words(std::string_view body, std::string_view name) {
    if (name.empty() || name.size() > body.size()) return false;
    for (std::size_t i = 0; i + name.size() <= body.size(); ++i) {
        if (i > 0 && is_word(body[i - 1]) && is_word(name.front())) continue;
        std::size_t end = i + name.size();
        if (end < body.size() && is_word(body[end]) && is_word(name.back())) continue;
        bool same = true;
        for (std::size_t k = 0; k < name.size() && same; ++k)
            same = lower(body[i + k]) == lower(name[k]);
        if (same) return true;
    }
    return false;
}

bool condition_holds(const json::object& c, const json::object& event, const Context& ctx) {
    const auto* kind = c.if_contains("kind");
    if (!kind || !kind->is_string()) return false;
    const auto* key = c.if_contains("key");
    std::string_view key_text = key && key->is_string() ? std::string_view(key->get_string()) : "";
    if (*kind == "event_match") {
        const auto* pattern = c.if_contains("pattern");
        if (!key || !pattern || !pattern->is_string()) return false;
        const auto* v = property(event, key_text);
        if (!v || !v->is_string()) return false;
        std::string_view p = pattern->get_string();
        if (p == "@@USER@@") p = ctx.user_id;
        return glob_matches(p, v->get_string(), key_text == "content.body");
    }
    if (*kind == "event_property_is" || *kind == "event_property_contains") {
        const auto* want = c.if_contains("value");
        if (!key || !want) return false;
        json::value expected = *want;
        if (expected.is_string() && expected.get_string() == "@@USER@@") expected = ctx.user_id;
        const auto* v = property(event, key_text);
        if (!v) return false;
        if (*kind == "event_property_is") return same_value(*v, expected);
        if (!v->is_array()) return false;
        return std::any_of(v->get_array().begin(), v->get_array().end(),
                           [&](const json::value& x) { return same_value(x, expected); });
    }
    if (*kind == "contains_display_name") {
        const auto* body = property(event, "content.body");
        return body && body->is_string() && contains_words(body->get_string(), ctx.display_name);
    }
    if (*kind == "room_member_count") {
        const auto* is = c.if_contains("is");
        return is && is->is_string() && member_count_matches(is->get_string(), ctx.member_count);
    }
    if (*kind == "sender_notification_permission")
        return key && ctx.sender_may_notify && ctx.sender_may_notify(key_text);
    return false;  // unknown kinds never match (the spec's rule), call_started among them
}

bool rule_matches(std::string_view kind, const json::object& rule, const json::object& event,
                  const Context& ctx) {
    const auto* id = rule.if_contains("rule_id");
    if (!id || !id->is_string()) return false;
    if (kind == "room" || kind == "sender") {
        const auto* v = event.if_contains(kind == "room" ? "room_id" : "sender");
        return v && v->is_string() && v->get_string() == id->get_string();
    }
    if (kind == "content") {
        const auto* pattern = rule.if_contains("pattern");
        const auto* body = property(event, "content.body");
        if (!pattern || !pattern->is_string() || !body || !body->is_string()) return false;
        std::string_view p = pattern->get_string();
        std::string localpart;
        if (p == "@@LOCALPART@@") {
            localpart = ctx.user_id.substr(1, ctx.user_id.find(':') - 1);
            p = localpart;
        }
        return glob_matches(p, body->get_string(), true);
    }
    const auto* conditions = rule.if_contains("conditions");
    if (!conditions || !conditions->is_array()) return true;
    for (const auto& c : conditions->get_array())
        if (!c.is_object() || !condition_holds(c.get_object(), event, ctx)) return false;
    return true;
}

}  // namespace

bool is_kind(std::string_view kind) {
    return std::find(std::begin(kKinds), std::end(kKinds), kind) != std::end(kKinds);
}

json::object default_rules(const std::string& user_id) {
    std::string body = kRules;
    std::string user = json::serialize(json::string_view(user_id));
    user = user.substr(1, user.size() - 2);
    std::string localpart = user_id.substr(1, user_id.find(':') - 1);
    std::string local = json::serialize(json::string_view(localpart));
    local = local.substr(1, local.size() - 2);
    for (std::size_t pos; (pos = body.find("@@USER@@")) != std::string::npos;)
        body.replace(pos, 8, user);
    for (std::size_t pos; (pos = body.find("@@LOCALPART@@")) != std::string::npos;)
        body.replace(pos, 13, local);
    return json::parse(body).as_object();
}

json::object default_rules_template() {
    return json::parse(kRules).as_object();
}

bool glob_matches(std::string_view pattern, std::string_view value, bool words) {
    if (!words)
        return glob_from(pattern, value, 0, [&](std::size_t i) { return i == value.size(); });
    // A match starts and ends at word boundaries. Long bodies are searched in their first
    // 16 KiB: a pattern with many stars costs the square of the length.
    value = value.substr(0, 16384);
    auto ends_word = [&](std::size_t i) { return i == value.size() || !is_word(value[i]); };
    for (std::size_t start = 0; start <= value.size(); ++start)
        if ((start == 0 || !is_word(value[start - 1])) &&
            glob_from(pattern, value, start, ends_word))
            return true;
    return false;
}

Outcome evaluate(const json::object& rules, const json::object& event, const Context& ctx) {
    Outcome out;
    const auto* global = rules.if_contains("global");
    if (!global || !global->is_object()) return out;
    const json::value* content = event.if_contains("content");
    bool has_mentions =
        content && content->is_object() && content->get_object().contains("m.mentions");
    for (std::string_view kind : kKinds) {
        const auto* list = global->get_object().if_contains(kind);
        if (!list || !list->is_array()) continue;
        for (const auto& r : list->get_array()) {
            if (!r.is_object()) continue;
            const auto& rule = r.get_object();
            const auto* enabled = rule.if_contains("enabled");
            if (enabled && enabled->is_bool() && !enabled->get_bool()) continue;
            const auto* id = rule.if_contains("rule_id");
            if (has_mentions && id && id->is_string() && is_legacy_mention_rule(id->get_string()))
                continue;
            if (!rule_matches(kind, rule, event, ctx)) continue;
            out.rule_id = id && id->is_string() ? std::string(id->get_string()) : std::string();
            if (const auto* actions = rule.if_contains("actions"); actions && actions->is_array())
                out.actions = actions->get_array();
            for (const auto& a : out.actions) {
                if (a.is_string() && a.get_string() == "notify") out.notify = true;
                if (!a.is_object()) continue;
                const auto* tweak = a.get_object().if_contains("set_tweak");
                const auto* value = a.get_object().if_contains("value");
                if (!tweak || !tweak->is_string()) continue;
                if (tweak->get_string() == "highlight")
                    out.highlight = !value || (value->is_bool() && value->get_bool());
                else if (tweak->get_string() == "sound" && value && value->is_string())
                    out.sound = std::string(value->get_string());
            }
            if (!out.notify) out.highlight = false, out.sound.reset();
            return out;
        }
    }
    return out;
}

void check_actions(const json::value& actions) {
    if (!actions.is_array()) throw MatrixError(400, errcode::bad_json, "actions must be an array");
    for (const auto& a : actions.get_array()) {
        if (a.is_string()) {
            auto s = a.get_string();
            if (s != "notify" && s != "dont_notify" && s != "coalesce")
                throw MatrixError(400, errcode::invalid_param,
                                  "Unrecognised action: " + std::string(s));
        } else if (a.is_object()) {
            const auto* tweak = a.get_object().if_contains("set_tweak");
            if (!tweak || !tweak->is_string())
                throw MatrixError(400, errcode::invalid_param,
                                  "An action object must have a set_tweak string");
        } else {
            throw MatrixError(400, errcode::invalid_param,
                              "An action is a string or a set_tweak object");
        }
    }
}

json::object make_user_rule(std::string_view kind, const std::string& rule_id,
                            const json::object& body) {
    if (!is_kind(kind))
        throw MatrixError(400, errcode::invalid_param,
                          "Unknown push rule kind " + std::string(kind));
    if (rule_id.empty() || rule_id.front() == '.' ||
        rule_id.find_first_of("/\\") != std::string::npos)
        throw MatrixError(400, errcode::invalid_param,
                          "A rule id must not be empty, start with '.' or contain '/' or '\\'");
    const auto* actions = body.if_contains("actions");
    if (!actions) throw MatrixError(400, errcode::missing_param, "actions is required");
    check_actions(*actions);
    json::object rule{
        {"rule_id", rule_id}, {"default", false}, {"enabled", true}, {"actions", *actions}};
    if (kind == "content") {
        auto pattern = proto::opt_string(body, "pattern");
        if (!pattern)
            throw MatrixError(400, errcode::missing_param, "A content rule needs a pattern");
        rule["pattern"] = *pattern;
    } else if (kind == "override" || kind == "underride") {
        const auto* conditions = proto::opt_array(body, "conditions");
        json::array checked;
        if (conditions)
            for (const auto& c : *conditions) {
                if (!c.is_object() || !c.get_object().if_contains("kind") ||
                    !c.get_object().at("kind").is_string())
                    throw MatrixError(400, errcode::bad_json,
                                      "Each condition is an object with a kind");
                checked.push_back(c);
            }
        rule["conditions"] = std::move(checked);
    } else if (rule_id.front() != (kind == "room" ? '!' : '@')) {
        throw MatrixError(400, errcode::invalid_param,
                          std::string("A ") + std::string(kind) + " rule's id is the " +
                              (kind == "room" ? "room id" : "sender's user id"));
    }
    return rule;
}

}  // namespace mxvoip::server::push
