#include "calls.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <thread>

#include "mxvoip/client/call_driver.hpp"
#include "mxvoip/client/matrix_client.hpp"
#include "mxvoip/crypto/olm_machine.hpp"
#include "mxvoip/media/media_session.hpp"
#include "password.hpp"

namespace mxvoip::cli {
namespace {

namespace asio = boost::asio;
namespace json = boost::json;
namespace fs = std::filesystem;
using asio::use_awaitable;
using client::CallInfo;
using client::Clock;
using client::Session;

// ---- credentials -------------------------------------------------------------------------

std::string state_dir(const Account& a) {
    if (!a.state_dir.empty()) return a.state_dir;
    if (const char* d = std::getenv("MXVOIP_STATE_DIR"); d && *d) return d;
    if (const char* d = std::getenv("XDG_STATE_HOME"); d && *d) return std::string(d) + "/mxvoip";
    if (const char* h = std::getenv("HOME"); h && *h)
        return std::string(h) + "/.local/state/mxvoip";
    return ".mxvoip";
}

// One file per user id: `--user` must name the user the way the session was stored (the full
// @user:server, which `login` and `register` store under).
std::string file_safe(const std::string& id) {
    std::string name;
    for (char c : id) name += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
    return name;
}

fs::path session_file(const Account& a, const std::string& user) {
    return fs::path(state_dir(a)) / ("session-" + file_safe(user) + ".json");
}

// The device's end-to-end encryption state (every key and session, encrypted with the user's
// state key, both mode 0600): one file per device, since a new login is a new device.
std::unique_ptr<crypto::Machine> open_crypto(const Account& a, const Session& s) {
    fs::path dir(state_dir(a));
    crypto::StateKey key =
        crypto::load_or_create_state_key(dir / ("crypto-" + file_safe(s.user_id) + ".key"));
    return crypto::open_olm_machine(
        {s.user_id, s.device_id,
         dir / ("crypto-" + file_safe(s.user_id) + "-" + file_safe(s.device_id) + ".state"), key});
}

struct StoredSession {
    Session session;
    std::string next_batch;  // where the last run's /sync stopped
};

std::optional<StoredSession> load_session(const Account& a) {
    std::ifstream in(session_file(a, a.user));
    if (!in) return std::nullopt;
    std::stringstream text;
    text << in.rdbuf();
    boost::system::error_code ec;
    json::value v = json::parse(text.str(), ec);
    if (ec || !v.is_object()) return std::nullopt;
    auto get = [&](const char* k) {
        const json::value* x = v.as_object().if_contains(k);
        return x && x->is_string() ? std::string(x->as_string()) : std::string();
    };
    Session s{get("homeserver"), get("user_id"), get("device_id"), get("access_token")};
    if (s.access_token.empty() || (!a.homeserver.empty() && s.homeserver != a.homeserver))
        return std::nullopt;
    return StoredSession{s, get("next_batch")};
}

// The session, and where its last /sync stopped (empty: not synced yet).
void save_session(const Account& a, const Session& s, const std::string& next_batch = {}) {
    fs::path file = session_file(a, s.user_id);
    fs::create_directories(file.parent_path());
    json::object o{{"homeserver", s.homeserver},
                   {"user_id", s.user_id},
                   {"device_id", s.device_id},
                   {"access_token", s.access_token}};
    if (!next_batch.empty()) o["next_batch"] = next_batch;
    // The access token is a secret: readable by its owner only, written before it is filled.
    fs::path tmp = file;
    tmp += ".tmp";
    {
        std::ofstream out(tmp, std::ios::trunc);
        ::chmod(tmp.c_str(), 0600);
        out << json::serialize(o) << "\n";
        if (!out) throw std::runtime_error("cannot write " + tmp.string());
    }
    fs::rename(tmp, file);
}

std::optional<std::string> password(const Account& a) {
    return read_password(a.password_file, "Password for " + a.user + ": ", false);
}

// ---- output ------------------------------------------------------------------------------

double ms_between(Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
}

// JSON lines (--json) or a status line and plain messages for people.
class Console : public client::CallObserver {
  public:
    explicit Console(const Account& a) : json_(a.json), verbose_(a.verbose) {
        live_ = !json_ && ::isatty(STDERR_FILENO);
    }

