#include "mxvoip/crypto/olm_machine.hpp"

#include "../state_file.hpp"
#include "mxvoip/proto/json.hpp"
#include "olm.hpp"

#include <sodium.h>

#include <algorithm>
#include <set>

namespace mxvoip::crypto {

namespace {

// Limits on what other users and devices can make us keep.
constexpr std::size_t kMaxInboundSessions = 10000;
constexpr std::size_t kMaxSeenIndicesPerSession = 10000;
constexpr std::size_t kMaxOlmSessionsPerDevice = 16;
constexpr std::size_t kMaxOlmPeers = 10000;  // devices we keep Olm sessions with
constexpr std::size_t kMaxTrackedUsers = 10000;
constexpr std::size_t kMaxDevicesPerUser = 1000;
constexpr std::size_t kMaxDevicesPerToDevice = 100;
constexpr Ms kClaimRetryAfter = 60000;  // a device that had no one-time key left

constexpr std::string_view kSignedCurve = "signed_curve25519";

std::optional<std::string> str(const json::object* o, std::string_view key) {
    if (!o) return std::nullopt;
    const json::value* v = o->if_contains(key);
    if (!v || !v->is_string()) return std::nullopt;
    return std::string(v->get_string());
}

const json::object* obj(const json::object* o, std::string_view key) {
    if (!o) return nullptr;
    const json::value* v = o->if_contains(key);
    return v ? v->if_object() : nullptr;
}

json::object parse_object(std::string_view text) {
    boost::system::error_code ec;
    json::value v = json::parse(text, ec);
    if (ec || !v.is_object()) throw olm::OlmError("not a JSON object");
    return std::move(v.as_object());
}

// The signed part of a signed JSON object: all but "signatures" and "unsigned".
std::string signed_text(json::object o) {
    o.erase("signatures");
    o.erase("unsigned");
    return proto::canonical_json(o);
}

bool signed_by(const json::object& o, const std::string& user, const std::string& key_id,
               const std::string& ed25519) {
    auto sig = str(obj(obj(&o, "signatures"), user), key_id);
    return sig && olm::ed25519_verify(ed25519, signed_text(o), *sig);
}

// The {"curve25519": {id: key}} libolm lists its one-time and fallback keys in.
json::object curve_keys(std::string_view text) {
    json::object o = parse_object(text);
    const json::object* keys = obj(&o, "curve25519");
    return keys ? *keys : json::object();
}

std::string request_id() {
    std::string bytes = olm::random_bytes(12);
    std::string out = "mxvc";
    static constexpr char kHex[] = "0123456789abcdef";
    for (unsigned char c : bytes) {
        out += kHex[c >> 4];
        out += kHex[c & 15];
    }
    return out;
}

struct Device {
    std::string curve25519;
    std::string ed25519;
};

struct TrackedUser {
    std::uint64_t generation = 1;  // bumped by every device-list change we hear of
    std::uint64_t queried = 0;     // the generation `devices` is up to date with
    std::map<std::string, Device> devices;
    bool outdated() const { return queried != generation; }
};

struct OlmSessionEntry {
    olm::Session session;
    Ms last_used = 0;  // made, or last encrypted or decrypted with
};

using DeviceSet = std::map<std::string, std::map<std::string, std::string>>;  // user, device: key

struct OutboundRoom {
    olm::OutboundGroupSession session;
    std::string id;
    Ms created = 0;
    DeviceSet shared;   // has the key (the to-device request was sent)
    DeviceSet pending;  // its to-device request is out
};

struct InboundEntry {
    olm::InboundGroupSession session;
    std::string sender_key;   // Curve25519 of the device that shared it
    std::string signing_key;  // the Ed25519 key that device claimed in the Olm message
    std::map<std::uint32_t, std::string> seen;  // message index: event id
    std::uint64_t order = 0;
};

struct InFlight {
    RequestKind kind;
    std::map<std::string, std::uint64_t> queried;  // keys_query: user, generation asked about
    Ms sent_at = 0;                                // keys_claim
    std::string room_id, session_id;               // to_device room key
    DeviceSet devices;
};

bool contains(const DeviceSet& set, const std::string& user, const std::string& device,
              const std::string& key) {
    auto u = set.find(user);
    if (u == set.end()) return false;
    auto d = u->second.find(device);
    return d != u->second.end() && d->second == key;
}

class OlmMachine final : public Machine {
  public:
    explicit OlmMachine(const OlmMachineOptions& o)
        : user_(o.user_id), device_(o.device_id), file_(o.state_file), key_(o.key) {
        if (std::optional<std::string> state = read_state(file_, key_)) {
            load(*state);
        } else {
            account_ = olm::Account::create();
            account_.generate_fallback_key();  // goes out with the first upload
            save();
        }
        json::object ids = parse_object(account_.identity_keys());
        curve_ = *str(&ids, "curve25519");
        ed_ = *str(&ids, "ed25519");
    }

