// The webrtcbin media session. GStreamer calls back on its own threads (webrtcbin's task
// thread, streaming threads, libnice): every callback only records counters or emits an
// event to the sink, which hands it to the driver's executor.
#include <gst/gst.h>
#define GST_USE_UNSTABLE_API
#include <gst/sdp/sdp.h>
#include <gst/video/video.h>
#include <gst/webrtc/webrtc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <stdexcept>
#include <thread>

#include "../sdp.hpp"
#include "mxvoip/media/media_session.hpp"

namespace mxvoip::media {
namespace {

using Clock = std::chrono::steady_clock;

// How long a new local description waits for candidates to put in it (VOIP-NOTES.md).
constexpr auto kCandidateWait = std::chrono::milliseconds(200);

// Jitter buffer (webrtcbin's default is 200 ms): none until the first frame is decoded, so
// the first packets are played the moment they are in order, as a browser does, then large
// enough to absorb the reordering and retransmissions of real paths (raising it delays
// playout once, by the difference).
constexpr guint kStartLatencyMs = 0;
constexpr guint kSteadyLatencyMs = 50;
constexpr guint kIcePacingMs = 5;

std::string random_stream_id() {
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    std::string s = "mxvoip-";
    for (int i = 0; i < 16; ++i) s += alphabet[rng() % 62];
    return s;
}

std::string gerror_text(GError* err) {
    std::string s = err ? err->message : "unknown error";
    if (err) g_error_free(err);
    return s;
}

// One received track and what has been measured on it.
struct Track {
    std::string stream_id;
    Kind kind = Kind::audio;
    std::atomic<std::uint64_t> frames{0};
    std::atomic<bool> first_reported{false};
    // Audio: upward zero crossings (with hysteresis) over samples of buffers with sound.
    std::mutex m;
    int sign = 0;
    std::uint64_t crossings = 0;
    std::uint64_t sound_samples = 0;
    int rate = 48000;
    std::function<void()> on_first_frame;  // emits FirstFrame through the session
};

class GstSession;

// Sending branch: a test source through a valve (hold, screen share off) into an encoder.
struct Branch {
    GstElement* bin = nullptr;
    GstPad* webrtc_pad = nullptr;
    GstWebRTCRTPTransceiver* transceiver = nullptr;
    std::string stream_id;
    Kind kind = Kind::audio;
    bool screen = false;
};

class GstSession final : public MediaSession {
  public:
    GstSession(const SessionOptions& opt, EventSink sink)
        : opt_(opt), sink_(std::move(sink)), usermedia_id_(random_stream_id()) {
        pipe_ = gst_pipeline_new(nullptr);
        webrtc_ = gst_element_factory_make("webrtcbin", nullptr);
        if (!pipe_ || !webrtc_) throw std::runtime_error("GStreamer: cannot create webrtcbin");
        g_object_set(webrtc_, "bundle-policy", GST_WEBRTC_BUNDLE_POLICY_MAX_BUNDLE, "latency",
                     kStartLatencyMs, nullptr);
        if (opt_.relay_only)
            g_object_set(webrtc_, "ice-transport-policy", GST_WEBRTC_ICE_TRANSPORT_POLICY_RELAY,
                         nullptr);
        for (const auto& server : opt_.turn) {
            for (const auto& uri : server.uris) {
                std::string u = webrtcbin_turn_uri(uri, server.username, server.password);
                if (u.empty()) continue;
                gboolean ok = FALSE;
                g_signal_emit_by_name(webrtc_, "add-turn-server", u.c_str(), &ok);
            }
        }
        gst_bin_add(GST_BIN(pipe_), webrtc_);
        accept_sources_at_once();
        pace_checks_quickly();
        g_signal_connect(webrtc_, "on-ice-candidate", G_CALLBACK(&GstSession::on_ice_candidate),
                         this);
        g_signal_connect(webrtc_, "pad-added", G_CALLBACK(&GstSession::on_pad_added), this);
        g_signal_connect(webrtc_, "notify::ice-connection-state",
                         G_CALLBACK(&GstSession::on_ice_state), this);
        g_signal_connect(webrtc_, "notify::ice-gathering-state",
                         G_CALLBACK(&GstSession::on_gathering_state), this);
        GstBus* bus = gst_element_get_bus(pipe_);
        gst_bus_set_sync_handler(bus, &GstSession::on_bus, this, nullptr);
        gst_object_unref(bus);

        add_branch(Kind::audio, usermedia_id_, false);
        if (opt_.video) add_branch(Kind::video, usermedia_id_, false);
        if (gst_element_set_state(pipe_, GST_STATE_PLAYING) == GST_STATE_CHANGE_FAILURE)
            throw std::runtime_error("GStreamer: the pipeline does not start");
        worker_ = std::thread([this] { describe_loop(); });
        ops_thread_ = std::thread([this] { ops_loop(); });
    }

    ~GstSession() override { close(); }

    LocalStreamIds local_streams() const override {
        std::lock_guard lock(mu_);
        return {usermedia_id_, sharing_ ? screenshare_id_ : std::string()};
    }

    // Negotiation runs on the session's own thread, in the order it was asked for: an offer
    // may wait for its tracks' caps, and what follows it (a rollback in an offer collision, a
    // remote description, candidates) must not overtake it. The caller never waits.
    void create_offer() override {
        post([this] {
            wait_for_caps();
            GstPromise* p =
                gst_promise_new_with_change_func(&GstSession::on_offer_created, this, nullptr);
            g_signal_emit_by_name(webrtc_, "create-offer", nullptr, p);
        });
    }

