#include "mxvoip/proto/call_events.hpp"

#include <algorithm>

#include "mxvoip/proto/ids.hpp"
#include "mxvoip/proto/json.hpp"

namespace mxvoip::proto {
namespace {

// Thrown inside this file only; parse_call_event turns it into a CallEventError.
struct Fail {
    std::string path;
    std::string rule;
};

[[noreturn]] void fail(const std::string& path, std::string rule) {
    throw Fail{path, std::move(rule)};
}

std::string join(const std::string& path, std::string_view key) {
    return path + "." + std::string(key);
}

const json::object& as_object(const json::value& v, const std::string& path) {
    if (!v.is_object()) fail(path, "must be an object");
    return v.get_object();
}

// Reads fields of one object, remembering which were read: the rest are the unknown fields.
// Points into the parsed value, copies nothing until a field is returned.
class Fields {
  public:
    Fields(const json::object& o, std::string path) : obj_(o), path_(std::move(path)) {}

    const json::value* take(std::string_view key) {
        auto it = obj_.find(key);
        if (it == obj_.end()) return nullptr;
        taken_.push_back(key);
        return &it->value();
    }
    std::string req_string(std::string_view key) {
        auto v = opt_string(key);
        if (!v) fail(join(path_, key), "is required");
        return *v;
    }
    std::optional<std::string> opt_string(std::string_view key) {
        const json::value* v = take(key);
        if (!v) return std::nullopt;
        if (!v->is_string()) fail(join(path_, key), "must be a string");
        return std::string(v->get_string());
    }
    std::int64_t req_int(std::string_view key, std::int64_t min) {
        auto v = opt_int(key);
        if (!v) fail(join(path_, key), "is required");
        if (*v < min) fail(join(path_, key), "must be at least " + std::to_string(min));
        return *v;
    }
    std::optional<std::int64_t> opt_int(std::string_view key) {
        const json::value* v = take(key);
        if (!v) return std::nullopt;
        if (v->is_int64()) return v->get_int64();
        if (v->is_uint64() && v->get_uint64() <= static_cast<std::uint64_t>(kMaxSafeInteger))
            return static_cast<std::int64_t>(v->get_uint64());
        fail(join(path_, key), "must be an integer");
    }
    std::optional<bool> opt_bool(std::string_view key) {
        const json::value* v = take(key);
        if (!v) return std::nullopt;
        if (!v->is_bool()) fail(join(path_, key), "must be true or false");
        return v->get_bool();
    }
    std::string opaque_id(std::string_view key, bool required) {
        auto v = opt_string(key);
        if (!v) {
            if (required) fail(join(path_, key), "is required");
            return {};
        }
        if (!is_valid_opaque_id(*v))
            fail(join(path_, key), "must be 1-255 characters of [0-9A-Za-z-._~]");
        return *v;
    }
    const std::string& path() const { return path_; }
    json::object rest() const {
        json::object out;
        for (const auto& kv : obj_)
            if (std::find(taken_.begin(), taken_.end(), kv.key()) == taken_.end())
                out[kv.key()] = kv.value();
        return out;
    }

