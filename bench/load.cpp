// mxvoip-load: simulated 1:1 calls (or idle long-polls) against a running homeserver.
//
//   mxvoip-load calls --url http://127.0.0.1:8008 --pairs 1000 --seconds 20 --server-pid PID
//   mxvoip-load idle  --url http://127.0.0.1:8008 --connections 10000 --seconds 30 --server-pid PID
//   mxvoip-load --seconds 3600 --server-pid PID soak --pairs 100 --churn 4
//
// calls: each pair has a DM room; per round the caller sends m.call.invite and two
// m.call.candidates, the callee (on seeing the invite in its /sync) m.call.answer and two
// candidates, the caller (on seeing the answer) m.call.select_answer and m.call.hangup; the
// next round starts when the callee has seen the hangup. Every event goes through PUT /send
// and is received by the other side's long-polling /sync. Latency is PUT start -> the event
// returned by the other side's /sync.
//
// soak: `--pairs` pairs make such calls with a pause between them, while `--churn` workers
// each loop through an account's life (register, a second device logs in, a room created, a
// message, a to-device message to the other device, the room left, both devices logged out).
// Every `--sample` seconds a line gives the server's RSS and open descriptors and the
// requests and 5xx answers so far; any 5xx makes the exit status 1.
//
// fill: a database of a given size, made through the API as clients make it: `--users`
// accounts, `--rooms` private rooms (room i made by user i mod users, who invites the next
// user, who joins), then text messages from each room's maker, round-robin over the rooms,
// until the stream position reaches `--events`; `--concurrency` requests at a time.
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
    std::string host = "127.0.0.1";
    std::string port = "8008";
    // calls: where the callees connect (--callee-url; by default where everyone does).
    std::string callee_host;
    std::string callee_port;
    int pairs = 1;
    int connections = 0;
    double seconds = 10;
    int server_pid = 0;
    std::string prefix;
    int call_gap_ms = 0;  // pause between one pair's calls
    int churn = 0;        // soak: account-life workers
    int life_gap_ms = 0;  // soak: pause between one worker's account lives
    double sample_s = 60;
    int users = 1000;       // fill
    int rooms = 10000;      // fill
    long events = 1000000;  // fill: the stream position to reach
    int concurrency = 64;   // fill
};

// Every request any connection made, and the answers of 500 and above (one thread).
struct RequestCounts {
    std::uint64_t requests = 0;
    std::uint64_t server_errors = 0;
};
RequestCounts counts;

// One keep-alive HTTP/1.1 connection.
class Conn {
  public:
    explicit Conn(asio::any_io_executor ex) : stream_(ex) {}

    asio::awaitable<void> connect(const Options& o) { co_await connect(o.host, o.port); }
    asio::awaitable<void> connect(const std::string& host, const std::string& port) {
        tcp::resolver resolver(stream_.get_executor());
        auto results = co_await resolver.async_resolve(host, port, asio::use_awaitable);
        co_await stream_.async_connect(results, asio::use_awaitable);
        stream_.socket().set_option(tcp::no_delay(true));
    }

    // Sends one request and returns (status, body). Arguments are named objects of the
    // caller: GCC 12 mishandles temporaries inside co_await expressions.
    asio::awaitable<std::pair<unsigned, std::string>> request(http::verb method,
                                                              const std::string& target,
                                                              const std::string& body,
                                                              const std::string& token) {
        http::request<http::string_body> req{method, target, 11};
        req.set(http::field::host, "localhost");
        if (!token.empty()) req.set(http::field::authorization, "Bearer " + token);
        if (method != http::verb::get) {
            req.set(http::field::content_type, "application/json");
            req.body() = body;
        }
        req.prepare_payload();
        co_await http::async_write(stream_, req, asio::use_awaitable);
        http::response_parser<http::string_body> parser;
        parser.body_limit(64 * 1024 * 1024);
        co_await http::async_read(stream_, buffer_, parser, asio::use_awaitable);
        auto res = parser.release();
        counts.requests++;
        if (res.result_int() >= 500) {
            counts.server_errors++;
            std::cerr << method << " " << target.substr(0, target.find('?')) << ": "
                      << res.result_int() << " " << res.body() << "\n";
        }
        co_return std::pair<unsigned, std::string>{res.result_int(), std::move(res.body())};
    }

  private:
    beast::tcp_stream stream_;
    beast::flat_buffer buffer_;
};

struct Stats {
    std::vector<double> latency_us;
    std::uint64_t delivered = 0;
    std::uint64_t sent = 0;
    std::uint64_t errors = 0;
    bool measuring = false;
    bool stopping = false;
    struct InFlight {
        Clock::time_point started;  // PUT start
        const void* sender;         // the User that sent it
        std::string type;
    };
    std::unordered_map<std::uint64_t, InFlight> in_flight;  // by bench_seq
    std::uint64_t next_seq = 1;
};

