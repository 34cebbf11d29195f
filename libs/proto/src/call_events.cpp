#include "mxvoip/proto/call_events.hpp"

#include <algorithm>

#include "mxvoip/proto/ids.hpp"
#include "mxvoip/proto/json.hpp"

namespace mxvoip::proto {
namespace {

// Where a value sits ("content.offer.sdp"), built only when an error names it: parsing a
// valid event allocates no path strings.
struct Path {
    const Path* parent = nullptr;
    std::string_view key;  // a member name, or empty for an array element
    std::size_t index = 0;

    Path member(std::string_view k) const { return Path{this, k}; }
    Path element(std::size_t i) const { return Path{this, {}, i}; }
    std::string str() const {
        if (!parent) return std::string(key);
        std::string s = parent->str();
        if (key.empty()) return s + "[" + std::to_string(index) + "]";
        return s + "." + std::string(key);
    }
};

// Thrown inside this file only; parse_call_event turns it into a CallEventError.
struct Fail {
    std::string path;
    std::string rule;
};

[[noreturn]] void fail(const Path& path, std::string rule) {
    throw Fail{path.str(), std::move(rule)};
}

const json::object& as_object(const json::value& v, const Path& path) {
    if (!v.is_object()) fail(path, "must be an object");
    return v.get_object();
}

// Reads fields of one object, remembering which were read: the rest are the unknown fields.
class Fields {
  public:
    Fields(const json::value& o, const Path& path) : obj_(as_object(o, path)), path_(path) {}

    const json::value* take(std::string_view key) {
        const json::value* v = obj_.if_contains(key);
        if (v) taken_.push_back(key);
        return v;
    }
    std::string req_string(std::string_view key) {
        auto v = opt_string(key);
        if (!v) fail(path_.member(key), "is required");
        return std::move(*v);
    }
    std::optional<std::string> opt_string(std::string_view key) {
        const json::value* v = take(key);
        if (!v) return std::nullopt;
        if (!v->is_string()) fail(path_.member(key), "must be a string");
        return std::string(v->get_string());
    }
    std::int64_t req_int(std::string_view key, std::int64_t min) {
        auto v = opt_int(key);
        if (!v) fail(path_.member(key), "is required");
        if (*v < min) fail(path_.member(key), "must be at least " + std::to_string(min));
        return *v;
    }
    std::optional<std::int64_t> opt_int(std::string_view key) {
        const json::value* v = take(key);
        if (!v) return std::nullopt;
        if (v->is_int64()) return v->get_int64();
        if (v->is_uint64() && v->get_uint64() <= static_cast<std::uint64_t>(kMaxSafeInteger))
            return static_cast<std::int64_t>(v->get_uint64());
        fail(path_.member(key), "must be an integer");
    }
    std::optional<bool> opt_bool(std::string_view key) {
        const json::value* v = take(key);
        if (!v) return std::nullopt;
        if (!v->is_bool()) fail(path_.member(key), "must be true or false");
        return v->get_bool();
    }
    std::string opaque_id(std::string_view key, bool required) {
        auto v = opt_string(key);
        if (!v) {
            if (required) fail(path_.member(key), "is required");
            return {};
        }
        if (!is_valid_opaque_id(*v))
            fail(path_.member(key), "must be 1-255 characters of [0-9A-Za-z-._~]");
        return std::move(*v);
    }
    const Path& path() const { return path_; }
    // The fields not read, into `out`.
    void rest(json::object& out) const {
        for (const auto& kv : obj_)
            if (std::find(taken_.begin(), taken_.end(), kv.key()) == taken_.end())
                out[kv.key()] = kv.value();
    }

