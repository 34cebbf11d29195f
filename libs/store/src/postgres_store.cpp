// The PostgreSQL backend of the store, through libpq. The queries and writes are the SQL
// backends' shared ones (sql_store.hpp); this file has the connection, the statements and the
// PostgreSQL schema. One process owns a database (a session advisory lock on the writer's
// connection, which it gives up only by disconnecting), or several share it (`shared`: each
// holds that lock shared, and one of its own, its instance's; docs/architecture.md, "Stream
// positions without gaps").
#include <libpq-fe.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "mxvoip/store/store.hpp"
#include "sql_store.hpp"

namespace mxvoip::store {
namespace {

// Version 1: the tables of the SQLite schema's version 1, in PostgreSQL's types.
constexpr const char* kSchemaV1 = R"sql(
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    is_guest BIGINT NOT NULL,
    created_ts BIGINT NOT NULL,
    displayname TEXT NOT NULL DEFAULT '',
    avatar_url TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS access_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    device_display_name TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS access_tokens_user ON access_tokens (user_id, device_id);
CREATE TABLE IF NOT EXISTS rooms (
    room_id TEXT PRIMARY KEY,
    room_version TEXT NOT NULL
);
-- Append-only in stream order. Deliberately no index on event_id or on transactions: every
-- random-order index costs a dirty page per event at commit (see bench/RESULTS.md).
CREATE TABLE IF NOT EXISTS events (
    stream_id BIGINT PRIMARY KEY,
    event_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    json TEXT NOT NULL,
    txn_device_key TEXT,
    txn_id TEXT
);
CREATE INDEX IF NOT EXISTS events_room ON events (room_id, stream_id);
-- The membership and visibility history read at start (in stream order: appended, cheap).
CREATE INDEX IF NOT EXISTS events_history ON events (stream_id)
    WHERE type IN ('m.room.member', 'm.room.history_visibility');
CREATE TABLE IF NOT EXISTS current_state (
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (room_id, type, state_key)
);
CREATE TABLE IF NOT EXISTS account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    content TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE TABLE IF NOT EXISTS to_device (
    stream_id BIGINT PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS to_device_target ON to_device (user_id, device_id, stream_id);
CREATE TABLE IF NOT EXISTS filters (
    user_id TEXT NOT NULL,
    filter_id BIGINT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);
CREATE TABLE IF NOT EXISTS device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
-- seq is upload order: one-time keys are claimed oldest first.
CREATE TABLE IF NOT EXISTS one_time_keys (
    seq BIGSERIAL PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    json TEXT NOT NULL,
    UNIQUE (user_id, device_id, algorithm, key_id)
);
CREATE TABLE IF NOT EXISTS fallback_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    json TEXT NOT NULL,
    used BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm)
);
CREATE TABLE IF NOT EXISTS cross_signing_keys (
    user_id TEXT NOT NULL,
    usage TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, usage)
);
CREATE TABLE IF NOT EXISTS key_signatures (
    target_user TEXT NOT NULL,
    target_key TEXT NOT NULL,
    signer_user TEXT NOT NULL,
    signer_key TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (target_user, target_key, signer_user, signer_key)
);
CREATE TABLE IF NOT EXISTS backup_versions (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data TEXT NOT NULL,
    etag BIGINT NOT NULL,
    deleted BIGINT NOT NULL,
    PRIMARY KEY (user_id, version)
);
CREATE TABLE IF NOT EXISTS backup_keys (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    is_verified BIGINT NOT NULL,
    first_message_index BIGINT NOT NULL,
    forwarded_count BIGINT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
CREATE TABLE IF NOT EXISTS device_list_changes (
    user_id TEXT PRIMARY KEY,
    stream_id BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id, receipt_type, thread_id)
);
CREATE TABLE IF NOT EXISTS pushers (
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    device_id TEXT NOT NULL,
    json TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, app_id, pushkey)
);
CREATE TABLE IF NOT EXISTS presence (
    user_id TEXT PRIMARY KEY,
    stream_id BIGINT NOT NULL,
    presence TEXT NOT NULL,
    status_msg TEXT NOT NULL,
    last_active_ts BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS room_aliases (
    alias TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS published_rooms (room_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS stream_position (id BIGINT PRIMARY KEY CHECK (id = 1), max_stream BIGINT NOT NULL);
INSERT INTO stream_position VALUES (1, 0) ON CONFLICT DO NOTHING;
)sql";

// Version 2: a device's recent transaction ids are read back on its first PUT after a start,
// instead of a window of them at start-up.
constexpr const char* kSchemaV2 = R"sql(
CREATE INDEX IF NOT EXISTS events_txn ON events (txn_device_key, stream_id)
    WHERE txn_id IS NOT NULL;
)sql";

// Version 3: rooms are read into memory when first used, not all at start: a room's
// membership and visibility events are found without reading its messages.
constexpr const char* kSchemaV3 = R"sql(
CREATE INDEX IF NOT EXISTS events_room_history ON events (room_id, stream_id)
    WHERE type IN ('m.room.member', 'm.room.history_visibility');
)sql";