    void create_answer(const std::string& offer_sdp) override {
        post([this, offer_sdp] {
            SdpMessage sdp = take_remote(offer_sdp);
            if (!sdp) return emit(MediaFailed{"GStreamer cannot parse the remote offer's SDP"});
            apply_valves();
            wait_for_caps();
            GstWebRTCSessionDescription* desc =
                gst_webrtc_session_description_new(GST_WEBRTC_SDP_TYPE_OFFER, sdp.release());
            GstPromise* p =
                gst_promise_new_with_change_func(&GstSession::on_remote_offer_set, this, nullptr);
            g_signal_emit_by_name(webrtc_, "set-remote-description", desc, p);
            gst_webrtc_session_description_free(desc);
        });
    }

    void set_remote_answer(const std::string& answer_sdp) override {
        post([this, answer_sdp] {
            SdpMessage sdp = take_remote(answer_sdp);
            if (!sdp) return emit(MediaFailed{"GStreamer cannot parse the remote answer's SDP"});
            apply_valves();
            GstWebRTCSessionDescription* desc =
                gst_webrtc_session_description_new(GST_WEBRTC_SDP_TYPE_ANSWER, sdp.release());
            GstPromise* p =
                gst_promise_new_with_change_func(&GstSession::on_remote_answer_set, this, nullptr);
            g_signal_emit_by_name(webrtc_, "set-remote-description", desc, p);
            gst_webrtc_session_description_free(desc);
        });
    }

    void add_remote_candidate(unsigned mline, const std::string& candidate) override {
        if (candidate.empty()) return;  // end of candidates: libnice needs no marker
        post([this, mline, candidate] {
            g_signal_emit_by_name(webrtc_, "add-ice-candidate", mline, candidate.c_str());
        });
    }

    void rollback() override {
        post([this] {
            GstWebRTCSessionDescription* desc =
                gst_webrtc_session_description_new(GST_WEBRTC_SDP_TYPE_ROLLBACK, nullptr);
            GstPromise* p = gst_promise_new();
            g_signal_emit_by_name(webrtc_, "set-local-description", desc, p);
            gst_promise_unref(p);
            gst_webrtc_session_description_free(desc);
        });
    }

    void set_hold(bool hold) override {
        {
            std::lock_guard lock(mu_);
            holding_ = hold;
        }
        apply_valves();
    }

    void set_screenshare(bool on, bool replace_camera) override {
        if (replace_camera) {
            // A peer that takes one stream: the camera's source shows the screen instead.
            for (auto& b : branches()) {
                if (b.kind != Kind::video || b.screen) continue;
                if (GstElement* src = gst_bin_get_by_name(GST_BIN(b.bin), "source")) {
                    gst_util_set_object_arg(G_OBJECT(src), "pattern", on ? "smpte" : "ball");
                    gst_object_unref(src);
                }
            }
            return;
        }
        {
            std::lock_guard lock(mu_);
            if (sharing_ == on) return;
            sharing_ = on;
            if (screenshare_id_.empty()) screenshare_id_ = random_stream_id();
        }
        auto all = branches();
        bool exists = std::any_of(all.begin(), all.end(), [](const Branch& b) { return b.screen; });
        if (on && !exists) add_branch(Kind::video, screenshare_id_, true);
        apply_valves();
    }

    bool can_restart_ice() const override { return false; }

    // Never waits on GStreamer: the network figures are those of webrtcbin's last get-stats
    // reply (a second old at most when called each second), and the next one is asked for
    // here; the track counters are our own.
    Stats stats() override {
        Stats s;
        bool ask = false;
        {
            std::lock_guard lock(stats_mu_);
            s = network_stats_;
            ask = !closing_ && !stats_asked_;
            stats_asked_ = stats_asked_ || ask;
        }
        if (ask) {
            GstPromise* p = gst_promise_new_with_change_func(&GstSession::on_stats, this, nullptr);
            g_signal_emit_by_name(webrtc_, "get-stats", nullptr, p);
        }
        std::lock_guard lock(tracks_mu_);
        for (const auto& t : tracks_) {
            TrackStats ts{t->stream_id, t->kind, t->frames.load(), 0};
            if (t->kind == Kind::audio) {
                std::lock_guard tl(t->m);
                if (t->sound_samples > 0)
                    ts.tone_hz = static_cast<double>(t->crossings) * t->rate /
                                 static_cast<double>(t->sound_samples);
            }
            s.tracks.push_back(ts);
        }
        return s;
    }

    void close() override {
        {
            std::lock_guard lock(stats_mu_);
            closing_ = true;
        }
        {
            std::lock_guard lock(mu_);
            if (closed_) return;
            closed_ = true;
        }
        cv_.notify_all();
        {
            std::lock_guard lock(ops_mu_);
            ops_closed_ = true;
            ops_.clear();
        }
        ops_cv_.notify_all();
        if (ops_thread_.joinable()) ops_thread_.join();
        if (worker_.joinable()) worker_.join();
        if (pipe_) {
            gst_element_set_state(pipe_, GST_STATE_NULL);
            for (auto& b : branches_) {
                if (b.transceiver) gst_object_unref(b.transceiver);
                if (b.webrtc_pad) gst_object_unref(b.webrtc_pad);
            }
            branches_.clear();
            GstBus* bus = gst_element_get_bus(pipe_);
            gst_bus_set_sync_handler(bus, nullptr, nullptr, nullptr);
            gst_object_unref(bus);
            gst_object_unref(pipe_);
            pipe_ = nullptr;
        }
    }

  private:
    void emit(Event ev) {
        std::lock_guard lock(mu_);
        if (!closed_) sink_(std::move(ev));
    }