    // Every line carries `ts`, the wall-clock time in Unix milliseconds, so a run can be laid
    // beside the homeserver's and the peer's timestamps.
    void line(json::object o) {
        if (!json_) return;
        o["ts"] = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
        std::cout << json::serialize(o) << std::endl;
    }
    void say(const std::string& text) {
        clear_status();
        std::cerr << "mxvoip: " << text << std::endl;
    }

    void on_state(const CallInfo& c) override {
        json::object o{
            {"event", "state"},
            {"call_id", c.call_id},
            {"state", call::to_string(c.state)},
            {"direction", c.direction == call::Direction::outgoing ? "outgoing" : "incoming"}};
        if (c.state == call::CallState::ended) {
            o["end_reason"] = c.end_reason;
            o["ended_by_remote"] = c.ended_by_remote;
        }
        line(std::move(o));
        if (!json_) {
            std::string text = "call " + c.call_id + ": " + call::to_string(c.state);
            if (c.state == call::CallState::ended) text += " (" + c.end_reason + ")";
            say(text);
        }
    }
    void on_stream_added(const CallInfo& c, const client::RemoteStream& s,
                         media::Kind kind) override {
        line({{"event", "stream_added"},
              {"call_id", c.call_id},
              {"stream_id", s.stream_id},
              {"purpose", s.purpose},
              {"kind", media::to_string(kind)}});
        if (!json_) say("remote " + s.purpose + " " + media::to_string(kind) + " stream");
    }
    void on_stream_removed(const CallInfo& c, const client::RemoteStream& s) override {
        for (media::Kind k : s.kinds)
            line({{"event", "stream_removed"},
                  {"call_id", c.call_id},
                  {"stream_id", s.stream_id},
                  {"purpose", s.purpose},
                  {"kind", media::to_string(k)}});
        if (!json_) say("remote " + s.purpose + " stream removed");
    }
    void on_log(const std::string& text) override {
        if (verbose_) say(text);
    }
    void on_position(std::function<void(const std::string&)> f) { position_ = std::move(f); }
    void on_sync_position(const std::string& next_batch) override {
        if (position_) position_(next_batch);
    }
    void on_fatal(const std::string& text) override {
        fatal_ = text;
        say(text);
    }

    json::array streams(const CallInfo& c) {
        // Frames and tones per remote stream and kind, with the purpose the peer gave it.
        std::map<std::pair<std::string, media::Kind>, media::TrackStats> sum;
        for (const auto& t : c.last_stats.tracks) {
            auto& s = sum[{t.stream_id, t.kind}];
            s.stream_id = t.stream_id;
            s.kind = t.kind;
            s.frames += t.frames;
            if (t.tone_hz > 0 && s.tone_hz == 0) s.tone_hz = t.tone_hz;
        }
        json::array out;
        for (const auto& [key, t] : sum) {
            auto it = c.streams.find(t.stream_id);
            if (it == c.streams.end()) continue;  // ignored by the stream rules
            json::object o{{"stream_id", t.stream_id},
                           {"purpose", it->second.purpose},
                           {"kind", media::to_string(t.kind)},
                           {"frames", t.frames}};
            if (t.kind == media::Kind::audio) o["tone_hz"] = std::round(t.tone_hz * 10) / 10;
            if (it->second.removed) o["removed"] = true;
            out.push_back(std::move(o));
        }
        return out;
    }

