// Google Benchmark: a recorded stream of call events (as /sync delivers them, JSON text) is
// parsed and fed through a CallManager, one sync batch per event.
//   build/bench/mxvoip-call-bench --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "mxvoip/call/call_manager.hpp"

using namespace mxvoip::call;
namespace json = boost::json;

namespace {

const std::string kRoom = "!dm:bench";

// A realistic offer/answer size: Chromium's audio+video SDP is ~3-5 KB.
std::string sdp(char fill) {
    std::string s = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
    while (s.size() < 3500) s += std::string("a=candidate-like-line ") + fill + "\r\n";
    return s;
}

struct Recorded {
    std::string call_id;
    std::string sender;
    std::string type;
    std::string content;            // JSON text
    bool from_this_device = false;  // unsigned.transaction_id was set: our own echo
};

// One call as bob's client sees it from alice (events from bob's own device are echoes and
// are recorded too: the manager must skip them).
std::vector<Recorded> one_call(int n) {
    std::string id = "call" + std::to_string(n);
    auto common = [&](const char* party) {
        return json::object{{"call_id", id}, {"party_id", party}, {"version", "1"}};
    };
    std::vector<Recorded> out;
    json::object invite = common("ALICE");
    invite["lifetime"] = 90000;
    invite["invitee"] = "@bob:bench";
    invite["offer"] = {{"type", "offer"}, {"sdp", sdp('o')}};
    invite["sdp_stream_metadata"] = {{"stream1", {{"purpose", "m.usermedia"}}}};
    out.push_back({id, "@alice:bench", "m.call.invite", json::serialize(invite)});
    for (int i = 0; i < 2; ++i) {
        json::object c = common("ALICE");
        c["candidates"] = json::array{
            json::object{{"candidate", "candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host"},
                         {"sdpMid", "0"}},
            json::object{{"candidate", "candidate:2 1 udp 1694498815 198.51.100.1 5001 typ srflx"},
                         {"sdpMid", "0"}}};
        out.push_back({id, "@alice:bench", "m.call.candidates", json::serialize(c)});
    }
    json::object answer = common("BOB");
    answer["answer"] = {{"type", "answer"}, {"sdp", sdp('a')}};
    out.push_back({id, "@bob:bench", "m.call.answer", json::serialize(answer), true});  // our echo
    json::object select = common("ALICE");
    select["selected_party_id"] = "BOB";
    out.push_back({id, "@alice:bench", "m.call.select_answer", json::serialize(select)});
    json::object hangup = common("ALICE");
    hangup["reason"] = "user_hangup";
    out.push_back({id, "@alice:bench", "m.call.hangup", json::serialize(hangup)});
    return out;
}

std::vector<Recorded> recorded_stream() {
    std::vector<Recorded> stream;
    for (int n = 0; n < 1000; ++n)
        for (auto& r : one_call(n)) stream.push_back(std::move(r));
    return stream;
}

// Feeds the stream to a fresh CallManager, each event as one sync batch, the way a driver that
// keeps its buffers does: one input and one action list, refilled for each event (`fill` puts
// a recorded event into the batch's RoomEvent).
template <typename Fill>
void feed_stream(benchmark::State& state, Fill fill) {
    std::vector<Recorded> stream = recorded_stream();
    std::size_t bytes = 0;
    for (const auto& r : stream) bytes += r.content.size();
    std::int64_t events = 0;
    for (auto _ : state) {
        CallManager bob(CallManager::Options{"@bob:bench", "BOB"});
        Input input{SyncBatch{}};
        RoomEvent& event = std::get<SyncBatch>(input).events.emplace_back();
        std::vector<Action> actions;
        Ms now = 0;
        for (const Recorded& r : stream) {
            fill(event, r);
            actions.clear();
            bob.handle(input, now += 10, actions);
            benchmark::DoNotOptimize(actions.data());
            // Bob answers each call as it rings, as his client would.
            if (r.type == "m.call.invite") {
                actions.clear();
                bob.handle(AnswerCall{r.call_id}, now, actions);
                benchmark::DoNotOptimize(actions.data());
            }
        }
        events += static_cast<std::int64_t>(stream.size());
    }
    state.SetItemsProcessed(events);
    state.SetBytesProcessed(events / static_cast<std::int64_t>(stream.size()) *
                            static_cast<std::int64_t>(bytes));
}

void fill_common(RoomEvent& e, const Recorded& r) {
    e.room_id = kRoom;
    e.sender = r.sender;
    e.type = r.type;
    e.from_this_device = r.from_this_device;
}

// The target: content as JSON text, read straight into the events (RoomEvent::content_json).
void BM_ParseAndFeedCallEvents(benchmark::State& state) {
    feed_stream(state, [](RoomEvent& e, const Recorded& r) {
        fill_common(e, r);
        e.content_json = r.content;
    });
}
BENCHMARK(BM_ParseAndFeedCallEvents)->Unit(benchmark::kMillisecond);

// The same stream parsed into a Boost.JSON DOM first (the way a caller holding a DOM feeds it).
void BM_DomParseAndFeedCallEvents(benchmark::State& state) {
    feed_stream(state, [](RoomEvent& e, const Recorded& r) {
        fill_common(e, r);
        e.content = json::parse(r.content);
    });
}
BENCHMARK(BM_DomParseAndFeedCallEvents)->Unit(benchmark::kMillisecond);

// Runs `step` on every recorded event, counting the whole stream as processed (the parts of
// the split below are then per the same events as the full benchmark).
template <typename Step>
void each_event(benchmark::State& state, Step step) {
    std::vector<Recorded> stream = recorded_stream();
    std::int64_t events = 0;
    for (auto _ : state) {
        for (const auto& r : stream) step(r);
        events += static_cast<std::int64_t>(stream.size());
    }
    state.SetItemsProcessed(events);
}

// The JSON parse alone, for the split in bench/RESULTS.md.
void BM_JsonParseOnly(benchmark::State& state) {
    each_event(state, [](const Recorded& r) {
        auto v = json::parse(r.content);
        benchmark::DoNotOptimize(v);
    });
}
BENCHMARK(BM_JsonParseOnly)->Unit(benchmark::kMillisecond);

// Reading the typed events from the text, without CallManager, for the events the manager
// reads (own echoes are skipped unread): what the manager's share is measured against.
void BM_TextParseOnly(benchmark::State& state) {
    each_event(state, [](const Recorded& r) {
        if (r.from_this_device) return;
        auto parsed = mxvoip::proto::parse_call_event_json(r.type, r.content);
        benchmark::DoNotOptimize(parsed);
    });
}
BENCHMARK(BM_TextParseOnly)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