    void add_branch(Kind kind, const std::string& stream_id, bool screen) {
        std::string desc;
        if (kind == Kind::audio) {
            desc = "audiotestsrc name=source is-live=true wave=sine volume=0.4 freq=" +
                   std::to_string(opt_.tone_hz) +
                   " ! audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=1"
                   " ! volume name=gate mute=false ! opusenc bitrate=32000"
                   " ! rtpopuspay pt=111 ! queue";
        } else {
            // The screen is a visibly different picture: colour bars, larger, fewer frames.
            desc = std::string("videotestsrc name=source is-live=true pattern=") +
                   (screen ? "smpte" : "ball") + " ! video/x-raw,width=" +
                   (screen ? "640,height=360,framerate=10/1" : "320,height=240,framerate=15/1") +
                   " ! videoconvert ! valve name=valve drop=false"
                   " ! vp8enc name=encoder deadline=1 cpu-used=8 keyframe-max-dist=15"
                   " target-bitrate=300000 ! rtpvp8pay pt=96 picture-id-mode=15-bit ! queue";
        }
        GError* err = nullptr;
        GstElement* bin = gst_parse_bin_from_description(desc.c_str(), TRUE, &err);
        if (!bin) throw std::runtime_error("GStreamer: " + gerror_text(err));
        gst_bin_add(GST_BIN(pipe_), bin);
        Branch b;
        b.bin = bin;
        b.kind = kind;
        b.stream_id = stream_id;
        b.screen = screen;
        b.webrtc_pad = gst_element_request_pad_simple(webrtc_, "sink_%u");
        g_object_set(b.webrtc_pad, "msid", stream_id.c_str(), nullptr);
        g_object_get(b.webrtc_pad, "transceiver", &b.transceiver, nullptr);
        // Codec preferences let the offer be made before the first buffer reaches webrtcbin.
        GstCaps* caps = gst_caps_from_string(
            kind == Kind::audio ? "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,"
                                  "clock-rate=48000,encoding-params=(string)2"
                                : "application/x-rtp,media=video,encoding-name=VP8,payload=96,"
                                  "clock-rate=90000,rtcp-fb-nack-pli=(boolean)true");
        if (b.transceiver) g_object_set(b.transceiver, "codec-preferences", caps, nullptr);
        gst_caps_unref(caps);
        GstPad* src = gst_element_get_static_pad(bin, "src");
        if (gst_pad_link(src, b.webrtc_pad) != GST_PAD_LINK_OK)
            throw std::runtime_error("GStreamer: cannot link a source to webrtcbin");
        gst_object_unref(src);
        gst_element_sync_state_with_parent(bin);
        std::lock_guard lock(branches_mu_);
        branches_.push_back(b);
    }

    // The branches as they are now. Branches are only added until close(), which first stops
    // every thread but GStreamer's: the copies' elements and pads stay valid.
    std::vector<Branch> branches() const {
        std::lock_guard lock(branches_mu_);
        return branches_;
    }

    void post(std::function<void()> op) {
        {
            std::lock_guard lock(ops_mu_);
            if (ops_closed_) return;
            ops_.push_back(std::move(op));
        }
        ops_cv_.notify_one();
    }

    void ops_loop() {
        std::unique_lock lock(ops_mu_);
        for (;;) {
            ops_cv_.wait(lock, [&] { return ops_closed_ || !ops_.empty(); });
            if (ops_closed_) return;
            std::function<void()> op = std::move(ops_.front());
            ops_.pop_front();
            lock.unlock();
            op();
            lock.lock();
        }
    }

    // libnice sends connectivity checks, and the first one for new remote candidates, on a
    // timer of Ta = 20 ms: a quarter of a relayed call's ICE time on loopback. RFC 8445 lets an
    // agent go down to 5 ms; a call has a handful of candidate pairs, so the burst is small.
    void pace_checks_quickly() {
        GObject* ice = nullptr;
        g_object_get(webrtc_, "ice-agent", &ice, nullptr);
        if (!ice) return;
        if (g_object_class_find_property(G_OBJECT_GET_CLASS(ice), "agent")) {
            GObject* agent = nullptr;
            g_object_get(ice, "agent", &agent, nullptr);
            if (agent) {
                g_object_set(agent, "stun-pacing-timer", kIcePacingMs, nullptr);
                g_object_unref(agent);
            }
        }
        g_object_unref(ice);
    }

    // rtpbin waits for two consecutive packets (`probation`) before it takes a new source and
    // starts its jitter buffer: ~20-30 ms of every call's setup. Media arrives through SRTP,
    // which already authenticates every packet, so the first one is enough.
    void accept_sources_at_once() {
        GstIterator* it = gst_bin_iterate_recurse(GST_BIN(webrtc_));
        GValue item = G_VALUE_INIT;
        while (gst_iterator_next(it, &item) == GST_ITERATOR_OK) {
            auto* element = GST_ELEMENT(g_value_get_object(&item));
            GstElementFactory* f = gst_element_get_factory(element);
            if (f && std::strcmp(GST_OBJECT_NAME(f), "rtpbin") == 0)
                g_signal_connect(element, "element-added",
                                 G_CALLBACK(&GstSession::on_rtpbin_element), nullptr);
            g_value_reset(&item);
        }
        g_value_unset(&item);
        gst_iterator_free(it);
    }

    static void on_rtpbin_element(GstBin*, GstElement* element, gpointer) {
        GstElementFactory* f = gst_element_get_factory(element);
        if (f && std::strcmp(GST_OBJECT_NAME(f), "rtpsession") == 0)
            g_object_set(element, "probation", 0u, nullptr);
    }