    void stats(const CallInfo& c) {
        const media::Stats& s = c.last_stats;
        double t = c.connected_at ? ms_between(*c.connected_at, Clock::now()) : 0;
        line({{"event", "stats"},
              {"call_id", c.call_id},
              {"t_ms", std::llround(t)},
              {"rtt_ms", s.rtt_ms},
              {"jitter_ms", s.jitter_ms},
              {"packets_lost", s.packets_lost},
              {"packets_received", s.packets_received},
              {"bytes_sent", s.bytes_sent},
              {"bytes_received", s.bytes_received},
              {"relay", s.relay},
              {"streams", streams(c)}});
        if (!live_) return;
        char buf[160];
        int secs = static_cast<int>(t / 1000);
        std::snprintf(
            buf, sizeof buf, "%s %02d:%02d | rtt %s | lost %lld | %s", call::to_string(c.state),
            secs / 60, secs % 60,
            s.rtt_ms < 0 ? "-" : (std::to_string(static_cast<int>(s.rtt_ms)) + " ms").c_str(),
            static_cast<long long>(s.packets_lost), s.relay ? "relayed" : "direct");
        std::string status = buf;
        for (const auto& [id, rs] : c.streams) {
            if (rs.removed) continue;
            status += " | " + rs.purpose;
            for (media::Kind k : rs.kinds) status += std::string(" ") + media::to_string(k);
        }
        std::cerr << "\r\033[K" << status << std::flush;
        status_shown_ = true;
    }

    void summary(const CallInfo& c) {
        json::object o{{"event", "summary"},         {"call_id", c.call_id},
                       {"end_reason", c.end_reason}, {"ended_by_remote", c.ended_by_remote},
                       {"relay", c.relay},           {"streams", streams(c)}};
        if (auto media = c.first_remote_media_at(); c.signalled_at && media)
            o["setup_ms"] = std::llround(ms_between(*c.signalled_at, *media));
        else
            o["setup_ms"] = nullptr;
        if (auto ms = c.first_remote_media_unix_ms()) o["first_media_unix_ms"] = ms;
        if (!c.media_error.empty()) o["media_error"] = c.media_error;
        if (!json_) {
            std::string text = "call " + c.call_id + " ended: " + c.end_reason;
            if (o["setup_ms"].is_int64())
                text += ", set up in " + json::serialize(o["setup_ms"]) + " ms";
            text += c.relay ? ", relayed" : "";
            say(text);
            for (const auto& s : o["streams"].as_array()) say("  " + json::serialize(s));
        }
        line(std::move(o));
    }

    const std::string& fatal() const { return fatal_; }