    const std::string& user_id() const override { return user_; }
    const std::string& device_id() const override { return device_; }
    std::string identity_key() const override { return curve_; }
    std::string signing_key() const override { return ed_; }

    std::vector<std::string> receive_sync(const SyncChanges& c, Ms now) override {
        std::vector<std::string> problems;
        bool changed = false;
        for (const auto& u : c.changed)
            if (auto it = users_.find(u); it != users_.end()) it->second.generation++;
        for (const auto& u : c.left) users_.erase(u);
        if (auto it = c.one_time_key_counts.find(std::string(kSignedCurve));
            it != c.one_time_key_counts.end())
            server_otks_ = it->second;
        // The server says our fallback key was used (or never arrived): a new one goes out
        // with the next upload.
        if (c.unused_fallback_key_types && device_keys_uploaded_ && !upload_in_flight() &&
            std::find(c.unused_fallback_key_types->begin(), c.unused_fallback_key_types->end(),
                      kSignedCurve) == c.unused_fallback_key_types->end() &&
            curve_keys(account_.unpublished_fallback_key()).empty()) {
            account_.generate_fallback_key();
            changed = true;
        }
        for (const auto& v : c.to_device) {
            const json::object* ev = v.if_object();
            if (!ev) continue;
            try {
                changed |= to_device(*ev, now, problems);
            } catch (const olm::OlmError& e) {
                problems.push_back("to-device message from " + str(ev, "sender").value_or("?") +
                                   ": " + e.what());
            }
        }
        if (changed || !c.changed.empty() || !c.left.empty()) save();
        return problems;
    }

    void track_users(const std::vector<std::string>& users) override {
        bool added = false;
        for (const auto& u : users)
            if (users_.size() < kMaxTrackedUsers || users_.count(u))
                added |= users_.try_emplace(u).second;
        if (added) save();
    }

    std::vector<Request> outgoing_requests() override {
        std::vector<Request> out;
        if (!upload_in_flight()) {
            if (std::optional<json::object> body = upload_body()) {
                Request r{request_id(), RequestKind::keys_upload, {}, std::move(*body)};
                in_flight_[r.id] = InFlight{RequestKind::keys_upload};
                out.push_back(std::move(r));
            }
        }
        std::set<std::string> asking;
        for (const auto& [id, f] : in_flight_)
            for (const auto& [u, gen] : f.queried) asking.insert(u);
        InFlight query{RequestKind::keys_query};
        json::object device_keys;
        for (const auto& [u, t] : users_) {
            if (!t.outdated() || asking.count(u)) continue;
            query.queried[u] = t.generation;
            device_keys[u] = json::array();
        }
        if (!device_keys.empty()) {
            Request r{request_id(),
                      RequestKind::keys_query,
                      {},
                      json::object{{"device_keys", std::move(device_keys)}, {"timeout", 10000}}};
            in_flight_[r.id] = std::move(query);
            out.push_back(std::move(r));
        }
        return out;
    }

    std::vector<std::string> mark_sent(const std::string& id,
                                       const json::object& response) override {
        auto it = in_flight_.find(id);
        if (it == in_flight_.end()) return {};
        InFlight f = std::move(it->second);
        in_flight_.erase(it);
        std::vector<std::string> problems;
        switch (f.kind) {
            case RequestKind::keys_upload:
                account_.mark_keys_as_published();
                device_keys_uploaded_ = true;
                if (auto n = obj(&response, "one_time_key_counts");
                    n && n->if_contains(kSignedCurve) && n->at(kSignedCurve).is_int64())
                    server_otks_ = n->at(kSignedCurve).as_int64();
                break;
            case RequestKind::keys_query:
                query_response(f, response, problems);
                break;
            case RequestKind::keys_claim:
                claim_response(f, response, problems);
                break;
            case RequestKind::to_device:
                if (auto room = outbound_.find(f.room_id);
                    room != outbound_.end() && room->second.id == f.session_id) {
                    for (const auto& [u, devices] : f.devices)
                        for (const auto& [d, key] : devices) {
                            room->second.shared[u][d] = key;
                            room->second.pending[u].erase(d);
                        }
                }
                break;
        }
        save();
        return problems;
    }

    void mark_failed(const std::string& id) override {
        auto it = in_flight_.find(id);
        if (it == in_flight_.end()) return;
        if (it->second.kind == RequestKind::to_device) {
            if (auto room = outbound_.find(it->second.room_id); room != outbound_.end())
                for (const auto& [u, devices] : it->second.devices)
                    for (const auto& [d, key] : devices) room->second.pending[u].erase(d);
        }
        in_flight_.erase(it);
    }

