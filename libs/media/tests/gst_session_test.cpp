// Two webrtcbin sessions in one process, relay-only through a real coturn. The TURN server
// comes from the environment (tests/calls/media.test.mjs starts coturn and runs this):
// MXVOIP_TURN_URI, MXVOIP_TURN_USERNAME, MXVOIP_TURN_PASSWORD.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <functional>
#include <mutex>

#include "mxvoip/media/media_session.hpp"

using namespace mxvoip::media;
using namespace std::chrono_literals;

namespace {

struct Queue {
    std::mutex m;
    std::condition_variable cv;
    std::deque<std::pair<int, Event>> events;
    void push(int who, Event e) {
        {
            std::lock_guard lock(m);
            events.emplace_back(who, std::move(e));
        }
        cv.notify_all();
    }
};

class MediaPair : public ::testing::Test {
  protected:
    void SetUp() override {
        const char* uri = std::getenv("MXVOIP_TURN_URI");
        const char* user = std::getenv("MXVOIP_TURN_USERNAME");
        const char* pass = std::getenv("MXVOIP_TURN_PASSWORD");
        ASSERT_TRUE(uri && user && pass)
            << "needs a TURN server: run it through tests/calls/media.test.mjs (ctest -R "
               "calls.media), which starts coturn (installed by scripts/setup)";
        engine_ = make_gstreamer_engine();
        SessionOptions a{true, true, 440, {{{uri}, user, pass}}};
        SessionOptions b{true, true, 660, {{{uri}, user, pass}}};
        for (int who : {0, 1})
            s_[who] = engine_->create_session(who == 0 ? a : b, [this, who](Event e) {
                // On GStreamer's own threads, as they emit.
                if (stats_in_callbacks_ && (std::holds_alternative<CandidateReady>(e) ||
                                            std::holds_alternative<IceChanged>(e))) {
                    s_[who]->stats();
                    stats_from_callbacks_++;
                }
                q_.push(who, std::move(e));
            });
    }
    void TearDown() override {
        for (auto& s : s_)
            if (s) s->close();
    }

    // Carries events between the two sessions (as signalling would) until `done` or timeout.
    bool pump(const std::function<bool()>& done, std::chrono::seconds timeout = 20s) {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            if (done()) return true;
            std::unique_lock lock(q_.m);
            // Wake up now and then: `done` may look at counters that change without an event.
            auto wake = std::min(deadline, std::chrono::steady_clock::now() + 50ms);
            if (!q_.cv.wait_until(lock, wake, [&] { return !q_.events.empty(); })) {
                if (std::chrono::steady_clock::now() >= deadline) return done();
                continue;
            }
            auto [who, ev] = std::move(q_.events.front());
            q_.events.pop_front();
            lock.unlock();
            handle(who, ev);
        }
    }

    void handle(int who, const Event& ev) {
        MediaSession& other = *s_[1 - who];
        if (auto* d = std::get_if<DescriptionReady>(&ev)) {
            descriptions_[who]++;
            if (d->type == "offer")
                other.create_answer(d->sdp);
            else
                other.set_remote_answer(d->sdp);
        } else if (auto* c = std::get_if<CandidateReady>(&ev)) {
            other.add_remote_candidate(c->mline, c->candidate);
        } else if (auto* i = std::get_if<IceChanged>(&ev)) {
            if (i->state == IceState::connected) connected_[who] = true;
        } else if (auto* f = std::get_if<MediaFailed>(&ev)) {
            ADD_FAILURE() << "session " << who << ": " << f->what;
        }
    }

    std::uint64_t frames(int who, const std::string& stream, Kind kind) {
        std::uint64_t n = 0;
        for (const auto& t : s_[who]->stats().tracks)
            if (t.stream_id == stream && t.kind == kind) n += t.frames;
        return n;
    }

    std::string describe(int who) {
        std::string out = "tracks:";
        for (const auto& t : s_[who]->stats().tracks)
            out += " [" + t.stream_id + " " + to_string(t.kind) + " " + std::to_string(t.frames) +
                   " frames " + std::to_string(t.tone_hz) + " Hz]";
        return out;
    }

    double tone(int who) {
        for (const auto& t : s_[who]->stats().tracks)
            if (t.kind == Kind::audio && t.tone_hz > 0) return t.tone_hz;
        return 0;
    }

