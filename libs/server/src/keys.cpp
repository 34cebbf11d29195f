#include "keys.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <vector>

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

// The object's JSON with the signatures `reader` may see added to it: those of the key's owner
// and the reader's own.
std::string with_signatures(const std::string& stored, const Keys::Signatures* added,
                            const std::string& owner, const std::string& reader) {
    if (!added) return stored;
    json::object obj = json::parse(stored).as_object();
    if (!obj["signatures"].is_object()) obj["signatures"] = json::object{};
    auto& signatures = obj["signatures"].as_object();
    for (const auto& [signer, signature] : *added) {
        if (signer.first != owner && signer.first != reader) continue;
        if (!signatures[signer.first].is_object()) signatures[signer.first] = json::object{};
        signatures[signer.first].as_object()[signer.second] = signature;
    }
    return json::serialize(obj);
}

const Keys::Signatures* signatures_of(const Keys::UserKeys& keys, const std::string& key) {
    auto it = keys.signatures.find(key);
    return it == keys.signatures.end() ? nullptr : &it->second;
}

const std::string* cross_signing_key(const Keys::UserKeys& keys, const std::string& usage) {
    auto it = keys.cross_signing.find(usage);
    return it == keys.cross_signing.end() ? nullptr : &it->second;
}

// {"signed_curve25519":n,...}: signed_curve25519 is always there, as clients read a missing
// count as "unknown".
std::string counts_json(const std::map<std::string, std::int64_t>* one_time) {
    std::map<std::string, std::int64_t> counts{{"signed_curve25519", 0}};
    if (one_time)
        for (const auto& [algorithm, n] : *one_time) counts[algorithm] = n;
    std::string out = "{";
    Comma comma;
    for (const auto& [algorithm, n] : counts) {
        comma(out);
        append_quoted(out, algorithm);
        out += ':' + std::to_string(n);
    }
    return out + '}';
}

std::map<std::string, std::int64_t> counts_map(const std::vector<store::OneTimeKeyCount>& counts) {
    std::map<std::string, std::int64_t> out;
    for (const auto& c : counts) out[c.algorithm] = c.count;
    return out;
}

// The device is signed in, in the transaction: keys are never written for one that signed out
// while its request was on its way.
void require_device(store::Txn& txn, const std::string& user, const std::string& device) {
    if (!txn.device_exists(user, device))
        throw MatrixError(401, errcode::unknown_token, "This device has signed out");
}

}  // namespace

Keys::Keys(Core& core, Accounts& accounts, Rooms& rooms)
    : core_(core),
      accounts_(accounts),
      rooms_(rooms),
      // Held by a request: not forgotten, so what commits meanwhile reaches it.
      users_(core.config().caches.keys, [](const Held& h) { return h.use_count() > 1; }) {
    // Another process changed the user's device list: the keys held of them go (read again
    // when asked for), and whoever shares a room with them learns of it.
    core_.on_change("device_list", [this](const store::ChangeRecord& c, const store::EventRecord*,
                                          std::vector<std::string>& wake) {
        users_.erase(c.key);
        loading_.written(c.key);
        auto audience = device_list_changed_locked(c.key, c.stream);
        wake.insert(wake.end(), audience.begin(), audience.end());
    });
    // Another process took or stored one-time keys of the user's devices: the counts held go
    // (read again when a /sync reports them).
    core_.on_change("one_time_keys", [this](const store::ChangeRecord& c, const store::EventRecord*,
                                            std::vector<std::string>&) {
        users_.erase(c.key);
        loading_.written(c.key);
    });
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
            if (UserKeys* keys = written_locked(user)) {
                keys->devices.erase(device);
                keys->signatures.erase(device);
            }
            return position ? device_list_changed_locked(user, position)
                            : std::vector<std::string>{};
        };
        return r;
    });
}

void Keys::load(const store::Snapshot& snap) {
    std::lock_guard lock(core_.mu);
    // What committed up to here is in the store; what commits after it is applied here.
    horizon_ = snap.max_stream;
}

