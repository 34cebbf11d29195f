#include "key_backup.hpp"

#include <spdlog/spdlog.h>

#include <tuple>

#include "json_out.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/json.hpp"

namespace mxvoip::server {

namespace json = boost::json;
using proto::MatrixError;
namespace errcode = proto::errcode;

namespace {

constexpr std::size_t kMaxAuthData = 65536;

// What a /room_keys/keys request is about: ?version= (required), and the path captures
// after /room_keys/keys, the room and the session, either possibly absent.
struct Target {
    std::string version;
    std::string room;
    std::string session;
};

Target target_of(const Request& req) {
    const std::string* version = req.query_param("version");
    if (!version) throw MatrixError(400, errcode::missing_param, "Missing 'version'");
    return {*version, req.params.size() > 0 ? req.params[0] : std::string(),
            req.params.size() > 1 ? req.params[1] : std::string()};
}

struct Upload {
    std::string room;
    std::string session;
    bool is_verified = false;
    std::int64_t first_message_index = 0;
    std::int64_t forwarded_count = 0;
    std::string json;
};

Upload parse_key(const std::string& room, const std::string& session, const json::value& v) {
    if (!v.is_object())
        throw MatrixError(400, errcode::bad_json, "Key backup data must be an object");
    const auto& o = v.get_object();
    auto fmi = proto::opt_int(o, "first_message_index");
    auto fc = proto::opt_int(o, "forwarded_count");
    auto verified = proto::opt_bool(o, "is_verified");
    if (!fmi || !fc || !verified || !proto::opt_object(o, "session_data"))
        throw MatrixError(400, errcode::missing_param,
                          "Key backup data needs first_message_index, forwarded_count, "
                          "is_verified and session_data");
    if (room.empty() || session.empty())
        throw MatrixError(400, errcode::invalid_param, "Room and session ids must not be empty");
    return Upload{room, session, *verified, *fmi, *fc, json::serialize(o)};
}

// The spec's rule for a key the backup already has: a verified key beats an unverified one,
// then the lower first message index, then the lower forwarded count.
bool better(const Upload& n, bool verified, std::int64_t fmi, std::int64_t fc) {
    if (n.is_verified != verified) return n.is_verified;
    if (n.first_message_index != fmi) return n.first_message_index < fmi;
    return n.forwarded_count < fc;
}

}  // namespace

void KeyBackup::load(store::Snapshot& snap) {
    std::lock_guard lock(core_.mu);
    for (auto& v : snap.backup_versions)
        users_[v.user_id][v.version] =
            Version{std::move(v.algorithm), std::move(v.auth_data), v.etag, v.deleted, {}};
    for (auto& k : snap.backup_keys) {
        auto u = users_.find(k.user_id);
        if (u == users_.end()) continue;
        auto v = u->second.find(k.version);
        if (v == u->second.end() || v->second.deleted) continue;
        v->second.keys[{k.room_id, k.session_id}] =
            Meta{k.is_verified, k.first_message_index, k.forwarded_count};
    }
}

std::int64_t KeyBackup::latest_locked(const std::string& user) const {
    auto u = users_.find(user);
    if (u == users_.end()) return 0;
    for (auto it = u->second.rbegin(); it != u->second.rend(); ++it)
        if (!it->second.deleted) return it->first;
    return 0;
}

KeyBackup::Version& KeyBackup::version_locked(const std::string& user, const std::string& text,
                                              std::int64_t& number) {
    number = 0;
    try {
        std::size_t used = 0;
        number = std::stoll(text, &used);
        if (used != text.size()) number = 0;
    } catch (...) {
    }
    auto u = users_.find(user);
    if (number > 0 && u != users_.end())
        if (auto v = u->second.find(number); v != u->second.end() && !v->second.deleted)
            return v->second;
    throw MatrixError(404, errcode::not_found, "Unknown backup version '" + text + "'");
}

store::BackupVersionRecord KeyBackup::record(const std::string& user, std::int64_t number,
                                             const Version& v) const {
    return {user, number, v.algorithm, v.auth_data, v.etag, v.deleted};
}

std::string KeyBackup::counts(const Version& v) {
    return "{\"count\":" + std::to_string(v.keys.size()) + ",\"etag\":\"" + std::to_string(v.etag) +
           "\"}";
}

asio::awaitable<Response> KeyBackup::create_version(Request& req) {
    const std::string& user = req.session->user_id;
    std::string algorithm(proto::req_string(req.json, "algorithm"));
    const auto* auth_data = proto::opt_object(req.json, "auth_data");
    if (!auth_data) throw MatrixError(400, errcode::missing_param, "Missing 'auth_data'");
    std::string auth_text = json::serialize(*auth_data);
    if (auth_text.size() > kMaxAuthData)
        throw MatrixError(413, errcode::too_large, "auth_data is larger than 65536 bytes");
    std::int64_t number = 0;
    std::uint64_t ticket = 0;
    {
        std::lock_guard lock(core_.mu);
        auto& versions = users_[user];
        // Numbers are never reused, so a client holding an old version learns it is gone.
        number = versions.empty() ? 1 : versions.rbegin()->first + 1;
        Version& v = versions[number];
        v.algorithm = std::move(algorithm);
        v.auth_data = std::move(auth_text);
        ticket =
            core_.submit_locked(PendingWrite::of(store::PutBackupVersion{record(user, number, v)}));
    }
    co_await core_.durable(ticket);
    spdlog::info("{} created key backup version {}", user, number);
    co_return json_response(json::object{{"version", std::to_string(number)}});
}

asio::awaitable<Response> KeyBackup::get_version(Request& req) {
    const std::string& user = req.session->user_id;
    std::lock_guard lock(core_.mu);
    std::int64_t number = 0;
    std::string text;
    if (req.params.empty()) {
        number = latest_locked(user);
        if (!number) throw MatrixError(404, errcode::not_found, "No current backup version");
        text = std::to_string(number);
    } else {
        text = req.params[0];
    }
    const Version& v = version_locked(user, text, number);
    std::string out = "{\"algorithm\":" + quoted(v.algorithm) + ",\"auth_data\":" + v.auth_data +
                      ",\"count\":" + std::to_string(v.keys.size()) + ",\"etag\":\"" +
                      std::to_string(v.etag) + "\",\"version\":\"" + std::to_string(number) + "\"}";
    co_return Response{200, std::move(out), {}};
}

asio::awaitable<Response> KeyBackup::put_version(Request& req) {
    const std::string& user = req.session->user_id;
    const std::string& path_version = req.params[0];
    std::string algorithm(proto::req_string(req.json, "algorithm"));
    const auto* auth_data = proto::opt_object(req.json, "auth_data");
    if (!auth_data) throw MatrixError(400, errcode::missing_param, "Missing 'auth_data'");
    if (auto body_version = proto::opt_string(req.json, "version");
        body_version && *body_version != path_version)
        throw MatrixError(400, errcode::invalid_param,
                          "The version in the body is not the one in the path");
    std::string auth_text = json::serialize(*auth_data);
    if (auth_text.size() > kMaxAuthData)
        throw MatrixError(413, errcode::too_large, "auth_data is larger than 65536 bytes");
    std::uint64_t ticket = 0;
    {
        std::lock_guard lock(core_.mu);
        std::int64_t number = 0;
        Version& v = version_locked(user, path_version, number);
        if (algorithm != v.algorithm)
            throw MatrixError(400, errcode::invalid_param,
                              "The algorithm of a backup version cannot change");
        v.auth_data = std::move(auth_text);
        ticket =
            core_.submit_locked(PendingWrite::of(store::PutBackupVersion{record(user, number, v)}));
    }
    co_await core_.durable(ticket);
    co_return Response{};
}

asio::awaitable<Response> KeyBackup::delete_version(Request& req) {
    const std::string& user = req.session->user_id;
    PendingWrite w;
    {
        std::lock_guard lock(core_.mu);
        std::int64_t number = 0;
        Version& v = version_locked(user, req.params[0], number);
        v.deleted = true;
        v.keys.clear();
        w.mutations.push_back(store::PutBackupVersion{record(user, number, v)});
        w.mutations.push_back(store::DeleteBackupKeys{user, number, "", ""});
    }
    co_await core_.commit(std::move(w));
    spdlog::info("{} deleted key backup version {}", user, req.params[0]);
    co_return Response{};
}

asio::awaitable<Response> KeyBackup::put_keys(Request& req) {
    const std::string& user = req.session->user_id;
    const Target t = target_of(req);
    const std::string& room = t.room;
    const std::string& session = t.session;
    // Everything is checked before anything is kept: a request is taken whole.
    std::vector<Upload> uploads;
    if (!session.empty()) {
        uploads.push_back(parse_key(room, session, req.json));
    } else {
        auto sessions_of = [&](const std::string& room_id, const json::object& o) {
            const auto* sessions = proto::opt_object(o, "sessions");
            if (!sessions) throw MatrixError(400, errcode::missing_param, "Missing 'sessions'");
            for (const auto& [id, data] : *sessions)
                uploads.push_back(parse_key(room_id, std::string(id), data));
        };
        if (!room.empty()) {
            sessions_of(room, req.json);
        } else {
            const auto* rooms = proto::opt_object(req.json, "rooms");
            if (!rooms) throw MatrixError(400, errcode::missing_param, "Missing 'rooms'");
            for (const auto& [id, r] : *rooms) {
                if (!r.is_object())
                    throw MatrixError(400, errcode::bad_json, "A room is an object");
                sessions_of(std::string(id), r.get_object());
            }
        }
    }
    std::string out;
    std::uint64_t ticket = 0;
    {
        std::lock_guard lock(core_.mu);
        std::int64_t number = 0;
        Version& v = version_locked(user, t.version, number);
        if (std::int64_t latest = latest_locked(user); latest != number) {
            // Only the current backup takes keys: a client on an old one must find the new.
            json::object body{{"errcode", "M_WRONG_ROOM_KEYS_VERSION"},
                              {"error", "That is not the current backup version"},
                              {"current_version", std::to_string(latest)}};
            co_return json_response(body, 403);
        }
        PendingWrite w;
        for (auto& u : uploads) {
            auto [it, fresh] = v.keys.try_emplace({u.room, u.session});
            Meta& m = it->second;
            if (!fresh && !better(u, m.is_verified, m.first_message_index, m.forwarded_count))
                continue;
            m = Meta{u.is_verified, u.first_message_index, u.forwarded_count};
            w.mutations.push_back(
                store::PutBackupKey{{user, number, u.room, u.session, u.is_verified,
                                     u.first_message_index, u.forwarded_count, std::move(u.json)}});
        }
        if (!w.mutations.empty()) {
            ++v.etag;
            w.mutations.push_back(store::PutBackupVersion{record(user, number, v)});
            ticket = core_.submit_locked(std::move(w));
        }
        out = counts(v);
    }
    if (ticket) co_await core_.durable(ticket);
    co_return Response{200, std::move(out), {}};
}

asio::awaitable<Response> KeyBackup::get_keys(Request& req) {
    const std::string& user = req.session->user_id;
    const Target t = target_of(req);
    const std::string& room = t.room;
    const std::string& session = t.session;
    std::int64_t number = 0;
    {
        std::lock_guard lock(core_.mu);
        version_locked(user, t.version, number);
    }
    auto keys = core_.store().backup_keys(user, number, room, session);
    if (!session.empty()) {
        if (keys.empty()) throw MatrixError(404, errcode::not_found, "No key for that session");
        co_return Response{200, std::move(keys.front().json), {}};
    }
    // Sorted by room, then session: each room's sessions are contiguous.
    std::string out;
    Comma room_comma;
    for (std::size_t i = 0; i < keys.size();) {
        const std::string& r = keys[i].room_id;
        if (room.empty()) {
            room_comma(out);
            append_quoted(out, r);
            out += ":";
        }
        out += "{\"sessions\":{";
        Comma session_comma;
        for (; i < keys.size() && keys[i].room_id == r; ++i) {
            session_comma(out);
            append_quoted(out, keys[i].session_id);
            out += ':' + keys[i].json;
        }
        out += "}}";
    }
    if (room.empty())
        out = "{\"rooms\":{" + out + "}}";
    else if (out.empty())
        out = "{\"sessions\":{}}";
    co_return Response{200, std::move(out), {}};
}

asio::awaitable<Response> KeyBackup::delete_keys(Request& req) {
    const std::string& user = req.session->user_id;
    const Target t = target_of(req);
    const std::string& room = t.room;
    const std::string& session = t.session;
    std::string out;
    std::uint64_t ticket = 0;
    {
        std::lock_guard lock(core_.mu);
        std::int64_t number = 0;
        Version& v = version_locked(user, t.version, number);
        const std::size_t before = v.keys.size();
        std::erase_if(v.keys, [&](const auto& kv) {
            return (room.empty() || kv.first.first == room) &&
                   (session.empty() || kv.first.second == session);
        });
        if (v.keys.size() != before) {
            ++v.etag;
            PendingWrite w;
            w.mutations.push_back(store::DeleteBackupKeys{user, number, room, session});
            w.mutations.push_back(store::PutBackupVersion{record(user, number, v)});
            ticket = core_.submit_locked(std::move(w));
        }
        out = counts(v);
    }
    if (ticket) co_await core_.durable(ticket);
    co_return Response{200, std::move(out), {}};
}

}  // namespace mxvoip::server