  private:
    void clear_status() {
        if (status_shown_) std::cerr << "\r\033[K" << std::flush;
        status_shown_ = false;
    }
    bool json_;
    bool verbose_;
    bool live_ = false;
    bool status_shown_ = false;
    std::string fatal_;
    std::function<void(const std::string&)> position_;  // keeps where /sync stopped
};

int exit_code(const CallInfo& c) {
    if (!c.media_error.empty()) return exit_media_failed;
    const std::string& r = c.end_reason;
    if (r == "user_hangup" || r == "answered_elsewhere" || r == "rejected_elsewhere" ||
        r == "opponent_left")
        return exit_ok;
    if (r == "rejected") return c.ended_by_remote ? exit_rejected : exit_ok;
    if (r == "user_busy") return exit_rejected;
    if (r == "invite_timeout") return exit_no_answer;
    if (r == "ice_failed" || r == "ice_timeout" || r == "user_media_failed")
        return exit_media_failed;
    return exit_signalling_failed;
}

// A tone per user, so that two clients can tell each other's audio apart.
double default_tone(const std::string& user) {
    std::uint32_t h = 2166136261u;
    for (char c : user) h = (h ^ static_cast<unsigned char>(c)) * 16777619u;
    return 300 + (h % 36) * 20;
}

// ---- running a client --------------------------------------------------------------------

struct Context {
    asio::io_context& io;
    client::MatrixClient& matrix;
    client::CallDriver& driver;
    Console& console;
    const Account& account;
};

asio::awaitable<void> sleep_for(Clock::duration d) {
    asio::steady_timer t(co_await asio::this_coro::executor, d);
    co_await t.async_wait(use_awaitable);
}

// Logs in (password: a new device) or reuses `stored`, which is then returned.
asio::awaitable<std::optional<StoredSession>> sign_in(client::MatrixClient& matrix,
                                                      const Account& a,
                                                      std::optional<StoredSession> stored) {
    std::optional<std::string> pw = password(a);
    if (!pw) {
        if (stored) {
            matrix.use_session(stored->session);
            co_return stored;
        }
        throw std::runtime_error("no password and no stored session for " + a.user +
                                 ": run `mxvoip login` or give --password-file / MXVOIP_PASSWORD");
    }
    std::string device = "mxvoip";
    co_await matrix.login(a.user, *pw, device);
    co_return std::nullopt;
}

// The client of `a`'s homeserver: --homeserver, else the `stored` session's, else the one
// the user id's server name names. Throws std::invalid_argument for a usage error,
// ClientError when discovery fails.
asio::awaitable<std::unique_ptr<client::MatrixClient>> open_client(
    asio::any_io_executor ex, const Account& a, const std::optional<StoredSession>& stored) {
    client::ConnectionOptions options{a.ca_file, a.allow_insecure_http};
    std::string homeserver = a.homeserver;
    if (homeserver.empty() && stored) homeserver = stored->session.homeserver;
    if (homeserver.empty()) {
        auto colon = a.user.find(':');
        if (a.user.empty() || a.user[0] != '@' || colon == std::string::npos)
            throw std::invalid_argument(
                "give --homeserver, or --user as a full user id (@name:server) whose server "
                "name leads to the homeserver");
        std::string server_name = a.user.substr(colon + 1);
        homeserver = co_await client::discover_homeserver(ex, server_name, options);
    }
    co_return std::make_unique<client::MatrixClient>(ex, homeserver, options);
}

using Body = std::function<asio::awaitable<int>(Context&)>;

int run_client(const Account& a, const MediaFlags& m, bool join_invites, const Body& body) {
    if (a.user.empty()) {
        std::cerr << "mxvoip: --user is required\n";
        return exit_usage;
    }
    Console console(a);
    std::unique_ptr<media::MediaEngine> engine;
    try {
        engine = media::make_gstreamer_engine();
    } catch (const std::exception& e) {
        console.say(e.what());
        return exit_media_failed;
    }
    asio::io_context io;
    std::unique_ptr<client::MatrixClient> matrix;
    int code = exit_signalling_failed;
    std::unique_ptr<crypto::Machine> machine;  // outlives the driver
    std::unique_ptr<client::CallDriver> driver;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            std::optional<StoredSession> saved = load_session(a);
            try {
                matrix = co_await open_client(io.get_executor(), a, saved);
            } catch (const std::invalid_argument& e) {
                console.say(e.what());
                code = exit_usage;
                io.stop();
                co_return;
            } catch (const std::exception& e) {
                console.say(std::string("cannot find the homeserver: ") + e.what());
                io.stop();
                co_return;
            }
            std::optional<StoredSession> stored;
            try {
                stored = co_await sign_in(*matrix, a, saved);
            } catch (const std::exception& e) {
                console.say(std::string("cannot sign in: ") + e.what());
                io.stop();
                co_return;
            }
            client::DriverOptions o;
            if (a.encryption) {
                try {
                    machine = open_crypto(a, matrix->session());
                } catch (const std::exception& e) {
                    console.say(std::string("cannot open the encryption state: ") + e.what());
                    io.stop();
                    co_return;
                }
                o.crypto = machine.get();
            }
            if (stored) {
                // A stored session goes on where its last run stopped, so calls that run
                // answered or ended are not read again.
                o.resume_from = stored->next_batch;
                console.on_position([&a, &console, s = stored->session,
                                     failed = false](const std::string& next_batch) mutable {
                    try {
                        save_session(a, s, next_batch);
                    } catch (const std::exception& e) {
                        if (!std::exchange(failed, true))
                            console.say(std::string("cannot keep the sync position: ") + e.what());
                    }
                });
            }
            o.media.video = m.video;
            o.media.relay_only = m.relay_only;
            o.media.tone_hz = m.tone_hz > 0 ? m.tone_hz : default_tone(matrix->session().user_id);
            o.invite_lifetime = m.invite_lifetime_ms;
            o.join_direct_invites = join_invites;
            driver = std::make_unique<client::CallDriver>(io.get_executor(), *matrix, *engine, o,
                                                          console);
            asio::co_spawn(io, driver->run(), asio::detached);
            console.line({{"event", "ready"},
                          {"user_id", matrix->session().user_id},
                          {"device_id", matrix->session().device_id}});
            Context ctx{io, *matrix, *driver, console, a};
            try {
                code = co_await body(ctx);
            } catch (const std::exception& e) {
                console.say(e.what());
                code = exit_signalling_failed;
            }
            // The last events (a hangup) leave before the program does.
            for (int i = 0; i < 100 && driver->sending(); ++i)
                co_await sleep_for(std::chrono::milliseconds(50));
            driver->stop();
            io.stop();
        },
        asio::detached);
    io.run();
    driver.reset();
    return code;
}