    // webrtcbin writes a track's msid (and ssrc) into the SDP only once its pad has caps, which
    // a new source reaches after its first encoded buffer: wait for that, briefly.
    // On the negotiation thread only; close() ends the wait.
    void wait_for_caps() {
        auto deadline = Clock::now() + std::chrono::seconds(2);
        for (const auto& b : branches()) {
            for (;;) {
                GstCaps* caps = gst_pad_get_current_caps(b.webrtc_pad);
                if (caps) {
                    gst_caps_unref(caps);
                    break;
                }
                std::unique_lock lock(ops_mu_);
                if (ops_cv_.wait_for(lock, std::chrono::milliseconds(5),
                                     [&] { return ops_closed_; }) ||
                    Clock::now() > deadline)
                    return;
            }
        }
    }

    static void on_stats(GstPromise* p, gpointer self_ptr) {
        auto* self = static_cast<GstSession*>(self_ptr);
        Stats s;
        if (gst_promise_wait(p) == GST_PROMISE_RESULT_REPLIED)
            if (const GstStructure* reply = gst_promise_get_reply(p)) self->read_stats(reply, s);
        gst_promise_unref(p);
        std::lock_guard lock(self->stats_mu_);
        self->network_stats_ = std::move(s);
        self->stats_asked_ = false;
    }

    // A branch sends unless we hold, the peer holds us, or it is a screen share that is off.
    void apply_valves() {
        bool hold, held, sharing;
        {
            std::lock_guard lock(mu_);
            hold = holding_;
            held = remote_holds_;
            sharing = sharing_;
        }
        for (auto& b : branches()) {
            bool drop = hold || held || (b.screen && !sharing);
            if (b.kind == Kind::audio) {
                // Audio goes silent rather than stopping: receivers (Chrome's NetEq among them)
                // do not always pick a stream up again after a jump in RTP time.
                GstElement* gate = gst_bin_get_by_name(GST_BIN(b.bin), "gate");
                if (gate) {
                    g_object_set(gate, "mute", drop ? TRUE : FALSE, nullptr);
                    gst_object_unref(gate);
                }
                continue;
            }
            GstElement* valve = gst_bin_get_by_name(GST_BIN(b.bin), "valve");
            if (!valve) continue;
            gboolean was = FALSE;
            g_object_get(valve, "drop", &was, nullptr);
            g_object_set(valve, "drop", drop ? TRUE : FALSE, nullptr);
            gst_object_unref(valve);
            if (was && !drop && b.kind == Kind::video) {
                // The receiver's decoder needs a key frame before it shows anything again.
                if (GstElement* enc = gst_bin_get_by_name(GST_BIN(b.bin), "encoder")) {
                    GstEvent* ev =
                        gst_video_event_new_upstream_force_key_unit(GST_CLOCK_TIME_NONE, TRUE, 0);
                    GstPad* pad = gst_element_get_static_pad(enc, "src");
                    gst_pad_send_event(pad, ev);
                    gst_object_unref(pad);
                    gst_object_unref(enc);
                }
            }
        }
    }

    // webrtcbin 1.22 cannot change a negotiated transceiver's direction ("transceiver
    // direction changes are not implemented"). So webrtcbin keeps the directions of the first
    // negotiation, valves start and stop the media, and directions are rewritten in the SDP
    // at the boundary: the peer sees hold (sendonly), a stopped screen share (inactive) and
    // answers that match its offer; webrtcbin sees the directions it first agreed to.

    // A remote description: remembers what it asks for, gives webrtcbin its first directions.
    // Null when the text is not SDP.
    SdpMessage take_remote(const std::string& text) {
        SdpMessage sdp = parse_sdp(text);
        if (!sdp) return nullptr;
        std::lock_guard lock(mu_);
        remote_sdp_ = copy_sdp(*sdp);
        bool first = first_remote_dir_.empty();
        bool any = false, held = true;
        rewrite_directions(*sdp, [&](const std::string& mid, const std::string& dir) {
            remote_dir_[mid] = dir;
            if (first) first_remote_dir_[mid] = dir;
            auto it = first_remote_dir_.find(mid);
            if (it == first_remote_dir_.end()) return dir;  // a new stream: nothing to restore
            // The sections of the first description carry the usermedia stream: the peer
            // holds us when none of them receives.
            any = true;
            held = held && !receives(dir);
            return it->second;
        });
        remote_holds_ = any && held;
        return sdp;
    }

    // Our description as the peer should see it.
    void outgoing(GstSDPMessage& sdp, const std::string& type) {
        std::string screen_mid;
        for (auto& b : branches()) {
            if (!b.screen || !b.transceiver) continue;
            gchar* mid = nullptr;
            g_object_get(b.transceiver, "mid", &mid, nullptr);
            if (mid) screen_mid = mid;
            g_free(mid);
        }
        std::lock_guard lock(mu_);
        rewrite_directions(sdp, [&](const std::string& mid, const std::string& dir) {
            bool send = sends(dir), recv = receives(dir);
            if (mid == screen_mid && !sharing_) send = false;
            if (holding_) recv = false;
            if (type == "answer") {
                auto it = remote_dir_.find(mid);
                if (it != remote_dir_.end()) {
                    send = send && receives(it->second);
                    recv = recv && sends(it->second);
                }
            }
            return direction(send, recv);
        });
    }

    // ---- offer / answer ------------------------------------------------------------------