  private:
    const json::object& obj_;
    const Path& path_;
    std::vector<std::string_view> taken_;
};

SessionDescription parse_description(const json::value* v, const Path& path,
                                     std::initializer_list<std::string_view> types) {
    if (!v) fail(path, "is required");
    Fields f(*v, path);
    SessionDescription d;
    d.type = f.req_string("type");
    if (std::find(types.begin(), types.end(), d.type) == types.end()) {
        std::string allowed;
        for (auto t : types) allowed += (allowed.empty() ? "\"" : " or \"") + std::string(t) + "\"";
        fail(path.member("type"), "must be " + allowed);
    }
    d.sdp = f.req_string("sdp");
    f.rest(d.extra);
    return d;
}

SdpStreamMetadata parse_metadata(const json::value& v, const Path& path) {
    SdpStreamMetadata out;
    for (const auto& [id, entry] : as_object(v, path)) {
        Path entry_path = path.member(id);
        Fields f(entry, entry_path);
        StreamMetadata m;
        m.purpose = f.req_string("purpose");
        m.audio_muted = f.opt_bool("audio_muted").value_or(false);
        m.video_muted = f.opt_bool("video_muted").value_or(false);
        f.rest(m.extra);
        out.emplace(std::string(id), std::move(m));
    }
    return out;
}

std::optional<SdpStreamMetadata> take_metadata(Fields& f) {
    const json::value* stable = f.take(kMetadataKey);
    const json::value* unstable = f.take(kMetadataUnstableKey);
    if (stable) return parse_metadata(*stable, f.path().member(kMetadataKey));
    if (unstable) return parse_metadata(*unstable, f.path().member(kMetadataUnstableKey));
    return std::nullopt;
}

void parse_common(Fields& f, CallCommon& c) {
    c.call_id = f.opaque_id("call_id", true);
    const json::value* version = f.take("version");
    Path version_path = f.path().member("version");
    if (!version) fail(version_path, "is required");
    if (const json::string* s = version->if_string()) {
        c.version = *s == "0" ? CallVersion::v0 : CallVersion::v1;
        if (*s != "1") c.version_sent = *version;
    } else if (version->is_number()) {
        bool zero = (version->is_int64() && version->get_int64() == 0) ||
                    (version->is_uint64() && version->get_uint64() == 0);
        c.version = zero ? CallVersion::v0 : CallVersion::v1;
        c.version_sent = *version;
    } else {
        fail(version_path, "must be a string (or the integer 0 of version 0)");
    }
    c.party_id = f.opaque_id("party_id", c.version == CallVersion::v1);
}

// An event of type T: `fill` reads the fields particular to T, the unread rest goes to `extra`.
template <typename T, typename Fill>
CallEvent build(Fields& f, Fill&& fill) {
    T e;
    parse_common(f, e);
    fill(e);
    f.rest(e.extra);
    return e;
}

CallEvent parse(std::string_view type, const json::value& content) {
    const Path root{nullptr, "content"};
    Fields f(content, root);
    if (type == "m.call.invite") {
        return build<CallInvite>(f, [&](CallInvite& e) {
            e.offer = parse_description(f.take("offer"), root.member("offer"), {"offer"});
            e.lifetime = f.req_int("lifetime", 0);
            e.invitee = f.opt_string("invitee");
            if (e.invitee && !parse_user_id(*e.invitee))
                fail(root.member("invitee"), "must be a user id");
            e.metadata = take_metadata(f);
        });
    }
    if (type == "m.call.candidates") {
        return build<CallCandidates>(f, [&](CallCandidates& e) {
            const json::value* list = f.take("candidates");
            Path path = root.member("candidates");
            if (!list) fail(path, "is required");
            if (!list->is_array()) fail(path, "must be an array");
            std::size_t i = 0;
            for (const json::value& item : list->get_array()) {
                Path item_path = path.element(i++);
                Fields c(item, item_path);
                Candidate& cand = e.candidates.emplace_back();
                cand.candidate = c.req_string("candidate");
                cand.sdp_mid = c.opt_string("sdpMid");
                cand.sdp_mline_index = c.opt_int("sdpMLineIndex");
                if (cand.sdp_mline_index && *cand.sdp_mline_index < 0)
                    fail(item_path.member("sdpMLineIndex"), "must not be negative");
                if (!cand.candidate.empty() && !cand.sdp_mid && !cand.sdp_mline_index)
                    fail(item_path,
                         "needs sdpMid or sdpMLineIndex (only the end-of-candidates marker may "
                         "omit both)");
                c.rest(cand.extra);
            }
        });
    }
    if (type == "m.call.answer") {
        return build<CallAnswer>(f, [&](CallAnswer& e) {
            e.answer = parse_description(f.take("answer"), root.member("answer"), {"answer"});
            e.metadata = take_metadata(f);
        });
    }
    if (type == "m.call.select_answer") {
        return build<CallSelectAnswer>(f, [&](CallSelectAnswer& e) {
            e.selected_party_id = f.opaque_id("selected_party_id", true);
        });
    }
    if (type == "m.call.reject") return build<CallReject>(f, [](CallReject&) {});
    if (type == "m.call.negotiate") {
        return build<CallNegotiate>(f, [&](CallNegotiate& e) {
            e.description = parse_description(f.take("description"), root.member("description"),
                                              {"offer", "answer"});
            e.lifetime = f.req_int("lifetime", 0);
            e.metadata = take_metadata(f);
        });
    }
    if (type == "m.call.hangup") {
        return build<CallHangup>(f, [&](CallHangup& e) { e.reason = f.opt_string("reason"); });
    }
    if (type == "m.call.sdp_stream_metadata_changed") {
        return build<CallSdpStreamMetadataChanged>(f, [&](CallSdpStreamMetadataChanged& e) {
            auto m = take_metadata(f);
            if (!m) fail(root.member(kMetadataKey), "is required");
            e.metadata = std::move(*m);
        });
    }
    fail(Path{nullptr, "type"},
         std::string("'").append(type).append("' is not an m.call.* event type"));
}

json::object serialize_description(const SessionDescription& d) {
    json::object out = d.extra;
    out["type"] = d.type;
    out["sdp"] = d.sdp;
    return out;
}

// The metadata of an event that may carry it.
const SdpStreamMetadata* metadata_of(const CallSdpStreamMetadataChanged& e) {
    return &e.metadata;
}
template <typename T>
const SdpStreamMetadata* metadata_of(const T& e) {
    return e.metadata ? &*e.metadata : nullptr;
}

json::object common(const CallCommon& c) {
    json::object out = c.extra;
    out["call_id"] = c.call_id;
    if (!c.party_id.empty()) out["party_id"] = c.party_id;
    if (c.version_sent)
        out["version"] = *c.version_sent;
    else
        out["version"] = "1";
    return out;
}

// Under both keys (see kMetadataUnstableKey).
void put_metadata(json::object& out, const SdpStreamMetadata& m) {
    json::object value;
    for (const auto& [id, s] : m) {
        json::object entry = s.extra;
        entry["purpose"] = s.purpose;
        if (s.audio_muted) entry["audio_muted"] = true;
        if (s.video_muted) entry["video_muted"] = true;
        value[id] = std::move(entry);
    }
    out[kMetadataKey] = value;
    out[kMetadataUnstableKey] = std::move(value);
}

}  // namespace

bool CallHangup::reason_known() const {
    std::string r = effective_reason();
    return std::find(std::begin(kHangupReasons), std::end(kHangupReasons), r) !=
           std::end(kHangupReasons);
}

Parsed<CallEvent> parse_call_event(std::string_view type, const json::value& content) {
    try {
        return parse(type, content);
    } catch (const Fail& f) {
        return CallEventError{f.path, f.rule};
    }
}

std::string_view call_event_type(const CallEvent& event) {
    static constexpr std::string_view kTypes[] = {
        "m.call.invite", "m.call.candidates",
        "m.call.answer", "m.call.select_answer",
        "m.call.reject", "m.call.negotiate",
        "m.call.hangup", "m.call.sdp_stream_metadata_changed"};
    return kTypes[event.index()];
}

json::object serialize_call_event(const CallEvent& event) {
    return std::visit(
        [](const auto& e) -> json::object {
            using T = std::decay_t<decltype(e)>;
            json::object out = common(e);
            if constexpr (std::is_same_v<T, CallInvite>) {
                out["offer"] = serialize_description(e.offer);
                out["lifetime"] = e.lifetime;
                if (e.invitee) out["invitee"] = *e.invitee;
            } else if constexpr (std::is_same_v<T, CallCandidates>) {
                json::array list;
                for (const auto& c : e.candidates) {
                    json::object o = c.extra;
                    o["candidate"] = c.candidate;
                    if (c.sdp_mid) o["sdpMid"] = *c.sdp_mid;
                    if (c.sdp_mline_index) o["sdpMLineIndex"] = *c.sdp_mline_index;
                    list.push_back(std::move(o));
                }
                out["candidates"] = std::move(list);
            } else if constexpr (std::is_same_v<T, CallAnswer>) {
                out["answer"] = serialize_description(e.answer);
            } else if constexpr (std::is_same_v<T, CallSelectAnswer>) {
                out["selected_party_id"] = e.selected_party_id;
            } else if constexpr (std::is_same_v<T, CallNegotiate>) {
                out["description"] = serialize_description(e.description);
                out["lifetime"] = e.lifetime;
            } else if constexpr (std::is_same_v<T, CallHangup>) {
                if (e.reason) out["reason"] = *e.reason;
            }
            if constexpr (requires { e.metadata; }) {
                if (const SdpStreamMetadata* m = metadata_of(e)) put_metadata(out, *m);
            }
            return out;
        },
        event);
}

std::vector<LintFinding> lint_call_event(const CallEvent& event) {
    std::vector<LintFinding> out;
    auto violation = [&](std::string path, std::string rule) {
        out.push_back({LintFinding::Severity::violation, std::move(path), std::move(rule)});
    };
    std::visit(
        [&](const auto& e) {
            using T = std::decay_t<decltype(e)>;
            if (const auto& v = e.version_sent; v && v->is_string()) {
                // "0" is version 0; other strings are experimental versions the schema allows.
                if (v->get_string() != "0")
                    out.push_back({LintFinding::Severity::note, "content.version",
                                   "experimental version \"" + std::string(v->get_string()) +
                                       "\": read as version \"1\""});
            } else if (v && !(v->is_int64() && v->get_int64() == 0)) {
                violation("content.version",
                          "should be \"1\" (or the integer 0 of version 0); read as \"1\"");
            }
            if constexpr (requires { e.metadata; }) {
                if (const SdpStreamMetadata* m = metadata_of(e)) {
                    for (const auto& [id, s] : *m) {
                        if (!s.purpose_known())
                            violation(
                                "content.sdp_stream_metadata." + id + ".purpose",
                                "must be m.usermedia or m.screenshare; the stream is ignored");
                        for (const auto& kv : s.extra)
                            violation(
                                "content.sdp_stream_metadata." + id + "." + std::string(kv.key()),
                                "is not a stream metadata field (kept, but no client reads it)");
                    }
                }
            }
            if constexpr (std::is_same_v<T, CallHangup>) {
                if (!e.reason_known())
                    violation("content.reason",
                              "'" + e.effective_reason() +
                                  "' is not a spec hangup reason (ice_timeout, ice_failed, "
                                  "invite_timeout, user_hangup, user_media_failed, user_busy, "
                                  "unknown_error)");
            }
            if constexpr (std::is_same_v<T, CallReject> || std::is_same_v<T, CallNegotiate>) {
                if (e.version == CallVersion::v0)
                    violation(
                        "content.version",
                        std::string(call_event_type(event)).append(" exists only in version 1"));
            }
        },
        event);
    return out;
}

}  // namespace mxvoip::proto
