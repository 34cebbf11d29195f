#include "keys.hpp"

#include <spdlog/spdlog.h>

#include "json_out.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/ids.hpp"
#include "mxvoip/proto/json.hpp"
#include "mxvoip/server/crypto.hpp"

namespace mxvoip::server {

namespace json = boost::json;
using proto::MatrixError;
namespace errcode = proto::errcode;

namespace {

constexpr const char* kInvalidSignature = "M_INVALID_SIGNATURE";

// "<algorithm>:<key id>", both parts non-empty and without NUL (they are text columns).
std::pair<std::string, std::string> split_key_name(std::string_view name) {
    auto colon = name.find(':');
    if (colon == 0 || colon == std::string_view::npos || colon + 1 == name.size() ||
        name.find('\0') != std::string_view::npos)
        throw MatrixError(
            400, errcode::bad_json,
            "Key names must be <algorithm>:<key id>, not '" + std::string(name) + "'");
    return {std::string(name.substr(0, colon)), std::string(name.substr(colon + 1))};
}

// Whether `object` carries `user`'s valid signature with the Ed25519 key `key_id` (the spec's
// "Checking for a signature": over the canonical JSON without "signatures" and "unsigned").
bool signed_by(const json::object& object, const std::string& user, const std::string& key_id,
               std::string_view public_key) {
    const auto* signatures = proto::opt_object(object, "signatures");
    const json::object* mine = signatures ? proto::opt_object(*signatures, user) : nullptr;
    auto signature = mine ? proto::opt_string(*mine, key_id) : std::nullopt;
    if (!signature) return false;
    json::object unsigned_copy = object;
    unsigned_copy.erase("signatures");
    unsigned_copy.erase("unsigned");
    return verify_ed25519(public_key, proto::canonical_json(unsigned_copy), *signature);
}

// The public key of a cross-signing key: its one "ed25519:<key>" entry; empty if it has none.
std::string public_key_of(const json::object& key) {
    const auto* keys = proto::opt_object(key, "keys");
    if (!keys || keys->size() != 1) return {};
    const auto& [name, value] = *keys->begin();
    if (!name.starts_with("ed25519:") || !value.is_string() || name.substr(8) != value.get_string())
        return {};
    return std::string(value.get_string());
}

std::string public_key_of(const std::string& stored) {
    return public_key_of(json::parse(stored).as_object());
}

// The object without its signatures and "unsigned": what a signature covers.
json::object signed_part(json::object o) {
    o.erase("signatures");
    o.erase("unsigned");
    return o;
}

// The "failures" of a query or claim: the servers this one could not ask, as it does not
// federate.
std::string failures_json(const std::set<std::string>& servers) {
    std::string out;
    Comma comma;
    for (const auto& server : servers) {
        comma(out);
        append_quoted(out, server);
        out += ":{\"errcode\":\"M_UNKNOWN\",\"error\":\"This server does not federate\"}";
    }
    return out;
}

}  // namespace

Keys::Keys(Core& core, Accounts& accounts, Rooms& rooms)
    : core_(core), accounts_(accounts), rooms_(rooms) {
    accounts_.on_device_removed([this](const std::string& user, const std::string& device) {
        Accounts::DeviceRemoval r;
        // A device going is a change of the user's device list, at a position (as in Synapse:
        // whether it had keys is not known before the removal commits, as it may upload them
        // meanwhile).
        r.takes_position = true;
        r.write = [user, device](StreamId position, store::Txn& txn) {
            txn.write(store::DeleteDeviceKeys{user, device});
            if (position) txn.write(store::PutDeviceListChange{{user, position}});
        };
        r.applied = [this, user, device](StreamId position) {
            devices_.erase(device_key(user, device));
            signatures_.erase({user, device});
            std::vector<std::string> wake;
            if (position) {
                changed_[user] = position;
                for (const auto& u : audience_locked(user)) wake.push_back(u);
            }
            return wake;
        };
        return r;
    });
}

void Keys::load(store::Snapshot& snap) {
    std::lock_guard lock(core_.mu);
    // Only the keys of devices still signed in: the others can never be used again.
    auto device = [&](const std::string& user, const std::string& id) -> Device* {
        if (!accounts_.has_device_locked(user, id)) return nullptr;
        return &devices_[device_key(user, id)];
    };
    for (auto& k : snap.device_keys)
        if (Device* d = device(k.user_id, k.device_id)) d->keys = std::move(k.json);
    for (auto& k : snap.one_time_keys)
        if (Device* d = device(k.user_id, k.device_id))
            d->one_time[k.algorithm].emplace_back(std::move(k.key_id), std::move(k.json));
    for (auto& k : snap.fallback_keys)
        if (Device* d = device(k.user_id, k.device_id))
            d->fallback[k.algorithm] = Fallback{std::move(k.key_id), std::move(k.json), k.used};
    for (auto& c : snap.device_list_changes) changed_[c.user_id] = c.stream;
    for (auto& k : snap.cross_signing_keys) cross_signing_[k.user_id][k.usage] = std::move(k.json);
    for (auto& g : snap.key_signatures)
        signatures_[{g.target_user, g.target_key}][{g.signer_user, g.signer_key}] =
            std::move(g.signature);
}

const std::string* Keys::signing_key_locked(const std::string& user,
                                            const std::string& usage) const {
    auto u = cross_signing_.find(user);
    if (u == cross_signing_.end()) return nullptr;
    auto k = u->second.find(usage);
    return k == u->second.end() ? nullptr : &k->second;
}

std::string Keys::with_signatures_locked(const std::string& stored, const std::string& owner,
                                         const std::string& key, const std::string& reader) const {
    auto it = signatures_.find({owner, key});
    if (it == signatures_.end()) return stored;
    json::object obj = json::parse(stored).as_object();
    if (!obj["signatures"].is_object()) obj["signatures"] = json::object{};
    auto& signatures = obj["signatures"].as_object();
    for (const auto& [signer, signature] : it->second) {
        if (signer.first != owner && signer.first != reader) continue;
        if (!signatures[signer.first].is_object()) signatures[signer.first] = json::object{};
        signatures[signer.first].as_object()[signer.second] = signature;
    }
    return json::serialize(obj);
}

std::set<std::string> Keys::audience_locked(const std::string& user) const {
    std::set<std::string> out{user};
    for (const auto& [room_id, m] : rooms_.memberships_locked(user)) {
        if (m.membership != "join") continue;
        if (const Room* room = rooms_.find_or_skip_locked(room_id))
            for (const auto& [member, mm] : room->membership)
                if (mm == "join") out.insert(member);
    }
    return out;
}

void Keys::record_change_locked(const std::string& user, PendingWrite& w) {
    StreamId stream = core_.allocate_stream_locked();
    changed_[user] = stream;
    w.mutations.push_back(store::PutDeviceListChange{{user, stream}});
    w.max_stream = std::max(w.max_stream, stream);
    for (const auto& u : audience_locked(user)) w.wake.push_back(u);
}

Keys::DeviceListDelta Keys::device_list_delta_locked(const std::string& user, StreamId since,
                                                     StreamId upto) const {
    DeviceListDelta d;
    const std::set<std::string> shared = audience_locked(user);
    for (const auto& u : shared)
        if (auto it = changed_.find(u);
            it != changed_.end() && it->second > since && it->second <= upto)
            d.changed.insert(u);
    // Membership changes in the user's rooms since `since`: whoever now shares a room and did
    // not before has devices to learn; whoever shares none any more is gone.
    for (const auto& [room_id, m] : rooms_.memberships_locked(user)) {
        // A room the user was no longer in at `since`: what happened there since changes
        // nobody's sharing a room with them.
        if (m.membership != "join" && m.membership != "invite" && m.stream <= since) continue;
        const Room* room = rooms_.find_locked(room_id);
        if (!room) continue;
        const bool joined_since = m.membership == "join" && m.stream > since && m.stream <= upto;
        if (joined_since) {
            for (const auto& [member, mm] : room->membership)
                if (mm == "join" && member != user) d.changed.insert(member);
            continue;
        }
        if (m.stream > upto) continue;
        room->history.for_each_change(
            since, upto, [&](const std::string& who, const std::string& membership) {
                if (who == user) return;
                if (membership == "join" && shared.count(who)) d.changed.insert(who);
                if (membership != "join" && membership != "invite" && !shared.count(who))
                    d.left.insert(who);
            });
        // The user left this room since: its members the user no longer meets are gone.
        if (m.membership != "join" && m.stream > since)
            for (const auto& [member, mm] : room->membership)
                if (mm == "join" && !shared.count(member)) d.left.insert(member);
    }
    for (const auto& u : d.left) d.changed.erase(u);
    return d;
}

std::string Keys::counts_json_locked(const Device* d) const {
    // signed_curve25519 is always there: clients read a missing count as "unknown".
    std::map<std::string, std::size_t> counts{{"signed_curve25519", 0}};
    if (d)
        for (const auto& [algorithm, keys] : d->one_time) counts[algorithm] = keys.size();
    std::string out = "{";
    Comma comma;
    for (const auto& [algorithm, n] : counts) {
        comma(out);
        append_quoted(out, algorithm);
        out += ':' + std::to_string(n);
    }
    return out + '}';
}

void Keys::render_key_counts_locked(std::string& out, const Session& s) const {
    auto it = devices_.find(device_key(s.user_id, s.device_id));
    const Device* d = it == devices_.end() ? nullptr : &it->second;
    out += ",\"device_one_time_keys_count\":" + counts_json_locked(d);
    out += ",\"device_unused_fallback_key_types\":[";
    Comma comma;
    if (d)
        for (const auto& [algorithm, key] : d->fallback)
            if (!key.used) {
                comma(out);
                append_quoted(out, algorithm);
            }
    out += ']';
}

asio::awaitable<Response> Keys::upload(Request& req) {
    const Session& s = *req.session;
    const auto& body = req.json;
    const std::size_t limit = core_.config().limits.one_time_keys_per_device;
    std::optional<std::string> device_keys;
    if (const auto* keys = proto::opt_object(body, "device_keys")) {
        if (proto::req_string(*keys, "user_id") != s.user_id ||
            proto::req_string(*keys, "device_id") != s.device_id)
            throw MatrixError(400, errcode::invalid_param,
                              "device_keys must be this user's and this device's own");
        if (!proto::opt_array(*keys, "algorithms"))
            throw MatrixError(400, errcode::missing_param, "device_keys needs 'algorithms'");
        const auto* identity = proto::opt_object(*keys, "keys");
        const std::string signing_key_id = "ed25519:" + s.device_id;
        auto ed25519 = identity ? proto::opt_string(*identity, signing_key_id) : std::nullopt;
        if (!ed25519)
            throw MatrixError(400, errcode::missing_param,
                              "device_keys.keys needs the device's " + signing_key_id);
        if (!signed_by(*keys, s.user_id, signing_key_id, *ed25519))
            throw MatrixError(400, kInvalidSignature,
                              "device_keys is not signed with its own " + signing_key_id);
        json::object stored = *keys;
        stored.erase("unsigned");
        device_keys = json::serialize(stored);
    }
    // One-time and fallback keys, checked before anything is kept: a request is taken whole.
    std::vector<store::OneTimeKeyRecord> one_time;
    if (const auto* keys = proto::opt_object(body, "one_time_keys"))
        for (const auto& [name, key] : *keys) {
            auto [algorithm, key_id] = split_key_name(name);
            if (!key.is_object() && !key.is_string())
                throw MatrixError(400, errcode::bad_json, "A one-time key is a string or object");
            one_time.push_back({s.user_id, s.device_id, algorithm, key_id, json::serialize(key)});
        }
    std::vector<store::FallbackKeyRecord> fallback;
    if (const auto* keys = proto::opt_object(body, "fallback_keys"))
        for (const auto& [name, key] : *keys) {
            // Named, not a structured binding: the lambda below captures it.
            const auto parts = split_key_name(name);
            const std::string& algorithm = parts.first;
            const std::string& key_id = parts.second;
            if (!key.is_object() && !key.is_string())
                throw MatrixError(400, errcode::bad_json, "A fallback key is a string or object");
            if (std::any_of(fallback.begin(), fallback.end(),
                            [&](const auto& f) { return f.algorithm == algorithm; }))
                throw MatrixError(400, errcode::invalid_param,
                                  "At most one fallback key per algorithm");
            fallback.push_back(
                {s.user_id, s.device_id, algorithm, key_id, json::serialize(key), false});
        }

    PendingWrite w;
    std::string counts;
    {
        std::lock_guard lock(core_.mu);
        Device& d = devices_[device_key(s.user_id, s.device_id)];
        // A key id already uploaded must come again unchanged (a retried upload); a different
        // key under it is an error, as the client has lost track of its keys.
        std::map<std::string, std::size_t> adding;
        std::vector<store::OneTimeKeyRecord> fresh;
        for (auto& k : one_time) {
            const auto& existing = d.one_time[k.algorithm];
            auto same = std::find_if(existing.begin(), existing.end(),
                                     [&](const auto& e) { return e.first == k.key_id; });
            if (same != existing.end()) {
                if (same->second != k.json)
                    throw MatrixError(400, errcode::invalid_param,
                                      "One-time key " + k.algorithm + ":" + k.key_id +
                                          " already exists with different content");
                continue;
            }
            if (existing.size() + ++adding[k.algorithm] > limit)
                throw MatrixError(400, errcode::limit_exceeded,
                                  "This device would hold more than " + std::to_string(limit) +
                                      " unclaimed " + k.algorithm +
                                      " keys (limits.one_time_keys_per_device)");
            fresh.push_back(std::move(k));
        }
        if (device_keys && *device_keys != d.keys) {
            // Signatures of the old keys say nothing about the new ones.
            if (signatures_.erase({s.user_id, s.device_id}))
                w.mutations.push_back(store::DeleteKeySignatures{s.user_id, s.device_id});
            d.keys = *device_keys;
            w.mutations.push_back(store::PutDeviceKeys{{s.user_id, s.device_id, *device_keys}});
            record_change_locked(s.user_id, w);
        }
        for (const auto& k : fresh) d.one_time[k.algorithm].emplace_back(k.key_id, k.json);
        if (!fresh.empty()) w.mutations.push_back(store::PutOneTimeKeys{std::move(fresh)});
        for (auto& f : fallback) {
            d.fallback[f.algorithm] = Fallback{f.key_id, f.json, false};
            w.mutations.push_back(store::PutFallbackKey{std::move(f)});
        }
        counts = counts_json_locked(&d);
    }
    if (!w.mutations.empty()) co_await core_.commit(std::move(w));
    co_return Response{200, "{\"one_time_key_counts\":" + counts + "}", {}};
}

asio::awaitable<Response> Keys::query(Request& req) {
    const auto* wanted = proto::opt_object(req.json, "device_keys");
    if (!wanted) throw MatrixError(400, errcode::missing_param, "Missing 'device_keys'");
    const std::string& server_name = core_.config().server_name;
    std::string out = "{\"device_keys\":{";
    std::string failures;
    Comma user_comma;
    std::set<std::string> unreachable;
    std::string master, self_signing, user_signing;
    Comma master_comma, self_comma, user_signing_comma;
    const std::string& reader = req.session->user_id;
    {
        std::lock_guard lock(core_.mu);
        for (const auto& [user_sv, devices] : *wanted) {
            std::string user(user_sv);
            if (!devices.is_array())
                throw MatrixError(400, errcode::bad_json,
                                  "device_keys." + user + " must be a list of device ids");
            auto parsed = proto::parse_user_id(user);
            if (!parsed) continue;
            if (parsed->server_name != server_name) {
                // This server does not federate: say which servers it could not ask.
                unreachable.insert(std::string(parsed->server_name));
                continue;
            }
            // Cross-signing keys: everyone's master and self-signing keys, the reader's own
            // user-signing key.
            auto add_signing_key = [&](std::string& to, Comma& comma, const char* usage) {
                const std::string* key = signing_key_locked(user, usage);
                if (!key) return;
                comma(to);
                append_quoted(to, user);
                to += ':';
                if (std::string_view(usage) == "master")
                    to += with_signatures_locked(*key, user, public_key_of(*key), reader);
                else
                    to += *key;
            };
            add_signing_key(master, master_comma, "master");
            add_signing_key(self_signing, self_comma, "self_signing");
            if (user == reader) add_signing_key(user_signing, user_signing_comma, "user_signing");
            std::set<std::string> only;
            for (const auto& d : devices.get_array())
                if (d.is_string()) only.insert(std::string(d.get_string()));
            user_comma(out);
            append_quoted(out, user);
            out += ":{";
            Comma device_comma;
            for (const auto& device : accounts_.devices_locked(user)) {
                if (!only.empty() && !only.count(device)) continue;
                auto it = devices_.find(device_key(user, device));
                if (it == devices_.end() || it->second.keys.empty()) continue;
                device_comma(out);
                append_quoted(out, device);
                out += ':';
                // The keys as uploaded and signed since, with the device's display name in
                // "unsigned".
                const std::string keys =
                    with_signatures_locked(it->second.keys, user, device, req.session->user_id);
                out.append(keys, 0, keys.size() - 1);
                out += ",\"unsigned\":{";
                const std::string name = accounts_.device_display_name_locked(user, device);
                if (!name.empty()) out += "\"device_display_name\":" + quoted(name);
                out += "}}";
            }
            out += '}';
        }
    }
    failures = failures_json(unreachable);
    out += "},\"failures\":{" + failures + "},\"master_keys\":{" + master +
           "},\"self_signing_keys\":{" + self_signing + "},\"user_signing_keys\":{" + user_signing +
           "}}";
    co_return Response{200, std::move(out), {}};
}

asio::awaitable<Response> Keys::claim(Request& req) {
    const auto* wanted = proto::opt_object(req.json, "one_time_keys");
    if (!wanted) throw MatrixError(400, errcode::missing_param, "Missing 'one_time_keys'");
    const std::string& server_name = core_.config().server_name;
    std::string out = "{\"one_time_keys\":{";
    std::string failures;
    Comma user_comma;
    std::set<std::string> unreachable;
    PendingWrite w;
    std::uint64_t ticket = 0;
    {
        std::lock_guard lock(core_.mu);
        for (const auto& [user_sv, devices] : *wanted) {
            std::string user(user_sv);
            if (!devices.is_object())
                throw MatrixError(400, errcode::bad_json,
                                  "one_time_keys." + user + " must map device ids to algorithms");
            auto parsed = proto::parse_user_id(user);
            if (!parsed) continue;
            if (parsed->server_name != server_name) {
                unreachable.insert(std::string(parsed->server_name));
                continue;
            }
            std::string entry;
            Comma device_comma;
            for (const auto& [device_sv, algorithm_v] : devices.get_object()) {
                if (!algorithm_v.is_string())
                    throw MatrixError(400, errcode::bad_json, "An algorithm is a string");
                std::string device(device_sv), algorithm(algorithm_v.get_string());
                if (!accounts_.has_device_locked(user, device)) continue;
                auto it = devices_.find(device_key(user, device));
                if (it == devices_.end()) continue;
                Device& d = it->second;
                std::string key_id, key_json;
                // Each one-time key is handed out once, oldest first; then the fallback key,
                // as often as needed until the device replaces it.
                if (auto q = d.one_time.find(algorithm);
                    q != d.one_time.end() && !q->second.empty()) {
                    std::tie(key_id, key_json) = std::move(q->second.front());
                    q->second.pop_front();
                    w.mutations.push_back(store::DeleteOneTimeKey{user, device, algorithm, key_id});
                } else if (auto f = d.fallback.find(algorithm); f != d.fallback.end()) {
                    key_id = f->second.key_id;
                    key_json = f->second.json;
                    if (!f->second.used) {
                        f->second.used = true;
                        w.mutations.push_back(store::PutFallbackKey{
                            {user, device, algorithm, key_id, key_json, true}});
                    }
                } else {
                    continue;
                }
                device_comma(entry);
                append_quoted(entry, device);
                entry += ":{" + quoted(algorithm + ":" + key_id) + ":" + key_json + "}";
            }
            user_comma(out);
            append_quoted(out, user);
            out += ":{" + entry + "}";
        }
        if (!w.mutations.empty()) ticket = core_.submit_locked(std::move(w));
    }
    if (ticket) co_await core_.durable(ticket);
    failures = failures_json(unreachable);
    out += "},\"failures\":{" + failures + "}}";
    co_return Response{200, std::move(out), {}};
}

asio::awaitable<Response> Keys::changes(Request& req) {
    const std::string* from = req.query_param("from");
    const std::string* to = req.query_param("to");
    if (!from) throw MatrixError(400, errcode::missing_param, "Missing 'from'");
    StreamId since = parse_token(*from);
    DeviceListDelta delta;
    {
        std::lock_guard lock(core_.mu);
        StreamId upto = core_.visible_locked();
        if (to) upto = std::min(upto, parse_token(*to));
        delta = device_list_delta_locked(req.session->user_id, since, upto);
    }
    json::array changed, left;
    for (const auto& u : delta.changed) changed.push_back(json::string(u));
    for (const auto& u : delta.left) left.push_back(json::string(u));
    co_return json_response(json::object{{"changed", changed}, {"left", left}});
}

// ---------------------------------------------------------------------------------------------
// Cross-signing

asio::awaitable<Response> Keys::upload_signing_keys(Request& req) {
    const std::string& me = req.session->user_id;
    struct Upload {
        const char* usage;
        const json::object* key;
        std::string public_key;
    };
    std::vector<Upload> uploads;
    for (const char* usage : {"master", "self_signing", "user_signing"}) {
        const std::string field = std::string(usage) + "_key";
        const auto* key = proto::opt_object(req.json, field);
        if (!key) continue;
        if (proto::req_string(*key, "user_id") != me)
            throw MatrixError(400, errcode::invalid_param, field + " must be the user's own");
        const auto* usages = proto::opt_array(*key, "usage");
        if (!usages || std::none_of(usages->begin(), usages->end(), [&](const json::value& u) {
                return u.is_string() && u.get_string() == usage;
            }))
            throw MatrixError(400, errcode::invalid_param,
                              field + ".usage must contain '" + usage + "'");
        std::string public_key = public_key_of(*key);
        if (public_key.empty())
            throw MatrixError(400, errcode::invalid_param,
                              field + ".keys must hold one key, as \"ed25519:<key>\": \"<key>\"");
        uploads.push_back({usage, key, std::move(public_key)});
    }
    if (uploads.empty())
        throw MatrixError(400, errcode::missing_param, "No cross-signing key to upload");

    // Without anything new (a retried upload), or for the first master key, no password.
    bool replaces = false;
    std::string master_public;
    {
        std::lock_guard lock(core_.mu);
        if (const std::string* master = signing_key_locked(me, "master")) {
            master_public = public_key_of(*master);
            for (const auto& u : uploads) {
                const std::string* existing = signing_key_locked(me, u.usage);
                if (!existing || json::parse(*existing) != json::value(*u.key)) replaces = true;
            }
        }
    }
    for (const auto& u : uploads)
        if (std::string_view(u.usage) == "master") master_public = u.public_key;
    if (master_public.empty())
        throw MatrixError(400, errcode::missing_param, "No master signing key is available");
    // The other keys are signed by the master key, new or current.
    for (const auto& u : uploads)
        if (std::string_view(u.usage) != "master" &&
            !signed_by(*u.key, me, "ed25519:" + master_public, master_public))
            throw MatrixError(400, kInvalidSignature,
                              std::string(u.usage) + "_key is not signed by the master key");
    if (replaces)
        if (auto challenge = co_await accounts_.password_auth(req)) co_return std::move(*challenge);

    PendingWrite w;
    {
        std::lock_guard lock(core_.mu);
        auto& mine = cross_signing_[me];
        for (const auto& u : uploads) {
            std::string text = json::serialize(*u.key);
            mine[u.usage] = text;
            w.mutations.push_back(store::PutCrossSigningKey{{me, u.usage, std::move(text)}});
        }
        record_change_locked(me, w);
    }
    co_await core_.commit(std::move(w));
    spdlog::info("{} uploaded cross-signing keys", me);
    co_return Response{};
}

asio::awaitable<Response> Keys::upload_signatures(Request& req) {
    const std::string& me = req.session->user_id;
    json::object failures;
    auto fail = [&](const std::string& user, const std::string& key, const char* code,
                    const std::string& error) {
        if (!failures[user].is_object()) failures[user] = json::object{};
        failures[user].as_object()[key] = json::object{{"errcode", code}, {"error", error}};
    };
    PendingWrite w;
    std::uint64_t ticket = 0;
    {
        std::lock_guard lock(core_.mu);
        const std::string* self_signing = signing_key_locked(me, "self_signing");
        const std::string* user_signing = signing_key_locked(me, "user_signing");
        bool changed = false;
        for (const auto& [user_sv, keys] : req.json) {
            const std::string user(user_sv);
            if (!keys.is_object())
                throw MatrixError(400, errcode::bad_json, user + " must map key ids to keys");
            for (const auto& [key_sv, signed_value] : keys.get_object()) {
                const std::string key_id(key_sv);
                if (!signed_value.is_object()) {
                    fail(user, key_id, errcode::bad_json, "Not a key object");
                    continue;
                }
                const json::object& object = signed_value.get_object();
                const auto* by = proto::opt_object(object, "signatures");
                const json::object* mine = by ? proto::opt_object(*by, me) : nullptr;
                // What is signed must be the key the server holds, signatures aside.
                const std::string* stored = nullptr;
                std::string signer_public;  // the key that must have made the signature
                std::string signer_key_id;
                if (user == me) {
                    if (auto d = devices_.find(device_key(me, key_id));
                        d != devices_.end() && !d->second.keys.empty()) {
                        // One of my devices, signed by my self-signing key.
                        stored = &d->second.keys;
                        if (self_signing) signer_public = public_key_of(*self_signing);
                        signer_key_id = "ed25519:" + signer_public;
                    } else if (const std::string* master = signing_key_locked(me, "master");
                               master && public_key_of(*master) == key_id) {
                        // My master key, signed by one of my devices.
                        stored = master;
                        if (mine)
                            for (const auto& [name, _] : *mine) {
                                std::string_view n = name;
                                if (!n.starts_with("ed25519:")) continue;
                                auto d = devices_.find(device_key(me, std::string(n.substr(8))));
                                if (d == devices_.end() || d->second.keys.empty()) continue;
                                auto dk = json::parse(d->second.keys).as_object();
                                const auto* idk = proto::opt_object(dk, "keys");
                                auto pk = idk ? proto::opt_string(*idk, name) : std::nullopt;
                                if (pk) {
                                    signer_public = *pk;
                                    signer_key_id = std::string(name);
                                    break;
                                }
                            }
                    }
                } else if (const std::string* master = signing_key_locked(user, "master");
                           master && public_key_of(*master) == key_id) {
                    // Someone else's master key, signed by my user-signing key.
                    stored = master;
                    if (user_signing) signer_public = public_key_of(*user_signing);
                    signer_key_id = "ed25519:" + signer_public;
                }
                if (!stored) {
                    fail(user, key_id, errcode::not_found, "No such key to sign");
                    continue;
                }
                if (signed_part(json::parse(*stored).as_object()) != signed_part(object)) {
                    fail(user, key_id, errcode::invalid_param,
                         "The key does not match the one held");
                    continue;
                }
                if (signer_public.empty() || !signed_by(object, me, signer_key_id, signer_public)) {
                    fail(user, key_id, kInvalidSignature,
                         "Not signed by a key of yours that may sign it");
                    continue;
                }
                const std::string signature(mine->at(signer_key_id).as_string());
                signatures_[{user, key_id}][{me, signer_key_id}] = signature;
                w.mutations.push_back(
                    store::PutKeySignature{{user, key_id, me, signer_key_id, signature}});
                changed = true;
            }
        }
        // Those who see my keys fetch them again: the new signatures come with them.
        if (changed) {
            record_change_locked(me, w);
            ticket = core_.submit_locked(std::move(w));
        }
    }
    if (ticket) co_await core_.durable(ticket);
    co_return json_response(json::object{{"failures", failures}});
}

}  // namespace mxvoip::server