    static GstWebRTCSessionDescription* take_description(GstPromise* p, const char* field,
                                                         std::string& error) {
        GstWebRTCSessionDescription* desc = nullptr;
        if (gst_promise_wait(p) != GST_PROMISE_RESULT_REPLIED) {
            error = std::string("no ") + field + " was created";
            return nullptr;
        }
        const GstStructure* reply = gst_promise_get_reply(p);
        GError* err = nullptr;
        if (reply && gst_structure_get(reply, "error", G_TYPE_ERROR, &err, nullptr)) {
            error = std::string(field) + ": " + gerror_text(err);
            return nullptr;
        }
        if (!reply ||
            !gst_structure_get(reply, field, GST_TYPE_WEBRTC_SESSION_DESCRIPTION, &desc, nullptr))
            error = std::string("no ") + field + " in the reply";
        return desc;
    }

    void set_local(GstWebRTCSessionDescription* desc, const char* type) {
        {
            std::lock_guard lock(mu_);
            pending_type_ = type;
            pending_since_ = Clock::now();
            describing_ = false;
        }
        GstPromise* p = gst_promise_new_with_change_func(&GstSession::on_local_set, this, nullptr);
        g_signal_emit_by_name(webrtc_, "set-local-description", desc, p);
        gst_webrtc_session_description_free(desc);
    }

    static void on_offer_created(GstPromise* p, gpointer self_ptr) {
        auto* self = static_cast<GstSession*>(self_ptr);
        std::string error;
        GstWebRTCSessionDescription* desc = take_description(p, "offer", error);
        gst_promise_unref(p);
        if (!desc) return self->emit(MediaFailed{error});
        self->set_local(desc, "offer");
    }

    static void on_remote_offer_set(GstPromise* p, gpointer self_ptr) {
        auto* self = static_cast<GstSession*>(self_ptr);
        std::string error;
        if (!reply_ok(p, error)) {
            gst_promise_unref(p);
            return self->emit(MediaFailed{"the remote offer: " + error});
        }
        gst_promise_unref(p);
        GstPromise* next =
            gst_promise_new_with_change_func(&GstSession::on_answer_created, self, nullptr);
        g_signal_emit_by_name(self->webrtc_, "create-answer", nullptr, next);
    }

    static void on_answer_created(GstPromise* p, gpointer self_ptr) {
        auto* self = static_cast<GstSession*>(self_ptr);
        std::string error;
        GstWebRTCSessionDescription* desc = take_description(p, "answer", error);
        gst_promise_unref(p);
        if (!desc) return self->emit(MediaFailed{error});
        self->set_local(desc, "answer");
    }

    static void on_remote_answer_set(GstPromise* p, gpointer self_ptr) {
        auto* self = static_cast<GstSession*>(self_ptr);
        std::string error;
        if (!reply_ok(p, error)) self->emit(MediaFailed{"the remote answer: " + error});
        gst_promise_unref(p);
    }

    static bool reply_ok(GstPromise* p, std::string& error) {
        if (gst_promise_wait(p) != GST_PROMISE_RESULT_REPLIED) {
            error = "no reply";
            return false;
        }
        const GstStructure* reply = gst_promise_get_reply(p);
        GError* err = nullptr;
        if (reply && gst_structure_get(reply, "error", G_TYPE_ERROR, &err, nullptr)) {
            error = gerror_text(err);
            return false;
        }
        return true;
    }

    static void on_local_set(GstPromise* p, gpointer self_ptr) {
        auto* self = static_cast<GstSession*>(self_ptr);
        std::string error;
        bool ok = reply_ok(p, error);
        gst_promise_unref(p);
        if (!ok) return self->emit(MediaFailed{"the local description: " + error});
        {
            std::lock_guard lock(self->mu_);
            self->describing_ = true;
        }
        self->cv_.notify_all();
    }

    // Waits until the local description is set and either ~200 ms have passed or gathering is
    // complete, then signals it with the candidates webrtcbin has put into it; candidates
    // held back meanwhile follow unless the description already carries them. Also raises the
    // jitter buffer once the first frame is in.
    void describe_loop() {
        std::unique_lock lock(mu_);
        for (;;) {
            cv_.wait(lock, [&] { return closed_ || describing_ || raise_latency_; });
            if (closed_) return;
            if (raise_latency_) {
                raise_latency_ = false;
                latency_raised_ = true;
                lock.unlock();
                g_object_set(webrtc_, "latency", kSteadyLatencyMs, nullptr);
                lock.lock();
                continue;
            }
            cv_.wait_until(lock, pending_since_ + kCandidateWait,
                           [&] { return closed_ || gathered_; });
            if (closed_) return;
            std::string type = pending_type_;
            describing_ = false;
            lock.unlock();
            SdpMessage sdp;
            GstWebRTCSessionDescription* desc = nullptr;
            g_object_get(webrtc_, "local-description", &desc, nullptr);
            if (desc) {
                sdp = copy_sdp(*desc->sdp);
                gst_webrtc_session_description_free(desc);
                outgoing(*sdp, type);
            }
            lock.lock();
            if (closed_) return;
            sink_(DescriptionReady{type, sdp ? sdp_text(*sdp) : std::string()});
            for (auto& c : held_candidates_)
                if (!sdp || !has_candidate(*sdp, c.candidate)) sink_(std::move(c));
            held_candidates_.clear();
            described_ = true;
            if (gathered_ && !gathering_reported_) {
                gathering_reported_ = true;
                sink_(GatheringComplete{});
            }
        }
    }

    static std::string strip_prefix(const std::string& c) {
        return c.compare(0, 2, "a=") == 0 ? c.substr(2) : c;
    }

