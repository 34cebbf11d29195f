#include "key_backup.hpp"

#include <spdlog/spdlog.h>

#include <charconv>
#include <memory>
#include <vector>

#include "json_out.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/json.hpp"

namespace mxvoip::server {

namespace json = boost::json;
using proto::MatrixError;
namespace errcode = proto::errcode;

namespace {

constexpr std::size_t kMaxAuthData = 65536;

// The version number a request names (?version= or the path): 404 when it is not one, as
// for a version that does not exist.
std::int64_t number_of(const std::string& text) {
    std::int64_t n = 0;
    const char* end = text.data() + text.size();
    auto [at, ec] = std::from_chars(text.data(), end, n);
    if (ec != std::errc() || at != end || n <= 0)
        throw MatrixError(404, errcode::not_found, "Unknown backup version '" + text + "'");
    return n;
}

MatrixError unknown_version(std::int64_t number) {
    return MatrixError(404, errcode::not_found,
                       "Unknown backup version '" + std::to_string(number) + "'");
}

// What a /room_keys/keys request is about: ?version= (required), and the path captures
// after /room_keys/keys, the room and the session, either possibly absent.
struct Target {
    std::int64_t version = 0;
    std::string room;
    std::string session;
};

Target target_of(const Request& req) {
    const std::string* version = req.query_param("version");
    if (!version) throw MatrixError(400, errcode::missing_param, "Missing 'version'");
    return {number_of(*version), req.params.size() > 0 ? req.params[0] : std::string(),
            req.params.size() > 1 ? req.params[1] : std::string()};
}

// One uploaded key, checked. Whether it replaces the key the backup has for its session is
// the store's to decide (Txn::put_backup_key: the spec's rule).
store::BackupKeyRecord parse_key(const std::string& user, const std::string& room,
                                 const std::string& session, const json::value& v) {
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
    return {user, 0, room, session, *verified, *fmi, *fc, json::serialize(o)};
}

// A change to a version's keys, decided in its transaction: what it answers.
struct KeysChange {
    std::string user;
    std::int64_t number = 0;
    std::int64_t current = 0;  // the current version (uploads: when it is not `number`)
    std::int64_t before = 0;   // the count before the change
    std::int64_t count = 0;
    std::int64_t etag = 0;
};

// Decides a change to the keys of c.number: runs `change()` (which returns whether it changed
// any) unless the version is gone, gives the version a new etag when it did, and records
// the counts to answer. Uploads go only to the current version: a client on an old one
// must learn of the new (M_WRONG_ROOM_KEYS_VERSION); then nothing is changed.
template <typename Change>
void decide_keys(store::Txn& txn, KeysChange& c, bool current_only, Change&& change) {
    auto v = txn.backup_version(c.user, c.number);
    if (!v) throw unknown_version(c.number);
    if (current_only) {
        c.current = txn.backup_version(c.user, 0)->version.version;
        if (c.current != c.number) return;
    }
    c.before = c.count = v->count;
    if (change()) {
        ++v->version.etag;
        txn.write(store::PutBackupVersion{v->version});
        c.count = txn.backup_version(c.user, c.number)->count;
    }
    c.etag = v->version.etag;
}

Response counts(const KeysChange& c) {
    return Response{
        200,
        "{\"count\":" + std::to_string(c.count) + ",\"etag\":\"" + std::to_string(c.etag) + "\"}",
        {}};
}

}  // namespace

asio::awaitable<Response> KeyBackup::create_version(Request& req) {
    auto v = std::make_shared<store::BackupVersionRecord>();
    v->user_id = req.session->user_id;
    v->algorithm = proto::req_string(req.json, "algorithm");
    const auto* auth_data = proto::opt_object(req.json, "auth_data");
    if (!auth_data) throw MatrixError(400, errcode::missing_param, "Missing 'auth_data'");
    v->auth_data = json::serialize(*auth_data);
    if (v->auth_data.size() > kMaxAuthData)
        throw MatrixError(413, errcode::too_large, "auth_data is larger than 65536 bytes");
    Decision d;
    d.users = {v->user_id};
    d.decide = [v, most = core_.config().limits.backup_versions_per_user](store::Txn& txn,
                                                                          StreamId) {
        const auto versions = txn.backup_versions(v->user_id);
        if (versions.live >= static_cast<std::int64_t>(most))
            throw MatrixError(403, errcode::forbidden,
                              "You have " + std::to_string(versions.live) +
                                  " key backup versions, the most the server keeps "
                                  "(limits.backup_versions_per_user): delete one first");
        // Numbers are never reused, so a client holding an old version learns it is gone; the
        // deleted versions below the new one need not be kept for that.
        v->version = versions.max + 1;
        txn.write(store::PutBackupVersion{*v});
        txn.forget_deleted_backup_versions(v->user_id, v->version);
    };
    co_await core_.transact(std::move(d));
    spdlog::info("{} created key backup version {}", v->user_id, v->version);
    co_return json_response(json::object{{"version", std::to_string(v->version)}});
}

asio::awaitable<Response> KeyBackup::get_version(Request& req) {
    const std::int64_t number = req.params.empty() ? 0 : number_of(req.params[0]);
    auto state = core_.store().backup_version(req.session->user_id, number);
    if (!state) {
        if (!number) throw MatrixError(404, errcode::not_found, "No current backup version");
        throw unknown_version(number);
    }
    const auto& v = state->version;
    std::string out = "{\"algorithm\":" + quoted(v.algorithm) + ",\"auth_data\":" + v.auth_data +
                      ",\"count\":" + std::to_string(state->count) + ",\"etag\":\"" +
                      std::to_string(v.etag) + "\",\"version\":\"" + std::to_string(v.version) +
                      "\"}";
    co_return Response{200, std::move(out), {}};
}

asio::awaitable<Response> KeyBackup::put_version(Request& req) {
    auto v = std::make_shared<store::BackupVersionRecord>();
    v->user_id = req.session->user_id;
    v->version = number_of(req.params[0]);
    v->algorithm = proto::req_string(req.json, "algorithm");
    const auto* auth_data = proto::opt_object(req.json, "auth_data");
    if (!auth_data) throw MatrixError(400, errcode::missing_param, "Missing 'auth_data'");
    if (auto body_version = proto::opt_string(req.json, "version");
        body_version && *body_version != req.params[0])
        throw MatrixError(400, errcode::invalid_param,
                          "The version in the body is not the one in the path");
    v->auth_data = json::serialize(*auth_data);
    if (v->auth_data.size() > kMaxAuthData)
        throw MatrixError(413, errcode::too_large, "auth_data is larger than 65536 bytes");
    Decision d;
    d.users = {v->user_id};
    d.decide = [v](store::Txn& txn, StreamId) {
        auto now = txn.backup_version(v->user_id, v->version);
        if (!now) throw unknown_version(v->version);
        if (v->algorithm != now->version.algorithm)
            throw MatrixError(400, errcode::invalid_param,
                              "The algorithm of a backup version cannot change");
        now->version.auth_data = v->auth_data;
        txn.write(store::PutBackupVersion{now->version});
    };
    co_await core_.transact(std::move(d));
    co_return Response{};
}

asio::awaitable<Response> KeyBackup::delete_version(Request& req) {
    auto v = std::make_shared<store::BackupVersionRecord>();
    v->user_id = req.session->user_id;
    v->version = number_of(req.params[0]);
    Decision d;
    d.users = {v->user_id};
    d.decide = [v](store::Txn& txn, StreamId) {
        auto now = txn.backup_version(v->user_id, v->version);
        if (!now) throw unknown_version(v->version);
        now->version.deleted = true;  // kept, so that its number is never made again
        txn.write(store::PutBackupVersion{now->version});
        txn.delete_backup_keys(v->user_id, v->version, "", "");
    };
    co_await core_.transact(std::move(d));
    spdlog::info("{} deleted key backup version {}", v->user_id, v->version);
    co_return Response{};
}

asio::awaitable<Response> KeyBackup::put_keys(Request& req) {
    const std::string& user = req.session->user_id;
    const Target t = target_of(req);
    // Everything is checked before anything is kept: a request is taken whole.
    auto uploads = std::make_shared<std::vector<store::BackupKeyRecord>>();
    auto sessions_of = [&](const std::string& room, const json::object& o) {
        const auto* sessions = proto::opt_object(o, "sessions");
        if (!sessions) throw MatrixError(400, errcode::missing_param, "Missing 'sessions'");
        for (const auto& [id, data] : *sessions)
            uploads->push_back(parse_key(user, room, std::string(id), data));
    };
    if (!t.session.empty()) {
        uploads->push_back(parse_key(user, t.room, t.session, req.json));
    } else if (!t.room.empty()) {
        sessions_of(t.room, req.json);
    } else {
        const auto* rooms = proto::opt_object(req.json, "rooms");
        if (!rooms) throw MatrixError(400, errcode::missing_param, "Missing 'rooms'");
        for (const auto& [id, r] : *rooms) {
            if (!r.is_object()) throw MatrixError(400, errcode::bad_json, "A room is an object");
            sessions_of(std::string(id), r.get_object());
        }
    }
    auto c = std::make_shared<KeysChange>(KeysChange{user, t.version});
    Decision d;
    d.users = {user};
    d.decide = [c, uploads, most = core_.config().limits.backup_keys_per_version](store::Txn& txn,
                                                                                  StreamId) {
        decide_keys(txn, *c, true, [&] {
            bool stored = false;
            for (auto& k : *uploads) {
                k.version = c->number;
                stored |= txn.put_backup_key(k);
            }
            return stored;
        });
        // Refused whole: none of its keys stays. Replacing keys is always allowed.
        if (c->count > static_cast<std::int64_t>(most) && c->count > c->before)
            throw MatrixError(403, errcode::forbidden,
                              "The backup would hold " + std::to_string(c->count) +
                                  " keys, more than the server keeps in one version "
                                  "(limits.backup_keys_per_version)");
    };
    co_await core_.transact(std::move(d));
    if (c->current != c->number) {
        json::object body{{"errcode", "M_WRONG_ROOM_KEYS_VERSION"},
                          {"error", "That is not the current backup version"},
                          {"current_version", std::to_string(c->current)}};
        co_return json_response(body, 403);
    }
    co_return counts(*c);
}

asio::awaitable<Response> KeyBackup::get_keys(Request& req) {
    const std::string& user = req.session->user_id;
    const Target t = target_of(req);
    const std::string& room = t.room;
    const std::string& session = t.session;
    if (!core_.store().backup_version(user, t.version)) throw unknown_version(t.version);
    auto keys = core_.store().backup_keys(user, t.version, room, session);
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
    auto c = std::make_shared<KeysChange>(KeysChange{user, t.version});
    auto what = std::make_shared<Target>(t);
    Decision d;
    d.users = {user};
    d.decide = [c, what](store::Txn& txn, StreamId) {
        decide_keys(txn, *c, false, [&] {
            return txn.delete_backup_keys(c->user, c->number, what->room, what->session) > 0;
        });
    };
    co_await core_.transact(std::move(d));
    co_return counts(*c);
}

}  // namespace mxvoip::server
