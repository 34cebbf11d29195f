// Seeded random call scenarios: CallManagers with simulated media, talking through a
// simulated homeserver that delays and batches events, on a simulated clock. Invariants are
// checked throughout and at the end of every scenario.
//
//   replay one scenario:   MXVOIP_SIM_SEED=1234 build/libs/call/call_sim_test
//   more scenarios:        MXVOIP_SIM_SCENARIOS=100000 build/libs/call/call_sim_test
#include <gtest/gtest.h>

#include <memory>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <queue>
#include <random>
#include <set>

#include "mxvoip/call/call_manager.hpp"

using namespace mxvoip::call;
namespace json = boost::json;

namespace {

const std::string kRoom = "!dm:sim";

// How scenarios ended, summed over a run: the test also fails when a path is never exercised.
std::map<std::string, long> g_outcomes;

struct Violation : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class Sim {
  public:
    explicit Sim(std::uint64_t seed) : rng_(seed) {}

    // ---- the clock -----------------------------------------------------------------------
    void at(Ms t, std::function<void()> fn) {
        queue_.push({std::max(t, now_), seq_++, std::move(fn)});
    }
    void after(Ms d, std::function<void()> fn) { at(now_ + d, std::move(fn)); }
    Ms rand(Ms lo, Ms hi) { return std::uniform_int_distribution<Ms>(lo, hi)(rng_); }
    bool chance(double p) { return std::bernoulli_distribution(p)(rng_); }
    void run_until(Ms end) {
        while (!queue_.empty() && queue_.top().t <= end) {
            auto item = queue_.top();
            queue_.pop();
            now_ = item.t;
            item.fn();
        }
        now_ = std::max(now_, end);
    }
    Ms now() const { return now_; }

    // ---- the clients ---------------------------------------------------------------------
    struct Device {
        std::string user, party;
        std::unique_ptr<CallManager> m;
        std::size_t cursor = 0;  // next room event to deliver
        bool syncing = false;
        std::set<std::uint64_t> cancelled;
        std::map<std::string, std::string> end_reason;  // call id -> reason
        std::set<std::string> answered;                 // calls this device's user answered
        std::set<std::string> rejected;                 // calls this device's user rejected
        std::map<std::string, bool> remote_set;         // call id -> remote description applied
        double answer_p = 0, reject_p = 0;
        Ms answer_delay = 0;
    };
    std::vector<std::unique_ptr<Device>> devices;

    Device& add(const std::string& user, const std::string& party) {
        auto d = std::make_unique<Device>();
        d->user = user;
        d->party = party;
        d->m = std::make_unique<CallManager>(CallManager::Options{user, party});
        devices.push_back(std::move(d));
        Device& dev = *devices.back();
        deliver(dev, RoomChanged{kRoom, false, {"@alice:sim", "@bob:sim"}});
        return dev;
    }

    // ---- the homeserver: one room, events visible after a commit delay ---------------------
    // Half of a device's own events carry the server's this-device mark.
    struct Stored {
        RoomEvent ev;
        Ms visible_at;
        const Device* from;
        bool marked_own;
    };
    std::vector<Stored> room;

    void publish(const Device& from, const SendEvent& s) {
        Ms visible = now_ + rand(1, 40);
        room.push_back(
            {RoomEvent{kRoom, from.user, s.type, s.content, 0}, visible, &from, rand(0, 1) == 1});
        for (auto& d : devices) at(visible + rand(0, 5), [this, dev = d.get()] { sync(*dev); });
    }

    // A long-polling /sync: returns every visible event past the cursor as one batch, after
    // a random network delay.
    void sync(Device& d) {
        if (d.syncing) return;
        std::vector<RoomEvent> batch;
        std::size_t end = d.cursor;
        while (end < room.size() && room[end].visible_at <= now_) ++end;
        if (end == d.cursor) return;
        for (std::size_t i = d.cursor; i < end; ++i) {
            batch.push_back(room[i].ev);
            batch.back().age_ms = now_ - room[i].visible_at;
            batch.back().from_this_device = room[i].from == &d && room[i].marked_own;
        }
        d.cursor = end;
        d.syncing = true;
        Ms delay = rand(0, 120);
        after(delay, [this, &d, batch = std::move(batch), delay]() mutable {
            for (auto& e : batch) e.age_ms += delay;
            d.syncing = false;
            deliver(d, SyncBatch{std::move(batch)});
            sync(d);  // more may have become visible meanwhile
        });
    }