struct User {
    std::string user_id;
    std::string token;
    std::string since;
    std::unique_ptr<Conn> send_conn;
    std::unique_ptr<Conn> sync_conn;
    int txn = 0;
};

struct Pair {
    User caller;
    User callee;
    std::string room_id;
    int round = 0;
    // Raised by a sync loop when the expected event arrives; the other side's driver waits.
    std::unique_ptr<asio::steady_timer> caller_wake;
    std::unique_ptr<asio::steady_timer> callee_wake;
    std::set<std::string> caller_saw;  // m.call.* types received in the current round
    std::set<std::string> callee_saw;
};

std::string enc(const std::string& s) {
    std::string out;
    for (unsigned char c : s) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~')
            out += static_cast<char>(c);
        else {
            char buf[4];
            std::snprintf(buf, sizeof buf, "%%%02X", c);
            out += buf;
        }
    }
    return out;
}

asio::awaitable<void> register_user(User& u, const std::string& host, const std::string& port,
                                    const std::string& name) {
    auto ex = co_await asio::this_coro::executor;
    u.send_conn = std::make_unique<Conn>(ex);
    u.sync_conn = std::make_unique<Conn>(ex);
    co_await u.send_conn->connect(host, port);
    co_await u.sync_conn->connect(host, port);
    std::string body = json::serialize(json::object{
        {"username", name}, {"password", "bench-password"}, {"auth", {{"type", "m.login.dummy"}}}});
    std::string target = "/_matrix/client/v3/register";
    std::string none;
    auto [status, text] = co_await u.send_conn->request(http::verb::post, target, body, none);
    if (status != 200)
        throw std::runtime_error("register " + name + ": " + std::to_string(status) + " " + text);
    auto v = json::parse(text).as_object();
    u.user_id = json::value_to<std::string>(v["user_id"]);
    u.token = json::value_to<std::string>(v["access_token"]);
}

asio::awaitable<void> initial_sync(User& u) {
    std::string target = "/_matrix/client/v3/sync?timeout=0";
    std::string none;
    auto [status, text] = co_await u.sync_conn->request(http::verb::get, target, none, u.token);
    if (status != 200) throw std::runtime_error("sync: " + text);
    u.since = json::value_to<std::string>(json::parse(text).as_object()["next_batch"]);
}

asio::awaitable<void> setup_pair(Pair& p, const Options& o, int index) {
    auto ex = co_await asio::this_coro::executor;
    std::string caller_name = o.prefix + "caller" + std::to_string(index);
    std::string callee_name = o.prefix + "callee" + std::to_string(index);
    co_await register_user(p.caller, o.host, o.port, caller_name);
    co_await register_user(p.callee, o.callee_host, o.callee_port, callee_name);
    std::string body =
        json::serialize(json::object{{"preset", "trusted_private_chat"},
                                     {"is_direct", true},
                                     {"invite", json::array{json::string(p.callee.user_id)}}});
    std::string target = "/_matrix/client/v3/createRoom";
    auto [status, text] =
        co_await p.caller.send_conn->request(http::verb::post, target, body, p.caller.token);
    if (status != 200) throw std::runtime_error("createRoom: " + text);
    p.room_id = json::value_to<std::string>(json::parse(text).as_object()["room_id"]);
    std::string join_target = "/_matrix/client/v3/join/" + enc(p.room_id);
    std::string empty = "{}";
    auto [js, jt] =
        co_await p.callee.send_conn->request(http::verb::post, join_target, empty, p.callee.token);
    if (js != 200) throw std::runtime_error("join: " + jt);
    co_await initial_sync(p.caller);
    co_await initial_sync(p.callee);
    p.caller_wake = std::make_unique<asio::steady_timer>(ex, Clock::time_point::max());
    p.callee_wake = std::make_unique<asio::steady_timer>(ex, Clock::time_point::max());
}

asio::awaitable<void> send_call_event(User& u, const std::string& room, const std::string& type,
                                      json::object& content, Stats& stats) {
    std::uint64_t seq = stats.next_seq++;
    content["bench_seq"] = seq;
    std::string target =
        "/_matrix/client/v3/rooms/" + enc(room) + "/send/" + type + "/b" + std::to_string(++u.txn);
    std::string body = json::serialize(content);
    stats.in_flight[seq] = Stats::InFlight{Clock::now(), &u, type};
    auto [status, text] = co_await u.send_conn->request(http::verb::put, target, body, u.token);
    if (status != 200) {
        stats.errors++;
        stats.in_flight.erase(seq);
        std::cerr << "send " << type << ": " << status << " " << text << "\n";
    } else {
        stats.sent++;
    }
}