  private:
    const json::object& obj_;
    std::vector<std::string_view> taken_;
    std::string path_;
};

SessionDescription parse_description(const json::value* v, const std::string& path,
                                     std::initializer_list<std::string_view> types) {
    if (!v) fail(path, "is required");
    Fields f(as_object(*v, path), path);
    SessionDescription d;
    d.type = f.req_string("type");
    if (std::find(types.begin(), types.end(), d.type) == types.end()) {
        std::string allowed;
        for (auto t : types) allowed += (allowed.empty() ? "\"" : " or \"") + std::string(t) + "\"";
        fail(join(path, "type"), "must be " + allowed);
    }
    d.sdp = f.req_string("sdp");
    d.extra = f.rest();
    return d;
}

SdpStreamMetadata parse_metadata(const json::value& v, const std::string& path) {
    SdpStreamMetadata out;
    for (const auto& [id, entry] : as_object(v, path)) {
        std::string entry_path = join(path, id);
        Fields f(as_object(entry, entry_path), entry_path);
        StreamMetadata m;
        m.purpose = f.req_string("purpose");
        m.audio_muted = f.opt_bool("audio_muted").value_or(false);
        m.video_muted = f.opt_bool("video_muted").value_or(false);
        m.extra = f.rest();
        out.emplace(std::string(id), std::move(m));
    }
    return out;
}

std::optional<SdpStreamMetadata> take_metadata(Fields& f) {
    const json::value* stable = f.take(kMetadataKey);
    const json::value* unstable = f.take(kMetadataUnstableKey);
    if (stable) return parse_metadata(*stable, join(f.path(), kMetadataKey));
    if (unstable) return parse_metadata(*unstable, join(f.path(), kMetadataUnstableKey));
    return std::nullopt;
}

void parse_common(Fields& f, CallCommon& c) {
    c.call_id = f.opaque_id("call_id", true);
    const json::value* version = f.take("version");
    if (!version) fail(join(f.path(), "version"), "is required");
    if (version->is_string()) {
        c.version = version->get_string() == "0" ? CallVersion::v0 : CallVersion::v1;
    } else if (version->is_number()) {
        c.version =
            version->is_int64() && version->get_int64() == 0 ? CallVersion::v0 : CallVersion::v1;
    } else {
        fail(join(f.path(), "version"), "must be a string (or the integer 0 of version 0)");
    }
    c.version_sent = *version;
    c.party_id = f.opaque_id("party_id", c.version == CallVersion::v1);
}

template <typename T>
T finish(Fields& f, T event) {
    event.extra = f.rest();
    return event;
}

CallEvent parse(std::string_view type, const json::value& content) {
    const std::string root = "content";
    Fields f(as_object(content, root), root);
    if (type == "m.call.invite") {
        CallInvite e;
        parse_common(f, e);
        e.offer = parse_description(f.take("offer"), join(root, "offer"), {"offer"});
        e.lifetime = f.req_int("lifetime", 0);
        e.invitee = f.opt_string("invitee");
        if (e.invitee && !parse_user_id(*e.invitee))
            fail(join(root, "invitee"), "must be a user id");
        e.metadata = take_metadata(f);
        return finish(f, std::move(e));
    }
    if (type == "m.call.candidates") {
        CallCandidates e;
        parse_common(f, e);
        const json::value* list = f.take("candidates");
        std::string path = join(root, "candidates");
        if (!list) fail(path, "is required");
        if (!list->is_array()) fail(path, "must be an array");
        for (std::size_t i = 0; i < list->get_array().size(); ++i) {
            std::string item_path = path + "[" + std::to_string(i) + "]";
            Fields c(as_object(list->get_array()[i], item_path), item_path);
            Candidate cand;
            cand.candidate = c.req_string("candidate");
            cand.sdp_mid = c.opt_string("sdpMid");
            cand.sdp_mline_index = c.opt_int("sdpMLineIndex");
            if (cand.sdp_mline_index && *cand.sdp_mline_index < 0)
                fail(join(item_path, "sdpMLineIndex"), "must not be negative");
            if (!cand.candidate.empty() && !cand.sdp_mid && !cand.sdp_mline_index)
                fail(item_path,
                     "needs sdpMid or sdpMLineIndex (only the end-of-candidates marker may omit "
                     "both)");
            cand.extra = c.rest();
            e.candidates.push_back(std::move(cand));
        }
        return finish(f, std::move(e));
    }
    if (type == "m.call.answer") {
        CallAnswer e;
        parse_common(f, e);
        e.answer = parse_description(f.take("answer"), join(root, "answer"), {"answer"});
        e.metadata = take_metadata(f);
        return finish(f, std::move(e));
    }
    if (type == "m.call.select_answer") {
        CallSelectAnswer e;
        parse_common(f, e);
        e.selected_party_id = f.opaque_id("selected_party_id", true);
        return finish(f, std::move(e));
    }
    if (type == "m.call.reject") {
        CallReject e;
        parse_common(f, e);
        return finish(f, std::move(e));
    }
    if (type == "m.call.negotiate") {
        CallNegotiate e;
        parse_common(f, e);
        e.description = parse_description(f.take("description"), join(root, "description"),
                                          {"offer", "answer"});
        e.lifetime = f.req_int("lifetime", 0);
        e.metadata = take_metadata(f);
        return finish(f, std::move(e));
    }
    if (type == "m.call.hangup") {
        CallHangup e;
        parse_common(f, e);
        e.reason = f.opt_string("reason");
        return finish(f, std::move(e));
    }
    if (type == "m.call.sdp_stream_metadata_changed") {
        CallSdpStreamMetadataChanged e;
        parse_common(f, e);
        auto m = take_metadata(f);
        if (!m) fail(join(root, kMetadataKey), "is required");
        e.metadata = std::move(*m);
        return finish(f, std::move(e));
    }
    fail("type", "'" + std::string(type) + "' is not an m.call.* event type");
}

}  // namespace

json::object serialize_stream_metadata(const SdpStreamMetadata& m) {
    json::object out;
    for (const auto& [id, s] : m) {
        json::object entry = s.extra;
        entry["purpose"] = s.purpose;
        if (s.audio_muted) entry["audio_muted"] = true;
        if (s.video_muted) entry["video_muted"] = true;
        out[id] = std::move(entry);
    }
    return out;
}

namespace {

json::object serialize_description(const SessionDescription& d) {
    json::object out = d.extra;
    out["type"] = d.type;
    out["sdp"] = d.sdp;
    return out;
}

json::object common(const CallCommon& c) {
    json::object out = c.extra;
    out["call_id"] = c.call_id;
    if (!c.party_id.empty()) out["party_id"] = c.party_id;
    out["version"] = c.version_sent;
    return out;
}

void put_metadata(json::object& out, const std::optional<SdpStreamMetadata>& m) {
    if (!m) return;
    json::object value = serialize_stream_metadata(*m);
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
                put_metadata(out, e.metadata);
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
                put_metadata(out, e.metadata);
            } else if constexpr (std::is_same_v<T, CallSelectAnswer>) {
                out["selected_party_id"] = e.selected_party_id;
            } else if constexpr (std::is_same_v<T, CallNegotiate>) {
                out["description"] = serialize_description(e.description);
                out["lifetime"] = e.lifetime;
                put_metadata(out, e.metadata);
            } else if constexpr (std::is_same_v<T, CallHangup>) {
                if (e.reason) out["reason"] = *e.reason;
            } else if constexpr (std::is_same_v<T, CallSdpStreamMetadataChanged>) {
                put_metadata(out, e.metadata);
            }
            return out;
        },
        event);
}