    // ---- feeding inputs and carrying out actions ------------------------------------------
    void deliver(Device& d, const Input& in) {
        auto actions = d.m->handle(in, now_);
        for (const auto& a : actions) perform(d, a);
        check_connected();
    }

    void perform(Device& d, const Action& a) {
        if (const auto* s = std::get_if<SendEvent>(&a)) {
            if (d.end_reason.count(s->call_id) && s->type != "m.call.candidates")
                fail(d, "sent " + s->type + " for " + s->call_id + " after it ended");
            if (d.end_reason.count(s->call_id))
                fail(d, "sent candidates for " + s->call_id + " after it ended");
            if (s->type == "m.call.negotiate") g_outcomes["sent: m.call.negotiate"]++;
            publish(d, *s);
        } else if (const auto* t = std::get_if<StartTimer>(&a)) {
            at(t->at, [this, &d, id = t->timer_id] {
                if (!d.cancelled.count(id)) deliver(d, TimerFired{id});
            });
        } else if (const auto* c = std::get_if<CancelTimer>(&a)) {
            d.cancelled.insert(c->timer_id);
        } else if (const auto* st = std::get_if<StateChanged>(&a)) {
            on_state(d, *st);
        } else if (const auto* m = std::get_if<MediaCommand>(&a)) {
            media(d, *m);
        }
    }

    void on_state(Device& d, const StateChanged& s) {
        if (s.state == CallState::ended) {
            static const std::set<std::string> kReasons{
                "ice_timeout",        "ice_failed",         "invite_timeout", "user_hangup",
                "user_media_failed",  "user_busy",          "unknown_error",  "rejected",
                "answered_elsewhere", "rejected_elsewhere", "replaced"};
            if (!kReasons.count(s.end_reason))
                fail(d, s.call_id + " ended with '" + s.end_reason + "'");
            if (d.end_reason.count(s.call_id)) fail(d, s.call_id + " ended twice");
            d.end_reason[s.call_id] = s.end_reason;
            g_outcomes["ended: " + s.end_reason]++;
        } else if (s.state == CallState::connected) {
            g_outcomes["connected"]++;
        } else if (s.state == CallState::ringing) {
            // The user decides after a while.
            Ms wait = d.answer_delay;
            double r = std::uniform_real_distribution<double>(0, 1)(rng_);
            std::string id = s.call_id;
            if (r < d.answer_p)
                after(wait, [this, &d, id] {
                    if (d.m->state(id) != CallState::ringing) return;
                    d.answered.insert(id);
                    deliver(d, AnswerCall{id});
                });
            else if (r < d.answer_p + d.reject_p)
                after(wait, [this, &d, id] {
                    if (d.m->state(id) != CallState::ringing) return;
                    d.rejected.insert(id);
                    deliver(d, RejectCall{id});
                });
        }
    }

    // Simulated media: descriptions and candidates after realistic delays; ICE connects when
    // both ends of a call have applied each other's descriptions.
    void media(Device& d, const MediaCommand& m) {
        switch (m.op) {
            case MediaOp::create_offer:
                after(rand(10, 200), [this, &d, id = m.call_id] { produce(d, id, "offer"); });
                break;
            case MediaOp::create_answer:
                d.remote_set[m.call_id] = true;
                after(rand(10, 200), [this, &d, id = m.call_id] { produce(d, id, "answer"); });
                try_connect(d, m.call_id);
                break;
            case MediaOp::set_remote_description:
                d.remote_set[m.call_id] = true;
                try_connect(d, m.call_id);
                break;
            case MediaOp::close:
                d.remote_set.erase(m.call_id);
                break;
            case MediaOp::ice_restart:
            case MediaOp::hold:
            case MediaOp::resume:
            case MediaOp::add_screenshare:
            case MediaOp::remove_screenshare:
                // The peer connection asks for a new offer.
                after(rand(0, 50), [this, &d, id = m.call_id] {
                    if (d.m->state(id) && *d.m->state(id) != CallState::ended)
                        deliver(d, NegotiationNeeded{id});
                });
                break;
            default:
                break;
        }
    }

    void produce(Device& d, const std::string& call_id, const std::string& type) {
        if (!d.m->state(call_id) || *d.m->state(call_id) == CallState::ended) return;
        deliver(d, LocalDescription{call_id, type, type + "-" + d.party});
        int n = static_cast<int>(rand(0, 3));
        Ms t = 0;
        for (int i = 0; i < n; ++i) {
            t += rand(5, 400);
            after(t, [this, &d, call_id, i] {
                if (d.m->state(call_id) && *d.m->state(call_id) != CallState::ended) {
                    mxvoip::proto::Candidate c;
                    c.candidate =
                        "candidate:" + std::to_string(i) + " 1 udp 1 127.0.0.1 9 typ host";
                    c.sdp_mid = "0";
                    deliver(d, LocalCandidate{call_id, c});
                }
            });
        }
        after(t + rand(5, 300), [this, &d, call_id] {
            if (d.m->state(call_id) && *d.m->state(call_id) != CallState::ended)
                deliver(d, GatheringDone{call_id});
        });
    }