    static void on_ice_candidate(GstElement*, guint mline, gchar* candidate, gpointer self_ptr) {
        auto* self = static_cast<GstSession*>(self_ptr);
        CandidateReady c{mline, {}, candidate ? candidate : ""};
        if (c.candidate.empty()) return;
        c.candidate = strip_prefix(c.candidate);
        std::lock_guard lock(self->mu_);
        if (self->closed_) return;
        c.mid = self->mid_of(mline);
        if (!self->described_ || self->describing_)
            self->held_candidates_.push_back(std::move(c));
        else
            self->sink_(std::move(c));
    }

    // The mid of an m-line of our local description (max-bundle: usually "0").
    std::string mid_of(unsigned mline) {
        std::string mid = std::to_string(mline);
        GstWebRTCSessionDescription* desc = nullptr;
        g_object_get(webrtc_, "local-description", &desc, nullptr);
        if (!desc) return mid;
        if (mline < gst_sdp_message_medias_len(desc->sdp)) {
            const GstSDPMedia* media = gst_sdp_message_get_media(desc->sdp, mline);
            if (const gchar* m = gst_sdp_media_get_attribute_val(media, "mid")) mid = m;
        }
        gst_webrtc_session_description_free(desc);
        return mid;
    }

    static void on_gathering_state(GstElement* webrtc, GParamSpec*, gpointer self_ptr) {
        auto* self = static_cast<GstSession*>(self_ptr);
        GstWebRTCICEGatheringState state;
        g_object_get(webrtc, "ice-gathering-state", &state, nullptr);
        if (state != GST_WEBRTC_ICE_GATHERING_STATE_COMPLETE) return;
        {
            std::lock_guard lock(self->mu_);
            if (self->closed_) return;
            self->gathered_ = true;
            if (self->described_ && !self->describing_ && !self->gathering_reported_) {
                self->gathering_reported_ = true;
                self->sink_(GatheringComplete{});
            }
        }
        self->cv_.notify_all();
    }

    static void on_ice_state(GstElement* webrtc, GParamSpec*, gpointer self_ptr) {
        auto* self = static_cast<GstSession*>(self_ptr);
        GstWebRTCICEConnectionState state;
        g_object_get(webrtc, "ice-connection-state", &state, nullptr);
        switch (state) {
            case GST_WEBRTC_ICE_CONNECTION_STATE_CHECKING:
                return self->emit(IceChanged{IceState::checking});
            case GST_WEBRTC_ICE_CONNECTION_STATE_CONNECTED:
            case GST_WEBRTC_ICE_CONNECTION_STATE_COMPLETED:
                return self->emit(IceChanged{IceState::connected});
            case GST_WEBRTC_ICE_CONNECTION_STATE_DISCONNECTED:
                return self->emit(IceChanged{IceState::disconnected});
            case GST_WEBRTC_ICE_CONNECTION_STATE_FAILED:
                return self->emit(IceChanged{IceState::failed});
            default:
                return;
        }
    }

    static GstBusSyncReply on_bus(GstBus*, GstMessage* msg, gpointer self_ptr) {
        auto* self = static_cast<GstSession*>(self_ptr);
        if (GST_MESSAGE_TYPE(msg) == GST_MESSAGE_ERROR) {
            GError* err = nullptr;
            gst_message_parse_error(msg, &err, nullptr);
            std::string where = GST_OBJECT_NAME(GST_MESSAGE_SRC(msg));
            self->emit(MediaFailed{where + ": " + gerror_text(err)});
        }
        gst_message_unref(msg);
        return GST_BUS_DROP;
    }

    // ---- receiving -----------------------------------------------------------------------

    // The remote stream id of a received pad: the msid of its transceiver's media section in
    // the remote description, else the pad's own msid (1.22 can give a new pad an old msid).
    std::string remote_stream_id(GstPad* pad) {
        std::string id;
        GstWebRTCRTPTransceiver* trans = nullptr;
        g_object_get(pad, "transceiver", &trans, nullptr);
        if (trans) {
            gchar* mid = nullptr;
            g_object_get(trans, "mid", &mid, nullptr);
            gst_object_unref(trans);
            std::string m = mid ? mid : "";
            g_free(mid);
            std::lock_guard lock(mu_);
            if (!m.empty() && remote_sdp_) id = stream_id(*remote_sdp_, m);
        }
        if (!id.empty()) return id;
        gchar* msid = nullptr;
        if (g_object_class_find_property(G_OBJECT_GET_CLASS(pad), "msid"))
            g_object_get(pad, "msid", &msid, nullptr);
        id = msid ? msid : "";
        g_free(msid);
        return id;
    }