// Waits until `done` or the timeout; false on timeout or a fatal signalling error.
asio::awaitable<bool> wait_for(Context& ctx, const std::function<bool()>& done,
                               Clock::duration timeout) {
    auto deadline = Clock::now() + timeout;
    while (!done()) {
        if (!ctx.console.fatal().empty() || Clock::now() > deadline) co_return false;
        co_await sleep_for(std::chrono::milliseconds(20));
    }
    co_return true;
}

// Keeps one call going until it ends: stats each second, the scheduled steps (seconds after
// connecting), a hangup on SIGINT/SIGTERM. In glare the call may be replaced by the peer's:
// the surviving call is followed instead. Returns the call that ended.
struct Step {
    double at;
    std::function<void(const std::string&)> run;
    bool done = false;
};

asio::awaitable<std::string> follow_call(Context& ctx, std::string call_id,
                                         std::vector<Step> steps) {
    asio::signal_set signals(ctx.io, SIGINT, SIGTERM);
    bool interrupted = false;
    signals.async_wait([&](boost::system::error_code ec, int) {
        if (!ec) interrupted = true;
    });
    auto next_stats = Clock::now();
    for (;;) {
        const CallInfo* c = ctx.driver.info(call_id);
        if (c && c->state == call::CallState::ended && c->end_reason == "replaced") {
            // Glare: the peer's call survives; follow it.
            for (const auto& [id, other] : ctx.driver.calls())
                if (id != call_id && other.state != call::CallState::ended &&
                    other.room_id == c->room_id)
                    call_id = id;
            c = ctx.driver.info(call_id);
        }
        if (c && c->state == call::CallState::ended) break;
        if (!ctx.console.fatal().empty()) {
            ctx.driver.hang_up(call_id);
            break;
        }
        if (interrupted) {
            ctx.console.say("interrupted: hanging up");
            ctx.driver.hang_up(call_id);
            interrupted = false;
        }
        if (c && c->connected_at) {
            double t = std::chrono::duration<double>(Clock::now() - *c->connected_at).count();
            for (auto& s : steps) {
                if (s.done || s.at < 0 || t < s.at) continue;
                s.done = true;
                s.run(call_id);
            }
            if (Clock::now() >= next_stats) {
                ctx.driver.refresh_stats(call_id);
                ctx.console.stats(*ctx.driver.info(call_id));
                next_stats = Clock::now() + std::chrono::seconds(1);
            }
        }
        co_await sleep_for(std::chrono::milliseconds(20));
    }
    signals.cancel();
    co_return call_id;
}

std::vector<Step> common_steps(Context& ctx, const MediaFlags& m) {
    std::vector<Step> steps;
    steps.push_back({m.hangup_after, [&ctx](const std::string& id) { ctx.driver.hang_up(id); }});
    return steps;
}

// The direct chat with `user`: one from m.direct that we both joined, or a new one.
asio::awaitable<std::string> direct_room(Context& ctx, const std::string& user) {
    if (std::optional<std::string> room = co_await ctx.driver.direct_chat_with(user))
        co_return *room;
    std::string room = co_await ctx.driver.create_direct_chat(user);
    ctx.console.say("created the direct chat " + room + "; waiting for " + user + " to join");
    if (!co_await ctx.driver.wait_for_join(room, user, std::chrono::seconds(120)))
        throw std::runtime_error(user + " did not join " + room);
    co_return room;
}

}  // namespace