    // A call's media connects when the caller applied the chosen answer and the chosen callee
    // device applied the offer.
    void try_connect(Device& d, const std::string& call_id) {
        for (auto& other : devices) {
            if (other.get() == &d || other->user == d.user) continue;
            if (!other->remote_set.count(call_id) || !d.remote_set.count(call_id)) continue;
            auto theirs = other->m->opponent_party(call_id);
            auto mine = d.m->opponent_party(call_id);
            if (!theirs || !mine || *theirs != d.party || *mine != other->party) continue;
            bool fails = chance(ice_failure_p);
            // Some connections drop later: the network went away after media flowed.
            bool drops = !fails && chance(ice_failure_p);
            Ms when = rand(20, 300);
            Ms drop_at = when + rand(500, 5000);
            for (Device* dev : {&d, other.get()}) {
                after(when + rand(0, 30), [this, dev, call_id, fails] {
                    if (dev->m->state(call_id) && *dev->m->state(call_id) != CallState::ended)
                        deliver(*dev, IceStateChanged{
                                          call_id, fails ? IceState::failed : IceState::connected});
                });
                if (drops)
                    after(drop_at + rand(0, 30), [this, dev, call_id] {
                        if (dev->m->state(call_id) && *dev->m->state(call_id) != CallState::ended)
                            deliver(*dev, IceStateChanged{call_id, IceState::failed});
                    });
            }
        }
    }

    // The user hangs up every call of this device that is set up or being set up.
    void hang_up_all(Device& d) {
        for (const auto& id : call_ids) {
            auto s = d.m->state(id);
            if (s && *s != CallState::ended && *s != CallState::ringing) deliver(d, HangUpCall{id});
        }
    }

    // ---- invariants -----------------------------------------------------------------------
    void check_connected() {
        std::map<std::string, std::set<std::string>> connected_by_user;
        for (auto& d : devices) {
            int n = 0;
            for (const auto& id : call_ids)
                if (d->m->state(id) == CallState::connected) {
                    ++n;
                    connected_by_user[d->user].insert(id);
                }
            if (n > 1) fail(*d, "more than one connected call");
        }
        if (connected_by_user.size() == 2) {
            const auto& a = connected_by_user.begin()->second;
            const auto& b = std::next(connected_by_user.begin())->second;
            if (a != b) fail(*devices[0], "the two ends are connected in different calls");
        }
    }

    void check_end() {
        for (auto& d : devices)
            for (const auto& id : call_ids) {
                auto s = d->m->state(id);
                if (s && *s != CallState::ended)
                    fail(*d, id + " is still " + std::string(to_string(*s)) +
                                 " after everyone hung up");
                // A device must not ring on until the invite expires once another device of the
                // same user answered or rejected.
                auto reason = d->end_reason.find(id);
                if (reason == d->end_reason.end() || reason->second != "invite_timeout" ||
                    d->m->direction(id) != Direction::incoming)
                    continue;
                for (auto& other : devices)
                    if (other != d && other->user == d->user &&
                        (other->answered.count(id) || other->rejected.count(id)))
                        fail(*d, id + " rang until it expired although " + other->party +
                                     " had answered or rejected it");
            }
    }

    [[noreturn]] void fail(const Device& d, const std::string& what) {
        throw Violation(d.user + "/" + d.party + " at " + std::to_string(now_) + " ms: " + what);
    }

    std::set<std::string> call_ids;
    double ice_failure_p = 0;