// Version 4: stream positions come from a sequence, taken by take_streams() under an advisory
// lock held only while they are taken (consecutive positions per call, without making one
// transaction wait for another's commit, as a row updated by each would), instead of one
// row every transaction updated. The lock's key is "mxstream".
constexpr const char* kSchemaV4 = R"sql(
CREATE SEQUENCE IF NOT EXISTS stream_seq;
DO $$
BEGIN
    IF to_regclass('stream_position') IS NOT NULL THEN
        PERFORM setval('stream_seq', max_stream) FROM stream_position WHERE max_stream > 0;
        DROP TABLE stream_position;
    END IF;
END
$$;
CREATE OR REPLACE FUNCTION take_streams(at_least BIGINT, n BIGINT) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    top BIGINT;
BEGIN
    PERFORM pg_advisory_lock(7888181691312071021);
    BEGIN
        SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END INTO top
            FROM stream_seq;
        top := GREATEST(top, at_least) + n;
        IF top > 0 THEN
            PERFORM setval('stream_seq', top);
        END IF;
    EXCEPTION WHEN OTHERS THEN
        PERFORM pg_advisory_unlock(7888181691312071021);
        RAISE;
    END;
    PERFORM pg_advisory_unlock(7888181691312071021);
    RETURN top;
END
$$;
)sql";

// Version 5: several processes on one database. Each registers as an instance (a row, and an
// advisory lock of the class kInstanceLocks with its id as the key, held by its writer's
// connection while it lives) and publishes its frontier there: while it has a transaction
// that takes positions in flight, the newest position taken before it took any (every one it
// takes is above), else NULL. safe_position() reads what was taken, then the frontiers of the
// live instances; a dead instance's transactions died with its connection, and so did its
// lock. The table is unlogged: after a crash of PostgreSQL no instance is live.
constexpr const char* kSchemaV5 = R"sql(
CREATE SEQUENCE IF NOT EXISTS instance_ids AS INTEGER;
CREATE UNLOGGED TABLE IF NOT EXISTS instances (id INTEGER PRIMARY KEY, frontier BIGINT);
-- What the other processes must learn of each write (store::ChangeRecord), read in stream
-- order up to the safe position.
CREATE TABLE IF NOT EXISTS changes (
    stream_id BIGINT NOT NULL,
    instance INTEGER NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (stream_id, kind, key)
);
CREATE OR REPLACE FUNCTION instance_live(instance INTEGER) RETURNS BOOLEAN
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = 28024
                   AND objid = instance::oid AND objsubid = 2 AND granted)
$$;
CREATE OR REPLACE FUNCTION safe_position() RETURNS BIGINT
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    taken BIGINT;
    lowest BIGINT;
BEGIN
    -- Two statements, two snapshots, in this order: a position taken after the first is
    -- above `taken`; one taken before it is committed, or in flight under a frontier that
    -- the second sees.
    SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END INTO taken
        FROM stream_seq;
    SELECT MIN(frontier) INTO lowest FROM instances
        WHERE frontier IS NOT NULL AND instance_live(id);
    RETURN LEAST(taken, lowest);
END
$$;
)sql";

// Version 6: a client transaction retried on another process is looked up by its id
// (Txn::txn_event), not by scanning the device's events.
constexpr const char* kSchemaV6 = R"sql(
CREATE INDEX IF NOT EXISTS events_txn_id ON events (txn_device_key, txn_id)
    WHERE txn_id IS NOT NULL;
)sql";

// Version 7: a room's row carries its newest event, kept by a trigger, so that a shared
// database's room lock (SELECT ... FOR UPDATE, which returns the row as the lock found it)
// reads it in the same statement: whether this process's copy of the room is current.
constexpr const char* kSchemaV7 = R"sql(
ALTER TABLE rooms ADD COLUMN IF NOT EXISTS last_event BIGINT NOT NULL DEFAULT 0;
UPDATE rooms r SET last_event = e.top
    FROM (SELECT room_id, MAX(stream_id) AS top FROM events GROUP BY room_id) e
    WHERE e.room_id = r.room_id;
CREATE OR REPLACE FUNCTION note_room_last_event() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE rooms SET last_event = NEW.stream_id
        WHERE room_id = NEW.room_id AND last_event < NEW.stream_id;
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER events_room_last_event AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION note_room_last_event();
)sql";