std::shared_ptr<const void> Keys::hold_older_changes(StreamId since) {
    for (;;) {
        StreamId horizon = 0;
        {
            std::lock_guard lock(core_.mu);
            if (since >= horizon_) return nullptr;
            if (auto it = older_.find(since); it != older_.end())
                if (auto held = it->second.lock(); held && held->horizon == horizon_) return held;
            horizon = horizon_;
        }
        auto read = read_older_changes(since, horizon);
        std::lock_guard lock(core_.mu);
        if (horizon != horizon_) continue;  // changes were let go meanwhile: read again
        std::erase_if(older_, [](const auto& o) { return o.second.expired(); });
        older_[since] = read;
        return read;
    }
}

std::shared_ptr<const Keys::OlderChanges> Keys::older_changes_locked(StreamId since) const {
    if (auto it = older_.find(since); it != older_.end())
        if (auto held = it->second.lock(); held && held->horizon == horizon_) return held;
    // Read under the lock: what commits meanwhile waits to be applied, and is held then.
    return read_older_changes(since, horizon_);
}

std::shared_ptr<Keys::OlderChanges> Keys::read_older_changes(StreamId since,
                                                             StreamId horizon) const {
    auto read = std::make_shared<OlderChanges>();
    read->since = since;
    read->horizon = horizon;
    for (auto& c : core_.store().device_lists_changed(since, horizon))
        read->users.emplace(std::move(c.user_id), c.stream);
    return read;
}

std::shared_ptr<const Keys::UserKeys> Keys::keys_of(const std::string& user) {
    return keys_of(std::set<std::string>{user}).at(user);
}

std::map<std::string, std::shared_ptr<const Keys::UserKeys>> Keys::keys_of(
    std::set<std::string> users) {
    std::map<std::string, std::shared_ptr<const UserKeys>> out;
    for (;;) {
        std::vector<std::string> missing;
        std::vector<ReadsInFlight<std::string>::Ticket> tickets;
        {
            std::lock_guard lock(core_.mu);
            for (const auto& user : users) {
                if (out.count(user)) continue;
                if (auto* held = users_.get(user)) {
                    out.emplace(user, *held);
                    continue;
                }
                missing.push_back(user);
                tickets.push_back(loading_.started(user));
            }
        }
        if (missing.empty()) return out;
        std::vector<store::UserKeys> read;
        std::exception_ptr failed;
        try {
            read = core_.store().user_keys(missing);
        } catch (...) {
            failed = std::current_exception();
        }
        bool again = false;
        std::lock_guard lock(core_.mu);
        for (std::size_t i = 0; i < missing.size(); ++i) {
            const std::string& user = missing[i];
            const bool overtaken = loading_.overtaken(user, tickets[i]);
            if (failed) continue;
            if (auto* held = users_.get(user)) {  // another reader was first
                out.emplace(user, *held);
                continue;
            }
            if (overtaken) {
                again = true;
                continue;
            }
            auto keys = std::make_shared<UserKeys>();
            for (auto& d : read[i].devices) keys->devices[d.device_id].keys = std::move(d.json);
            for (auto& f : read[i].fallback)
                keys->devices[f.device_id].fallback[f.algorithm] =
                    Fallback{std::move(f.key_id), std::move(f.json), f.used};
            for (const auto& c : read[i].one_time_counts)
                keys->devices[c.device_id].one_time[c.algorithm] = c.count;
            for (auto& c : read[i].cross_signing) keys->cross_signing[c.usage] = std::move(c.json);
            for (auto& g : read[i].signatures)
                keys->signatures[g.target_key][{g.signer_user, g.signer_key}] =
                    std::move(g.signature);
            out.emplace(user, users_.put(user, std::move(keys)));
        }
        if (failed) std::rethrow_exception(failed);
        if (!again) return out;
    }
}

Keys::UserKeys* Keys::written_locked(const std::string& user) {
    if (auto* held = users_.get(user)) return held->get();
    loading_.written(user);
    return nullptr;
}

std::vector<std::string> Keys::device_list_changed_locked(const std::string& user,
                                                          StreamId position) {
    auto& latest = changed_[user];
    latest = std::max(latest, position);
    if (changed_.size() > kChangesHeld) {
        // The older half goes: the store has each user's latest change, read for a /sync
        // whose since is before the new horizon.
        std::vector<StreamId> positions;
        positions.reserve(changed_.size());
        for (const auto& [_, p] : changed_) positions.push_back(p);
        auto middle = positions.begin() + static_cast<std::ptrdiff_t>(positions.size() / 2);
        std::nth_element(positions.begin(), middle, positions.end());
        horizon_ = std::max(horizon_, *middle);
        std::erase_if(changed_, [&](const auto& c) { return c.second <= horizon_; });
    }
    std::set<std::string> audience = audience_locked(user);
    return {audience.begin(), audience.end()};
}