    // A remote track's decoding branch, element by element: this runs on the streaming thread
    // that holds the track's first packets, where gst_parse (one global lock, shared by the
    // audio and video tracks arriving together, and a caps string to parse) cost 15-30 ms of
    // every call's setup. `sink` is the fakesink whose buffers are the decoded frames.
    // Returns the bin (not yet in the pipeline), or nullptr and what is missing in `error`.
    static GstElement* make_decoder(Kind kind, GstElement*& sink, std::string& error) {
        const std::vector<const char*> names =
            kind == Kind::audio
                ? std::vector<const char*>{"queue",        "rtpopusdepay",  "opusdec",
                                           "audioconvert", "audioresample", "capsfilter",
                                           "fakesink"}
                : std::vector<const char*>{"queue", "rtpvp8depay", "vp8dec", "fakesink"};
        GstElement* bin = gst_bin_new(nullptr);
        GstElement* previous = nullptr;
        GstElement* first = nullptr;
        for (const char* name : names) {
            GstElement* e = gst_element_factory_make(name, nullptr);
            if (!e || !gst_bin_add(GST_BIN(bin), e) ||
                (previous && !gst_element_link(previous, e))) {
                error = std::string("cannot make or link ") + name;
                gst_object_unref(bin);
                return nullptr;
            }
            // With no jitter buffer at the start (kStartLatencyMs), a packet reordered inside
            // the first keyframe counts as lost: ask for a new keyframe and show nothing
            // broken meanwhile, rather than decode a damaged picture.
            if (std::strcmp(name, "rtpvp8depay") == 0)
                g_object_set(e, "request-keyframe", TRUE, "wait-for-keyframe", TRUE, nullptr);
            if (std::strcmp(name, "capsfilter") == 0) {
                GstCaps* caps =
                    gst_caps_new_simple("audio/x-raw", "format", G_TYPE_STRING, "S16LE", "channels",
                                        G_TYPE_INT, 1, "rate", G_TYPE_INT, 48000, nullptr);
                g_object_set(e, "caps", caps, nullptr);
                gst_caps_unref(caps);
            }
            if (!first) first = e;
            previous = e;
        }
        sink = previous;
        g_object_set(sink, "sync", FALSE, "async", FALSE, nullptr);
        GstPad* target = gst_element_get_static_pad(first, "sink");
        gst_element_add_pad(bin, gst_ghost_pad_new("sink", target));
        gst_object_unref(target);
        return bin;
    }

    static void on_pad_added(GstElement*, GstPad* pad, gpointer self_ptr) {
        auto* self = static_cast<GstSession*>(self_ptr);
        if (GST_PAD_DIRECTION(pad) != GST_PAD_SRC) return;
        GstCaps* caps = gst_pad_get_current_caps(pad);
        if (!caps) caps = gst_pad_query_caps(pad, nullptr);
        std::string media;
        std::string encoding;
        if (caps && gst_caps_get_size(caps) > 0) {
            const GstStructure* s = gst_caps_get_structure(caps, 0);
            if (const gchar* m = gst_structure_get_string(s, "media")) media = m;
            if (const gchar* e = gst_structure_get_string(s, "encoding-name")) encoding = e;
        }
        if (caps) gst_caps_unref(caps);
        // Classify by caps, not by pad order (webrtcbin 1.22 can attach pads to the wrong mid).
        Kind kind;
        if (media == "audio" || encoding == "OPUS")
            kind = Kind::audio;
        else if (media == "video" || encoding == "VP8")
            kind = Kind::video;
        else
            return;
        auto track = std::make_unique<Track>();
        track->stream_id = self->remote_stream_id(pad);
        track->kind = kind;
        Track* t = track.get();
        t->on_first_frame = [self, t] {
            self->emit(FirstFrame{t->stream_id, t->kind});
            // Once the media the call waits for (video in a video call) is in; not on this
            // streaming thread: the worker raises the jitter buffer.
            if (t->kind == (self->opt_.video ? Kind::video : Kind::audio)) {
                {
                    std::lock_guard lock(self->mu_);
                    self->raise_latency_ = !self->latency_raised_;
                }
                self->cv_.notify_all();
            }
        };
        {
            std::lock_guard lock(self->tracks_mu_);
            self->tracks_.push_back(std::move(track));
        }
        GstElement* fakesink = nullptr;
        std::string error;
        GstElement* bin = make_decoder(kind, fakesink, error);
        if (!bin) return self->emit(MediaFailed{"decoder: " + error});
        gst_bin_add(GST_BIN(self->pipe_), bin);
        GstPad* sinkpad = gst_element_get_static_pad(fakesink, "sink");
        gst_pad_add_probe(sinkpad, GST_PAD_PROBE_TYPE_BUFFER, &GstSession::on_decoded, t, nullptr);
        gst_object_unref(sinkpad);
        gst_element_sync_state_with_parent(bin);
        GstPad* binpad = gst_element_get_static_pad(bin, "sink");
        gst_pad_link(pad, binpad);
        gst_object_unref(binpad);
        self->emit(RemoteTrackAdded{t->stream_id, kind});
    }

    static GstPadProbeReturn on_decoded(GstPad*, GstPadProbeInfo* info, gpointer track_ptr) {
        auto* t = static_cast<Track*>(track_ptr);
        GstBuffer* buf = GST_PAD_PROBE_INFO_BUFFER(info);
        bool sound = true;
        if (t->kind == Kind::audio && buf) {
            GstMapInfo map;
            if (gst_buffer_map(buf, &map, GST_MAP_READ)) {
                const auto* samples = reinterpret_cast<const std::int16_t*>(map.data);
                std::size_t n = map.size / 2;
                double energy = 0;
                for (std::size_t i = 0; i < n; ++i)
                    energy += static_cast<double>(samples[i]) * samples[i];
                sound = n > 0 && energy / static_cast<double>(n) > 1000.0 * 1000.0;
                if (sound) {
                    std::lock_guard lock(t->m);
                    constexpr int threshold = 1500;
                    for (std::size_t i = 0; i < n; ++i) {
                        if (samples[i] > threshold && t->sign < 0) ++t->crossings;
                        if (samples[i] > threshold) t->sign = 1;
                        if (samples[i] < -threshold) t->sign = -1;
                    }
                    t->sound_samples += n;
                }
                gst_buffer_unmap(buf, &map);
            }
        }
        if (!sound) return GST_PAD_PROBE_OK;
        t->frames.fetch_add(1, std::memory_order_relaxed);
        if (!t->first_reported.exchange(true)) t->on_first_frame();
        return GST_PAD_PROBE_OK;
    }