    std::optional<Request> claim_missing_sessions(const std::vector<std::string>& users,
                                                  Ms now) override {
        json::object wanted;
        InFlight f{RequestKind::keys_claim};
        for (const auto& u : users) {
            auto t = users_.find(u);
            if (t == users_.end()) continue;
            for (const auto& [d, dev] : t->second.devices) {
                if (u == user_ && d == device_) continue;
                if (sessions_.count(dev.curve25519)) continue;
                if (auto failed = claim_failed_.find(dev.curve25519);
                    failed != claim_failed_.end() && now - failed->second < kClaimRetryAfter)
                    continue;
                if (!wanted.contains(u)) wanted[u] = json::object();
                wanted[u].as_object()[d] = kSignedCurve;
                f.devices[u][d] = dev.curve25519;
            }
        }
        if (wanted.empty()) return std::nullopt;
        Request r{request_id(),
                  RequestKind::keys_claim,
                  {},
                  json::object{{"one_time_keys", std::move(wanted)}, {"timeout", 10000}}};
        f.sent_at = now;
        in_flight_[r.id] = std::move(f);
        return r;
    }

    Sharing share_room_key(const std::string& room_id, const std::vector<std::string>& users,
                           const RoomSettings& settings, Ms now) override {
        Sharing out;
        if (settings.algorithm != kMegolmAlgorithm) {
            out.skipped.push_back(room_id + ": unsupported algorithm " + settings.algorithm);
            return out;
        }
        DeviceSet targets;
        for (const auto& u : users) {
            auto t = users_.find(u);
            if (t == users_.end()) continue;
            for (const auto& [d, dev] : t->second.devices)
                if (!(u == user_ && d == device_)) targets[u][d] = dev.curve25519;
        }
        auto room = outbound_.find(room_id);
        bool rotate = room == outbound_.end() ||
                      now - room->second.created >= settings.rotation_period_ms ||
                      room->second.session.message_index() >=
                          static_cast<std::uint64_t>(
                              std::max<std::int64_t>(1, settings.rotation_period_msgs));
        if (!rotate) {
            // A device that has the key and is no longer in the room must not read what follows.
            for (const auto& [u, devices] : room->second.shared)
                for (const auto& [d, key] : devices)
                    if (!contains(targets, u, d, key)) rotate = true;
        }
        if (rotate) room = new_outbound(room_id, now);
        OutboundRoom& r = room->second;
        json::object room_key{{"algorithm", kMegolmAlgorithm},
                              {"room_id", room_id},
                              {"session_id", r.id},
                              {"session_key", r.session.session_key()}};
        InFlight batch{RequestKind::to_device};
        json::object messages;
        std::size_t in_batch = 0;
        auto flush = [&] {
            if (!in_batch) return;
            Request req{request_id(), RequestKind::to_device, "m.room.encrypted",
                        json::object{{"messages", std::move(messages)}}};
            batch.room_id = room_id;
            batch.session_id = r.id;
            in_flight_[req.id] = std::move(batch);
            out.requests.push_back(std::move(req));
            batch = InFlight{RequestKind::to_device};
            messages = json::object();
            in_batch = 0;
        };
        for (const auto& [u, devices] : targets) {
            for (const auto& [d, key] : devices) {
                if (contains(r.shared, u, d, key) || contains(r.pending, u, d, key)) continue;
                auto s = sessions_.find(key);
                if (s == sessions_.end() || s->second.empty()) {
                    out.skipped.push_back(u + " " + d + ": no Olm session");
                    continue;
                }
                const Device& dev = users_.at(u).devices.at(d);
                if (!messages.contains(u)) messages[u] = json::object();
                messages[u].as_object()[d] =
                    olm_encrypt(s->second, u, dev, "m.room_key", room_key, now);
                batch.devices[u][d] = key;
                r.pending[u][d] = key;
                if (++in_batch == kMaxDevicesPerToDevice) flush();
            }
        }
        flush();
        if (rotate || !out.requests.empty()) save();
        return out;
    }

    json::object encrypt(const std::string& room_id, const std::string& type,
                         const json::object& content, Ms) override {
        auto room = outbound_.find(room_id);
        if (room == outbound_.end())
            throw std::logic_error("encrypt: the room key of " + room_id + " was not shared");
        json::object plain{{"type", type}, {"content", content}, {"room_id", room_id}};
        std::string ciphertext = room->second.session.encrypt(json::serialize(plain));
        save();
        return json::object{{"algorithm", kMegolmAlgorithm},
                            {"sender_key", curve_},
                            {"ciphertext", std::move(ciphertext)},
                            {"session_id", room->second.id},
                            {"device_id", device_}};
    }