    // Frames of `stream` at `who` grow by `n` within the timeout.
    bool flowing(int who, const std::string& stream, Kind kind, std::uint64_t n = 10) {
        std::uint64_t start = frames(who, stream, kind);
        return pump([&] { return frames(who, stream, kind) >= start + n; }, 10s);
    }

    std::unique_ptr<MediaEngine> engine_;
    std::atomic<bool> stats_in_callbacks_{false};  // sinks call stats() as events come
    std::atomic<int> stats_from_callbacks_{0};
    std::unique_ptr<MediaSession> s_[2];
    Queue q_;
    int descriptions_[2] = {0, 0};
    bool connected_[2] = {false, false};
};

TEST_F(MediaPair, RelayOnlyCallCarriesToneVideoScreenShareAndHold) {
    std::string cam0 = s_[0]->local_streams().usermedia;
    std::string cam1 = s_[1]->local_streams().usermedia;
    ASSERT_NE(cam0, cam1);
    s_[0]->create_offer();
    ASSERT_TRUE(pump([&] { return connected_[0] && connected_[1]; })) << "ICE did not connect";
    ASSERT_TRUE(flowing(0, cam1, Kind::video)) << "no video 1 -> 0";
    ASSERT_TRUE(flowing(1, cam0, Kind::video)) << "no video 0 -> 1";
    ASSERT_TRUE(flowing(1, cam0, Kind::audio, 50)) << "no audio 0 -> 1; " << describe(1);
    EXPECT_NEAR(tone(1), 440, 440 * 0.02);
    EXPECT_NEAR(tone(0), 660, 660 * 0.02);
    // Network figures come from webrtcbin's last stats reply: wait for one that has them.
    EXPECT_TRUE(pump([&] { return s_[0]->stats().relay && s_[1]->stats().relay; }, 5s))
        << "the selected pairs are not relayed";

    // Screen share: a second stream with its own id, through a renegotiation.
    s_[0]->set_screenshare(true, false);
    std::string screen = s_[0]->local_streams().screenshare;
    ASSERT_FALSE(screen.empty());
    ASSERT_NE(screen, cam0);
    s_[0]->create_offer();
    ASSERT_TRUE(flowing(1, screen, Kind::video)) << "no screen share frames; " << describe(1);
    s_[0]->set_screenshare(false, false);
    EXPECT_TRUE(s_[0]->local_streams().screenshare.empty());
    s_[0]->create_offer();
    pump([] { return false; }, 2s);
    std::uint64_t stopped = frames(1, screen, Kind::video);
    pump([] { return false; }, 1s);
    EXPECT_LE(frames(1, screen, Kind::video), stopped + 1) << "screen share still flows";

    // Hold: nothing flows either way; resume: it flows again.
    s_[0]->set_hold(true);
    s_[0]->create_offer();
    pump([] { return false; }, 2s);
    std::uint64_t held0 = frames(0, cam1, Kind::video), held1 = frames(1, cam0, Kind::video);
    pump([] { return false; }, 1s);
    EXPECT_LE(frames(0, cam1, Kind::video), held0 + 1) << "the held side still receives";
    EXPECT_LE(frames(1, cam0, Kind::video), held1 + 1) << "the holding side still sends";
    s_[0]->set_hold(false);
    s_[0]->create_offer();
    EXPECT_TRUE(flowing(0, cam1, Kind::video)) << "no video 1 -> 0 after resume";
    EXPECT_TRUE(flowing(1, cam0, Kind::video)) << "no video 0 -> 1 after resume";
    EXPECT_TRUE(flowing(0, cam1, Kind::audio, 20)) << "no audio 1 -> 0 after resume";
    EXPECT_TRUE(flowing(1, cam0, Kind::audio, 20)) << "no audio 0 -> 1 after resume";
}

// stats() runs on the driver's thread every second: it must never wait on GStreamer. Called
// from inside webrtcbin's own callbacks (the thread a get-stats would need), it returns.
TEST_F(MediaPair, StatsNeverWaitOnGStreamer) {
    stats_in_callbacks_ = true;
    s_[0]->create_offer();
    ASSERT_TRUE(pump([&] { return connected_[0] && connected_[1]; })) << "ICE did not connect";
    EXPECT_GT(stats_from_callbacks_.load(), 0);
    stats_in_callbacks_ = false;
    EXPECT_TRUE(pump([&] { return s_[0]->stats().relay; }, 5s));
}

}  // namespace