// Version 8: the change feed is pruned. Each instance's listener holds an advisory lock of its
// own (class kReaderLocks: instance_reading()) and publishes in its row the position it has
// fed (every change up to it applied: `fed`) and when it last did (`seen`, the database's
// clock). prune_changes() deletes the changes that every instance not gone has fed, and
// records the highest it deleted in `changes_pruned`. An instance is gone when neither of its
// locks is held and it was not seen for the grace: dead, stopped, or cut off for so long that
// it learns, when it returns, that it missed changes (`changes_pruned` is past its `fed`).
constexpr const char* kSchemaV8 = R"sql(
ALTER TABLE instances ADD COLUMN IF NOT EXISTS fed BIGINT;
ALTER TABLE instances ADD COLUMN IF NOT EXISTS seen TIMESTAMPTZ NOT NULL DEFAULT now();
CREATE TABLE IF NOT EXISTS changes_pruned (
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    upto BIGINT NOT NULL
);
INSERT INTO changes_pruned VALUES (TRUE, 0) ON CONFLICT DO NOTHING;
-- pg_locks lists the advisory locks of every database of the cluster: those of another
-- mxvoip database's instances are not this one's (instance_live() as version 5 made it
-- counted them).
CREATE OR REPLACE FUNCTION instance_lock_held(class INTEGER, instance INTEGER)
RETURNS BOOLEAN LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = class::oid
                   AND objid = instance::oid AND objsubid = 2 AND granted
                   AND database = (SELECT oid FROM pg_database
                                   WHERE datname = current_database()))
$$;
CREATE OR REPLACE FUNCTION instance_live(instance INTEGER) RETURNS BOOLEAN
LANGUAGE sql STABLE AS $$ SELECT instance_lock_held(28024, instance) $$;
CREATE OR REPLACE FUNCTION instance_reading(instance INTEGER) RETURNS BOOLEAN
LANGUAGE sql STABLE AS $$ SELECT instance_lock_held(28025, instance) $$;
-- Returns the position up to which changes are now deleted; NULL when nothing could be (an
-- instance that has not told what it fed yet holds everything back).
CREATE OR REPLACE FUNCTION prune_changes(grace INTERVAL) RETURNS BIGINT
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    counted BIGINT;
    known BIGINT;
    lowest BIGINT;
BEGIN
    -- One at a time, and never while a listener puts its row back (PgListener::connect).
    PERFORM pg_advisory_xact_lock(7888181691312071023);
    DELETE FROM instances WHERE NOT instance_live(id) AND NOT instance_reading(id)
        AND seen < now() - grace;
    SELECT COUNT(*), COUNT(fed), MIN(fed) INTO counted, known, lowest FROM instances;
    IF counted = 0 OR known < counted THEN
        RETURN NULL;
    END IF;
    DELETE FROM changes WHERE stream_id <= lowest;
    UPDATE changes_pruned SET upto = GREATEST(upto, lowest);
    RETURN lowest;
END
$$;
)sql";

// Version 9: the transaction ids of to-device messages, so that a retry through another
// process sharing the database is not delivered again (a day, and limits.txn_ids_per_device
// per device, at most).
constexpr const char* kSchemaV9 = R"sql(
CREATE TABLE IF NOT EXISTS to_device_txns (
    device_key TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (device_key, txn_id)
);
CREATE INDEX IF NOT EXISTS to_device_txns_age ON to_device_txns (device_key, ts);
)sql";

// Version 10: a room's aliases (counted by an alias's decision, listed by /rooms/{id}/aliases)
// and a pushkey's pushers (taken from every other user when one sets it) are found by index.
constexpr const char* kSchemaV10 = R"sql(
CREATE INDEX IF NOT EXISTS room_aliases_room ON room_aliases (room_id);
CREATE INDEX IF NOT EXISTS pushers_pushkey ON pushers (app_id, pushkey);
)sql";

// The advisory lock key that marks a database as owned by one mxvoip-server ("mxvoip"), or,
// held shared, as shared by several.
constexpr long long kOwnerLock = 0x6d78766f6970;
// The class of the instances' advisory locks ("mx"), in instance_live() too.
constexpr std::int64_t kInstanceLocks = 28024;
// The class of the instances' listeners' advisory locks, in instance_reading() too.
constexpr std::int64_t kReaderLocks = 28025;
// Taken by prune_changes() too: a listener puts its row back and reads how far changes were
// pruned with no prune in between.
constexpr const char* kPruneLock = "SELECT pg_advisory_xact_lock(7888181691312071023)";
// What a process NOTIFYs after a commit that took positions.
constexpr const char* kChannel = "mxvoip_changes";

// Version 11: a user's memberships and the device-list changes a /sync needs are read when
// needed, not at start: a user's member events and the changes in a range of positions are
// found by index, and the start-up index goes.
constexpr const char* kSchemaV11 = R"sql(
CREATE INDEX IF NOT EXISTS events_member_target ON events (state_key, stream_id)
    WHERE type = 'm.room.member';
