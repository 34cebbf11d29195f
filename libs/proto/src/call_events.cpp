#include "mxvoip/proto/call_events.hpp"

#include <boost/container/small_vector.hpp>

#include <algorithm>

#include "mxvoip/proto/errors.hpp"
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

// A DOM value behind the small interface the rules below read through. (The fast way in,
// call_event_text.cpp, reads text directly and leaves to these rules whatever it does not
// take.)
class DomNode {
  public:
    explicit DomNode(const json::value& v) : v_(&v) {}
    bool is_object() const { return v_->is_object(); }
    bool is_array() const { return v_->is_array(); }
    bool is_string() const { return v_->is_string(); }
    bool is_bool() const { return v_->is_bool(); }
    bool is_number() const { return v_->is_number(); }
    std::optional<std::int64_t> as_integer() const {
        if (v_->is_int64()) return v_->get_int64();
        if (v_->is_uint64() && v_->get_uint64() <= static_cast<std::uint64_t>(kMaxSafeInteger))
            return static_cast<std::int64_t>(v_->get_uint64());
        return std::nullopt;
    }
    std::optional<DomNode> find(std::string_view key) const {
        const json::value* v = v_->get_object().if_contains(key);
        return v ? std::optional(DomNode(*v)) : std::nullopt;
    }
    template <typename F>
    void for_each_member(F&& f) const {
        for (const auto& kv : v_->get_object()) f(std::string_view(kv.key()), DomNode(kv.value()));
    }
    std::size_t size() const { return v_->get_array().size(); }
    template <typename F>
    void for_each_element(F&& f) const {
        for (const auto& v : v_->get_array()) f(DomNode(v));
    }
    std::string string() const { return std::string(v_->get_string()); }
    bool string_equals(std::string_view s) const { return v_->get_string() == s; }
    bool boolean() const { return v_->get_bool(); }
    json::value to_value() const { return *v_; }

  private:
    const json::value* v_;
};

template <typename Node>
const Node& as_object(const Node& v, const Path& path) {
    if (!v.is_object()) fail(path, "must be an object");
    return v;
}

// Reads fields of one object, remembering which were read: the rest are the unknown fields.
// Points into the parsed value, copies nothing until a field is returned.
template <typename Node>
class Fields {
  public:
    Fields(const Node& o, const Path& path) : obj_(as_object(o, path)), path_(path) {}

    std::optional<Node> take(std::string_view key) {
        auto v = obj_.find(key);
        if (v) taken_.push_back(key);
        return v;
    }
    std::string req_string(std::string_view key) {
        auto v = opt_string(key);
        if (!v) fail(path_.member(key), "is required");
        return std::move(*v);
    }
    std::optional<std::string> opt_string(std::string_view key) {
        auto v = take(key);
        if (!v) return std::nullopt;
        if (!v->is_string()) fail(path_.member(key), "must be a string");
        return v->string();
    }
    std::int64_t req_int(std::string_view key, std::int64_t min) {
        auto v = opt_int(key);
        if (!v) fail(path_.member(key), "is required");
        if (*v < min) fail(path_.member(key), "must be at least " + std::to_string(min));
        return *v;
    }
    std::optional<std::int64_t> opt_int(std::string_view key) {
        auto v = take(key);
        if (!v) return std::nullopt;
        if (auto i = v->as_integer()) return i;
        fail(path_.member(key), "must be an integer");
    }
    std::optional<bool> opt_bool(std::string_view key) {
        auto v = take(key);
        if (!v) return std::nullopt;
        if (!v->is_bool()) fail(path_.member(key), "must be true or false");
        return v->boolean();
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
    // Puts the fields not read into `out` (left untouched when every field was read).
    void rest(json::object& out) const {
        if (taken_.size() == obj_.size()) return;
        obj_.for_each_member([&](std::string_view key, const Node& value) {
            if (std::find(taken_.begin(), taken_.end(), key) == taken_.end())
                out[key] = value.to_value();
        });
    }

  private:
    const Node& obj_;
    const Path& path_;
    boost::container::small_vector<std::string_view, 8> taken_;
};

template <typename Node>
SessionDescription parse_description(const std::optional<Node>& v, const Path& path,
                                     std::initializer_list<std::string_view> types) {
    if (!v) fail(path, "is required");
    Fields<Node> f(*v, path);
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

template <typename Node>
SdpStreamMetadata parse_metadata(const Node& v, const Path& path) {
    SdpStreamMetadata out;
    as_object(v, path).for_each_member([&](std::string_view id, const Node& entry) {
        Path entry_path = path.member(id);
        Fields<Node> f(entry, entry_path);
        StreamMetadata m;
        m.purpose = f.req_string("purpose");
        m.audio_muted = f.opt_bool("audio_muted").value_or(false);
        m.video_muted = f.opt_bool("video_muted").value_or(false);
        f.rest(m.extra);
        out.emplace(std::string(id), std::move(m));
    });
    return out;
}

template <typename Node>
std::optional<SdpStreamMetadata> take_metadata(Fields<Node>& f) {
    auto stable = f.take(kMetadataKey);
    auto unstable = f.take(kMetadataUnstableKey);
    if (stable) return parse_metadata(*stable, f.path().member(kMetadataKey));
    if (unstable) return parse_metadata(*unstable, f.path().member(kMetadataUnstableKey));
    return std::nullopt;
}

template <typename Node>
void parse_common(Fields<Node>& f, CallCommon& c) {
    c.call_id = f.opaque_id("call_id", true);
    auto version = f.take("version");
    Path version_path = f.path().member("version");
    if (!version) fail(version_path, "is required");
    if (version->is_string()) {
        c.version = version->string_equals("0") ? CallVersion::v0 : CallVersion::v1;
        if (!version->string_equals("1")) c.version_sent = version->to_value();
    } else if (version->is_number()) {
        c.version = version->as_integer() == 0 ? CallVersion::v0 : CallVersion::v1;
        c.version_sent = version->to_value();
    } else {
        fail(version_path, "must be a string (or the integer 0 of version 0)");
    }
    c.party_id = f.opaque_id("party_id", c.version == CallVersion::v1);
}

// An event of type T built in place in the variant (these events are moved only once more,
// into Parsed): `fill` reads the fields particular to T, the unread rest goes to `extra`.
template <typename T, typename Node, typename Fill>
CallEvent build(Fields<Node>& f, Fill&& fill) {
    CallEvent out(std::in_place_type<T>);
    T& e = *std::get_if<T>(&out);
    parse_common(f, e);
    fill(e);
    f.rest(e.extra);
    return out;
}

template <typename Node>
CallEvent parse(std::string_view type, const Node& content) {
    const Path root{nullptr, "content"};
    Fields<Node> f(content, root);
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
            auto list = f.take("candidates");
            Path path = root.member("candidates");
            if (!list) fail(path, "is required");
            if (!list->is_array()) fail(path, "must be an array");
            e.candidates.reserve(list->size());
            std::size_t i = 0;
            list->for_each_element([&](const Node& item) {
                Path item_path = path.element(i++);
                Fields<Node> c(item, item_path);
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
            });
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
    if (c.version_sent)
        out["version"] = *c.version_sent;
    else
        out["version"] = "1";
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
        return parse(type, DomNode(content));
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
            bool version_ok =
                !v || (v->is_string() && (v->get_string() == "1" || v->get_string() == "0")) ||
                (v->is_int64() && v->get_int64() == 0);
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
                    out.push_back(
                        {"content.version",
                         std::string(call_event_type(event)).append(" exists only in version 1")});
            }
        },
        event);
    return out;
}

}  // namespace mxvoip::proto
