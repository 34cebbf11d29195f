#include "redaction.hpp"

#include <charconv>
#include <initializer_list>

namespace mxvoip::server {

namespace json = boost::json;

namespace {

int version_number(std::string_view v) {
    int n = 0;
    auto [_, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    return ec == std::errc() ? n : 11;
}

json::object keep(const json::object& content, std::initializer_list<std::string_view> keys) {
    json::object out;
    for (auto key : keys)
        if (const auto* v = content.if_contains(key)) out[key] = *v;
    return out;
}

}  // namespace

json::object redacted_content(std::string_view type, const json::object& content,
                              std::string_view room_version) {
    const int v = version_number(room_version);
    if (type == "m.room.member") {
        json::object out = v >= 8
                               ? keep(content, {"membership", "join_authorised_via_users_server"})
                               : keep(content, {"membership"});
        // v11 keeps the signed part of a third-party invite, and nothing else of it.
        if (v >= 11)
            if (const auto* tpi = content.if_contains("third_party_invite");
                tpi && tpi->is_object())
                if (const auto* signed_ = tpi->get_object().if_contains("signed"))
                    out["third_party_invite"] = json::object{{"signed", *signed_}};
        return out;
    }
    if (type == "m.room.create") return v >= 11 ? content : keep(content, {"creator"});
    if (type == "m.room.join_rules")
        return v >= 8 ? keep(content, {"join_rule", "allow"}) : keep(content, {"join_rule"});
    if (type == "m.room.power_levels") {
        if (v >= 11)
            return keep(content, {"ban", "events", "events_default", "invite", "kick", "redact",
                                  "state_default", "users", "users_default"});
        return keep(content, {"ban", "events", "events_default", "kick", "redact", "state_default",
                              "users", "users_default"});
    }
    if (type == "m.room.history_visibility") return keep(content, {"history_visibility"});
    if (type == "m.room.aliases" && v <= 5) return keep(content, {"aliases"});
    if (type == "m.room.redaction" && v >= 11) return keep(content, {"redacts"});
    return {};
}

}  // namespace mxvoip::server
