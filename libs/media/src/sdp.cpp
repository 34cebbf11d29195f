#include "sdp.hpp"

#include <algorithm>
#include <iterator>
#include <string_view>

namespace mxvoip::media {

namespace {

constexpr std::string_view kDirections[] = {"sendrecv", "sendonly", "recvonly", "inactive"};

const GstSDPMedia* media_of(const GstSDPMessage& sdp, const std::string& mid) {
    for (guint m = 0; m < gst_sdp_message_medias_len(&sdp); ++m) {
        const GstSDPMedia* media = gst_sdp_message_get_media(&sdp, m);
        const gchar* id = gst_sdp_media_get_attribute_val(media, "mid");
        if (id && mid == id) return media;
    }
    return nullptr;
}

}  // namespace

SdpMessage parse_sdp(const std::string& text) {
    if (text.empty()) return nullptr;
    GstSDPMessage* raw = nullptr;
    gst_sdp_message_new(&raw);
    SdpMessage sdp(raw);
    if (gst_sdp_message_parse_buffer(reinterpret_cast<const guint8*>(text.data()),
                                     static_cast<guint>(text.size()), raw) != GST_SDP_OK)
        return nullptr;
    // The parser skips what it does not understand: a text without a version line is not SDP.
    if (!gst_sdp_message_get_version(raw)) return nullptr;
    return sdp;
}

SdpMessage copy_sdp(const GstSDPMessage& sdp) {
    GstSDPMessage* copy = nullptr;
    gst_sdp_message_copy(&sdp, &copy);
    return SdpMessage(copy);
}

std::string sdp_text(const GstSDPMessage& sdp) {
    gchar* text = gst_sdp_message_as_text(&sdp);
    std::string out = text ? text : "";
    g_free(text);
    return out;
}

std::string stream_id(const GstSDPMessage& sdp, const std::string& mid) {
    const GstSDPMedia* media = media_of(sdp, mid);
    if (!media) return {};
    // "a=msid:<stream id> <track id>", or "a=ssrc:<ssrc> msid:<stream id> <track id>".
    if (const gchar* msid = gst_sdp_media_get_attribute_val(media, "msid")) {
        std::string_view v = msid;
        return std::string(v.substr(0, v.find(' ')));
    }
    for (guint i = 0; const gchar* ssrc = gst_sdp_media_get_attribute_val_n(media, "ssrc", i);
         ++i) {
        std::string_view v = ssrc;
        std::size_t at = v.find(" msid:");
        if (at == std::string_view::npos) continue;
        v.remove_prefix(at + 6);
        return std::string(v.substr(0, v.find(' ')));
    }
    return {};
}

void rewrite_directions(GstSDPMessage& sdp, const DirectionMap& f) {
    for (guint m = 0; m < gst_sdp_message_medias_len(&sdp); ++m) {
        // The message is ours to change; GStreamer hands out its sections as const only.
        auto* media = const_cast<GstSDPMedia*>(gst_sdp_message_get_media(&sdp, m));
        const gchar* mid = gst_sdp_media_get_attribute_val(media, "mid");
        for (guint a = 0; a < gst_sdp_media_attributes_len(media); ++a) {
            std::string_view key = gst_sdp_media_get_attribute(media, a)->key;
            if (std::find(std::begin(kDirections), std::end(kDirections), key) ==
                std::end(kDirections))
                continue;
            std::string dir = f(mid ? mid : "", std::string(key));
            GstSDPAttribute attr;
            gst_sdp_attribute_set(&attr, dir.c_str(), "");  // as the parser leaves a flag
            gst_sdp_media_replace_attribute(media, a, &attr);
            break;
        }
    }
}

bool has_candidate(const GstSDPMessage& sdp, const std::string& candidate) {
    std::string_view wanted = candidate;
    if (!wanted.starts_with("candidate:")) return false;
    wanted.remove_prefix(10);
    for (guint m = 0; m < gst_sdp_message_medias_len(&sdp); ++m) {
        const GstSDPMedia* media = gst_sdp_message_get_media(&sdp, m);
        for (guint i = 0; const gchar* v = gst_sdp_media_get_attribute_val_n(media, "candidate", i);
             ++i)
            if (wanted == v) return true;
    }
    return false;
}

bool sends(const std::string& dir) {
    return dir == "sendrecv" || dir == "sendonly";
}
bool receives(const std::string& dir) {
    return dir == "sendrecv" || dir == "recvonly";
}
std::string direction(bool send, bool recv) {
    return send && recv ? "sendrecv" : send ? "sendonly" : recv ? "recvonly" : "inactive";
}

}  // namespace mxvoip::media