std::vector<CallEventError> lint_call_event(const CallEvent& event) {
    std::vector<CallEventError> out;
    std::visit(
        [&](const auto& e) {
            using T = std::decay_t<decltype(e)>;
            const auto& v = e.version_sent;
            bool version_ok = (v.is_string() && (v.get_string() == "1" || v.get_string() == "0")) ||
                              (v.is_int64() && v.get_int64() == 0);
            if (!version_ok)
                out.push_back({"content.version",
                               "should be \"1\" (or the integer 0 of version 0); read as \"1\""});
            auto check_metadata = [&](const SdpStreamMetadata& m) {
                for (const auto& [id, s] : m) {
                    if (!s.purpose_known())
                        out.push_back(
                            {"content.sdp_stream_metadata." + id + ".purpose",
                             "must be m.usermedia or m.screenshare; the stream is ignored"});
                    for (const auto& kv : s.extra)
                        out.push_back(
                            {"content.sdp_stream_metadata." + id + "." + std::string(kv.key()),
                             "is not a stream metadata field (kept, but no client reads it)"});
                }
            };
            if constexpr (requires { e.metadata; }) {
                if constexpr (std::is_same_v<std::decay_t<decltype(e.metadata)>, SdpStreamMetadata>)
                    check_metadata(e.metadata);
                else if (e.metadata)
                    check_metadata(*e.metadata);
            }
            if constexpr (std::is_same_v<T, CallHangup>) {
                if (!e.reason_known())
                    out.push_back({"content.reason",
                                   "'" + e.effective_reason() +
                                       "' is not a spec hangup reason (ice_timeout, ice_failed, "
                                       "invite_timeout, user_hangup, user_media_failed, user_busy, "
                                       "unknown_error)"});
            }
            if constexpr (std::is_same_v<T, CallReject> || std::is_same_v<T, CallNegotiate>) {
                if (e.version == CallVersion::v0)
                    out.push_back({"content.version", std::string(call_event_type(event)) +
                                                          " exists only in version 1"});
            }
        },
        event);
    return out;
}

}  // namespace mxvoip::proto