std::set<std::string> Keys::audience_locked(const std::string& user) const {
    std::set<std::string> out{user};
    for (const auto& [room_id, m] : rooms_.memberships_or_skip_locked(user)) {
        if (m.membership != "join") continue;
        if (const Room* room = rooms_.find_or_skip_locked(room_id))
            for (const auto& [member, mm] : room->membership)
                if (mm == "join") out.insert(member);
    }
    return out;
}

Keys::DeviceListDelta Keys::device_list_delta_locked(const std::string& user, StreamId since,
                                                     StreamId upto) const {
    DeviceListDelta d;
    // Read first (a request answers 503 without them): then the audience finds them held.
    const Memberships& mine = rooms_.memberships_locked(user);
    const auto older = since < horizon_ ? older_changes_locked(since) : nullptr;
    const std::set<std::string> shared = audience_locked(user);
    for (const auto& u : shared) {
        if (auto it = changed_.find(u);
            it != changed_.end() && it->second > since && it->second <= upto)
            d.changed.insert(u);
        else if (older)
            if (auto o = older->users.find(u); o != older->users.end() && o->second <= upto)
                d.changed.insert(u);
    }
    // Membership changes in the user's rooms since `since`: whoever now shares a room and did
    // not before has devices to learn; whoever shares none any more is gone.
    for (const auto& [room_id, m] : mine) {
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

void Keys::render_key_counts_locked(std::string& out, const Session& s,
                                    const UserKeys& keys) const {
    auto it = keys.devices.find(s.device_id);
    const DeviceKeys* d = it == keys.devices.end() ? nullptr : &it->second;
    out += ",\"device_one_time_keys_count\":" + counts_json(d ? &d->one_time : nullptr);
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

    if (!device_keys && one_time.empty() && fallback.empty()) {
        // Nothing to store: the counts are what the client asks for.
        auto keys = keys_of(s.user_id);
        std::lock_guard lock(core_.mu);
        auto d = keys->devices.find(s.device_id);
        co_return Response{
            200,
            "{\"one_time_key_counts\":" +
                counts_json(d == keys->devices.end() ? nullptr : &d->second.one_time) + "}",
            {}};
    }
    struct Upload {
        std::string user, device;
        std::optional<std::string> device_keys;
        std::vector<store::OneTimeKeyRecord> one_time;
        std::vector<store::FallbackKeyRecord> fallback;
        std::size_t limit = 0;
        // Decided:
        bool keys_changed = false;
        std::map<std::string, std::int64_t> counts;  // unclaimed, once written
    };
    auto up = std::make_shared<Upload>(Upload{s.user_id, s.device_id, std::move(device_keys),
                                              std::move(one_time), std::move(fallback), limit});
    Decision d;
    // A device-list change, if the keys are new; on a shared database a change of the
    // one-time and fallback keys too, after it.
    const bool counts_change = core_.shared() && (!up->one_time.empty() || !up->fallback.empty());
    d.streams = (up->device_keys ? 1 : 0) + (counts_change ? 1 : 0);
    // Under the user's lock, which a sign-out holds too: the device found signed in stays so
    // until this commits, and a sign-out on another process at the same moment deletes what
    // this wrote instead of missing it.
    d.users = {up->user};
    d.decide = [up, counts_change](store::Txn& txn, StreamId first) {
        const StreamId position = first;
        require_device(txn, up->user, up->device);
        // A key id already uploaded must come again unchanged (a retried upload); a different
        // key under it is an error, as the client has lost track of its keys.
        auto counts = counts_map(txn.one_time_key_counts(up->user, up->device));
        std::vector<store::OneTimeKeyRecord> fresh;
        for (const auto& k : up->one_time) {
            auto existing = txn.one_time_key(up->user, up->device, k.algorithm, k.key_id);
            if (existing) {
                if (*existing != k.json)
                    throw MatrixError(400, errcode::invalid_param,
                                      "One-time key " + k.algorithm + ":" + k.key_id +
                                          " already exists with different content");
                continue;
            }
            if (static_cast<std::size_t>(++counts[k.algorithm]) > up->limit)
                throw MatrixError(400, errcode::limit_exceeded,
                                  "This device would hold more than " + std::to_string(up->limit) +
                                      " unclaimed " + k.algorithm +
                                      " keys (limits.one_time_keys_per_device)");
            fresh.push_back(k);
        }
        bool keys_changed = false;
        if (up->device_keys) {
            auto stored = txn.device_keys(up->user, up->device);
            if (!stored || *stored != *up->device_keys) {
                keys_changed = true;
                // Signatures of the old keys say nothing about the new ones.
                txn.write(store::DeleteKeySignatures{up->user, up->device});
                txn.write(store::PutDeviceKeys{{up->user, up->device, *up->device_keys}});
                txn.write(store::PutDeviceListChange{{up->user, position}});
            }
        }
        if (!fresh.empty()) txn.write(store::PutOneTimeKeys{std::move(fresh)});
        for (const auto& f : up->fallback) txn.write(store::PutFallbackKey{f});
        up->keys_changed = keys_changed;
        up->counts = counts_map(txn.one_time_key_counts(up->user, up->device));
        if (counts_change)
            txn.write(
                store::PutChange{{first + (up->device_keys ? 1 : 0), "one_time_keys", up->user}});
    };
    d.applied = [this, up](StreamId position) {
        if (UserKeys* keys = written_locked(up->user)) {
            DeviceKeys& device = keys->devices[up->device];
            if (up->keys_changed) {
                device.keys = *up->device_keys;
                keys->signatures.erase(up->device);
            }
            device.one_time = up->counts;
            for (const auto& f : up->fallback)
                device.fallback[f.algorithm] = Fallback{f.key_id, f.json, false};
        }
        return up->keys_changed ? device_list_changed_locked(up->user, position)
                                : std::vector<std::string>{};
    };
    co_await core_.transact(std::move(d));
    co_return Response{200, "{\"one_time_key_counts\":" + counts_json(&up->counts) + "}", {}};
}

asio::awaitable<Response> Keys::query(Request& req) {
    const auto* wanted = proto::opt_object(req.json, "device_keys");
    if (!wanted) throw MatrixError(400, errcode::missing_param, "Missing 'device_keys'");
    const std::string& server_name = core_.config().server_name;
    std::set<std::string> unreachable;
    std::set<std::string> local;
    for (const auto& [user_sv, devices] : *wanted) {
        std::string user(user_sv);
        if (!devices.is_array())
            throw MatrixError(400, errcode::bad_json,
                              "device_keys." + user + " must be a list of device ids");
        auto parsed = proto::parse_user_id(user);
        if (!parsed) continue;
        if (parsed->server_name != server_name)
            // This server does not federate: say which servers it could not ask.
            unreachable.insert(std::string(parsed->server_name));
        else
            local.insert(std::move(user));
    }
    const auto held = keys_of(local);
    accounts_.preload({local.begin(), local.end()});  // which devices each has, and their names
    std::string out = "{\"device_keys\":{";
    Comma user_comma;
    std::string master, self_signing, user_signing;
    Comma master_comma, self_comma, user_signing_comma;
    const std::string& reader = req.session->user_id;
    {
        std::lock_guard lock(core_.mu);
        for (const auto& [user_sv, devices] : *wanted) {
            std::string user(user_sv);
            if (!local.count(user)) continue;
            const UserKeys& keys = *held.at(user);
            // Cross-signing keys: everyone's master and self-signing keys, the reader's own
            // user-signing key.
            auto add_signing_key = [&](std::string& to, Comma& comma, const char* usage) {
                const std::string* key = cross_signing_key(keys, usage);
                if (!key) return;
                comma(to);
                append_quoted(to, user);
                to += ':';
                if (std::string_view(usage) == "master")
                    to += with_signatures(*key, signatures_of(keys, public_key_of(*key)), user,
                                          reader);
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
                auto it = keys.devices.find(device);
                if (it == keys.devices.end() || it->second.keys.empty()) continue;
                device_comma(out);
                append_quoted(out, device);
                out += ':';
                // The keys as uploaded and signed since, with the device's display name in
                // "unsigned".
                const std::string signed_keys =
                    with_signatures(it->second.keys, signatures_of(keys, device), user, reader);
                out.append(signed_keys, 0, signed_keys.size() - 1);
                out += ",\"unsigned\":{";
                const std::string name = accounts_.device_display_name_locked(user, device);
                if (!name.empty()) out += "\"device_display_name\":" + quoted(name);
                out += "}}";
            }
            out += '}';
        }
    }
    out += "},\"failures\":{" + failures_json(unreachable) + "},\"master_keys\":{" + master +
           "},\"self_signing_keys\":{" + self_signing + "},\"user_signing_keys\":{" + user_signing +
           "}}";
    co_return Response{200, std::move(out), {}};
}

asio::awaitable<Response> Keys::claim(Request& req) {
    const auto* wanted = proto::opt_object(req.json, "one_time_keys");
    if (!wanted) throw MatrixError(400, errcode::missing_param, "Missing 'one_time_keys'");
    const std::string& server_name = core_.config().server_name;
    std::set<std::string> unreachable;
    // One key of one device, as asked for and then as claimed.
    struct Claim {
        std::string user, device, algorithm;
        std::optional<store::OneTimeKeyRecord> key;  // a one-time key, or the fallback key
        std::map<std::string, std::int64_t> left;    // the device's unclaimed keys after
        bool fallback_now_used = false;
    };
    auto claims = std::make_shared<std::vector<Claim>>();
    std::vector<std::string> users;  // in the order asked, each once per mention
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
        for (const auto& [device, algorithm] : devices.get_object()) {
            if (!algorithm.is_string())
                throw MatrixError(400, errcode::bad_json, "An algorithm is a string");
            claims->push_back({user, std::string(device), std::string(algorithm.get_string())});
        }
        users.push_back(std::move(user));
    }
    if (!claims->empty()) {
        Decision d;
        // On a shared database, a change for each user whose keys were taken: the counts
        // other processes hold of them go.
        std::vector<std::string> owners;
        if (core_.shared())
            for (const auto& c : *claims)
                if (std::find(owners.begin(), owners.end(), c.user) == owners.end())
                    owners.push_back(c.user);
        d.streams = owners.size();
        d.decide = [claims, owners](store::Txn& txn, StreamId first) {
            for (auto& c : *claims) {
                c.key.reset();
                c.fallback_now_used = false;
                if (!txn.device_exists(c.user, c.device)) continue;
                // Each one-time key is handed out once, oldest first; then the fallback key,
                // as often as needed until the device replaces it.
                c.key = txn.take_one_time_key(c.user, c.device, c.algorithm);
                if (!c.key) {
                    auto f = txn.fallback_key(c.user, c.device, c.algorithm);
                    if (!f) continue;
                    c.key =
                        store::OneTimeKeyRecord{c.user, c.device, c.algorithm, f->key_id, f->json};
                    if (!f->used) {
                        f->used = true;
                        txn.write(store::PutFallbackKey{*f});
                        c.fallback_now_used = true;
                    }
                }
                c.left = counts_map(txn.one_time_key_counts(c.user, c.device));
            }
            for (std::size_t i = 0; i < owners.size(); ++i)
                txn.write(store::PutChange{
                    {first + static_cast<StreamId>(i), "one_time_keys", owners[i]}});
        };
        d.applied = [this, claims](StreamId) {
            for (const auto& c : *claims) {
                if (!c.key) continue;
                UserKeys* keys = written_locked(c.user);
                if (!keys) continue;
                DeviceKeys& device = keys->devices[c.device];
                device.one_time = c.left;
                if (c.fallback_now_used) device.fallback[c.algorithm].used = true;
            }
            return std::vector<std::string>{};
        };
        co_await core_.transact(std::move(d));
    }
    std::string out = "{\"one_time_keys\":{";
    Comma user_comma;
    auto claim = claims->begin();
    for (const auto& user : users) {
        user_comma(out);
        append_quoted(out, user);
        out += ":{";
        Comma device_comma;
        for (; claim != claims->end() && claim->user == user; ++claim) {
            if (!claim->key) continue;
            device_comma(out);
            append_quoted(out, claim->device);
            out += ":{" + quoted(claim->algorithm + ":" + claim->key->key_id) + ":" +
                   claim->key->json + "}";
        }
        out += '}';
    }
    out += "},\"failures\":{" + failures_json(unreachable) + "}}";
    co_return Response{200, std::move(out), {}};
}

asio::awaitable<Response> Keys::changes(Request& req) {
    const std::string* from = req.query_param("from");
    const std::string* to = req.query_param("to");
    if (!from) throw MatrixError(400, errcode::missing_param, "Missing 'from'");
    StreamId since = parse_token(*from);
    DeviceListDelta delta;
    auto older = hold_older_changes(since);  // what the store has before this process's start
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
    std::string checked_master;  // the master key held when the upload was checked
    {
        auto keys = keys_of(me);
        std::lock_guard lock(core_.mu);
        if (const std::string* master = cross_signing_key(*keys, "master")) {
            checked_master = *master;
            master_public = public_key_of(*master);
            for (const auto& u : uploads) {
                const std::string* existing = cross_signing_key(*keys, u.usage);
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

    struct Put {
        std::string user;
        std::vector<std::pair<std::string, std::string>> keys;  // (usage, key as uploaded)
        std::string checked_master;
        bool stands_alone = false;  // the password was given, and the master key comes with it
    };
    auto put = std::make_shared<Put>(Put{me, {}, std::move(checked_master), false});
    for (const auto& u : uploads) {
        put->keys.emplace_back(u.usage, json::serialize(*u.key));
        if (std::string_view(u.usage) == "master") put->stands_alone = replaces;
    }
    Decision d;
    d.streams = 1;
    d.decide = [put](store::Txn& txn, StreamId position) {
        // Checked against the master key held when the request came: had it changed since
        // (another upload came first), the keys were checked against the wrong one, and the
        // password not asked for when it was needed.
        if (txn.cross_signing_key(put->user, "master").value_or("") != put->checked_master &&
            !put->stands_alone)
            throw MatrixError(409, errcode::unknown,
                              "The cross-signing keys changed meanwhile: upload them again");
        for (const auto& [usage, text] : put->keys)
            txn.write(store::PutCrossSigningKey{{put->user, usage, text}});
        txn.write(store::PutDeviceListChange{{put->user, position}});
    };
    d.applied = [this, put](StreamId position) {
        if (UserKeys* keys = written_locked(put->user))
            for (const auto& [usage, text] : put->keys) keys->cross_signing[usage] = text;
        return device_list_changed_locked(put->user, position);
    };
    co_await core_.transact(std::move(d));
    spdlog::info("{} uploaded cross-signing keys", me);
    co_return Response{};
}

asio::awaitable<Response> Keys::upload_signatures(Request& req) {
    const std::string& me = req.session->user_id;
    // A key whose JSON a signature was checked against: a device's keys, or a cross-signing
    // key. The transaction that stores the signature finds it unchanged, or refuses it.
    struct Checked {
        std::string user;
        std::string device;  // a device's keys; empty: the cross-signing key of `usage`
        std::string usage;
        std::string json;
        bool unchanged(store::Txn& txn) const {
            auto now =
                device.empty() ? txn.cross_signing_key(user, usage) : txn.device_keys(user, device);
            return now && *now == json;
        }
    };
    struct Signature {
        store::KeySignatureRecord record;
        Checked target, signer;
    };
    struct Failure {
        std::string user, key, errcode, error;
    };
    struct Upload {
        std::string user;
        std::vector<Signature> signatures;
        std::vector<Failure> failures;  // found before the transaction
        std::vector<bool> written;      // decided, by signature
    };
    auto up = std::make_shared<Upload>();
    up->user = me;
    auto fail = [&](const std::string& user, const std::string& key, const char* code,
                    const std::string& error) {
        up->failures.push_back({user, key, code, error});
    };
    std::set<std::string> owners{me};
    for (const auto& [user_sv, keys] : req.json) {
        if (!keys.is_object())
            throw MatrixError(400, errcode::bad_json,
                              std::string(user_sv) + " must map key ids to keys");
        owners.insert(std::string(user_sv));
    }
    const auto held = keys_of(owners);
    {
        std::lock_guard lock(core_.mu);
        const UserKeys& mine_held = *held.at(me);
        const std::string* self_signing = cross_signing_key(mine_held, "self_signing");
        const std::string* user_signing = cross_signing_key(mine_held, "user_signing");
        for (const auto& [user_sv, keys] : req.json) {
            const std::string user(user_sv);
            const UserKeys& theirs = *held.at(user);
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
                std::optional<Checked> target, signer;
                std::string signer_public;  // the key that must have made the signature
                std::string signer_key_id;
                if (user == me) {
                    const std::string* master = cross_signing_key(mine_held, "master");
                    if (auto d = mine_held.devices.find(key_id);
                        d != mine_held.devices.end() && !d->second.keys.empty()) {
                        // One of my devices, signed by my self-signing key.
                        target = Checked{me, key_id, "", d->second.keys};
                        if (self_signing) {
                            signer = Checked{me, "", "self_signing", *self_signing};
                            signer_public = public_key_of(*self_signing);
                        }
                        signer_key_id = "ed25519:" + signer_public;
                    } else if (master && public_key_of(*master) == key_id) {
                        // My master key, signed by one of my devices.
                        target = Checked{me, "", "master", *master};
                        if (mine)
                            for (const auto& [name, _] : *mine) {
                                std::string_view n = name;
                                if (!n.starts_with("ed25519:")) continue;
                                auto d = mine_held.devices.find(std::string(n.substr(8)));
                                if (d == mine_held.devices.end() || d->second.keys.empty())
                                    continue;
                                auto dk = json::parse(d->second.keys).as_object();
                                const auto* idk = proto::opt_object(dk, "keys");
                                auto pk = idk ? proto::opt_string(*idk, name) : std::nullopt;
                                if (pk) {
                                    signer = Checked{me, d->first, "", d->second.keys};
                                    signer_public = *pk;
                                    signer_key_id = std::string(name);
                                    break;
                                }
                            }
                    }
                } else if (const std::string* master = cross_signing_key(theirs, "master");
                           master && public_key_of(*master) == key_id) {
                    // Someone else's master key, signed by my user-signing key.
                    target = Checked{user, "", "master", *master};
                    if (user_signing) {
                        signer = Checked{me, "", "user_signing", *user_signing};
                        signer_public = public_key_of(*user_signing);
                    }
                    signer_key_id = "ed25519:" + signer_public;
                }
                if (!target) {
                    fail(user, key_id, errcode::not_found, "No such key to sign");
                    continue;
                }
                if (signed_part(json::parse(target->json).as_object()) != signed_part(object)) {
                    fail(user, key_id, errcode::invalid_param,
                         "The key does not match the one held");
                    continue;
                }
                if (!signer || signer_public.empty() ||
                    !signed_by(object, me, signer_key_id, signer_public)) {
                    fail(user, key_id, kInvalidSignature,
                         "Not signed by a key of yours that may sign it");
                    continue;
                }
                up->signatures.push_back({{user, key_id, me, signer_key_id,
                                           std::string(mine->at(signer_key_id).as_string())},
                                          std::move(*target),
                                          std::move(*signer)});
            }
        }
    }
    if (!up->signatures.empty()) {
        Decision d;
        d.streams = 1;
        d.decide = [up](store::Txn& txn, StreamId position) {
            std::vector<bool> written;
            for (const auto& sig : up->signatures) {
                written.push_back(sig.target.unchanged(txn) && sig.signer.unchanged(txn));
                if (written.back()) txn.write(store::PutKeySignature{sig.record});
            }
            // Those who see my keys fetch them again: the new signatures come with them.
            if (std::find(written.begin(), written.end(), true) != written.end())
                txn.write(store::PutDeviceListChange{{up->user, position}});
            up->written = std::move(written);
        };
        d.applied = [this, up](StreamId position) {
            bool any = false;
            for (std::size_t i = 0; i < up->signatures.size(); ++i) {
                if (!up->written[i]) continue;
                any = true;
                const auto& r = up->signatures[i].record;
                if (UserKeys* keys = written_locked(r.target_user))
                    keys->signatures[r.target_key][{r.signer_user, r.signer_key}] = r.signature;
            }
            return any ? device_list_changed_locked(up->user, position)
                       : std::vector<std::string>{};
        };
        co_await core_.transact(std::move(d));
    }
    json::object failures;
    auto add = [&](const std::string& user, const std::string& key, const std::string& code,
                   const std::string& error) {
        if (!failures[user].is_object()) failures[user] = json::object{};
        failures[user].as_object()[key] = json::object{{"errcode", code}, {"error", error}};
    };
    for (const auto& f : up->failures) add(f.user, f.key, f.errcode, f.error);
    for (std::size_t i = 0; i < up->written.size(); ++i)
        if (!up->written[i])
            add(up->signatures[i].record.target_user, up->signatures[i].record.target_key,
                errcode::invalid_param, "The key or the key that signed it changed meanwhile");
    co_return json_response(json::object{{"failures", failures}});
}

}  // namespace mxvoip::server