    Decryption decrypt(const std::string& room_id, const json::object& event) override {
        const json::object* content = obj(&event, "content");
        if (str(content, "algorithm") != kMegolmAlgorithm)
            return {std::nullopt, "not a Megolm message"};
        auto session_id = str(content, "session_id");
        auto ciphertext = str(content, "ciphertext");
        if (!session_id || !ciphertext) return {std::nullopt, "no session_id or ciphertext"};
        auto it = inbound_.find({room_id, *session_id});
        if (it == inbound_.end())
            return {std::nullopt,
                    "no room key for session " + *session_id +
                        " (not shared with this device, or not arrived yet)",
                    true};
        InboundEntry& in = it->second;
        if (auto claimed = str(content, "sender_key"); claimed && *claimed != in.sender_key)
            return {std::nullopt, "session " + *session_id + " belongs to another device"};
        std::pair<std::string, std::uint32_t> plain;
        try {
            plain = in.session.decrypt(*ciphertext);
        } catch (const olm::OlmError& e) {
            return {std::nullopt, e.what()};
        }
        json::object payload;
        try {
            payload = parse_object(plain.first);
        } catch (const olm::OlmError&) {
            return {std::nullopt, "the decrypted payload is not JSON"};
        }
        if (str(&payload, "room_id") != room_id)
            return {std::nullopt, "encrypted for another room"};
        auto type = str(&payload, "type");
        const json::object* inner = obj(&payload, "content");
        if (!type || !inner) return {std::nullopt, "the decrypted payload has no type or content"};
        std::string event_id = str(&event, "event_id").value_or("");
        auto seen = in.seen.find(plain.second);
        if (seen != in.seen.end() && seen->second != event_id)
            return {std::nullopt, "replayed: message index " + std::to_string(plain.second) +
                                      " of session " + *session_id + " was used by " +
                                      seen->second};
        Decrypted out{*type, *inner, in.sender_key, {}};
        std::string sender = str(&event, "sender").value_or("");
        for (const auto& [u, t] : users_)
            for (const auto& [d, dev] : t.devices)
                if (dev.curve25519 == in.sender_key) {
                    if (u != sender)
                        return {std::nullopt, "sent by " + sender + " with a key of " + u};
                    if (dev.ed25519 == in.signing_key) out.sender_device = d;
                }
        if (seen == in.seen.end()) {
            in.seen.emplace(plain.second, event_id);
            if (in.seen.size() > kMaxSeenIndicesPerSession) in.seen.erase(in.seen.begin());
            save();
        }
        return {std::move(out), {}};
    }

  private:
    bool upload_in_flight() const {
        return std::any_of(in_flight_.begin(), in_flight_.end(),
                           [](const auto& f) { return f.second.kind == RequestKind::keys_upload; });
    }

    json::object signed_object(json::object o) const {
        std::string sig = account_.sign(signed_text(o));
        o["signatures"] = json::object{{user_, json::object{{"ed25519:" + device_, sig}}}};
        return o;
    }

    // Device keys on first use, one-time keys up to half of what the account can hold, a
    // fallback key when there is a new one: what is not on the server yet.
    std::optional<json::object> upload_body() {
        json::object body;
        if (!device_keys_uploaded_) {
            json::object keys{{"curve25519:" + device_, curve_}, {"ed25519:" + device_, ed_}};
            body["device_keys"] = signed_object(
                json::object{{"user_id", user_},
                             {"device_id", device_},
                             {"algorithms", json::array{kOlmAlgorithm, kMegolmAlgorithm}},
                             {"keys", std::move(keys)}});
        }
        std::int64_t target = static_cast<std::int64_t>(account_.max_one_time_keys() / 2);
        json::object unpublished = curve_keys(account_.one_time_keys());
        if (unpublished.empty() && server_otks_ < target) {
            account_.generate_one_time_keys(static_cast<std::size_t>(target - server_otks_));
            unpublished = curve_keys(account_.one_time_keys());
            save();
        }
        json::object otks;
        for (const auto& [id, key] : unpublished)
            otks[std::string(kSignedCurve) + ":" + std::string(id)] =
                signed_object(json::object{{"key", key}});
        if (!otks.empty()) body["one_time_keys"] = std::move(otks);
        json::object fallback_keys;
        for (const auto& [id, key] : curve_keys(account_.unpublished_fallback_key()))
            fallback_keys[std::string(kSignedCurve) + ":" + std::string(id)] =
                signed_object(json::object{{"key", key}, {"fallback", true}});
        if (!fallback_keys.empty()) body["fallback_keys"] = std::move(fallback_keys);
        if (body.empty()) return std::nullopt;
        return body;
    }

