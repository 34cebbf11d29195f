#pragma once
// End-to-end encryption for a Matrix client, shaped like matrix-rust-sdk's OlmMachine: sync
// changes and server responses are pushed in, requests to send are pulled out. The machine
// does no I/O of its own except keeping its state durable; the client sends the requests.
// One machine per signed-in device; not thread-safe.
#include <boost/json.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace mxvoip::crypto {

namespace json = boost::json;
using Ms = std::int64_t;  // Unix milliseconds

inline constexpr std::string_view kOlmAlgorithm = "m.olm.v1.curve25519-aes-sha2";
inline constexpr std::string_view kMegolmAlgorithm = "m.megolm.v1.aes-sha2";

enum class RequestKind {
    keys_upload,  // POST /_matrix/client/v3/keys/upload
    keys_query,   // POST /_matrix/client/v3/keys/query
    keys_claim,   // POST /_matrix/client/v3/keys/claim
    to_device,    // PUT /_matrix/client/v3/sendToDevice/{event_type}/{id}
};

// A request for the homeserver. Its response (or failure) goes back through mark_sent /
// mark_failed with the same id; a to-device id doubles as the transaction id.
struct Request {
    std::string id;
    RequestKind kind = RequestKind::keys_upload;
    std::string event_type;  // to_device only
    json::object body;       // sent as it is
};

// The crypto part of one /sync response.
struct SyncChanges {
    json::array to_device;                                    // to_device.events
    std::vector<std::string> changed;                         // device_lists.changed
    std::vector<std::string> left;                            // device_lists.left
    std::map<std::string, std::int64_t> one_time_key_counts;  // device_one_time_keys_count
    // device_unused_fallback_key_types; absent when the server does not report it.
    std::optional<std::vector<std::string>> unused_fallback_key_types;
};

// A room's m.room.encryption settings (the spec's defaults: a week, 100 messages).
struct RoomSettings {
    std::string algorithm = std::string(kMegolmAlgorithm);
    Ms rotation_period_ms = 604800000;
    std::int64_t rotation_period_msgs = 100;
};

struct Decrypted {
    std::string type;
    json::object content;
    std::string sender_key;  // the sending device's Curve25519 key
    // The device that holds that key, when its keys are known and its Ed25519 key matches the
    // one the room key came with; empty otherwise.
    std::string sender_device;
};

struct Sharing {
    std::vector<Request> requests;
    std::vector<std::string> skipped;  // "user device: why" for devices that cannot have it
};

// Either a decrypted event or why not (unknown session, replayed index, wrong room, ...).
struct Decryption {
    std::optional<Decrypted> event;
    std::string error;
    bool key_missing = false;  // no room key for it (yet): worth trying again when one arrives
};

class Machine {
  public:
    virtual ~Machine() = default;

    virtual const std::string& user_id() const = 0;
    virtual const std::string& device_id() const = 0;
    virtual std::string identity_key() const = 0;  // Curve25519, unpadded base64
    virtual std::string signing_key() const = 0;   // Ed25519, unpadded base64

    // Room keys arriving to-device, device-list changes and key counts. Returns what could not
    // be used, one line each, for the log.
    virtual std::vector<std::string> receive_sync(const SyncChanges& changes, Ms now) = 0;
    // The members of the encrypted rooms we take part in: their devices are kept up to date.
    virtual void track_users(const std::vector<std::string>& users) = 0;
    // Key uploads and device queries now due. A request once returned is not returned again
    // until it has been marked failed.
    virtual std::vector<Request> outgoing_requests() = 0;
    // Returns what in the response could not be used (a device whose keys do not verify...).
    virtual std::vector<std::string> mark_sent(const std::string& request_id,
                                               const json::object& response) = 0;
    virtual void mark_failed(const std::string& request_id) = 0;
    // A /keys/claim for every device of `users` we have no Olm session with, if any.
    virtual std::optional<Request> claim_missing_sessions(const std::vector<std::string>& users,
                                                          Ms now) = 0;
    // Makes sure every known device of `users` has the room's current Megolm key: to-device
    // requests for those that have not, a new key first when the old one is due for rotation
    // or a device that had it is gone.
    virtual Sharing share_room_key(const std::string& room_id,
                                   const std::vector<std::string>& users,
                                   const RoomSettings& settings, Ms now) = 0;
    // The m.room.encrypted content for an event; the room key must have been shared.
    virtual json::object encrypt(const std::string& room_id, const std::string& type,
                                 const json::object& content, Ms now) = 0;
    // `event` is the whole room event (sender, event_id and content are used).
    virtual Decryption decrypt(const std::string& room_id, const json::object& event) = 0;
};

}  // namespace mxvoip::crypto