CREATE INDEX IF NOT EXISTS device_list_changes_stream ON device_list_changes (stream_id);
DROP INDEX IF EXISTS events_history;
)sql";

// Version 12: presence is read when needed, not at start: only the users not offline are read
// then, by index.
constexpr const char* kSchemaV12 = R"sql(
CREATE INDEX IF NOT EXISTS presence_present ON presence (user_id) WHERE presence <> 'offline';
)sql";

// Version 13: the rooms anyone may join or read (join rule public, or history world
// readable), kept as their state changes instead of found at start from every room's current
// state (which the migration reads to fill it: Db::kOpenRoomsVersion).
constexpr const char* kSchemaV13 = R"sql(
CREATE TABLE IF NOT EXISTS open_rooms (room_id TEXT PRIMARY KEY);
)sql";

class PgStmt;

class PgDb {
  public:
    using Stmt = PgStmt;
    static constexpr const char* kMigrations[] = {
        kSchemaV1, kSchemaV2, kSchemaV3,  kSchemaV4,  kSchemaV5,  kSchemaV6, kSchemaV7,
        kSchemaV8, kSchemaV9, kSchemaV10, kSchemaV11, kSchemaV12, kSchemaV13};
    // First in the migration's transaction: processes that start together on a shared
    // database migrate it one after the other (the later ones find it done), instead of
    // colliding on CREATE ... IF NOT EXISTS. Held until that transaction ends ("mxschema").
    static constexpr const char* kMigrationLock =
        "SELECT pg_advisory_xact_lock(7888181691312071022)";
    // The version whose migration made open_rooms, which the migration then fills.
    static constexpr std::int64_t kOpenRoomsVersion = 13;
    // Serialises decisions about one user's data (Write::users) across processes, until the
    // transaction ends; class "mu", keyed by a hash of the user id (a collision only makes two
    // users' decisions wait for each other).
    static constexpr const char* kUserLock = "SELECT pg_advisory_xact_lock(28021, hashtext(?))";
    // The oldest key that no other transaction is taking: two claims at once, from any
    // process, get two keys.
    static constexpr const char* kTakeOneTimeKey =
        "DELETE FROM one_time_keys WHERE seq = (SELECT seq FROM one_time_keys WHERE user_id = ? "
        "AND device_id = ? AND algorithm = ? ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) "
        "RETURNING key_id, json";
    // Takes positions (at least ?, then ? more); returns the last. Positions are not
    // transactional: a transaction rolled back leaves its positions unused.
    static constexpr const char* kTakeStreams = "SELECT take_streams(?, ?)";
    // The newest position taken.
    static constexpr const char* kMaxStream =
        "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM stream_seq";

    explicit PgDb(const std::string& dsn) : conn_(PQconnectdb(dsn.c_str())) {
        if (!conn_ || PQstatus(conn_) != CONNECTION_OK) {
            std::string msg = conn_ ? PQerrorMessage(conn_) : "out of memory";
            PQfinish(conn_);
            throw StoreUnavailable("cannot connect to PostgreSQL: " + trim(msg));
        }
        // Notices (a table that already exists, say) are not the server's log's business.
        PQsetNoticeProcessor(
            conn_, [](void*, const char*) {}, nullptr);
        exec("SET client_min_messages = warning");
    }
    ~PgDb() { PQfinish(conn_); }
    PgDb(const PgDb&) = delete;
    PgDb& operator=(const PgDb&) = delete;

    // A transaction in which every read sees the database as of one moment.
    static constexpr const char* kBeginRead = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";
    void begin() { defer("BEGIN"); }
    void commit() { exec("COMMIT"); }
    void rollback() noexcept {
        deferred_.clear();  // a BEGIN never sent: the ROLLBACK only warns
        PQclear(PQexec(conn_, "ROLLBACK"));
    }

    // Any number of statements, with no parameters; one is sent with what was deferred.
    void exec(const char* sql) {
        PGresult* r = nullptr;
        if (!deferred_.empty() && !std::strchr(sql, ';')) {
            r = run(sql, [&] {
                return PQsendQueryParams(conn_, sql, 0, nullptr, nullptr, nullptr, nullptr, 0);
            });
        } else {
            flush();
            r = PQexec(conn_, sql);
            check(r, sql);
        }
        PQclear(r);
    }

    // A statement whose answer nothing waits for (BEGIN, a savepoint, an advisory lock): sent
    // with the next one that is answered, in one pipeline, one round trip instead of two.
    // Its failure is that statement's.
    void defer(const char* sql, std::optional<std::string> param = std::nullopt) {
        deferred_.push_back({sql, param ? &prepared(sql) : nullptr, std::move(param)});
    }