    void query_response(const InFlight& f, const json::object& response,
                        std::vector<std::string>& problems) {
        const json::object* all = obj(&response, "device_keys");
        for (const auto& [u, gen] : f.queried) {
            auto t = users_.find(u);
            if (t == users_.end()) continue;  // no longer tracked
            std::map<std::string, Device> devices;
            if (const json::object* listed = obj(all, u)) {
                for (const auto& [d, v] : *listed) {
                    const json::object* keys = v.if_object();
                    std::string id(d);
                    auto curve = str(obj(keys, "keys"), "curve25519:" + id);
                    auto ed = str(obj(keys, "keys"), "ed25519:" + id);
                    if (!keys || str(keys, "user_id") != u || str(keys, "device_id") != id ||
                        !curve || !ed || !signed_by(*keys, u, "ed25519:" + id, *ed)) {
                        problems.push_back(u + " " + id + ": device keys do not verify, ignored");
                        continue;
                    }
                    if (u == user_ && id == device_) {
                        if (*ed != ed_ || *curve != curve_)
                            problems.push_back("the server lists other keys for this device");
                        continue;
                    }
                    // A device keeps its signing key for life: a change is an attack.
                    if (auto old = t->second.devices.find(id);
                        old != t->second.devices.end() && old->second.ed25519 != *ed) {
                        problems.push_back(u + " " + id + ": its signing key changed, ignored");
                        devices[id] = old->second;
                        continue;
                    }
                    if (devices.size() == kMaxDevicesPerUser) {
                        problems.push_back(u + ": more than " + std::to_string(kMaxDevicesPerUser) +
                                           " devices");
                        break;
                    }
                    devices[id] = Device{*curve, *ed};
                }
            } else if (obj(obj(&response, "failures"), u.substr(u.find(':') + 1))) {
                problems.push_back(u + ": the user's server did not answer the key query");
                continue;  // stays outdated
            }
            t->second.devices = std::move(devices);
            t->second.queried = gen;
        }
    }

    void claim_response(const InFlight& f, const json::object& response,
                        std::vector<std::string>& problems) {
        std::erase_if(claim_failed_,
                      [&](const auto& e) { return f.sent_at - e.second >= kClaimRetryAfter; });
        const json::object* all = obj(&response, "one_time_keys");
        for (const auto& [u, devices] : f.devices) {
            auto t = users_.find(u);
            for (const auto& [d, curve] : devices) {
                const Device* dev = nullptr;
                if (t != users_.end())
                    if (auto it = t->second.devices.find(d);
                        it != t->second.devices.end() && it->second.curve25519 == curve)
                        dev = &it->second;
                if (!dev || sessions_.count(curve)) continue;  // gone, or raced by a message
                bool made = false;
                if (const json::object* keys = obj(obj(all, u), d)) {
                    for (const auto& [key_id, v] : *keys) {
                        const json::object* k = v.if_object();
                        auto key = str(k, "key");
                        if (!std::string_view(key_id).starts_with(kSignedCurve) || !k || !key ||
                            !signed_by(*k, u, "ed25519:" + d, dev->ed25519)) {
                            problems.push_back(u + " " + d + ": one-time key does not verify");
                            continue;
                        }
                        sessions_[curve].push_back(OlmSessionEntry{
                            olm::Session::outbound(account_, curve, *key), f.sent_at});
                        forget_idle_peers(curve);
                        made = true;
                        break;
                    }
                }
                if (!made) claim_failed_[curve] = f.sent_at;
            }
        }
    }

    // Past kMaxOlmPeers devices, the one whose sessions were used longest ago is forgotten
    // (it can start a new session with a pre-key message, or we claim a key again).
    void forget_idle_peers(const std::string& keep) {
        while (sessions_.size() > kMaxOlmPeers) {
            auto idle = sessions_.end();
            Ms idle_at = 0;
            for (auto it = sessions_.begin(); it != sessions_.end(); ++it) {
                if (it->first == keep) continue;
                Ms last = 0;
                for (const auto& e : it->second) last = std::max(last, e.last_used);
                if (idle == sessions_.end() || last < idle_at) {
                    idle = it;
                    idle_at = last;
                }
            }
            if (idle == sessions_.end()) return;
            sessions_.erase(idle);
        }
    }

    std::map<std::string, OutboundRoom>::iterator new_outbound(const std::string& room_id, Ms now) {
        OutboundRoom r{olm::OutboundGroupSession::create(), {}, now, {}, {}};
        r.id = r.session.id();
        // Our own copy, so that what this device sent can be read back.
        inbound_.insert_or_assign(
            std::pair{room_id, r.id},
            InboundEntry{olm::InboundGroupSession::create(r.session.session_key()),
                         curve_,
                         ed_,
                         {},
                         next_order_++});
        evict_inbound();
        return outbound_.insert_or_assign(room_id, std::move(r)).first;
    }