namespace {

// `login` and `register`: one password-authenticated request whose session is stored.
using Authenticate = std::function<asio::awaitable<Session>(client::MatrixClient&, std::string)>;

int store_session(const Account& a, const char* what, const char* event, const char* done,
                  const Authenticate& authenticate) {
    Console console(a);
    asio::io_context io;
    int code = exit_signalling_failed;
    try {
        std::optional<std::string> pw = password(a);
        if (!pw) {
            console.say("a password is needed: --password-file, MXVOIP_PASSWORD or a terminal");
            return exit_usage;
        }
        asio::co_spawn(
            io,
            [&]() -> asio::awaitable<void> {
                std::unique_ptr<client::MatrixClient> matrix;
                try {
                    std::optional<StoredSession> saved = load_session(a);
                    matrix = co_await open_client(io.get_executor(), a, saved);
                } catch (const std::invalid_argument& e) {
                    console.say(e.what());
                    code = exit_usage;
                    co_return;
                } catch (const std::exception& e) {
                    console.say(std::string("cannot find the homeserver: ") + e.what());
                    co_return;
                }
                try {
                    Session s = co_await authenticate(*matrix, *pw);
                    save_session(a, s);
                    console.line(
                        {{"event", event}, {"user_id", s.user_id}, {"device_id", s.device_id}});
                    console.say(std::string(done) + " " + s.user_id + " (device " + s.device_id +
                                "); session stored in " + session_file(a, s.user_id).string());
                    code = exit_ok;
                } catch (const std::exception& e) {
                    console.say(std::string(what) + " failed: " + e.what());
                }
            },
            asio::detached);
        io.run();
    } catch (const std::exception& e) {
        console.say(e.what());
        return exit_usage;
    }
    return code;
}

}  // namespace

int login_command(const Account& a) {
    return store_session(a, "login", "login", "logged in as",
                         [&a](client::MatrixClient& m, std::string pw) -> asio::awaitable<Session> {
                             std::string device = "mxvoip";
                             co_return co_await m.login(a.user, pw, device);
                         });
}

int register_command(const Account& a) {
    std::string localpart = a.user;
    if (!localpart.empty() && localpart[0] == '@')
        localpart = localpart.substr(1, localpart.find(':') - 1);
    return store_session(
        a, "registration", "registered", "registered",
        [localpart](client::MatrixClient& m, std::string pw) -> asio::awaitable<Session> {
            std::string device = "mxvoip";
            co_return co_await m.register_user(localpart, pw, device);
        });
}