// Pulls a JSON string value that follows `key` (e.g. "\"next_batch\":\"").
std::string string_after(const std::string& text, std::string_view key) {
    auto at = text.find(key);
    if (at == std::string::npos) return {};
    at += key.size();
    return text.substr(at, text.find('"', at) - at);
}

// Long-polls /sync for one user and records every benchmark event from the other side. The
// response is scanned for "bench_seq" rather than parsed whole: the load generator shares the
// machine's two cores with the server and must stay cheap. Who sent each sequence number and
// its type are known locally.
asio::awaitable<void> sync_loop(User& u, std::set<std::string>& saw, asio::steady_timer& wake,
                                Stats& stats) {
    static constexpr std::string_view kSeq = "\"bench_seq\":";
    while (!stats.stopping) {
        std::string target = "/_matrix/client/v3/sync?timeout=30000&since=" + u.since;
        std::string none;
        auto [status, text] = co_await u.sync_conn->request(http::verb::get, target, none, u.token);
        auto received = Clock::now();
        if (status != 200) {
            stats.errors++;
            continue;
        }
        u.since = string_after(text, "\"next_batch\":\"");
        bool woke = false;
        for (auto at = text.find(kSeq); at != std::string::npos; at = text.find(kSeq, at + 1)) {
            std::uint64_t seq = std::strtoull(text.c_str() + at + kSeq.size(), nullptr, 10);
            auto it = stats.in_flight.find(seq);
            if (it == stats.in_flight.end() || it->second.sender == &u) continue;  // our own echo
            if (stats.measuring) {
                stats.delivered++;
                stats.latency_us.push_back(
                    std::chrono::duration<double, std::micro>(received - it->second.started)
                        .count());
            }
            saw.insert(it->second.type);
            stats.in_flight.erase(it);
            woke = true;
        }
        if (woke) wake.cancel();
    }
}