    void evict_inbound() {
        while (inbound_.size() > kMaxInboundSessions) {
            auto oldest = std::min_element(
                inbound_.begin(), inbound_.end(),
                [](const auto& a, const auto& b) { return a.second.order < b.second.order; });
            inbound_.erase(oldest);
        }
    }

    // The Olm message for one device: the newest session with it.
    json::object olm_encrypt(std::vector<OlmSessionEntry>& list, const std::string& user,
                             const Device& dev, const std::string& type,
                             const json::object& content, Ms now) {
        auto newest = std::max_element(list.begin(), list.end(), [](const auto& a, const auto& b) {
            return a.last_used < b.last_used;
        });
        json::object plain{{"type", type},
                           {"content", content},
                           {"sender", user_},
                           {"sender_device", device_},
                           {"keys", json::object{{"ed25519", ed_}}},
                           {"recipient", user},
                           {"recipient_keys", json::object{{"ed25519", dev.ed25519}}}};
        auto [msg_type, body] = newest->session.encrypt(json::serialize(plain));
        newest->last_used = now;
        return json::object{
            {"algorithm", kOlmAlgorithm},
            {"sender_key", curve_},
            {"ciphertext",
             json::object{{dev.curve25519, json::object{{"type", msg_type}, {"body", body}}}}}};
    }

    // Returns whether the state changed.
    bool to_device(const json::object& ev, Ms now, std::vector<std::string>& problems) {
        auto type = str(&ev, "type");
        auto sender = str(&ev, "sender");
        const json::object* content = obj(&ev, "content");
        if (!type || !sender || !content) return false;
        if (*type == "m.room_key") {
            problems.push_back("unencrypted m.room_key from " + *sender + ", ignored");
            return false;
        }
        if (*type != "m.room.encrypted") return false;
        if (str(content, "algorithm") != kOlmAlgorithm) {
            problems.push_back("to-device message from " + *sender + " in " +
                               str(content, "algorithm").value_or("no algorithm"));
            return false;
        }
        auto sender_key = str(content, "sender_key");
        const json::object* mine = obj(obj(content, "ciphertext"), curve_);
        if (!sender_key || !mine) return false;  // for another device of ours
        const json::value* t = mine->if_contains("type");
        auto body = str(mine, "body");
        if (!t || !t->is_int64() || (t->as_int64() != 0 && t->as_int64() != 1) || !body) {
            problems.push_back("malformed Olm message from " + *sender);
            return false;
        }
        int msg_type = static_cast<int>(t->as_int64());
        std::optional<std::string> plaintext;
        auto& list = sessions_[*sender_key];
        for (auto& s : list) {
            if (msg_type == 0 && !s.session.matches_inbound(*sender_key, *body)) continue;
            try {
                plaintext = s.session.decrypt(msg_type, *body);
                s.last_used = now;
                break;
            } catch (const olm::OlmError&) {
                if (msg_type == 0) throw;  // it was this session's, and it is broken
            }
        }
        bool changed = plaintext.has_value();
        if (!plaintext) {
            if (msg_type != 0) {
                if (list.empty()) sessions_.erase(*sender_key);
                problems.push_back("Olm message from " + *sender + " fits none of our sessions");
                return false;
            }
            olm::Session s = olm::Session::inbound(account_, *sender_key, *body);
            plaintext = s.decrypt(0, *body);
            list.push_back(OlmSessionEntry{std::move(s), now});
            forget_idle_peers(*sender_key);
            if (list.size() > kMaxOlmSessionsPerDevice)
                list.erase(std::min_element(
                    list.begin(), list.end(),
                    [](const auto& a, const auto& b) { return a.last_used < b.last_used; }));
            changed = true;
        }
        json::object p = parse_object(*plaintext);
        auto inner_type = str(&p, "type");
        auto claimed_ed = str(obj(&p, "keys"), "ed25519");
        if (str(&p, "sender") != *sender || str(&p, "recipient") != user_ ||
            str(obj(&p, "recipient_keys"), "ed25519") != ed_ || !inner_type || !claimed_ed ||
            !obj(&p, "content")) {
            problems.push_back("Olm message from " + *sender + " is not addressed right, ignored");
            return changed;
        }
        if (auto u = users_.find(*sender); u != users_.end())
            for (const auto& [d, dev] : u->second.devices)
                if (dev.curve25519 == *sender_key && dev.ed25519 != *claimed_ed) {
                    problems.push_back("Olm message from " + *sender + " " + d +
                                       " claims another signing key, ignored");
                    return changed;
                }
        if (*inner_type == "m.room_key")
            return room_key(*obj(&p, "content"), *sender, *sender_key, *claimed_ed, problems) ||
                   changed;
        return changed;  // m.dummy and what calls do not need
    }