    // Runs the statement that `send` sends (in pipeline mode), after what was deferred, in
    // one round trip; returns its result, checked.
    template <typename Send>
    PGresult* run(const char* sql, Send&& send) {
        if (deferred_.empty()) {
            if (!send()) check(nullptr, sql);
            PGresult* r = PQgetResult(conn_);
            while (PGresult* more = PQgetResult(conn_)) PQclear(more);
            check(r, sql);
            return r;
        }
        auto deferred = std::move(deferred_);
        deferred_.clear();
        bool sent = PQenterPipelineMode(conn_) == 1;
        for (const auto& d : deferred) {
            const char* value = d.param ? d.param->c_str() : nullptr;
            sent = sent && (d.name ? PQsendQueryPrepared(conn_, d.name->c_str(), 1, &value, nullptr,
                                                         nullptr, 0)
                                   : PQsendQueryParams(conn_, d.sql, 0, nullptr, nullptr, nullptr,
                                                       nullptr, 0)) == 1;
        }
        sent = sent && send() == 1 && PQpipelineSync(conn_) == 1;
        // One result for each statement (each followed by a null), then the sync's. The
        // first failure is the one to tell: those after it were not run.
        std::vector<PGresult*> results;
        const char* failed_sql = nullptr;
        PGresult* failed = nullptr;
        for (std::size_t i = 0; sent && i <= deferred.size(); ++i) {
            PGresult* r = PQgetResult(conn_);
            if (!r) {
                sent = false;
                break;
            }
            while (PGresult* more = PQgetResult(conn_)) PQclear(more);
            auto status = PQresultStatus(r);
            if (!failed && status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
                failed = r;
                failed_sql = i < deferred.size() ? deferred[i].sql : sql;
                continue;
            }
            results.push_back(r);
        }
        if (sent) {
            PGresult* sync = PQgetResult(conn_);
            sent = sync && PQresultStatus(sync) == PGRES_PIPELINE_SYNC;
            PQclear(sync);
        }
        if (PQexitPipelineMode(conn_) != 1) sent = false;
        if (!sent) lost_ = true;  // the protocol is somewhere unknown: used no more
        PGresult* answer = nullptr;
        if (!failed && sent) {
            answer = results.back();
            results.pop_back();
        }
        for (PGresult* r : results) PQclear(r);
        if (failed) check(failed, failed_sql);
        if (!sent) check(nullptr, sql);
        return answer;
    }

    // The name of the prepared statement for `sql` ('?' placeholders numbered), preparing
    // it on first use.
    const std::string& prepared(const char* sql) {
        auto [it, inserted] = names_.try_emplace(sql);
        if (inserted) {
            std::string name = "s" + std::to_string(names_.size());
            std::string numbered = number_placeholders(sql);
            PGresult* r = PQprepare(conn_, name.c_str(), numbered.c_str(), 0, nullptr);
            try {
                check(r, sql);
            } catch (...) {
                names_.erase(it);
                throw;
            }
            PQclear(r);
            it->second = std::move(name);
        }
        return it->second;
    }

    // Throws for a failed result (and frees it): StoreUnavailable when the connection is
    // gone or the database says the condition passes, StoreError otherwise.
    void check(PGresult* r, const char* sql) {
        auto status = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
        if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) return;
        std::string msg = r ? PQresultErrorMessage(r) : PQerrorMessage(conn_);
        const char* state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
        bool passes = broken() || !state || transient(state);
        PQclear(r);
        msg = "PostgreSQL: " + trim(msg) + " (in: " + std::string(sql, 0, 80) + ")";
        if (passes) throw StoreUnavailable(msg);
        throw StoreError(msg);
    }

    bool broken() const { return lost_ || PQstatus(conn_) != CONNECTION_OK; }

  private:
    // Sends what was deferred, on its own (before a statement that cannot be pipelined).
    void flush() {
        if (deferred_.empty()) return;
        PGresult* r = run("SELECT 1", [&] {
            return PQsendQueryParams(conn_, "SELECT 1", 0, nullptr, nullptr, nullptr, nullptr, 0);
        });
        PQclear(r);
    }

    struct Deferred {
        const char* sql;
        const std::string* name;  // prepared (with a parameter), else null
        std::optional<std::string> param;
    };
    std::vector<Deferred> deferred_;
    bool lost_ = false;

  public:
    PGconn* handle() { return conn_; }

  private:
    // SQLSTATE classes of conditions that pass: 08 connection exception, 40 transaction
    // rollback (serialization failure, deadlock), 53 insufficient resources (disk full, too
    // many connections), 57 operator intervention (shutdown, starting up), 58 system error;
    // and 55P03, a lock not available within lock_timeout.
    static bool transient(const char* state) {
        std::string_view cls(state, std::min<std::size_t>(2, std::strlen(state)));
        return cls == "08" || cls == "40" || cls == "53" || cls == "57" || cls == "58" ||
               std::string_view(state) == "55P03";
    }
    // libpq's messages span lines ("...\n\tThis probably means..."): one line for the log.
    static std::string trim(const std::string& s) {
        std::string out;
        for (char c : s) {
            bool space = c == '\n' || c == '\t' || c == ' ';
            if (!space)
                out += c;
            else if (!out.empty() && out.back() != ' ')
                out += ' ';
        }
        if (!out.empty() && out.back() == ' ') out.pop_back();
        return out;
    }
    // '?' -> $1, $2, ... (the shared SQL has no '?' inside string literals).
    static std::string number_placeholders(const char* sql) {
        std::string out;
        int n = 0;
        for (const char* p = sql; *p; ++p) {
            if (*p == '?')
                out += "$" + std::to_string(++n);
            else
                out += *p;
        }
        return out;
    }

    PGconn* conn_;
    std::unordered_map<const char*, std::string> names_;
};