asio::awaitable<void> wait_for(std::set<std::string>& saw, const std::string& type,
                               asio::steady_timer& wake) {
    while (!saw.count(type)) {
        wake.expires_at(Clock::time_point::max());
        boost::system::error_code ec;
        co_await wake.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
}

asio::awaitable<void> send_two_candidate_batches(User& u, const std::string& room,
                                                 const json::object& base, Stats& stats) {
    std::string type = "m.call.candidates";
    for (int i = 0; i < 2; ++i) {
        json::object cand = base;
        cand["candidates"] = json::array{
            json::object{{"candidate", "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host"},
                         {"sdpMid", "0"}}};
        co_await send_call_event(u, room, type, cand, stats);
    }
}

// One pair's call rounds, both sides: each side sends only once it has received what a real
// client would be reacting to.
asio::awaitable<void> pair_loop(Pair& p, Stats& stats, int gap_ms) {
    std::string invite_t = "m.call.invite", answer_t = "m.call.answer",
                select_t = "m.call.select_answer", hangup_t = "m.call.hangup";
    while (!stats.stopping) {
        std::string call_id = "call" + std::to_string(++p.round);
        json::object caller_base{{"call_id", call_id}, {"party_id", "CALLER"}, {"version", "1"}};
        json::object callee_base{{"call_id", call_id}, {"party_id", "CALLEE"}, {"version", "1"}};
        json::object invite = caller_base;
        invite["lifetime"] = 60000;
        invite["offer"] = {{"type", "offer"}, {"sdp", std::string(900, 'o')}};
        invite["invitee"] = p.callee.user_id;
        co_await send_call_event(p.caller, p.room_id, invite_t, invite, stats);
        co_await send_two_candidate_batches(p.caller, p.room_id, caller_base, stats);
        co_await wait_for(p.callee_saw, invite_t, *p.callee_wake);
        json::object answer = callee_base;
        answer["answer"] = {{"type", "answer"}, {"sdp", std::string(900, 'a')}};
        co_await send_call_event(p.callee, p.room_id, answer_t, answer, stats);
        co_await send_two_candidate_batches(p.callee, p.room_id, callee_base, stats);
        co_await wait_for(p.caller_saw, answer_t, *p.caller_wake);
        json::object select = caller_base;
        select["selected_party_id"] = "CALLEE";
        co_await send_call_event(p.caller, p.room_id, select_t, select, stats);
        json::object hangup = caller_base;
        hangup["reason"] = "user_hangup";
        co_await send_call_event(p.caller, p.room_id, hangup_t, hangup, stats);
        co_await wait_for(p.callee_saw, hangup_t, *p.callee_wake);
        p.callee_saw.clear();
        p.caller_saw.clear();
        if (gap_ms > 0) {
            asio::steady_timer gap(co_await asio::this_coro::executor,
                                   std::chrono::milliseconds(gap_ms));
            co_await gap.async_wait(asio::use_awaitable);
        }
    }
}

// Starts both sides' /sync loops and the call rounds of every pair.
void start_calls(const asio::any_io_executor& ex, std::vector<std::unique_ptr<Pair>>& pairs,
                 Stats& stats, int gap_ms) {
    for (auto& p : pairs) {
        asio::co_spawn(ex, sync_loop(p->caller, p->caller_saw, *p->caller_wake, stats),
                       asio::detached);
        asio::co_spawn(ex, sync_loop(p->callee, p->callee_saw, *p->callee_wake, stats),
                       asio::detached);
        asio::co_spawn(ex, pair_loop(*p, stats, gap_ms), asio::detached);
    }
}

std::pair<long, long> server_rss_kib(int pid) {
    if (pid <= 0) return {0, 0};
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    long rss = 0, hwm = 0;
    while (std::getline(in, line)) {
        if (line.rfind("VmRSS:", 0) == 0) rss = std::stol(line.substr(6));
        if (line.rfind("VmHWM:", 0) == 0) hwm = std::stol(line.substr(6));
    }
    return {rss, hwm};
}

double percentile(std::vector<double>& v, double p) {
    if (v.empty()) return 0;
    std::size_t k = static_cast<std::size_t>(p / 100.0 * static_cast<double>(v.size() - 1));
    std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
    return v[k];
}

void raise_fd_limit() {
    rlimit lim{};
    getrlimit(RLIMIT_NOFILE, &lim);
    lim.rlim_cur = lim.rlim_max;
    setrlimit(RLIMIT_NOFILE, &lim);
}

// Runs a run's main coroutine to its end; reports a failure (its own, or one a helper
// coroutine stored in `failure`) and returns false then.
bool run_main(asio::io_context& ioc, asio::awaitable<void> main, std::exception_ptr& failure) {
    asio::co_spawn(ioc, std::move(main), [&](std::exception_ptr e) {
        if (e) failure = e;
        ioc.stop();
    });
    ioc.run();
    if (!failure) return true;
    try {
        std::rethrow_exception(failure);
    } catch (const std::exception& e) {
        std::cerr << "mxvoip-load: " << e.what() << "\n";
    }
    return false;
}

int run_calls(const Options& o) {
    asio::io_context ioc(1);
    Stats stats;
    std::vector<std::unique_ptr<Pair>> pairs;
    for (int i = 0; i < o.pairs; ++i) pairs.push_back(std::make_unique<Pair>());
    std::exception_ptr failure;
    auto main = [&]() -> asio::awaitable<void> {
        auto t0 = Clock::now();
        // Set up in batches of 50 pairs at a time.
        for (int i = 0; i < o.pairs; i += 50) {
            int done = 0;
            int batch = std::min(50, o.pairs - i);
            auto ex = co_await asio::this_coro::executor;
            asio::steady_timer all(ex, Clock::time_point::max());
            for (int j = 0; j < batch; ++j) {
                asio::co_spawn(ex, setup_pair(*pairs[i + j], o, i + j), [&](std::exception_ptr e) {
                    if (e) failure = e;
                    if (++done == batch) all.cancel();
                });
            }
            boost::system::error_code ec;
            co_await all.async_wait(asio::redirect_error(asio::use_awaitable, ec));
            if (failure) std::rethrow_exception(failure);
        }
        std::cerr << "set up " << o.pairs << " pairs in "
                  << std::chrono::duration<double>(Clock::now() - t0).count() << " s\n";
        auto ex = co_await asio::this_coro::executor;
        start_calls(ex, pairs, stats, 0);
        // One second of warm-up, then the measured window.
        asio::steady_timer t(ex, std::chrono::seconds(1));
        co_await t.async_wait(asio::use_awaitable);
        stats.measuring = true;
        auto start = Clock::now();
        long peak_rss = 0;
        for (double elapsed = 0; elapsed < o.seconds;
             elapsed = std::chrono::duration<double>(Clock::now() - start).count()) {
            t.expires_after(std::chrono::milliseconds(250));
            co_await t.async_wait(asio::use_awaitable);
            peak_rss = std::max(peak_rss, server_rss_kib(o.server_pid).first);
        }
        stats.measuring = false;
        double secs = std::chrono::duration<double>(Clock::now() - start).count();
        auto [rss, hwm] = server_rss_kib(o.server_pid);
        auto& v = stats.latency_us;
        double p50 = percentile(v, 50), p99 = percentile(v, 99),
               pmax = v.empty() ? 0 : *std::max_element(v.begin(), v.end());
        std::printf(
            "pairs=%d seconds=%.1f delivered=%llu events_per_s=%.0f latency_ms_p50=%.3f p99=%.3f "
            "max=%.3f "
            "errors=%llu server_rss_mib=%.1f server_rss_peak_mib=%.1f\n",
            o.pairs, secs, static_cast<unsigned long long>(stats.delivered),
            static_cast<double>(stats.delivered) / secs, p50 / 1000, p99 / 1000, pmax / 1000,
            static_cast<unsigned long long>(stats.errors), static_cast<double>(rss) / 1024,
            static_cast<double>(std::max(peak_rss, hwm)) / 1024);
        std::fflush(stdout);
        stats.stopping = true;
        ioc.stop();
    };
    if (!run_main(ioc, main(), failure)) return 1;
    return stats.errors ? 1 : 0;
}

// One connection parked in /sync for as long as the run lasts.
asio::awaitable<void> idle_connection(User& u, const Options& o, long& connected) {
    Conn c(co_await asio::this_coro::executor);
    co_await c.connect(o);
    ++connected;
    std::string target = "/_matrix/client/v3/sync?timeout=300000&since=" + u.since;
    std::string none;
    for (;;) co_await c.request(http::verb::get, target, none, u.token);
}

int run_idle(const Options& o) {
    asio::io_context ioc(1);
    std::exception_ptr failure;
    std::vector<std::unique_ptr<User>> users;
    long connected = 0;
    auto main = [&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        // 100 users share the connections; each connection long-polls as one of them.
        int nusers = std::max(1, std::min(100, o.connections));
        for (int i = 0; i < nusers; ++i) {
            users.push_back(std::make_unique<User>());
            co_await register_user(*users.back(), o.host, o.port,
                                   o.prefix + "idle" + std::to_string(i));
            co_await initial_sync(*users.back());
        }
        auto before = server_rss_kib(o.server_pid).first;
        for (int i = 0; i < o.connections; ++i) {
            asio::co_spawn(
                ex, idle_connection(*users[static_cast<std::size_t>(i % nusers)], o, connected),
                [&](std::exception_ptr e) {
                    if (e && !failure) failure = e;
                });
        }
        asio::steady_timer t(ex);
        auto start = Clock::now();
        while (connected < o.connections && Clock::now() - start < std::chrono::seconds(60)) {
            t.expires_after(std::chrono::milliseconds(100));
            co_await t.async_wait(asio::use_awaitable);
        }
        t.expires_after(
            std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.seconds)));
        co_await t.async_wait(asio::use_awaitable);
        auto [rss, hwm] = server_rss_kib(o.server_pid);
        std::printf(
            "idle_connections=%ld server_rss_before_mib=%.1f server_rss_mib=%.1f "
            "server_rss_peak_mib=%.1f "
            "per_connection_kib=%.1f failures=%s\n",
            connected, static_cast<double>(before) / 1024, static_cast<double>(rss) / 1024,
            static_cast<double>(hwm) / 1024,
            connected ? static_cast<double>(rss - before) / static_cast<double>(connected) : 0.0,
            failure ? "yes" : "no");
        std::fflush(stdout);
        ioc.stop();
    };
    if (!run_main(ioc, main(), failure)) return 1;
    return connected == o.connections ? 0 : 1;
}