    bool room_key(const json::object& c, const std::string& sender, const std::string& sender_key,
                  const std::string& signing_key, std::vector<std::string>& problems) {
        auto room_id = str(&c, "room_id");
        auto session_id = str(&c, "session_id");
        auto session_key = str(&c, "session_key");
        if (str(&c, "algorithm") != kMegolmAlgorithm || !room_id || !session_id || !session_key) {
            problems.push_back("room key from " + sender + " is not a Megolm key, ignored");
            return false;
        }
        olm::InboundGroupSession s = olm::InboundGroupSession::create(*session_key);
        if (s.id() != *session_id) {
            problems.push_back("room key from " + sender + " has the wrong session id, ignored");
            return false;
        }
        auto key = std::pair{*room_id, *session_id};
        if (auto old = inbound_.find(key); old != inbound_.end()) {
            if (old->second.sender_key != sender_key) {
                problems.push_back("room key from " + sender +
                                   " reuses another device's session id, ignored");
                return false;
            }
            if (old->second.session.first_known_index() <= s.first_known_index()) return false;
            old->second.session = std::move(s);  // it reaches further back
            return true;
        }
        inbound_.emplace(key,
                         InboundEntry{std::move(s), sender_key, signing_key, {}, next_order_++});
        evict_inbound();
        return true;
    }

    // ---- persistence ---------------------------------------------------------------------

    std::string_view pickle_key() const {
        return {reinterpret_cast<const char*>(key_.data()), key_.size()};
    }

    static json::object device_set(const DeviceSet& set) {
        json::object o;
        for (const auto& [u, devices] : set) {
            json::object d;
            for (const auto& [id, key] : devices) d[id] = key;
            o[u] = std::move(d);
        }
        return o;
    }

    static DeviceSet device_set(const json::object* o) {
        DeviceSet set;
        if (!o) return set;
        for (const auto& [u, devices] : *o)
            if (const json::object* d = devices.if_object())
                for (const auto& [id, key] : *d)
                    if (key.is_string()) set[u][id] = std::string(key.get_string());
        return set;
    }

    void save() {
        auto k = pickle_key();
        json::object s{{"version", 1},
                       {"user_id", user_},
                       {"device_id", device_},
                       {"account", account_.pickle(k)},
                       {"device_keys_uploaded", device_keys_uploaded_},
                       {"server_one_time_keys", server_otks_},
                       {"next_order", next_order_}};
        json::object olm;
        for (const auto& [key, list] : sessions_) {
            json::array a;
            for (const auto& e : list)
                a.push_back(
                    json::object{{"pickle", e.session.pickle(k)}, {"last_used", e.last_used}});
            if (!a.empty()) olm[key] = std::move(a);
        }
        s["olm_sessions"] = std::move(olm);
        json::object out;
        for (const auto& [room, r] : outbound_)
            out[room] = json::object{{"pickle", r.session.pickle(k)},
                                     {"created", r.created},
                                     {"shared", device_set(r.shared)}};
        s["outbound"] = std::move(out);
        json::array in;
        for (const auto& [key, e] : inbound_) {
            json::object seen;
            for (const auto& [index, event_id] : e.seen) seen[std::to_string(index)] = event_id;
            in.push_back(json::object{{"room_id", key.first},
                                      {"sender_key", e.sender_key},
                                      {"signing_key", e.signing_key},
                                      {"pickle", e.session.pickle(k)},
                                      {"seen", std::move(seen)},
                                      {"order", e.order}});
        }
        s["inbound"] = std::move(in);
        json::object users;
        for (const auto& [u, t] : users_) {
            json::object devices;
            for (const auto& [d, dev] : t.devices)
                devices[d] = json::array{dev.curve25519, dev.ed25519};
            users[u] = json::object{
                {"generation", t.generation}, {"queried", t.queried}, {"devices", devices}};
        }
        s["users"] = std::move(users);
        json::object failed;
        for (const auto& [key, at] : claim_failed_) failed[key] = at;
        s["claim_failed"] = std::move(failed);
        std::string text = json::serialize(s);
        write_state(file_, key_, text);
        sodium_memzero(text.data(), text.size());
    }

