#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

namespace mxvoip::store {

// Position in the server's single global stream. Every persisted change that a /sync can
// report (events, account data, to-device messages) takes the next one.
using StreamId = std::int64_t;

struct StoreError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The database cannot be reached or cannot take the write right now (connection lost, the
// database restarting, disk full, I/O error): the same work may succeed later. Every other
// StoreError is a fault of the work itself and will fail again.
struct StoreUnavailable : StoreError {
    using StoreError::StoreError;
};

struct UserRecord {
    std::string user_id;
    std::string password_hash;  // libsodium crypto_pwhash_str output; empty for guests
    bool is_guest = false;
    std::int64_t created_ts = 0;
    std::string displayname;
    std::string avatar_url;
};

struct TokenRecord {
    std::string token_hash;  // hex SHA-256 of the access token; the token itself is never stored
    std::string user_id;
    std::string device_id;
    std::string device_display_name;
};

// Who an access token signs in (Store::session).
struct SessionRecord {
    std::string user_id;
    std::string device_id;
    bool is_guest = false;
};

// A signed-in device of an account (one with an access token).
struct DeviceRecord {
    std::string device_id;
    std::string display_name;
};

// An account and its signed-in devices (Store::accounts), as of one moment.
struct AccountLoad {
    std::optional<UserRecord> user;  // none: no such account
    std::vector<DeviceRecord> devices;
};

// A room event as it is served: `json` is the client-format event; its `unsigned` holds only
// what never changes (what a state event replaced), the rest is added per response.
struct EventRecord {
    StreamId stream = 0;
    std::string event_id;
    std::string room_id;
    std::string type;
    std::optional<std::string> state_key;
    std::string sender;
    std::int64_t origin_server_ts = 0;
    std::string json;
    // The client transaction that produced it (PUT /send), for idempotent retries; empty
    // when the server made the event.
    std::string txn_device_key;  // user_id + '|' + device_id
    std::string txn_id;
};

// A client transaction of a room event, read back for idempotent retries after a restart.
struct TxnRecord {
    std::string device_key;  // user_id + '|' + device_id
    std::string room_id;
    std::string txn_id;
    std::string event_id;
    std::int64_t ts = 0;
};

struct RoomRecord {
    std::string room_id;
    std::string room_version;
};

// A local room alias ("#name:server") and who made it.
struct RoomAliasRecord {
    std::string alias;
    std::string room_id;
    std::string creator;
};

struct AccountDataRecord {
    StreamId stream = 0;
    std::string user_id;
    std::string room_id;  // empty for global account data
    std::string type;
    std::string content;  // JSON object text
};

struct ToDeviceRecord {
    StreamId stream = 0;
    std::string user_id;
    std::string device_id;
    std::string message;  // {"sender","type","content"} JSON text
};

// A membership or history_visibility change, as far as the history visibility rules need it.
struct HistoryRecord {
    StreamId stream = 0;
    std::string room_id;
    std::string type;       // m.room.member or m.room.history_visibility
    std::string state_key;  // the member's user id; empty for history_visibility
    std::string value;      // content.membership or content.history_visibility
};

// What a room is made of when it is read into memory (Store::room), all as of one moment.
struct RoomLoad {
    RoomRecord room;
    std::vector<EventRecord> state;      // its current state, in stream order
    std::vector<HistoryRecord> history;  // its membership and visibility changes, stream order
    StreamId upto = 0;                   // its newest event then: all the above include
};

struct FilterRecord {
    std::string user_id;
    std::int64_t filter_id = 0;
    std::string json;
};

// End-to-end encryption: public keys only, as the devices uploaded them (JSON object text).
struct DeviceKeysRecord {
    std::string user_id;
    std::string device_id;
    std::string json;
};
struct OneTimeKeyRecord {
    std::string user_id;
    std::string device_id;
    std::string algorithm;
    std::string key_id;
    std::string json;
};
struct FallbackKeyRecord {
    std::string user_id;
    std::string device_id;
    std::string algorithm;
    std::string key_id;
    std::string json;
    bool used = false;
};
// A user's cross-signing key of one usage (master, self_signing, user_signing), as uploaded.
struct CrossSigningKeyRecord {
    std::string user_id;
    std::string usage;
    std::string json;
};
// A signature added later (POST /keys/signatures/upload) to a device's keys or a master key.
struct KeySignatureRecord {
    std::string target_user;
    std::string target_key;  // a device id, or the master key's public key
    std::string signer_user;
    std::string signer_key;  // "ed25519:<key or device id>"
    std::string signature;
};
// How many one-time keys of an algorithm a device has that nobody claimed yet.
struct OneTimeKeyCount {
    std::string device_id;
    std::string algorithm;
    std::int64_t count = 0;
};
// A user's end-to-end keys (Store::user_keys), as of one moment: what /keys/query and a
// device's /sync need. The one-time keys themselves are not read, only how many there are:
// a claim takes them in its transaction (Txn::take_one_time_key).
struct UserKeys {
    std::string user_id;
    std::vector<DeviceKeysRecord> devices;
    std::vector<FallbackKeyRecord> fallback;
    std::vector<OneTimeKeyCount> one_time_counts;
    std::vector<CrossSigningKeyRecord> cross_signing;
    std::vector<KeySignatureRecord> signatures;  // added to the user's keys
};
// A user's newest receipt of one type in one room and thread (thread_id empty: unthreaded).
struct ReceiptRecord {
    StreamId stream = 0;
    std::string room_id;
    std::string user_id;
    std::string receipt_type;  // m.read or m.read.private
    std::string thread_id;
    std::string event_id;
    std::int64_t ts = 0;
};
// A pusher (POST /pushers/set): where a user's notifications go, set by one of their devices.
struct PusherRecord {
    std::string user_id;
    std::string app_id;
    std::string pushkey;
    std::string device_id;  // the device that set it; it goes when the device signs out
    std::string json;       // the pusher as GET /pushers shows it
    std::int64_t created_ts = 0;
};
// A user's presence as last changed: what they chose and what others last saw.
struct PresenceRecord {
    StreamId stream = 0;
    std::string user_id;
    std::string presence;  // online, unavailable or offline
    std::string status_msg;
    std::int64_t last_active_ts = 0;
};
// A version of a user's server-side key backup.
struct BackupVersionRecord {
    std::string user_id;
    std::int64_t version = 0;
    std::string algorithm;
    std::string auth_data;  // JSON object text
    std::int64_t etag = 0;  // changes whenever the backup's keys change
    bool deleted = false;
};
// A backup version as a client reads it: the version and how many keys it holds.
struct BackupVersionCounts {
    std::int64_t max = 0;
    std::int64_t live = 0;
};

struct BackupVersionState {
    BackupVersionRecord version;
    std::int64_t count = 0;
};
// One backed-up room key: what decides whether a new upload replaces it, and the data.
struct BackupKeyRecord {
    std::string user_id;
    std::int64_t version = 0;
    std::string room_id;
    std::string session_id;
    bool is_verified = false;
    std::int64_t first_message_index = 0;
    std::int64_t forwarded_count = 0;
    std::string json;  // the KeyBackupData object as uploaded
};
// The stream position of a user's latest device list change (a device's keys arrived or a
// device with keys went away).
struct DeviceListChangeRecord {
    std::string user_id;
    StreamId stream = 0;
};

// Mutations. A batch of them is applied atomically by Store::apply.
struct PutUser {
    UserRecord user;
};
// Sets the profile fields given; the others stay as they are.
struct PutProfile {
    std::string user_id;
    std::optional<std::string> displayname;
    std::optional<std::string> avatar_url;
};
struct PutToken {
    TokenRecord token;
};
// Deletes one device's tokens, or all of a user's when device_id is empty.
struct DeleteTokens {
    std::string user_id;
    std::string device_id;
};
struct PutDeviceName {
    std::string user_id;
    std::string device_id;
    std::string display_name;
};
struct PutRoom {
    RoomRecord room;
};
struct PutEvent {
    EventRecord event;
};
struct PutAccountData {
    AccountDataRecord data;
};
struct PutToDevice {
    ToDeviceRecord message;
};
// A to-device transaction id of a device (device_key as in EventRecord), remembered so that a
// retry through another process is not delivered again; the device's from before
// `forget_before`, and those older than its `keep`-th newest, are forgotten.
struct PutToDeviceTxn {
    std::string device_key;
    std::string txn_id;
    std::int64_t ts = 0;
    std::int64_t forget_before = 0;
    std::int64_t keep = 0;
};
// Removes a device's to-device messages up to and including `up_to`: they were delivered.
struct DeleteToDevice {
    std::string user_id;
    std::string device_id;
    StreamId up_to = 0;
};
struct PutFilter {
    FilterRecord filter;
};

struct PutDeviceKeys {
    DeviceKeysRecord keys;
};
struct PutOneTimeKeys {
    std::vector<OneTimeKeyRecord> keys;  // claimed in the order they were put
};
// A claimed one-time key: it is never handed out again.
struct DeleteOneTimeKey {
    std::string user_id;
    std::string device_id;
    std::string algorithm;
    std::string key_id;
};
// Replaces the device's fallback key of that algorithm.
struct PutFallbackKey {
    FallbackKeyRecord key;
};
// A device that went away: its device keys, one-time keys and fallback keys.
struct DeleteDeviceKeys {
    std::string user_id;
    std::string device_id;
};
struct PutCrossSigningKey {
    CrossSigningKeyRecord key;
};
struct PutKeySignature {
    KeySignatureRecord signature;
};
struct DeleteKeySignatures {
    std::string target_user;
    std::string target_key;
};
// Creates or updates a backup version (a deleted one keeps its number, never reused).
struct PutBackupVersion {
    BackupVersionRecord version;
};
struct PutDeviceListChange {
    DeviceListChangeRecord change;
};
// Replaces the receipt of the same room, user, type and thread.
struct PutReceipt {
    ReceiptRecord receipt;
};
struct PutPresence {
    PresenceRecord presence;
};
struct PutPusher {
    PusherRecord pusher;
};
// Deletes pushers with this app id and pushkey: the user's, or every user's when user_id is
// empty.
struct DeletePusher {
    std::string user_id;
    std::string app_id;
    std::string pushkey;
};
// A device signed out: its events from `since_ts` on (the newest a retry could name) no
// longer carry its client transactions, and its to-device transaction ids go, so a device
// signing in again with the same id finds none of them.
struct ForgetTxns {
    std::string device_key;  // as in EventRecord
    std::int64_t since_ts = 0;
};
// Replaces a stored event's JSON with its redacted form.
struct RedactEvent {
    StreamId stream = 0;
    std::string json;
};
// Makes an alias that does not exist; one that does (another process's, made meanwhile) is
// left as it is.
struct PutRoomAlias {
    RoomAliasRecord alias;
};
struct DeleteRoomAlias {
    std::string alias;
};
// Publishes a room in the server's room directory, or takes it out.
struct PutRoomVisibility {
    std::string room_id;
    bool published = false;
};
// Whether anyone may join or read the room (its join rule public, or its history world
// readable): the rooms whose members the user directory searches. Written by the decision
// that changes it.
struct PutRoomOpen {
    std::string room_id;
    bool open = false;
};
// What another process sharing the database must learn of a write (Store::changes): at the
// write's stream position, what kind of thing changed and whose. Rows are written only when
// the database is shared, by the store for every mutation that carries a position ("event":
// room id; "account_data", "presence", "device_list": user id; "to_device": user id '|'
// device id; "receipt": room id) and as a PutChange for what changes without one ("account":
// user id, a device signed in, out or renamed; "to_device_ack": user id '|' device id '|'
// the position up to which the device fetched its messages; "typing": room id, then '\n' and
// each user the writing process has typing there).
struct ChangeRecord {
    StreamId stream = 0;
    std::string kind;
    std::string key;
    int instance = 0;  // the process that wrote it (Store::changes fills it in)
};
struct PutChange {
    ChangeRecord change;
};
// Records that positions up to `stream` were handed out without being taken by a Write
// (written by hand), so that none is taken again.
struct AdvanceStream {
    StreamId stream = 0;
};

using Mutation =
    std::variant<PutUser, PutProfile, PutToken, DeleteTokens, PutDeviceName, PutRoom, PutEvent,
                 PutAccountData, PutToDevice, PutToDeviceTxn, DeleteToDevice, PutFilter,
                 PutDeviceKeys, PutOneTimeKeys, DeleteOneTimeKey, PutFallbackKey, DeleteDeviceKeys,
                 PutDeviceListChange, PutCrossSigningKey, PutKeySignature, DeleteKeySignatures,
                 PutBackupVersion, PutReceipt, AdvanceStream, PutPusher, DeletePusher, PutPresence,
                 RedactEvent, PutRoomAlias, DeleteRoomAlias, PutRoomVisibility, PutRoomOpen,
                 ForgetTxns, PutChange>;

// A write transaction as a decision made inside it sees it (Store::transact): keyed reads of
// what is committed plus what the transaction wrote so far, and writes. Only the writer's
// thread holds one, for the duration of one transaction.
class Txn {
  public:
    virtual ~Txn() = default;
    // Tells this transaction apart from every other one of the process, and from an earlier
    // attempt at the same writes: what a decision keeps beside the transaction (what earlier
    // decisions in it decided) is valid only while it is the same.
    virtual std::uint64_t serial() const = 0;
    virtual void write(const Mutation& m) = 0;
    // The id of the user's filter whose JSON is exactly `json`, if there is one.
    virtual std::optional<std::int64_t> filter_id(const std::string& user_id,
                                                  const std::string& json) = 0;
    // One more than the user's highest filter id (0 when they have none): the next id.
    virtual std::int64_t next_filter_id(const std::string& user_id) = 0;
    // The user's account data of that type (room_id empty: global), if there is any.
    virtual std::optional<AccountDataRecord> account_data(const std::string& user_id,
                                                          const std::string& room_id,
                                                          const std::string& type) = 0;
    // How many account data entries the user has, global and per room together.
    virtual std::int64_t account_data_count(const std::string& user_id) = 0;
    // Whether there is an account with this id.
    virtual bool user_exists(const std::string& user_id) = 0;
    // Whether the device is signed in (has an access token).
    virtual bool device_exists(const std::string& user_id, const std::string& device_id) = 0;
    // The hashes of the device's access tokens (device empty: of all the user's devices).
    virtual std::vector<std::string> token_hashes(const std::string& user_id,
                                                  const std::string& device_id) = 0;
    // Whether the device sent a to-device message with this transaction id at `since_ts` or
    // later.
    virtual bool to_device_txn(const std::string& device_key, const std::string& txn_id,
                               std::int64_t since_ts) = 0;
    // How many to-device messages wait for the device.
    virtual std::int64_t to_device_count(const std::string& user_id,
                                         const std::string& device_id) = 0;
    // The device's keys as uploaded, if it uploaded any.
    virtual std::optional<std::string> device_keys(const std::string& user_id,
                                                   const std::string& device_id) = 0;
    // The JSON of the device's one-time key of that name, if it is still unclaimed.
    virtual std::optional<std::string> one_time_key(const std::string& user_id,
                                                    const std::string& device_id,
                                                    const std::string& algorithm,
                                                    const std::string& key_id) = 0;
    // How many unclaimed one-time keys the device has, by algorithm.
    virtual std::vector<OneTimeKeyCount> one_time_key_counts(const std::string& user_id,
                                                             const std::string& device_id) = 0;
    // Claims the device's oldest one-time key of the algorithm: deletes it and returns it.
    // Two transactions never take the same key (on PostgreSQL, one passes over a key another
    // has taken and not yet committed).
    virtual std::optional<OneTimeKeyRecord> take_one_time_key(const std::string& user_id,
                                                              const std::string& device_id,
                                                              const std::string& algorithm) = 0;
    virtual std::optional<FallbackKeyRecord> fallback_key(const std::string& user_id,
                                                          const std::string& device_id,
                                                          const std::string& algorithm) = 0;
    // The user's cross-signing key of that usage (master, self_signing, user_signing).
    virtual std::optional<std::string> cross_signing_key(const std::string& user_id,
                                                         const std::string& usage) = 0;
    // The user's receipt of that type and thread (empty: unthreaded) in the room, if any.
    virtual std::optional<ReceiptRecord> receipt(const std::string& room_id,
                                                 const std::string& user_id,
                                                 const std::string& receipt_type,
                                                 const std::string& thread_id) = 0;
    // How many threads the user has a receipt of that type in, in the room.
    virtual std::int64_t receipt_threads(const std::string& room_id, const std::string& user_id,
                                         const std::string& receipt_type) = 0;
    // The stream position of the room's newest event (0: none) as the room's lock found it: a
    // shared database, a room of Write::rooms (else StoreError).
    virtual StreamId room_last_event(const std::string& room_id) = 0;
    // A local room alias, if it exists.
    virtual std::optional<RoomAliasRecord> room_alias(const std::string& alias) = 0;
    // How many local aliases name the room.
    virtual std::int64_t room_alias_count(const std::string& room_id) = 0;
    // The user's pushers, oldest first.
    virtual std::vector<PusherRecord> pushers(const std::string& user_id) = 0;
    // The user's backup version of that number (0: the current one, the newest not deleted),
    // unless there is none or it was deleted.
    virtual std::optional<BackupVersionState> backup_version(const std::string& user_id,
                                                             std::int64_t version) = 0;
    // The user's backup versions: the highest number any ever had, deleted or not (0: none),
    // and how many are not deleted.
    virtual BackupVersionCounts backup_versions(const std::string& user_id) = 0;
    // Forgets the user's deleted versions numbered below `below` (their keys went with them):
    // the highest number stays, so none is made twice, and deleted versions do not pile up.
    virtual void forget_deleted_backup_versions(const std::string& user_id, std::int64_t below) = 0;
    // Stores the key unless the version has one for its session that is at least as good
    // (the spec's rule: a verified key beats an unverified one, then the lower first message
    // index, then the lower forwarded count); returns whether it was stored.
    virtual bool put_backup_key(const BackupKeyRecord& key) = 0;
    // Deletes a version's keys: all of them, a room's (session_id empty) or one session's;
    // returns how many.
    virtual std::int64_t delete_backup_keys(const std::string& user_id, std::int64_t version,
                                            const std::string& room_id,
                                            const std::string& session_id) = 0;
    // The room event the device's client transaction made, if it made one since `since_ts`
    // and the device has not signed out since (ForgetTxns).
    virtual std::optional<EventRecord> txn_event(const std::string& device_key,
                                                 const std::string& room_id,
                                                 const std::string& txn_id,
                                                 std::int64_t since_ts) = 0;
};

// One request's part of a transaction: its mutations, as they are, and then, when `decide`
// is set, a decision made against the database inside the transaction, in a savepoint of its
// own. `decide` reads and writes through the Txn and throws to refuse: then nothing of this
// write stays (neither its mutations nor what it wrote) and its neighbours in the transaction
// are unaffected. A decision may run more than once (the database was unavailable and the
// transaction is made again, with new positions): it must set what it reports, never add to
// it.
struct Write {
    std::vector<Mutation> mutations;
    // Given the first of the write's `streams` positions (0 when it takes none).
    std::function<void(Txn&, StreamId first)> decide;
    // How many stream positions the write takes: consecutive ones, taken in its transaction
    // (the transaction's writes in their order), so one writer's positions ascend in the order
    // its transactions commit. On PostgreSQL every process takes them from one sequence. A
    // refused write leaves its positions unused, and they are never handed out again (a
    // client's token may name one).
    std::size_t streams = 0;
    // The rooms the write appends to, or decides about (an alias): their rows are locked (on
    // a shared database) before the transaction takes its positions, so one room's events
    // commit in the order of their positions, whichever process writes them, and a decision
    // about a room sees all that was committed to it.
    std::vector<std::string> rooms;
    // The users whose data beyond rooms its decision reads and then changes (their key
    // backups, pushers, devices): on a shared database each is locked after the rooms, in one
    // order, so that two processes decide about one user's data one after the other.
    std::vector<std::string> users;
};

// What the server reads at start-up: the stream position, and who is not offline. No room,
// account or access token, no client transaction, no filter, no account data, no push rule or
// pusher, no end-to-end key or device-list change, and no key backup: those are read from the
// store when they are needed.
struct Snapshot {
    std::vector<PresenceRecord> presence;  // of the users not offline, in stream order
    StreamId max_stream = 0;
};

// How a process learns of the commits of every process that shares its database
// (Store::listen). One thread uses it; stop() may be called from any.
class ChangeListener {
  public:
    enum class Woken {
        notified,     // some process committed a write that took stream positions
        timeout,      // nothing within the timeout (or the database cannot be reached)
        reconnected,  // the connection was lost and is back: notifications may have been missed
        stopped,      // stop() was called
        // The connection is back, but changes this process had not fed were pruned meanwhile:
        // it was out of touch for longer than the grace (PostgresOptions::feed_grace), and
        // what it holds may be stale. Told once; the process should start again.
        lost,
    };
    virtual ~ChangeListener() = default;
    virtual Woken wait(std::chrono::milliseconds timeout) = 0;
    virtual void stop() = 0;
    // The safe position: every position up to it is committed or will never be, whichever
    // process took it (the minimum of the live processes' frontiers, or the newest position
    // taken when none has one in flight). StoreUnavailable when the database cannot be
    // reached.
    virtual StreamId safe_position() = 0;
    // How many processes share the database now (this one included). StoreUnavailable when
    // the database cannot be reached.
    virtual int live_instances() = 0;
    // Tells the other processes that this one applied every change up to `upto` (its start
    // position, then every few seconds), and deletes the changes that every process not gone
    // has fed: once this listener has been connected for the grace, so that after an outage
    // every process had the time to come back first. StoreUnavailable when the database
    // cannot be reached.
    virtual void fed(StreamId upto) = 0;
};

// All persistence goes through this interface. apply() is only ever called from one thread
// (the group-commit writer); the read methods are safe from any thread. A connection found
// broken (the database restarted) is replaced on the next use; a read on one that went
// stale while idle is tried once more on a new one.
class Store {
  public:
    virtual ~Store() = default;

    virtual Snapshot load() = 0;

    // Applies the batch in one transaction and makes it durable before returning. Applying
    // a batch that already committed changes nothing: after a StoreUnavailable the outcome
    // may be unknown (the connection dropped during COMMIT), and the writer applies the
    // batch again once the database is back.
    virtual void apply(std::span<const Mutation> batch) = 0;
    // Applies the writes in one transaction, as apply() does, and returns per write what its
    // decision threw (null: it was written). Made again after a StoreUnavailable, the
    // decisions run again, against what is committed by then.
    virtual std::vector<std::exception_ptr> transact(std::span<const Write> batch) = 0;

    // Room events with stream < `before`, newest first.
    virtual std::vector<EventRecord> events_before(const std::string& room_id, StreamId before,
                                                   int limit) = 0;
    // Room events with stream > `after`, oldest first.
    virtual std::vector<EventRecord> events_after(const std::string& room_id, StreamId after,
                                                  int limit) = 0;
    // The event at a stream position. Event ids carry their stream position (see the
    // server's event id format), so no index on event ids is needed.
    virtual std::optional<EventRecord> event_at(StreamId stream) = 0;
    // The room as it is now: its version, current state and membership and visibility
    // history, read at one moment; nothing when there is no such room.
    virtual std::optional<RoomLoad> room(const std::string& room_id) = 0;
    // The room's state as it was after the event at `at`, in stream order.
    virtual std::vector<EventRecord> state_at(const std::string& room_id, StreamId at) = 0;
    // The client transactions of the device's room events (`device_key` as in EventRecord)
    // not older than `since_ts`, newest first, at most `limit`.
    virtual std::vector<TxnRecord> device_txns(const std::string& device_key, std::int64_t since_ts,
                                               int limit) = 0;
    // The user's account data, global and per room.
    virtual std::vector<AccountDataRecord> account_data(const std::string& user_id) = 0;
    // The session of the access token whose SHA-256 (hex) this is, if it is signed in.
    virtual std::optional<SessionRecord> session(const std::string& token_hash) = 0;
    // The users whose newest device-list change is at a position in (after, upto], with it.
    virtual std::vector<DeviceListChangeRecord> device_lists_changed(StreamId after,
                                                                     StreamId upto) = 0;
    // The user's membership events (`value`: content.membership), in stream order: every
    // change of their membership of every room, and of nobody else's.
    virtual std::vector<HistoryRecord> memberships_of(const std::string& user_id) = 0;
    // Each account (in the order asked) with its signed-in devices, read at one moment.
    virtual std::vector<AccountLoad> accounts(const std::vector<std::string>& user_ids) = 0;
    // Accounts that are not guests whose user id or display name contains `term` (ASCII
    // letters compared without case), by user id, at most `limit`.
    virtual std::vector<UserRecord> find_users(const std::string& term, int limit) = 0;
    // The end-to-end keys of each user (in the order asked; a user without keys has an
    // entry with none), read at one moment.
    virtual std::vector<UserKeys> user_keys(const std::vector<std::string>& user_ids) = 0;
    // The user's filter of that id (its JSON text), if there is one.
    virtual std::optional<std::string> filter(const std::string& user_id,
                                              std::int64_t filter_id) = 0;
    // The user's backup version, as Txn::backup_version reads it.
    virtual std::optional<BackupVersionState> backup_version(const std::string& user_id,
                                                             std::int64_t version) = 0;
    // The keys of a backup version, of one room, or one session (empty: no restriction).
    virtual std::vector<BackupKeyRecord> backup_keys(const std::string& user_id,
                                                     std::int64_t version,
                                                     const std::string& room_id,
                                                     const std::string& session_id) = 0;

    // A database several processes share: a listener for the commits of all of them (a new
    // connection). nullptr for a database one process owns: its own commits are all there is.
    virtual std::unique_ptr<ChangeListener> listen() { return nullptr; }
    // The changes other processes wrote at positions in (after, upto], in stream order (none
    // when the database is not shared).
    virtual std::vector<ChangeRecord> changes(StreamId after, StreamId upto) = 0;
    // Room events at positions in (after, upto], in stream order.
    virtual std::vector<EventRecord> events_between(StreamId after, StreamId upto) = 0;
    // What a change names, by its position (none when it is gone since: delivered, replaced).
    virtual std::optional<ToDeviceRecord> to_device_at(StreamId stream) = 0;
    // The messages queued for a device, oldest first.
    virtual std::vector<ToDeviceRecord> to_device_of(const std::string& user_id,
                                                     const std::string& device_id) = 0;
    // Each room's receipts (in the order asked), in stream order.
    virtual std::vector<std::vector<ReceiptRecord>> receipts_of(
        const std::vector<std::string>& room_ids) = 0;
    virtual std::optional<ReceiptRecord> receipt_at(const std::string& room_id,
                                                    StreamId stream) = 0;
    // Each user's presence (in the order asked; none for a user who never had one), read at
    // one moment.
    virtual std::vector<std::optional<PresenceRecord>> presence_of(
        const std::vector<std::string>& user_ids) = 0;
    // Each user's pushers (in the order asked), oldest first, read at one moment.
    virtual std::vector<std::vector<PusherRecord>> pushers_of(
        const std::vector<std::string>& user_ids) = 0;
    // Each user's m.push_rules account data (in the order asked): its content, or none for a
    // user who never changed their push rules. Read at one moment.
    virtual std::vector<std::optional<std::string>> push_rules_of(
        const std::vector<std::string>& user_ids) = 0;
    // A local room alias, if it exists; whether a room is in the room directory.
    virtual std::optional<RoomAliasRecord> room_alias(const std::string& alias) = 0;
    virtual bool room_published(const std::string& room_id) = 0;
    // The local aliases that name the room, in order.
    virtual std::vector<std::string> room_aliases_of(const std::string& room_id) = 0;
    // The rooms in the room directory, in order.
    virtual std::vector<std::string> published_rooms() = 0;
    // The rooms anyone may join or read (PutRoomOpen), in order.
    virtual std::vector<std::string> open_rooms() = 0;
    // Called on the writer's thread once the completions of a committed transaction ran: until
    // then, its positions are in flight for every reader of a shared database (so that no
    // process, this one included, reads past what this process has not yet applied). `more`:
    // another batch is queued and begins next, so what ends this one may go with what begins
    // that (one round trip for the two).
    virtual void settled(bool /*more*/) {}
};

struct SqliteOptions {
    std::string path;
    // "full" fsyncs the WAL on every commit (no acknowledged write lost on power failure);
    // "normal" survives process crashes but not power loss.
    std::string synchronous = "full";
};

std::unique_ptr<Store> open_sqlite(const SqliteOptions& options);

struct PostgresOptions {
    // A libpq connection string: "host=/run/postgresql dbname=mxvoip", or a postgresql:// URI.
    std::string dsn;
    // Several processes share the database (each opens it with `shared`); else one process
    // owns it and a second is refused.
    bool shared = false;
    // Shared: how long the change feed is kept for a process that is out of touch (dead,
    // stopped, or cut off from the database) before the others prune it regardless. One that
    // comes back later finds it lost changes (ChangeListener::Woken::lost).
    std::chrono::seconds feed_grace{300};
};

std::unique_ptr<Store> open_postgres(const PostgresOptions& options);

}  // namespace mxvoip::store