// Parameters go as text; PostgreSQL infers their types from the statement.
class PgStmt {
  public:
    PgStmt(PgDb& db, const char* sql) : db_(db), sql_(sql), name_(db.prepared(sql)) {}
    ~PgStmt() { PQclear(result_); }
    PgStmt(const PgStmt&) = delete;
    PgStmt& operator=(const PgStmt&) = delete;

    PgStmt& bind(const std::string& v) {
        params_.emplace_back(v);
        return *this;
    }
    PgStmt& bind(const std::optional<std::string>& v) {
        params_.push_back(v);
        return *this;
    }
    PgStmt& bind(std::int64_t v) { return bind(std::to_string(v)); }
    PgStmt& bind(bool v) { return bind(static_cast<std::int64_t>(v)); }

    void run() { execute(); }
    bool next() {
        if (!result_) execute();
        return ++row_ < PQntuples(result_);
    }
    std::string text(int col) {
        return std::string(PQgetvalue(result_, row_, col),
                           static_cast<std::size_t>(PQgetlength(result_, row_, col)));
    }
    std::optional<std::string> opt_text(int col) {
        if (PQgetisnull(result_, row_, col)) return std::nullopt;
        return text(col);
    }
    std::int64_t integer(int col) {
        return std::strtoll(PQgetvalue(result_, row_, col), nullptr, 10);
    }

  private:
    void execute() {
        std::vector<const char*> values;
        values.reserve(params_.size());
        for (const auto& p : params_) values.push_back(p ? p->c_str() : nullptr);
        result_ = db_.run(sql_, [&] {
            return PQsendQueryPrepared(db_.handle(), name_.c_str(), static_cast<int>(values.size()),
                                       values.data(), nullptr, nullptr, 0);
        });
        row_ = -1;
    }

    PgDb& db_;
    const char* sql_;
    const std::string& name_;
    std::vector<std::optional<std::string>> params_;
    PGresult* result_ = nullptr;
    int row_ = -1;
};

// The writer's connection, with the owner's lock (exclusive, or shared with the other
// processes of a shared database) and, once the instance is registered (`instance` > 0), the
// instance's lock, its frontier cleared: nothing of a connection lost is in flight.
std::unique_ptr<PgDb> open_writer(const PostgresOptions& opts, int instance) {
    auto db = std::make_unique<PgDb>(opts.dsn);
    // The holder may be a session that is ending: this process's own before a reconnect, or
    // the previous process's just after a restart (a closed connection's session ends on the
    // server a moment later). So wait for the lock, for a while.
    db->exec("SET lock_timeout = '3s'");
    try {
        PgDb::Stmt lock(
            *db, opts.shared ? "SELECT pg_advisory_lock_shared(?)" : "SELECT pg_advisory_lock(?)");
        lock.bind(static_cast<std::int64_t>(kOwnerLock));
        lock.run();
    } catch (const StoreUnavailable&) {
        if (db->broken()) throw;
        // Unavailable rather than wrong: the other process may yet stop.
        throw StoreUnavailable(
            opts.shared ? "the PostgreSQL database is owned by one process that does not share "
                          "it (a running mxvoip-server without database.shared?); stop it first"
                        : "the PostgreSQL database is in use by another process (a running "
                          "mxvoip-server?); stop it first");
    }
    if (instance > 0) {
        PgDb::Stmt(*db, "SELECT pg_advisory_lock(?, ?)")
            .bind(kInstanceLocks)
            .bind(std::int64_t{instance})
            .run();
        // Its row is there again, without a frontier: after a crash of PostgreSQL the unlogged
        // table is empty, and a process that started meanwhile dropped the rows of instances
        // that were not live (this one's, while its connection was gone).
        PgDb::Stmt(*db,
                   "INSERT INTO instances VALUES (?, NULL) ON CONFLICT (id) DO UPDATE SET "
                   "frontier = NULL")
            .bind(std::int64_t{instance})
            .run();
    }
    db->exec("SET lock_timeout = 0");
    return db;
}