    void load(const std::string& text) {
        json::object s;
        try {
            s = parse_object(text);
        } catch (const olm::OlmError&) {
            throw StateError(file_.string() + " holds no crypto state");
        }
        if (str(&s, "user_id") != user_ || str(&s, "device_id") != device_)
            throw StateError(file_.string() + " is the crypto state of another device (" +
                             str(&s, "user_id").value_or("?") + " " +
                             str(&s, "device_id").value_or("?") + ")");
        auto k = pickle_key();
        auto i64 = [](const json::object* o, std::string_view key) -> std::int64_t {
            const json::value* v = o ? o->if_contains(key) : nullptr;
            return v && v->is_int64()
                       ? v->as_int64()
                       : (v && v->is_uint64() ? static_cast<std::int64_t>(v->as_uint64()) : 0);
        };
        try {
            account_ = olm::Account::unpickle(k, str(&s, "account").value_or(""));
            device_keys_uploaded_ = s.if_contains("device_keys_uploaded") &&
                                    s.at("device_keys_uploaded").is_bool() &&
                                    s.at("device_keys_uploaded").as_bool();
            server_otks_ = i64(&s, "server_one_time_keys");
            next_order_ = static_cast<std::uint64_t>(i64(&s, "next_order"));
            if (const json::object* olm = obj(&s, "olm_sessions"))
                for (const auto& [key, list] : *olm)
                    if (const json::array* a = list.if_array())
                        for (const auto& e : *a) {
                            const json::object* o = e.if_object();
                            sessions_[key].push_back(OlmSessionEntry{
                                olm::Session::unpickle(k, str(o, "pickle").value_or("")),
                                i64(o, "last_used")});
                        }
            if (const json::object* out = obj(&s, "outbound"))
                for (const auto& [room, v] : *out) {
                    const json::object* o = v.if_object();
                    OutboundRoom r{
                        olm::OutboundGroupSession::unpickle(k, str(o, "pickle").value_or("")),
                        {},
                        i64(o, "created"),
                        device_set(obj(o, "shared")),
                        {}};
                    r.id = r.session.id();
                    outbound_.emplace(room, std::move(r));
                }
            if (const json::value* in = s.if_contains("inbound"); in && in->is_array())
                for (const auto& e : in->get_array()) {
                    const json::object* o = e.if_object();
                    InboundEntry entry{
                        olm::InboundGroupSession::unpickle(k, str(o, "pickle").value_or("")),
                        str(o, "sender_key").value_or(""),
                        str(o, "signing_key").value_or(""),
                        {},
                        static_cast<std::uint64_t>(i64(o, "order"))};
                    if (const json::object* seen = obj(o, "seen"))
                        for (const auto& [index, event_id] : *seen)
                            if (event_id.is_string())
                                entry.seen[static_cast<std::uint32_t>(std::stoul(
                                    std::string(index)))] = std::string(event_id.get_string());
                    std::string id = entry.session.id();
                    inbound_.emplace(std::pair{str(o, "room_id").value_or(""), id},
                                     std::move(entry));
                }
            if (const json::object* users = obj(&s, "users"))
                for (const auto& [u, v] : *users) {
                    const json::object* o = v.if_object();
                    TrackedUser t;
                    t.generation = static_cast<std::uint64_t>(i64(o, "generation"));
                    t.queried = static_cast<std::uint64_t>(i64(o, "queried"));
                    if (const json::object* devices = obj(o, "devices"))
                        for (const auto& [d, keys] : *devices)
                            if (const json::array* a = keys.if_array();
                                a && a->size() == 2 && (*a)[0].is_string() && (*a)[1].is_string())
                                t.devices[d] = Device{std::string((*a)[0].get_string()),
                                                      std::string((*a)[1].get_string())};
                    users_.emplace(u, std::move(t));
                }
            if (const json::object* failed = obj(&s, "claim_failed"))
                for (const auto& [key, at] : *failed)
                    if (at.is_int64()) claim_failed_[key] = at.as_int64();
        } catch (const olm::OlmError& e) {
            throw StateError(file_.string() + ": " + e.what());
        } catch (const std::exception& e) {
            throw StateError(file_.string() + " is damaged: " + e.what());
        }
    }

    std::string user_, device_;
    std::filesystem::path file_;
    StateKey key_;
    olm::Account account_;
    std::string curve_, ed_;
    bool device_keys_uploaded_ = false;
    std::int64_t server_otks_ = 0;
    std::map<std::string, TrackedUser> users_;
    std::map<std::string, std::vector<OlmSessionEntry>> sessions_;  // by their Curve25519 key
    std::map<std::string, Ms> claim_failed_;                        // by their Curve25519 key
    std::map<std::string, OutboundRoom> outbound_;                  // by room
    std::map<std::pair<std::string, std::string>, InboundEntry> inbound_;  // room, session id
    std::uint64_t next_order_ = 0;
    std::map<std::string, InFlight> in_flight_;
};

}  // namespace

std::unique_ptr<Machine> open_olm_machine(const OlmMachineOptions& options) {
    if (sodium_init() < 0) throw std::runtime_error("libsodium cannot start");
    return std::make_unique<OlmMachine>(options);
}

}  // namespace mxvoip::crypto