int call_command(const Account& a, const CallFlags& f) {
    return run_client(a, f.media, false, [&f](Context& ctx) -> asio::awaitable<int> {
        bool ready = co_await wait_for(
            ctx, [&] { return ctx.driver.ready(); }, std::chrono::seconds(60));
        if (!ready) throw std::runtime_error("the first /sync did not complete");
        std::string me = ctx.matrix.session().user_id;
        std::string room, invitee;
        if (!f.target.empty() && f.target[0] == '!') {
            room = f.target;
            for (const auto& u : ctx.driver.joined(room))
                if (u != me) invitee = u;
            if (invitee.empty()) throw std::runtime_error("nobody else has joined " + room);
        } else {
            invitee = f.target;
            room = co_await direct_room(ctx, invitee);
        }
        if (!ctx.driver.can_call_in(room))
            throw std::runtime_error(room +
                                     " is end-to-end encrypted and encryption is off "
                                     "(--no-encryption)");
        if (f.start_at_unix_ms > 0) {
            auto at = std::chrono::system_clock::time_point(
                std::chrono::milliseconds(f.start_at_unix_ms));
            auto wait = at - std::chrono::system_clock::now();
            if (wait > std::chrono::system_clock::duration::zero())
                co_await sleep_for(std::chrono::duration_cast<Clock::duration>(wait));
        }
        std::string id = ctx.driver.place_call(room, invitee);
        ctx.console.say("calling " + invitee + " in " + room + " (call " + id + ")");
        std::vector<Step> steps = common_steps(ctx, f.media);
        auto toggle = [&ctx](const char* what, bool on) {
            return [&ctx, what, on](const std::string& c) {
                ctx.console.line({{"event", what}, {"call_id", c}, {"on", on}});
                if (std::string_view(what) == "screenshare")
                    ctx.driver.set_screenshare(c, on);
                else
                    ctx.driver.set_hold(c, on);
            };
        };
        steps.push_back({f.screenshare_at, toggle("screenshare", true)});
        steps.push_back({f.screenshare_stop_at, toggle("screenshare", false)});
        steps.push_back({f.hold_at, toggle("hold", true)});
        steps.push_back({f.resume_at, toggle("hold", false)});
        std::string ended = co_await follow_call(ctx, id, std::move(steps));
        const CallInfo* info = ctx.driver.info(ended);
        if (!info) co_return exit_signalling_failed;
        ctx.console.summary(*info);
        co_return ctx.console.fatal().empty() ? exit_code(*info) : exit_signalling_failed;
    });
}

int answer_command(const Account& a, const AnswerFlags& f) {
    return run_client(a, f.media, true, [&f](Context& ctx) -> asio::awaitable<int> {
        bool ready = co_await wait_for(
            ctx, [&] { return ctx.driver.ready(); }, std::chrono::seconds(60));
        if (!ready) throw std::runtime_error("the first /sync did not complete");
        ctx.console.say("waiting for calls as " + ctx.matrix.session().user_id + " (device " +
                        ctx.matrix.session().device_id + ")");
        int code = exit_ok;
        std::set<std::string> handled;
        for (int n = 0; n < f.calls; ++n) {
            std::string ringing;
            co_await wait_for(
                ctx,
                [&] {
                    // Rang at some point: a call can ring and be taken elsewhere between
                    // two looks.
                    for (const auto& [id, c] : ctx.driver.calls())
                        if (!handled.count(id) && c.direction == call::Direction::incoming &&
                            c.signalled_at) {
                            ringing = id;
                            return true;
                        }
                    return false;
                },
                std::chrono::hours(24 * 365));
            if (ringing.empty()) co_return exit_signalling_failed;
            handled.insert(ringing);
            bool accept = !f.reject;
            if (!f.auto_answer && !f.reject) {
                std::cerr << "Incoming call " << ringing << ". Answer? [y/N] " << std::flush;
                // The terminal is read on its own thread: the call keeps being driven meanwhile.
                struct Reply {
                    std::string text;
                    std::atomic<bool> got{false};
                };
                auto reply = std::make_shared<Reply>();
                std::thread([reply] {
                    // End of input decides nothing: the call rings on until it stops.
                    if (std::getline(std::cin, reply->text)) reply->got = true;
                }).detach();
                co_await wait_for(
                    ctx,
                    [&] {
                        const CallInfo* c = ctx.driver.info(ringing);
                        return reply->got.load() || !c || c->state != call::CallState::ringing;
                    },
                    std::chrono::hours(1));
                std::string text = reply->got ? reply->text : std::string();
                accept = !text.empty() && (text[0] == 'y' || text[0] == 'Y');
            }
            const CallInfo* c = ctx.driver.info(ringing);
            if (c && c->state == call::CallState::ringing) {
                if (accept)
                    ctx.driver.answer(ringing);
                else
                    ctx.driver.reject(ringing);
            }
            std::string ended = co_await follow_call(ctx, ringing, common_steps(ctx, f.media));
            if (const CallInfo* info = ctx.driver.info(ended)) {
                ctx.console.summary(*info);
                code = exit_code(*info);
            }
            if (!ctx.console.fatal().empty()) co_return exit_signalling_failed;
        }
        co_return code;
    });
}

}  // namespace mxvoip::cli