  private:
    struct Item {
        Ms t;
        std::uint64_t seq;
        std::function<void()> fn;
        bool operator<(const Item& o) const { return t != o.t ? t > o.t : seq > o.seq; }
    };
    std::priority_queue<Item> queue_;
    std::uint64_t seq_ = 0;
    Ms now_ = 0;
    std::mt19937_64 rng_;
};

// One random scenario. Returns an empty string or the violation.
std::string run_scenario(std::uint64_t seed) {
    Sim sim(seed);
    auto& alice = sim.add("@alice:sim", "ALICE");
    auto& bob1 = sim.add("@bob:sim", "BOB1");
    Sim::Device* bob2 = sim.chance(0.5) ? &sim.add("@bob:sim", "BOB2") : nullptr;
    sim.ice_failure_p = sim.chance(0.2) ? 0.5 : 0.0;
    for (auto* d : {&alice, &bob1, bob2}) {
        if (!d) continue;
        double answer =
            sim.chance(0.8) ? 0.7 : 0.0;  // some scenarios nobody answers: invites expire
        d->answer_p = answer;
        d->reject_p = sim.chance(0.3) ? 0.2 : 0.0;
        d->answer_delay = sim.rand(0, 3000);
    }
    // Alice calls; in some scenarios bob calls her back within a window (glare).
    std::string a_id = "a" + std::to_string(sim.rand(100000, 999999));
    std::string b_id = "b" + std::to_string(sim.rand(100000, 999999));
    if (sim.chance(0.5)) std::swap(a_id[0], b_id[0]);  // either may hold the lesser id
    sim.call_ids = {a_id, b_id};
    sim.at(0, [&] { sim.deliver(alice, PlaceCall{a_id, kRoom, "@bob:sim"}); });
    if (sim.chance(0.4)) {
        Ms when = sim.rand(0, 400);
        Sim::Device* caller = bob2 && sim.chance(0.5) ? bob2 : &bob1;
        sim.at(when, [&, caller] { sim.deliver(*caller, PlaceCall{b_id, kRoom, "@alice:sim"}); });
    }
    bool let_invites_expire = sim.chance(0.2);
    // Hold/resume and screen share on/off by either side during the call.
    for (auto* d : {&alice, &bob1, bob2}) {
        if (!d || !sim.chance(0.3)) continue;
        Ms when = sim.rand(500, 6000);
        bool screen = sim.chance(0.5);
        for (int step = 0; step < 2; ++step) {
            sim.at(when + step * sim.rand(200, 2000), [&, d, screen, step] {
                for (const auto& id : sim.call_ids) {
                    if (d->m->state(id) != CallState::connected) continue;
                    if (screen)
                        sim.deliver(*d, SetScreenshare{id, step == 0});
                    else
                        sim.deliver(*d, SetHold{id, step == 0});
                }
            });
        }
    }
    // Random hangups by anyone at random moments.
    for (auto* d : {&alice, &bob1, bob2}) {
        if (!d || !sim.chance(0.3)) continue;
        Ms when = sim.rand(0, 8000);
        sim.at(when, [&, d] { sim.hang_up_all(*d); });
    }
    try {
        sim.run_until(20000);
        // Everyone hangs up what is left (or, in some scenarios, the callers just wait), then
        // the invite lifetimes (90 s) run out.
        if (!let_invites_expire)
            for (auto& d : sim.devices) sim.hang_up_all(*d);
        sim.run_until(100000);
        for (auto& d : sim.devices) sim.hang_up_all(*d);
        sim.run_until(200000);
        sim.check_end();
    } catch (const Violation& v) {
        return v.what();
    }
    return {};
}

}  // namespace

TEST(CallSimulation, RandomScenariosKeepEveryInvariant) {
    if (const char* one = std::getenv("MXVOIP_SIM_SEED")) {
        std::uint64_t seed = std::strtoull(one, nullptr, 10);
        EXPECT_EQ(run_scenario(seed), "") << "seed " << seed;
        return;
    }
    long n = 10000;
    if (const char* env = std::getenv("MXVOIP_SIM_SCENARIOS")) n = std::atol(env);
    int failures = 0;
    g_outcomes.clear();
    for (long seed = 1; seed <= n && failures < 5; ++seed) {
        std::string v = run_scenario(static_cast<std::uint64_t>(seed));
        if (!v.empty()) {
            ++failures;
            ADD_FAILURE() << "seed " << seed << ": " << v << "\n  replay: MXVOIP_SIM_SEED=" << seed
                          << " build/libs/call/call_sim_test";
        }
    }
    std::string summary;
    for (const auto& [what, count] : g_outcomes)
        summary += "\n  " + what + ": " + std::to_string(count);
    std::printf("%ld scenarios:%s\n", n, summary.c_str());
    // A simulation that stops reaching one of these paths tests nothing there.
    for (const char* path :
         {"connected", "ended: user_hangup", "ended: answered_elsewhere", "ended: rejected",
          "ended: rejected_elsewhere", "ended: invite_timeout", "ended: replaced",
          "ended: ice_failed", "ended: ice_timeout", "ended: user_busy", "sent: m.call.negotiate"})
        EXPECT_GT(g_outcomes[path], 0) << "no scenario reached " << path;
}
