#include "pushers.hpp"

#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/url/parse.hpp>

#include <algorithm>
#include <chrono>
#include <set>

#include "json_out.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/json.hpp"

namespace mxvoip::server {

namespace json = boost::json;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using asio::use_awaitable;
using proto::MatrixError;
namespace errcode = proto::errcode;

namespace {

constexpr std::size_t kMaxPushkeyBytes = 512;
constexpr std::size_t kMaxAppIdChars = 64;
constexpr auto kRequestTimeout = std::chrono::seconds(10);

// Addresses a push gateway may not have unless push.allow_private_addresses: this host, its
// networks, and nothing routable.
bool is_private(const asio::ip::address& a) {
    if (a.is_unspecified() || a.is_loopback() || a.is_multicast()) return true;
    if (a.is_v6()) {
        auto v6 = a.to_v6();
        if (v6.is_v4_mapped())
            return is_private(asio::ip::make_address_v4(asio::ip::v4_mapped, v6));
        auto b = v6.to_bytes();
        return v6.is_link_local() || (b[0] & 0xfe) == 0xfc;  // fe80::/10, fc00::/7
    }
    auto v = a.to_v4().to_uint();
    auto in = [v](std::uint32_t net, int bits) {
        return (v >> (32 - bits)) == (net >> (32 - bits));
    };
    return in(0x0a000000, 8) || in(0xac100000, 12) || in(0xc0a80000, 16) ||  // RFC 1918
           in(0xa9fe0000, 16) || in(0x64400000, 10) || in(0x00000000, 8);    // link-local, CGNAT
}

template <class Stream>
asio::awaitable<beast::error_code> exchange(Stream& stream, http::request<http::string_body>& req,
                                            http::response<http::string_body>& res) {
    auto [werr, wn] = co_await http::async_write(stream, req, asio::as_tuple(use_awaitable));
    if (werr) co_return werr;
    beast::flat_buffer buf;
    auto [rerr, rn] = co_await http::async_read(stream, buf, res, asio::as_tuple(use_awaitable));
    co_return rerr;
}

// The key of a "pushkey" change: another process gave an app's pushkey to one user, and
// whoever else had it lost it.
std::string pushkey_change(const store::PusherRecord& p) {
    return json::serialize(json::array{json::string(p.app_id), json::string(p.pushkey)});
}

std::string str_or_empty(const json::object& o, std::string_view key) {
    const auto* v = o.if_contains(key);
    return v && v->is_string() ? std::string(v->get_string()) : std::string();
}

}  // namespace

std::optional<Pushers::Pusher> Pushers::from_record(const store::PusherRecord& p) {
    json::error_code ec;
    auto shown = json::parse(p.json, ec);
    if (ec || !shown.is_object()) return std::nullopt;
    Pusher pusher;
    pusher.device_id = p.device_id;
    pusher.shown = shown.get_object();
    const auto* data = pusher.shown.if_contains("data");
    if (!data || !data->is_object()) return std::nullopt;
    pusher.url = str_or_empty(data->get_object(), "url");
    pusher.event_id_only = str_or_empty(data->get_object(), "format") == "event_id_only";
    pusher.created_ts = p.created_ts;
    return pusher;
}

Pushers::Pushers(Core& core, Accounts& accounts, Notifications& notifications)
    : core_(core),
      accounts_(accounts),
      notifications_(notifications),
      pushers_(core.config().caches.pushers) {
    notifications_.on_audience(
        [this](const std::vector<std::string>& users) { preload_or_skip_locked(users); });
    notifications_.on_notify(
        [this](const std::string& user, const Room& room, const EventPtr& ev,
               const push::Outcome& outcome) { notify_locked(user, room, ev, outcome); });
    core_.on_visible([this](StreamId visible) { visible_locked(visible); });
    // Another process set or removed a pusher of the user, or signed a device of theirs out
    // (its pushers went with it).
    for (const char* kind : {"pusher", "account"})
        core_.on_change(kind, [this](const store::ChangeRecord& c, const store::EventRecord*,
                                     std::vector<std::string>&) { reload_locked(c.key); });
    // Another process gave a pushkey to one user: whoever else held it here is read again.
    core_.on_change("pushkey", [this](const store::ChangeRecord& c, const store::EventRecord*,
                                      std::vector<std::string>&) {
        json::error_code ec;
        auto v = json::parse(c.key, ec);
        if (ec || !v.is_array() || v.get_array().size() != 2 || !v.get_array()[0].is_string() ||
            !v.get_array()[1].is_string())
            return;
        for (const auto& k : holders_locked(std::string(v.get_array()[0].get_string()),
                                            std::string(v.get_array()[1].get_string())))
            reload_locked(std::get<0>(k));
    });
    // The pushers a device set go with it, in its sign-out's transaction: that holds the
    // user's lock, as a pusher's decision does, which sets none for a device signed out.
    accounts_.on_device_removed([this](const std::string& user, const std::string& device) {
        Accounts::DeviceRemoval r;
        auto gone = std::make_shared<std::vector<Key>>();  // what the transaction deleted
        r.write = [user, device, gone](StreamId, store::Txn& txn) {
            gone->clear();  // a transaction made again decides again
            for (const auto& p : txn.pushers(user))
                if (p.device_id == device) {
                    txn.write(store::DeletePusher{user, p.app_id, p.pushkey});
                    gone->emplace_back(user, p.app_id, p.pushkey);
                }
        };
        r.applied = [this, gone](StreamId) {
            for (const auto& key : *gone) removed_locked(key);
            return std::vector<std::string>{};
        };
        return r;
    });
}

Pushers::~Pushers() = default;

const Pushers::UserPushers& Pushers::pushers_locked(const std::string& user) {
    if (const UserPushers* held = pushers_.get(user)) return *held;
    // Read under the lock: a change of them applies under it too, so none overtakes the read.
    auto rows = core_.store().pushers_of({user});
    UserPushers read;
    for (const auto& p : rows.front())
        if (auto pusher = from_record(p)) read[{p.app_id, p.pushkey}] = std::move(*pusher);
    return pushers_.put(user, std::move(read));
}

void Pushers::preload_or_skip_locked(const std::vector<std::string>& users) {
    std::vector<std::string> missing;
    for (const auto& user : users)
        if (!pushers_.get(user)) missing.push_back(user);
    if (missing.empty()) return;
    std::vector<std::vector<store::PusherRecord>> rows;
    try {
        rows = core_.store().pushers_of(missing);
    } catch (const std::exception& e) {
        spdlog::warn("push: the pushers of {} users not read ({}): they are not pushed this event",
                     missing.size(), e.what());
        return;
    }
    for (std::size_t i = 0; i < missing.size(); ++i) {
        UserPushers read;
        for (const auto& p : rows[i])
            if (auto pusher = from_record(p)) read[{p.app_id, p.pushkey}] = std::move(*pusher);
        // Held for the event's notifications, as the least recently used go (never this one).
        pushers_.put(missing[i], std::move(read));
    }
    spdlog::debug("push: the pushers of {} users read from the database ({} held)", missing.size(),
                  pushers_.size());
}

void Pushers::reload_locked(const std::string& user) {
    pushers_.erase(user);
    // What this process queues for the user is sent only to the pushers still stored.
    std::vector<Key> mine;
    for (auto it = queues_.lower_bound({user, "", ""});
         it != queues_.end() && std::get<0>(it->first) == user; ++it)
        mine.push_back(it->first);
    for (const auto& p : pending_)
        if (std::get<0>(p.key) == user) mine.push_back(p.key);
    if (mine.empty()) return;
    const UserPushers* now = nullptr;
    try {
        now = &pushers_locked(user);
    } catch (const std::exception& e) {
        spdlog::warn("push: the pushers of {} could not be read again: {}", user, e.what());
        return;
    }
    for (const auto& key : mine) {
        auto p = now->find({std::get<1>(key), std::get<2>(key)});
        if (p == now->end()) {
            removed_locked(key);
            continue;
        }
        // Still there, perhaps at a new URL.
        if (auto q = queues_.find(key); q != queues_.end()) q->second.url = p->second.url;
        for (auto& pending : pending_)
            if (pending.key == key) pending.url = p->second.url;
    }
}

ssl::context& Pushers::tls() {
    if (!tls_) {
        tls_ = std::make_unique<ssl::context>(ssl::context::tls_client);
        SSL_CTX_set_min_proto_version(tls_->native_handle(), TLS1_2_VERSION);
        tls_->set_verify_mode(ssl::verify_peer);
        boost::system::error_code ec;
        tls_->set_default_verify_paths(ec);
        if (ec) spdlog::warn("push: cannot load the system's CA certificates: {}", ec.message());
    }
    return *tls_;
}

void Pushers::start(asio::any_io_executor ex) {
    std::lock_guard lock(core_.mu);
    strand_.emplace(asio::make_strand(std::move(ex)));
    for (auto& [key, queue] : queues_)
        if (!queue.bodies.empty() && !queue.running) {
            queue.running = true;
            asio::co_spawn(*strand_, deliver(key), asio::detached);
        }
}

void Pushers::stop() {
    std::lock_guard lock(core_.mu);
    stopped_ = true;
    if (!strand_) return;
    asio::post(*strand_, [this] {
        std::lock_guard lock(core_.mu);
        for (auto& [_, queue] : queues_) {
            if (queue.timer) queue.timer->cancel();
            if (queue.cancel) queue.cancel();
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Endpoints

asio::awaitable<Response> Pushers::get_pushers(Request& req) {
    const std::string& user = req.session->user_id;
    json::array list;
    {
        std::lock_guard lock(core_.mu);
        // Oldest first, as the store keeps them.
        std::vector<const Pusher*> mine;
        for (const auto& [_, p] : pushers_locked(user)) mine.push_back(&p);
        std::stable_sort(mine.begin(), mine.end(), [](const Pusher* a, const Pusher* b) {
            return a->created_ts < b->created_ts;
        });
        for (const Pusher* p : mine) list.push_back(p->shown);
    }
    co_return json_response(json::object{{"pushers", std::move(list)}});
}

asio::awaitable<Response> Pushers::set_pusher(Request& req) {
    const auto& body = req.json;
    const std::string& user = req.session->user_id;
    std::string pushkey(proto::req_string(body, "pushkey"));
    std::string app_id(proto::req_string(body, "app_id"));
    if (pushkey.empty() || pushkey.size() > kMaxPushkeyBytes)
        throw MatrixError(400, errcode::invalid_param, "pushkey must be 1 to 512 bytes");
    if (app_id.empty() || app_id.size() > kMaxAppIdChars)
        throw MatrixError(400, errcode::invalid_param, "app_id must be 1 to 64 characters");
    const auto* kind = body.if_contains("kind");
    if (!kind) throw MatrixError(400, errcode::missing_param, "Missing parameters: kind");
    const Key key{user, app_id, pushkey};
    const bool shared = core_.shared();
    Decision d;
    d.users = {user};
    if (kind->is_null()) {
        d.streams = shared ? 1 : 0;
        d.decide = [key](store::Txn& txn, StreamId position) {
            const auto& [user, app_id, pushkey] = key;
            txn.write(store::DeletePusher{user, app_id, pushkey});
            if (position) txn.write(store::PutChange{{position, "pusher", user}});
        };
        d.applied = [this, key](StreamId) {
            removed_locked(key);
            return std::vector<std::string>{};
        };
    } else {
        if (!kind->is_string())
            throw MatrixError(400, errcode::bad_json, "kind must be a string or null");
        if (kind->get_string() != "http")
            throw MatrixError(400, errcode::invalid_param,
                              "Only http pushers are supported (kind: http)");
        std::vector<std::string> missing;
        for (const char* field : {"app_display_name", "device_display_name", "lang", "data"})
            if (!body.contains(field)) missing.emplace_back(field);
        if (!missing.empty()) {
            std::string list;
            for (const auto& m : missing) list += (list.empty() ? "" : ", ") + m;
            throw MatrixError(400, errcode::missing_param, "Missing parameters: " + list);
        }
        const auto* data = proto::opt_object(body, "data");
        std::string url(proto::req_string(*data, "url"));
        auto parsed = boost::urls::parse_uri(url);
        if (!parsed || (parsed->scheme() != "https" && parsed->scheme() != "http") ||
            parsed->host().empty() || parsed->path() != "/_matrix/push/v1/notify" ||
            parsed->has_userinfo() || parsed->has_fragment())
            throw MatrixError(400, errcode::invalid_param,
                              "data.url must be an http(s) URL with the path "
                              "/_matrix/push/v1/notify");
        std::string format;
        if (const auto* f = data->if_contains("format")) {
            if (!f->is_string() || f->get_string() != "event_id_only")
                throw MatrixError(400, errcode::invalid_param,
                                  "data.format must be event_id_only when given");
            format = "event_id_only";
        }
        json::object shown{{"pushkey", pushkey},
                           {"kind", "http"},
                           {"app_id", app_id},
                           {"app_display_name", proto::req_string(body, "app_display_name")},
                           {"device_display_name", proto::req_string(body, "device_display_name")},
                           {"lang", proto::req_string(body, "lang")},
                           {"data", *data}};
        if (auto tag = proto::opt_string(body, "profile_tag")) shown["profile_tag"] = *tag;
        // Without append, the pushkey moves to this user: the same app and pushkey of anyone
        // else is removed (a phone signed in to another account).
        const bool append = proto::opt_bool(body, "append").value_or(false);
        Pusher pusher;
        pusher.device_id = req.session->device_id;
        pusher.shown = shown;
        pusher.url = url;
        pusher.event_id_only = format == "event_id_only";
        pusher.created_ts = core_.now_ms();
        store::PusherRecord record{
            user, app_id, pushkey, pusher.device_id, json::serialize(shown), pusher.created_ts};
        // Positions for the changes the other processes read: the user's pushers, and
        // (without append) whoever else had the pushkey.
        d.streams = shared ? (append ? 1 : 2) : 0;
        d.decide = [record, append, limit = core_.config().limits.pushers_per_user](
                       store::Txn& txn, StreamId first) {
            // Under the user's lock: the device is signed in and the count holds until the
            // commit.
            if (!txn.device_exists(record.user_id, record.device_id))
                throw MatrixError(401, errcode::unknown_token, "This device has signed out");
            auto mine = txn.pushers(record.user_id);
            const bool known = std::any_of(mine.begin(), mine.end(), [&](const auto& p) {
                return p.app_id == record.app_id && p.pushkey == record.pushkey;
            });
            if (!known && mine.size() >= limit)
                throw MatrixError(403, errcode::forbidden,
                                  "You have " + std::to_string(mine.size()) +
                                      " pushers, the most the server keeps "
                                      "(limits.pushers_per_user)");
            if (!append) txn.write(store::DeletePusher{"", record.app_id, record.pushkey});
            txn.write(store::PutPusher{record});
            if (!first) return;
            txn.write(store::PutChange{{first, "pusher", record.user_id}});
            if (!append)
                txn.write(store::PutChange{{first + 1, "pushkey", pushkey_change(record)}});
        };
        d.applied = [this, key, append, pusher = std::move(pusher)](StreamId) {
            if (!append)
                for (const auto& k : holders_locked(std::get<1>(key), std::get<2>(key)))
                    if (k != key) removed_locked(k);
            // Not held: read with it when next needed.
            if (UserPushers* held = pushers_.get(std::get<0>(key)))
                (*held)[{std::get<1>(key), std::get<2>(key)}] = pusher;
            if (auto q = queues_.find(key); q != queues_.end()) q->second.url = pusher.url;
            for (auto& p : pending_)
                if (p.key == key) p.url = pusher.url;
            return std::vector<std::string>{};
        };
    }
    co_await core_.transact(std::move(d));
    if (!kind->is_null())
        spdlog::info("push: {} set a pusher for app {} on device {}", user, app_id,
                     req.session->device_id);
    co_return Response{};
}

std::vector<Pushers::Key> Pushers::holders_locked(const std::string& app_id,
                                                  const std::string& pushkey) {
    std::set<Key> out;
    const AppKey app_key{app_id, pushkey};
    pushers_.for_each([&](const std::string& user, const UserPushers& mine) {
        if (mine.count(app_key)) out.emplace(user, app_id, pushkey);
    });
    for (const auto& [k, _] : queues_)
        if (std::get<1>(k) == app_id && std::get<2>(k) == pushkey) out.insert(k);
    for (const auto& p : pending_)
        if (std::get<1>(p.key) == app_id && std::get<2>(p.key) == pushkey) out.insert(p.key);
    return {out.begin(), out.end()};
}

void Pushers::removed_locked(const Key& key) {
    if (UserPushers* held = pushers_.get(std::get<0>(key)))
        held->erase({std::get<1>(key), std::get<2>(key)});
    drop_queue_locked(key);
}

void Pushers::drop_queue_locked(const Key& key) {
    std::erase_if(pending_, [&](const Pending& p) { return p.key == key; });
    // A delivery loop that owns the queue removes it when it sees the pusher gone.
    if (auto q = queues_.find(key); q != queues_.end()) {
        if (q->second.running)
            q->second.bodies.clear();
        else
            queues_.erase(q);
    }
}

// ---------------------------------------------------------------------------------------------
// Delivery

void Pushers::notify_locked(const std::string& user, const Room& room, const EventPtr& ev,
                            const push::Outcome& outcome) {
    // The process that committed the event sends its pushes: each once, whichever process
    // the user or the pusher's device is on.
    if (core_.feeding_locked()) return;
    // Read with the event's audience (preload_or_skip_locked), unless that read failed (logged)
    // or the cache is smaller than the audience: then read alone.
    const UserPushers* mine = pushers_.get(user);
    if (!mine) {
        try {
            mine = &pushers_locked(user);
        } catch (const std::exception& e) {
            spdlog::warn("push: the pushers of {} not read ({}): not pushed this event", user,
                         e.what());
            return;
        }
    }
    if (mine->empty()) return;
    json::object n{{"event_id", ev->event_id}, {"room_id", ev->room_id}};
    bool high = outcome.highlight || outcome.sound || ev->type == "m.room.encrypted";
    n["prio"] = high ? "high" : "low";
    n["counts"] = json::object{{"unread", notifications_.unread_total_locked(user)}};
    json::object full = n;
    full["type"] = ev->type;
    full["sender"] = ev->sender;
    full["content"] = json::parse(ev->content());
    if (auto member = room.state_event("m.room.member", ev->sender)) {
        auto content = json::parse(member->content());
        if (auto name = str_or_empty(content.as_object(), "displayname"); !name.empty())
            full["sender_display_name"] = name;
    }
    if (auto name_ev = room.state_event("m.room.name", "")) {
        auto content = json::parse(name_ev->content());
        if (auto name = str_or_empty(content.as_object(), "name"); !name.empty())
            full["room_name"] = name;
    }
    if (ev->type == "m.room.member" && ev->state_key) {
        full["user_is_target"] = *ev->state_key == user;
        full["membership"] = room.membership_of(*ev->state_key);
    }
    json::object tweaks;
    if (outcome.sound) tweaks["sound"] = *outcome.sound;
    if (outcome.highlight) tweaks["highlight"] = true;
    for (const auto& [app_key, p] : *mine) {
        json::object data = p.shown.at("data").as_object();
        data.erase("url");
        json::object device{{"app_id", app_key.first},
                            {"pushkey", app_key.second},
                            {"pushkey_ts", p.created_ts / 1000},
                            {"data", std::move(data)},
                            {"tweaks", tweaks}};
        json::object notification = p.event_id_only ? n : full;
        notification["devices"] = json::array{std::move(device)};
        pending_.push_back({ev->stream,
                            {user, app_key.first, app_key.second},
                            p.url,
                            json::serialize(json::object{{"notification", notification}})});
    }
}

void Pushers::visible_locked(StreamId visible) {
    // A pusher removed meanwhile took its notifications from pending_ (drop_queue_locked).
    while (!pending_.empty() && pending_.front().stream <= visible) {
        Pending p = std::move(pending_.front());
        pending_.pop_front();
        const Key& key = p.key;
        std::string& body = p.body;
        Queue& queue = queues_[key];
        queue.url = std::move(p.url);
        // Full: the oldest waiting goes, never the one being delivered.
        if (queue.bodies.size() >= core_.config().push.queue_per_pusher) {
            queue.bodies.erase(queue.bodies.begin() + (queue.running ? 1 : 0));
            if (queue.dropped++ == 0)
                spdlog::warn(
                    "push: the queue for a pusher of {} is full ({}); dropping the "
                    "oldest notifications",
                    std::get<0>(key), core_.config().push.queue_per_pusher);
        }
        queue.bodies.push_back(std::move(body));
        if (!queue.running && strand_ && !stopped_) {
            queue.running = true;
            asio::co_spawn(*strand_, deliver(key), asio::detached);
        }
    }
}

asio::awaitable<void> Pushers::deliver(Key key) {
    const std::string& user = std::get<0>(key);
    std::int64_t backoff = 0;
    for (;;) {
        std::string body, url;
        Queue* queue = nullptr;
        {
            std::lock_guard lock(core_.mu);
            // A pusher removed takes its queue's bodies (drop_queue_locked).
            auto q = queues_.find(key);
            if (q == queues_.end()) co_return;
            if (stopped_ || q->second.bodies.empty()) {
                if (q->second.bodies.empty())
                    queues_.erase(q);
                else
                    q->second.running = false;
                co_return;
            }
            queue = &q->second;
            body = queue->bodies.front();
            url = queue->url;
        }
        Outcome out = co_await post(url, body, std::get<2>(key), *queue);
        bool wait = false;
        {
            std::lock_guard lock(core_.mu);
            if (out.rejected) {
                spdlog::info(
                    "push: the gateway rejected the pushkey of a pusher of {} (app {}); "
                    "the pusher is removed",
                    user, std::get<1>(key));
                // Nothing more is sent to it meanwhile; the pusher goes once that committed.
                drop_queue_locked(key);
                {
                    Decision d = core_.decision_of({store::DeletePusher{
                        std::get<0>(key), std::get<1>(key), std::get<2>(key)}});
                    d.applied = [this, key](StreamId) {
                        removed_locked(key);
                        return std::vector<std::string>{};
                    };
                    core_.transact_locked(std::move(d));
                }
                continue;
            }
            if (out.delivered || !out.retry) {
                if (!out.delivered)
                    spdlog::warn("push: a notification for {} is dropped: {}", user, out.error);
                if (!queue->bodies.empty()) queue->bodies.pop_front();
                if (backoff)
                    spdlog::info("push: the gateway of a pusher of {} takes notifications again",
                                 user);
                if (queue->dropped)
                    spdlog::warn(
                        "push: {} notifications for {} were dropped while the gateway "
                        "was unreachable",
                        queue->dropped, user);
                queue->dropped = 0;
                backoff = 0;
            } else {
                const auto& cfg = core_.config().push;
                backoff = backoff ? std::min(backoff * 2, cfg.retry_max_ms) : cfg.retry_initial_ms;
                spdlog::warn(
                    "push: delivery to the gateway of a pusher of {} failed ({}); "
                    "retrying in {} ms",
                    user, out.error, backoff);
                wait = true;
                queue->timer = std::make_shared<asio::steady_timer>(*strand_);
                queue->timer->expires_after(std::chrono::milliseconds(backoff));
            }
        }
        if (wait) {
            auto timer = queue->timer;
            auto [ec] = co_await timer->async_wait(asio::as_tuple(use_awaitable));
            (void)ec;  // cancelled at shutdown: the loop sees stopped_
        }
    }
}

asio::awaitable<Pushers::Outcome> Pushers::post(const std::string& url_text,
                                                const std::string& body, const std::string& pushkey,
                                                Queue& queue) {
    auto url = boost::urls::parse_uri(url_text);
    const bool https = url->scheme() == "https";
    std::string host = url->host_address();  // an IPv6 literal without its brackets
    std::string port = url->has_port() ? std::string(url->port()) : (https ? "443" : "80");
    std::string target(url->encoded_path().data(), url->encoded_path().size());
    if (url->has_query())
        target += "?" + std::string(url->encoded_query().data(), url->encoded_query().size());

    tcp::resolver resolver(*strand_);
    auto [rerr, results] =
        co_await resolver.async_resolve(host, port, asio::as_tuple(use_awaitable));
    if (rerr)
        co_return Outcome{false, true, false, "cannot resolve " + host + ": " + rerr.message()};
    std::vector<tcp::endpoint> endpoints;
    for (const auto& r : results)
        if (core_.config().push.allow_private_addresses || !is_private(r.endpoint().address()))
            endpoints.push_back(r.endpoint());
    if (endpoints.empty())
        co_return Outcome{false, false, false,
                          host + " has only private addresses (push.allow_private_addresses)"};

    beast::tcp_stream stream(*strand_);
    stream.expires_after(kRequestTimeout);
    queue.cancel = [&stream] { stream.cancel(); };
    auto [cerr, ep] = co_await stream.async_connect(endpoints, asio::as_tuple(use_awaitable));
    if (cerr) {
        queue.cancel = nullptr;
        co_return Outcome{false, true, false, "cannot connect to " + host + ": " + cerr.message()};
    }
    http::request<http::string_body> req{http::verb::post, target, 11};
    std::string authority(url->encoded_host_and_port().data(), url->encoded_host_and_port().size());
    req.set(http::field::host, authority);
    req.set(http::field::user_agent, "mxvoip-server");
    req.set(http::field::content_type, "application/json");
    req.body() = body;
    req.prepare_payload();
    http::response<http::string_body> res;
    beast::error_code err;
    if (https) {
        beast::ssl_stream<beast::tcp_stream> secure(std::move(stream), tls());
        queue.cancel = [&secure] { beast::get_lowest_layer(secure).cancel(); };
        SSL* ssl = secure.native_handle();
        SSL_set_tlsext_host_name(ssl, host.c_str());
        SSL_set1_host(ssl, host.c_str());
        auto [herr] = co_await secure.async_handshake(ssl::stream_base::client,
                                                      asio::as_tuple(use_awaitable));
        err = herr;
        if (!err) err = co_await exchange(secure, req, res);
    } else {
        err = co_await exchange(stream, req, res);
    }
    queue.cancel = nullptr;
    if (err) co_return Outcome{false, true, false, err.message()};
    unsigned status = res.result_int();
    if (status == 429 || status >= 500)
        co_return Outcome{false, true, false, "the gateway answered " + std::to_string(status)};
    if (status < 200 || status >= 300)
        co_return Outcome{false, false, false, "the gateway answered " + std::to_string(status)};
    json::error_code ec;
    auto answer = json::parse(res.body(), ec);
    if (!ec && answer.is_object())
        if (const auto* rejected = answer.get_object().if_contains("rejected");
            rejected && rejected->is_array())
            for (const auto& k : rejected->get_array())
                if (k.is_string() && k.get_string() == pushkey)
                    co_return Outcome{false, false, true, {}};
    co_return Outcome{true, false, false, {}};
}

}  // namespace mxvoip::server