    void read_stats(const GstStructure* reply, Stats& s) {
        struct Ctx {
            Stats* s;
            std::string pair_local;
            std::map<std::string, std::string> candidate_types;
        } ctx{&s, {}, {}};
        gst_structure_foreach(
            reply,
            [](GQuark field, const GValue* value, gpointer p) -> gboolean {
                auto* c = static_cast<Ctx*>(p);
                if (!GST_VALUE_HOLDS_STRUCTURE(value)) return TRUE;
                const GstStructure* st = gst_value_get_structure(value);
                GstWebRTCStatsType type;
                if (!gst_structure_get(st, "type", GST_TYPE_WEBRTC_STATS_TYPE, &type, nullptr))
                    return TRUE;
                double d = 0;
                guint64 u = 0;
                gint64 i = 0;
                switch (type) {
                    case GST_WEBRTC_STATS_REMOTE_INBOUND_RTP:
                        if (gst_structure_get_double(st, "round-trip-time", &d) && d > 0)
                            c->s->rtt_ms = std::max(c->s->rtt_ms, d * 1000);
                        break;
                    case GST_WEBRTC_STATS_INBOUND_RTP:
                        if (gst_structure_get_double(st, "jitter", &d))
                            c->s->jitter_ms = std::max(c->s->jitter_ms, d * 1000);
                        if (gst_structure_get_int64(st, "packets-lost", &i))
                            c->s->packets_lost += i;
                        if (gst_structure_get_uint64(st, "packets-received", &u))
                            c->s->packets_received += u;
                        if (gst_structure_get_uint64(st, "bytes-received", &u))
                            c->s->bytes_received += u;
                        break;
                    case GST_WEBRTC_STATS_OUTBOUND_RTP:
                        if (gst_structure_get_uint64(st, "bytes-sent", &u)) c->s->bytes_sent += u;
                        break;
                    case GST_WEBRTC_STATS_CANDIDATE_PAIR:
                        if (const gchar* l = gst_structure_get_string(st, "local-candidate-id"))
                            c->pair_local = l;
                        break;
                    case GST_WEBRTC_STATS_LOCAL_CANDIDATE:
                    case GST_WEBRTC_STATS_REMOTE_CANDIDATE:
                        // 1.22 swaps the local and remote labels, not the ids: look the pair's
                        // local candidate up by id.
                        if (const gchar* t = gst_structure_get_string(st, "candidate-type"))
                            c->candidate_types[g_quark_to_string(field)] = t;
                        break;
                    default:
                        break;
                }
                return TRUE;
            },
            &ctx);
        auto it = ctx.candidate_types.find(ctx.pair_local);
        s.relay = it != ctx.candidate_types.end() && it->second == "relay";
    }

    SessionOptions opt_;
    EventSink sink_;
    std::string usermedia_id_;
    std::string screenshare_id_;
    GstElement* pipe_ = nullptr;
    GstElement* webrtc_ = nullptr;
    mutable std::mutex branches_mu_;
    std::vector<Branch> branches_;

    mutable std::mutex mu_;
    std::condition_variable cv_;
    bool closed_ = false;
    bool holding_ = false;
    bool remote_holds_ = false;  // the peer takes nothing from us on its first stream
    std::map<std::string, std::string> remote_dir_;        // mid -> as the peer last said
    std::map<std::string, std::string> first_remote_dir_;  // mid -> what webrtcbin agreed to
    bool sharing_ = false;
    SdpMessage remote_sdp_;
    std::string pending_type_;
    Clock::time_point pending_since_{};
    bool describing_ = false;  // a local description is set and waits to be signalled
    bool described_ = false;   // one has been signalled: candidates go out as they come
    bool gathered_ = false;
    bool raise_latency_ = false;
    bool latency_raised_ = false;
    bool gathering_reported_ = false;
    std::vector<CandidateReady> held_candidates_;
    std::mutex stats_mu_;       // not mu_: stats() may be called from anywhere, even a sink
    Stats network_stats_;       // webrtcbin's last get-stats reply
    bool stats_asked_ = false;  // a get-stats is on its way
    bool closing_ = false;      // no more get-stats: webrtcbin is going away
    std::thread worker_;
    // Negotiation, in order (see create_offer).
    std::mutex ops_mu_;
    std::condition_variable ops_cv_;
    std::deque<std::function<void()>> ops_;
    bool ops_closed_ = false;
    std::thread ops_thread_;

    std::mutex tracks_mu_;
    std::deque<std::unique_ptr<Track>> tracks_;
};

class GstEngine final : public MediaEngine {
  public:
    GstEngine() {
        gst_init(nullptr, nullptr);
        for (const char* f :
             {"webrtcbin", "nicesrc", "opusenc", "opusdec", "vp8enc", "vp8dec", "rtpopuspay",
              "rtpvp8pay", "audiotestsrc", "videotestsrc", "dtlsdec"}) {
            GstElementFactory* factory = gst_element_factory_find(f);
            if (!factory)
                throw std::runtime_error(std::string("GStreamer element '") + f +
                                         "' is missing: run scripts/setup");
            gst_object_unref(factory);
        }
        // DTLS elements share one generated certificate per process: make it now, not during
        // the first call's setup.
        GstElement* dtls = gst_element_factory_make("dtlsdec", nullptr);
        gchar* pem = nullptr;
        g_object_get(dtls, "pem", &pem, nullptr);
        g_free(pem);
        gst_object_unref(dtls);
    }

    std::unique_ptr<MediaSession> create_session(const SessionOptions& options,
                                                 EventSink sink) override {
        return std::make_unique<GstSession>(options, std::move(sink));
    }
};

}  // namespace

std::unique_ptr<MediaEngine> make_gstreamer_engine() {
    return std::make_unique<GstEngine>();
}

}  // namespace mxvoip::media