// LISTENs on its own connection; waits in poll() on it and on an eventfd that stop() writes.
// The connection holds the instance's reader lock and keeps its row's `fed` and `seen`.
class PgListener final : public ChangeListener {
  public:
    PgListener(std::string dsn, int instance, std::chrono::seconds grace)
        : dsn_(std::move(dsn)),
          instance_(instance),
          grace_(grace),
          stop_fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
        if (stop_fd_ < 0) throw StoreError("eventfd failed");
        connect();
    }
    ~PgListener() override {
        // Stopped, not cut off: gone as soon as the writer's lock is free too, so its changes
        // are pruned without waiting for the grace.
        try {
            if (db_ && !db_->broken())
                PgDb::Stmt(*db_, "UPDATE instances SET seen = '-infinity' WHERE id = ?")
                    .bind(std::int64_t{instance_})
                    .run();
        } catch (const std::exception&) {
        }
        close(stop_fd_);
    }

    Woken wait(std::chrono::milliseconds timeout) override {
        if (stopped_.load()) return Woken::stopped;
        if (!db_ || db_->broken()) {
            db_.reset();
            try {
                return connect() ? Woken::reconnected : Woken::lost;
            } catch (const StoreError&) {
                db_.reset();
                return pause(timeout);
            }
        }
        if (drain()) return Woken::notified;
        pollfd fds[2] = {{PQsocket(db_->handle()), POLLIN, 0}, {stop_fd_, POLLIN, 0}};
        int n = ::poll(fds, 2, static_cast<int>(timeout.count()));
        if (stopped_.load()) return Woken::stopped;
        if (n <= 0) return Woken::timeout;
        if (!PQconsumeInput(db_->handle()) || db_->broken()) {
            db_.reset();  // reconnected by the next wait
            return Woken::timeout;
        }
        return drain() ? Woken::notified : Woken::timeout;
    }

    void stop() override {
        stopped_.store(true);
        std::uint64_t one = 1;
        [[maybe_unused]] auto n = ::write(stop_fd_, &one, sizeof one);
    }

    StreamId safe_position() override {
        PgDb::Stmt s(connected(), "SELECT safe_position()");
        if (!s.next()) throw StoreError("safe_position() returned nothing");
        return s.integer(0);
    }

    int live_instances() override {
        PgDb::Stmt s(connected(), "SELECT COUNT(*) FROM instances WHERE instance_live(id)");
        if (!s.next()) throw StoreError("the live instances could not be counted");
        return static_cast<int>(s.integer(0));
    }

    void fed(StreamId upto) override {
        PgDb& db = connected();
        PgDb::Stmt(db, "UPDATE instances SET fed = ?, seen = now() WHERE id = ?")
            .bind(std::int64_t{upto})
            .bind(std::int64_t{instance_})
            .run();
        fed_ = upto;
        if (std::chrono::steady_clock::now() - connected_at_ < grace_) return;
        PgDb::Stmt(db, "SELECT prune_changes(?)")
            .bind(std::to_string(grace_.count()) + " seconds")
            .run();
    }

  private:
    PgDb& connected() {
        if (!db_ || db_->broken()) throw StoreUnavailable("the listener's connection is lost");
        return *db_;
    }
    // Connects, takes the reader lock and puts the instance's row back (after a crash of
    // PostgreSQL, or after another process found it gone); false when changes after what this
    // process fed were pruned meanwhile.
    bool connect() {
        db_ = std::make_unique<PgDb>(dsn_);
        PgDb& db = *db_;
        db.exec((std::string("LISTEN ") + kChannel).c_str());
        // Not waited for: the session of a connection lost without a word may hold it a while
        // longer, and then this instance counts as reading through it.
        PgDb::Stmt(db, "SELECT pg_try_advisory_lock(?, ?)")
            .bind(kReaderLocks)
            .bind(std::int64_t{instance_})
            .run();
        db.begin();
        db.defer(kPruneLock);
        PgDb::Stmt(db,
                   "INSERT INTO instances (id, fed, seen) VALUES (?, ?, now()) ON CONFLICT (id) "
                   "DO UPDATE SET fed = COALESCE(EXCLUDED.fed, instances.fed), seen = now()")
            .bind(std::int64_t{instance_})
            .bind(fed_ ? std::optional<std::string>(std::to_string(*fed_)) : std::nullopt)
            .run();
        PgDb::Stmt pruned(db, "SELECT upto FROM changes_pruned");
        const StreamId upto = pruned.next() ? pruned.integer(0) : 0;
        db.commit();
        connected_at_ = std::chrono::steady_clock::now();
        return !fed_ || upto <= *fed_;
    }
    // Takes the notifications received; whether there were any.
    bool drain() {
        bool any = false;
        while (PGnotify* n = PQnotifies(db_->handle())) {
            any = true;
            PQfreemem(n);
        }
        return any;
    }
    // Waits for stop() alone (the database cannot be reached).
    Woken pause(std::chrono::milliseconds timeout) {
        pollfd fd{stop_fd_, POLLIN, 0};
        ::poll(&fd, 1, static_cast<int>(timeout.count()));
        return stopped_.load() ? Woken::stopped : Woken::timeout;
    }

    std::string dsn_;
    const int instance_;
    const std::chrono::seconds grace_;
    int stop_fd_;
    std::atomic<bool> stopped_{false};
    std::unique_ptr<PgDb> db_;
    std::optional<StreamId> fed_;  // the last position told (fed())
    std::chrono::steady_clock::time_point connected_at_;
};