int open_fds(int pid) {
    std::error_code ec;
    int n = 0;
    for (std::filesystem::directory_iterator it("/proc/" + std::to_string(pid) + "/fd", ec), end;
         !ec && it != end; it.increment(ec))
        ++n;
    return n;
}

// One request of the account-life loop; a refusal is a failure of the run.
asio::awaitable<json::object> must(Conn& c, http::verb method, const std::string& target,
                                   const json::object& body, const std::string& token) {
    std::string text = json::serialize(body);
    auto [status, answer] = co_await c.request(method, target, text, token);
    if (status != 200)
        throw std::runtime_error(target + ": " + std::to_string(status) + " " + answer);
    co_return json::parse(answer).as_object();
}

asio::awaitable<void> churn_loop(const Options& o, int worker, const Stats& stats,
                                 std::uint64_t& lives) {
    // Targets are named locals: GCC 12 mishandles temporaries inside co_await expressions.
    const std::string cs = "/_matrix/client/v3";
    const std::string register_t = cs + "/register", login_t = cs + "/login",
                      create_t = cs + "/createRoom", to_device_t = cs + "/sendToDevice/x.soak/d1",
                      logout_t = cs + "/logout", sync_t = cs + "/sync?timeout=0";
    Conn c(co_await asio::this_coro::executor);
    co_await c.connect(o);
    std::string none;
    json::object empty;
    for (int i = 0; !stats.stopping; ++i) {
        std::string name = o.prefix + "life" + std::to_string(worker) + "_" + std::to_string(i);
        json::object reg{{"username", name},
                         {"password", "bench-password"},
                         {"auth", {{"type", "m.login.dummy"}}}};
        auto first = co_await must(c, http::verb::post, register_t, reg, none);
        std::string user = json::value_to<std::string>(first["user_id"]);
        std::string token1 = json::value_to<std::string>(first["access_token"]);
        json::object login{{"type", "m.login.password"},
                           {"identifier", {{"type", "m.id.user"}, {"user", name}}},
                           {"password", "bench-password"}};
        auto second = co_await must(c, http::verb::post, login_t, login, none);
        std::string token2 = json::value_to<std::string>(second["access_token"]);
        std::string device2 = json::value_to<std::string>(second["device_id"]);
        json::object create{{"preset", "private_chat"}, {"name", "room " + name}};
        auto room = co_await must(c, http::verb::post, create_t, create, token1);
        std::string room_id = json::value_to<std::string>(room["room_id"]);
        std::string send_t = cs + "/rooms/" + enc(room_id) + "/send/m.room.message/m1";
        std::string leave_t = cs + "/rooms/" + enc(room_id) + "/leave";
        json::object message{{"msgtype", "m.text"}, {"body", "hello"}};
        co_await must(c, http::verb::put, send_t, message, token1);
        json::object to_device{{"messages", {{user, {{device2, {{"n", i}}}}}}}};
        co_await must(c, http::verb::put, to_device_t, to_device, token1);
        // The second device fetches it, then acknowledges it with its next since.
        auto [st, first_sync] = co_await c.request(http::verb::get, sync_t, none, token2);
        if (st != 200) throw std::runtime_error("sync: " + first_sync);
        std::string ack = sync_t + "&since=" +
                          json::value_to<std::string>(json::parse(first_sync).at("next_batch"));
        auto [st2, again] = co_await c.request(http::verb::get, ack, none, token2);
        if (st2 != 200) throw std::runtime_error("sync: " + again);
        co_await must(c, http::verb::post, leave_t, empty, token1);
        co_await must(c, http::verb::post, logout_t, empty, token1);
        co_await must(c, http::verb::post, logout_t, empty, token2);
        ++lives;
        asio::steady_timer gap(co_await asio::this_coro::executor,
                               std::chrono::milliseconds(o.life_gap_ms));
        co_await gap.async_wait(asio::use_awaitable);
    }
}