class PostgresStore final : public sql::SqlStore<PgDb> {
  public:
    explicit PostgresStore(const PostgresOptions& opts)
        : PostgresStore(opts, std::make_shared<int>(0)) {}

    std::unique_ptr<ChangeListener> listen() override {
        if (!opts_.shared) return nullptr;
        return std::make_unique<PgListener>(opts_.dsn, *instance_, opts_.feed_grace);
    }

    void settled(bool more) override {
        if (!ending_ || more) return;  // with more, the next transaction's beginning ends it
        ending_ = false;
        end(writer());
    }

  protected:
    void positions_begin(PgDb& db) override {
        if (!*instance_) return;
        // Committed before the first position is taken: every reader sees it in time. When
        // the transaction before ended just now, its frontier moves up to this one's, and
        // everyone hears of its commit, in the same implicit transaction.
        db.exec(ending_ ? move_sql_.c_str() : begin_sql_.c_str());
        ending_ = false;
    }
    void no_positions_begin(PgDb& db) override {
        if (!ending_) return;
        ending_ = false;
        end(db);
    }
    void positions_end(PgDb& db, bool committed) noexcept override {
        if (!*instance_) return;
        // What committed stays in flight until this process applied it (settled()).
        if (committed)
            ending_ = true;
        else
            end(db);
    }
    int instance() const override { return *instance_; }

  private:
    // One implicit transaction: the frontier goes, then everyone hears of the commit.
    void end(PgDb& db) noexcept {
        try {
            db.exec(end_sql_.c_str());
        } catch (...) {
            // The connection is lost: its replacement clears the frontier (open_writer).
        }
    }

    // `instance` is shared with the writer's opener, which the base class calls before this
    // class's members exist.
    PostgresStore(const PostgresOptions& opts, std::shared_ptr<int> instance)
        : SqlStore([opts, instance] { return open_writer(opts, *instance); },
                   [opts] { return std::make_unique<PgDb>(opts.dsn); }),
          opts_(opts),
          instance_(std::move(instance)) {
        if (opts_.shared) register_instance();
    }

    // Takes the next instance id and its lock on the writer's connection. Its row holds back
    // the pruning of changes (its `fed` unknown) until its listener tells where it starts; the
    // rows of instances that are gone are dropped by prune_changes().
    void register_instance() {
        PgDb& db = writer();
        PgDb::Stmt next(db, "SELECT nextval('instance_ids')");
        if (!next.next()) throw StoreError("no instance id");
        const int id = static_cast<int>(next.integer(0));
        PgDb::Stmt(db, "SELECT pg_advisory_lock(?, ?)")
            .bind(kInstanceLocks)
            .bind(std::int64_t{id})
            .run();
        PgDb::Stmt(db, "INSERT INTO instances VALUES (?, NULL)").bind(std::int64_t{id}).run();
        const std::string where = " WHERE id = " + std::to_string(id);
        const std::string taken =
            "UPDATE instances SET frontier = (SELECT CASE WHEN is_called THEN last_value ELSE "
            "last_value - 1 END FROM stream_seq)" +
            where;
        begin_sql_ = taken;
        move_sql_ = taken + "; NOTIFY " + kChannel;
        end_sql_ = "UPDATE instances SET frontier = NULL" + where + "; NOTIFY " + kChannel;
        *instance_ = id;
    }

    PostgresOptions opts_;
    std::shared_ptr<int> instance_;  // 0 until registered
    bool ending_ = false;            // a commit with positions waits for settled()
    // The frontier published (begin), moved up after a commit (move) and cleared (end).
    std::string begin_sql_, move_sql_, end_sql_;
};

}  // namespace

std::unique_ptr<Store> open_postgres(const PostgresOptions& options) {
    return std::make_unique<PostgresStore>(options);
}

}  // namespace mxvoip::store