int run_soak(const Options& o) {
    asio::io_context ioc(1);
    Stats stats;
    std::vector<std::unique_ptr<Pair>> pairs;
    for (int i = 0; i < o.pairs; ++i) pairs.push_back(std::make_unique<Pair>());
    std::exception_ptr failure;
    std::uint64_t lives = 0;
    auto main = [&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        for (int i = 0; i < o.pairs; ++i) co_await setup_pair(*pairs[i], o, i);
        start_calls(ex, pairs, stats, o.call_gap_ms);
        for (int w = 0; w < o.churn; ++w)
            asio::co_spawn(ex, churn_loop(o, w, stats, lives), [&](std::exception_ptr e) {
                if (e && !failure) failure = e;
            });
        auto start = Clock::now();
        asio::steady_timer t(ex);
        std::uint64_t calls = 0;
        for (double elapsed = 0; elapsed < o.seconds && !failure;) {
            t.expires_after(std::chrono::duration_cast<Clock::duration>(
                std::chrono::duration<double>(o.sample_s)));
            co_await t.async_wait(asio::use_awaitable);
            elapsed = std::chrono::duration<double>(Clock::now() - start).count();
            calls = 0;
            for (auto& p : pairs) calls += static_cast<std::uint64_t>(p->round);
            std::printf(
                "t_s=%.0f server_rss_mib=%.1f server_fds=%d requests=%llu http_5xx=%llu "
                "call_errors=%llu calls=%llu account_lives=%llu\n",
                elapsed, static_cast<double>(server_rss_kib(o.server_pid).first) / 1024,
                open_fds(o.server_pid), static_cast<unsigned long long>(counts.requests),
                static_cast<unsigned long long>(counts.server_errors),
                static_cast<unsigned long long>(stats.errors),
                static_cast<unsigned long long>(calls), static_cast<unsigned long long>(lives));
            std::fflush(stdout);
        }
        stats.stopping = true;
        ioc.stop();
    };
    if (!run_main(ioc, main(), failure)) return 1;
    return counts.server_errors || stats.errors ? 1 : 0;
}
struct Fill {
    std::vector<std::string> user_ids, tokens;
    std::vector<std::string> rooms;  // room i was made by user i % users
};

using Work = std::function<asio::awaitable<void>(Conn&, long)>;

// One connection of in_parallel(): takes the next index until all are taken.
asio::awaitable<void> parallel_worker(const Options& o, long total, long& next,
                                      const std::exception_ptr& failure, const Work& work) {
    Conn c(co_await asio::this_coro::executor);
    co_await c.connect(o);
    for (long i; !failure && (i = next++) < total;) co_await work(c, i);
}

// Runs `work(conn, i)` for i in [0, total) over `concurrency` connections; rethrows the first
// failure once every connection has finished.
asio::awaitable<void> in_parallel(const Options& o, long total, const Work& work) {
    auto ex = co_await asio::this_coro::executor;
    long next = 0;
    int running = o.concurrency;
    std::exception_ptr failure;
    asio::steady_timer all(ex, Clock::time_point::max());
    for (int w = 0; w < o.concurrency; ++w)
        asio::co_spawn(ex, parallel_worker(o, total, next, failure, work),
                       [&](std::exception_ptr e) {
                           if (e && !failure) failure = e;
                           if (--running == 0) all.cancel();
                       });
    boost::system::error_code ec;
    co_await all.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (failure) std::rethrow_exception(failure);
}

int run_fill(const Options& o) {
    asio::io_context ioc(1);
    std::exception_ptr failure;
    Fill f;
    f.user_ids.resize(static_cast<std::size_t>(o.users));
    f.tokens.resize(static_cast<std::size_t>(o.users));
    f.rooms.resize(static_cast<std::size_t>(o.rooms));
    const std::string cs = "/_matrix/client/v3";
    auto main = [&]() -> asio::awaitable<void> {
        auto t0 = Clock::now();
        auto elapsed = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
        // The work of each phase is a named local: GCC 12 mishandles temporaries inside
        // co_await expressions.
        Work sign_up = [&](Conn& c, long i) -> asio::awaitable<void> {
            std::string target = cs + "/register", none;
            json::object reg{{"username", o.prefix + "fill" + std::to_string(i)},
                             {"password", "bench-password"},
                             {"auth", {{"type", "m.login.dummy"}}}};
            auto v = co_await must(c, http::verb::post, target, reg, none);
            f.user_ids[static_cast<std::size_t>(i)] = json::value_to<std::string>(v["user_id"]);
            f.tokens[static_cast<std::size_t>(i)] = json::value_to<std::string>(v["access_token"]);
        };
        co_await in_parallel(o, o.users, sign_up);
        std::cerr << "fill: " << o.users << " users in " << elapsed() << " s\n";
        Work make_room = [&](Conn& c, long i) -> asio::awaitable<void> {
            auto maker = static_cast<std::size_t>(i % o.users);
            auto guest = static_cast<std::size_t>((i + 1) % o.users);
            std::string target = cs + "/createRoom";
            json::object create{{"preset", "private_chat"},
                                {"name", "room " + std::to_string(i)},
                                {"invite", json::array{json::string(f.user_ids[guest])}}};
            auto v = co_await must(c, http::verb::post, target, create, f.tokens[maker]);
            std::string room = json::value_to<std::string>(v["room_id"]);
            std::string join = cs + "/join/" + enc(room);
            json::object empty;
            co_await must(c, http::verb::post, join, empty, f.tokens[guest]);
            f.rooms[static_cast<std::size_t>(i)] = std::move(room);
        };
        co_await in_parallel(o, o.rooms, make_room);
        std::cerr << "fill: " << o.rooms << " rooms in " << elapsed() << " s\n";
        // The stream position so far: every event, and the little else that took one.
        long position = 0;
        {
            Conn c(co_await asio::this_coro::executor);
            co_await c.connect(o);
            std::string target = cs + "/sync?timeout=0", none;
            auto [status, text] = co_await c.request(http::verb::get, target, none, f.tokens[0]);
            if (status != 200) throw std::runtime_error("sync: " + text);
            position = std::stol(string_after(text, "\"next_batch\":\"s"));
        }
        long messages = std::max(0L, o.events - position);
        long reported = 0;
        Work send_message = [&](Conn& c, long i) -> asio::awaitable<void> {
            auto room = static_cast<std::size_t>(i % o.rooms);
            std::string target =
                cs + "/rooms/" + enc(f.rooms[room]) + "/send/m.room.message/f" + std::to_string(i);
            json::object text{{"msgtype", "m.text"},
                              {"body", "message " + std::to_string(i) +
                                           " of the fill, about as long as a short chat line"}};
            co_await must(c, http::verb::put, target, text,
                          f.tokens[room % static_cast<std::size_t>(o.users)]);
            if (i - reported >= std::max(1L, messages / 10)) {
                reported = i;
                std::cerr << "fill: " << i << " of " << messages << " messages, " << elapsed()
                          << " s\n";
            }
        };
        co_await in_parallel(o, messages, send_message);
        std::printf("users=%d rooms=%d messages=%ld stream_position=%ld seconds=%.0f\n", o.users,
                    o.rooms, messages, position + messages, elapsed());
        std::fflush(stdout);
    };
    return run_main(ioc, main(), failure) ? 0 : 1;
}
// Every account `fill` made (same --prefix) signs in and makes a first /sync with one event
// per room: every room of the database is used once, in the order of the accounts.
int run_touch(const Options& o) {
    asio::io_context ioc(1);
    std::exception_ptr failure;
    const std::string cs = "/_matrix/client/v3";
    long rooms_seen = 0;
    auto main = [&]() -> asio::awaitable<void> {
        auto t0 = Clock::now();
        Work touch = [&](Conn& c, long i) -> asio::awaitable<void> {
            std::string login_t = cs + "/login", none;
            json::object login{
                {"type", "m.login.password"},
                {"identifier",
                 {{"type", "m.id.user"}, {"user", o.prefix + "fill" + std::to_string(i)}}},
                {"password", "bench-password"}};
            auto v = co_await must(c, http::verb::post, login_t, login, none);
            std::string token = json::value_to<std::string>(v["access_token"]);
            std::string sync_t =
                cs + "/sync?timeout=0&filter=" + enc(R"({"room":{"timeline":{"limit":1}}})");
            auto [status, text] = co_await c.request(http::verb::get, sync_t, none, token);
            if (status != 200) throw std::runtime_error("sync: " + text);
            auto sync = json::parse(text).as_object();
            rooms_seen += static_cast<long>(sync["rooms"].as_object()["join"].as_object().size());
        };
        co_await in_parallel(o, o.users, touch);
        std::printf("users=%d rooms_seen=%ld seconds=%.1f\n", o.users, rooms_seen,
                    std::chrono::duration<double>(Clock::now() - t0).count());
        std::fflush(stdout);
    };
    return run_main(ioc, main(), failure) ? 0 : 1;
}
}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"mxvoip-load: simulated Matrix calls against a running homeserver"};
    Options o;
    std::string url = "http://127.0.0.1:8008";
    app.add_option("--url", url, "Homeserver base URL (http only)");
    std::string callee_url;
    app.add_option("--seconds", o.seconds, "Measured duration");
    app.add_option("--server-pid", o.server_pid, "Server process id, for its RSS");
    app.add_option("--prefix", o.prefix, "Prefix for the user names (to reuse a server)");
    auto* calls = app.add_subcommand("calls", "N concurrent 1:1 calls, repeated");
    calls->add_option("--pairs", o.pairs, "Concurrent caller/callee pairs");
    calls->add_option("--callee-url", callee_url,
                      "Where the callees connect (another process of a shared database, say); "
                      "default: --url");
    auto* idle = app.add_subcommand("idle", "M idle long-polling /sync connections");
    idle->add_option("--connections", o.connections, "Connections to hold")->required();
    auto* soak = app.add_subcommand("soak", "calls with pauses, plus accounts living and going");
    soak->add_option("--pairs", o.pairs, "Caller/callee pairs")->default_val(100);
    soak->add_option("--call-gap-ms", o.call_gap_ms, "Pause between one pair's calls")
        ->default_val(5000);
    soak->add_option("--churn", o.churn, "Account-life workers")->default_val(4);
    soak->add_option("--life-gap-ms", o.life_gap_ms, "Pause between one worker's account lives")
        ->default_val(2000);
    soak->add_option("--sample", o.sample_s, "Seconds between samples")->default_val(60);
    auto* fill = app.add_subcommand("fill", "a database of a given size, made through the API");
    fill->add_option("--users", o.users, "Accounts")->default_val(1000)->check(CLI::PositiveNumber);
    fill->add_option("--rooms", o.rooms, "Rooms, each with two members")
        ->default_val(10000)
        ->check(CLI::PositiveNumber);
    fill->add_option("--events", o.events, "The stream position to fill up to with messages")
        ->default_val(1000000);
    fill->add_option("--concurrency", o.concurrency, "Requests at a time")
        ->default_val(64)
        ->check(CLI::PositiveNumber);
    auto* touch = app.add_subcommand("touch", "every account of `fill` signs in and syncs once");
    touch->add_option("--users", o.users, "Accounts")->check(CLI::PositiveNumber);
    touch->add_option("--concurrency", o.concurrency, "Requests at a time")
        ->check(CLI::PositiveNumber);
    app.require_subcommand(1);
    CLI11_PARSE(app, argc, argv);
    auto host_port = [](const std::string& u) {
        auto rest = u.substr(u.find("://") + 3);
        while (!rest.empty() && rest.back() == '/') rest.pop_back();
        auto colon = rest.rfind(':');
        return std::pair{rest.substr(0, colon),
                         colon == std::string::npos ? std::string("80") : rest.substr(colon + 1)};
    };
    std::tie(o.host, o.port) = host_port(url);
    std::tie(o.callee_host, o.callee_port) = host_port(callee_url.empty() ? url : callee_url);
    if (o.prefix.empty()) o.prefix = "b" + std::to_string(::getpid()) + "_";
    raise_fd_limit();
    if (soak->parsed()) return run_soak(o);
    if (fill->parsed()) return run_fill(o);
    if (touch->parsed()) return run_touch(o);
    return calls->parsed() ? run_calls(o) : run_idle(o);
}
