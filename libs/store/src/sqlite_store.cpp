#include <fcntl.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "mxvoip/store/store.hpp"
#include "sql_store.hpp"

namespace mxvoip::store {
namespace {

// Version 1: the tables as they were when the schema started to be versioned (IF NOT EXISTS,
// so a database made before then is taken as it is).
constexpr const char* kSchemaV1 = R"sql(
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    is_guest INTEGER NOT NULL,
    created_ts INTEGER NOT NULL,
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
    stream_id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    origin_server_ts INTEGER NOT NULL,
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
    stream_id INTEGER NOT NULL,
    PRIMARY KEY (room_id, type, state_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    stream_id INTEGER NOT NULL,
    content TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS to_device (
    stream_id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS to_device_target ON to_device (user_id, device_id, stream_id);
CREATE TABLE IF NOT EXISTS filters (
    user_id TEXT NOT NULL,
    filter_id INTEGER NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;
-- Rowid order is upload order: one-time keys are claimed oldest first.
CREATE TABLE IF NOT EXISTS one_time_keys (
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
    used INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cross_signing_keys (
    user_id TEXT NOT NULL,
    usage TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, usage)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS key_signatures (
    target_user TEXT NOT NULL,
    target_key TEXT NOT NULL,
    signer_user TEXT NOT NULL,
    signer_key TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (target_user, target_key, signer_user, signer_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS backup_versions (
    user_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data TEXT NOT NULL,
    etag INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    PRIMARY KEY (user_id, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS backup_keys (
    user_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    is_verified INTEGER NOT NULL,
    first_message_index INTEGER NOT NULL,
    forwarded_count INTEGER NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS device_list_changes (
    user_id TEXT PRIMARY KEY,
    stream_id INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS receipts (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    stream_id INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id, receipt_type, thread_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pushers (
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    device_id TEXT NOT NULL,
    json TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    PRIMARY KEY (user_id, app_id, pushkey)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS presence (
    user_id TEXT PRIMARY KEY,
    stream_id INTEGER NOT NULL,
    presence TEXT NOT NULL,
    status_msg TEXT NOT NULL,
    last_active_ts INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS room_aliases (
    alias TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS published_rooms (room_id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stream_position (id INTEGER PRIMARY KEY CHECK (id = 1), max_stream INTEGER NOT NULL);
INSERT OR IGNORE INTO stream_position VALUES (1, 0);
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

// Version 4: the transaction ids of to-device messages (written only by processes sharing a
// PostgreSQL database; the table is here so that both backends have one schema).
constexpr const char* kSchemaV4 = R"sql(
CREATE TABLE IF NOT EXISTS to_device_txns (
    device_key TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (device_key, txn_id)
);
CREATE INDEX IF NOT EXISTS to_device_txns_age ON to_device_txns (device_key, ts);
)sql";

// Version 5: a room's aliases (counted by an alias's decision, listed by /rooms/{id}/aliases)
// and a pushkey's pushers (taken from every other user when one sets it) are found by index.
constexpr const char* kSchemaV5 = R"sql(
CREATE INDEX IF NOT EXISTS room_aliases_room ON room_aliases (room_id);
CREATE INDEX IF NOT EXISTS pushers_pushkey ON pushers (app_id, pushkey);
)sql";

// Version 6: a user's memberships and the device-list changes a /sync needs are read when
// needed, not at start: a user's member events and the changes in a range of positions are
// found by index, and the start-up index goes.
constexpr const char* kSchemaV6 = R"sql(
CREATE INDEX IF NOT EXISTS events_member_target ON events (state_key, stream_id)
    WHERE type = 'm.room.member';
CREATE INDEX IF NOT EXISTS device_list_changes_stream ON device_list_changes (stream_id);
DROP INDEX IF EXISTS events_history;
)sql";

// Version 7: presence is read when needed, not at start: only the users not offline are read
// then, by index.
constexpr const char* kSchemaV7 = R"sql(
CREATE INDEX IF NOT EXISTS presence_present ON presence (user_id) WHERE presence <> 'offline';
)sql";

// Version 8: the rooms anyone may join or read (join rule public, or history world readable),
// kept as their state changes instead of found at start from every room's current state
// (which the migration reads to fill it: Db::kOpenRoomsVersion).
constexpr const char* kSchemaV8 = R"sql(
CREATE TABLE IF NOT EXISTS open_rooms (room_id TEXT PRIMARY KEY) WITHOUT ROWID;
)sql";

class Stmt;

class Db {
  public:
    using Stmt = mxvoip::store::Stmt;
    static constexpr const char* kMigrations[] = {kSchemaV1, kSchemaV2, kSchemaV3, kSchemaV4,
                                                  kSchemaV5, kSchemaV6, kSchemaV7, kSchemaV8};
    // One process owns the file (its lock is taken first): nothing to wait for.
    static constexpr const char* kMigrationLock = nullptr;
    // The version whose migration made open_rooms, which the migration then fills.
    static constexpr std::int64_t kOpenRoomsVersion = 8;
    // One process writes a SQLite database: its writes are already one after the other.
    static constexpr const char* kUserLock = nullptr;
    // Rowid order is upload order: the oldest key goes first. One writer at a time.
    static constexpr const char* kTakeOneTimeKey =
        "DELETE FROM one_time_keys WHERE rowid = (SELECT rowid FROM one_time_keys WHERE user_id = "
        "? AND device_id = ? AND algorithm = ? ORDER BY rowid LIMIT 1) RETURNING key_id, json";
    // Takes positions (at least ?, then ? more) in the writer's transaction; returns the last.
    static constexpr const char* kTakeStreams =
        "UPDATE stream_position SET max_stream = MAX(max_stream, ?) + ? WHERE id = 1 "
        "RETURNING max_stream";
    // The newest position taken.
    static constexpr const char* kMaxStream = "SELECT max_stream FROM stream_position WHERE id = 1";

    explicit Db(const std::string& path, bool create) {
        int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
        if (sqlite3_open_v2(path.c_str(), &db_, flags, nullptr) != SQLITE_OK) {
            std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
            sqlite3_close(db_);
            throw StoreError("cannot open SQLite database '" + path + "': " + msg);
        }
        sqlite3_busy_timeout(db_, 10000);
        sqlite3_extended_result_codes(db_, 1);
    }
    ~Db() {
        for (auto& [_, st] : cache_) sqlite3_finalize(st);
        sqlite3_close(db_);
    }
    Db(const Db&) = delete;
    Db& operator=(const Db&) = delete;

    // A transaction in which every read sees the database as of one moment.
    static constexpr const char* kBeginRead = "BEGIN";
    void begin() { exec("BEGIN IMMEDIATE"); }
    // Nothing to save on a file: run now.
    void defer(const char* sql, std::optional<std::string> param = std::nullopt);
    void commit() { exec("COMMIT"); }
    void rollback() noexcept { sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr); }

    void exec(const char* sql) {
        char* err = nullptr;
        if (int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &err); rc != SQLITE_OK) {
            std::string msg = err ? err : "unknown error";
            sqlite3_free(err);
            raise(rc, "SQLite: " + msg);
        }
    }
    // A file's connection never breaks: what fails, fails in the database's file.
    bool broken() const { return false; }

    // Cached prepared statement, reset and with bindings cleared.
    sqlite3_stmt* prepare(const char* sql) {
        auto [it, inserted] = cache_.try_emplace(sql, nullptr);
        if (inserted && sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &it->second,
                                           nullptr) != SQLITE_OK) {
            cache_.erase(it);
            throw StoreError(std::string("SQLite prepare: ") + sqlite3_errmsg(db_));
        }
        sqlite3_reset(it->second);
        sqlite3_clear_bindings(it->second);
        return it->second;
    }

    [[noreturn]] void fail(const char* what) {
        raise(sqlite3_extended_errcode(db_),
              std::string("SQLite ") + what + ": " + sqlite3_errmsg(db_));
    }

    // The disk full, an I/O error, memory short, the file locked: conditions that pass, so
    // StoreUnavailable; anything else is the statement's own fault.
    [[noreturn]] static void raise(int rc, const std::string& msg) {
        switch (rc & 0xff) {
            case SQLITE_BUSY:
            case SQLITE_LOCKED:
            case SQLITE_NOMEM:
            case SQLITE_IOERR:
            case SQLITE_FULL:
            case SQLITE_CANTOPEN:
            case SQLITE_PROTOCOL:
                throw StoreUnavailable(msg);
            default:
                throw StoreError(msg);
        }
    }

    sqlite3* handle() { return db_; }

  private:
    sqlite3* db_ = nullptr;
    std::unordered_map<const char*, sqlite3_stmt*> cache_;
};

// Binds arguments positionally.
class Stmt {
  public:
    Stmt(Db& db, const char* sql) : db_(db), st_(db.prepare(sql)) {}
    ~Stmt() { sqlite3_reset(st_); }
    Stmt(const Stmt&) = delete;
    Stmt& operator=(const Stmt&) = delete;

    Stmt& bind(const std::string& v) {
        sqlite3_bind_text(st_, ++n_, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
        return *this;
    }
    Stmt& bind(const std::optional<std::string>& v) {
        if (v) return bind(*v);
        sqlite3_bind_null(st_, ++n_);
        return *this;
    }
    Stmt& bind(std::int64_t v) {
        sqlite3_bind_int64(st_, ++n_, v);
        return *this;
    }
    Stmt& bind(bool v) { return bind(static_cast<std::int64_t>(v)); }

    void run() {
        if (sqlite3_step(st_) != SQLITE_DONE) db_.fail("write");
    }
    bool next() {
        int rc = sqlite3_step(st_);
        if (rc == SQLITE_ROW) return true;
        if (rc != SQLITE_DONE) db_.fail("read");
        return false;
    }
    std::string text(int col) {
        auto p = reinterpret_cast<const char*>(sqlite3_column_text(st_, col));
        return p ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(st_, col)))
                 : std::string();
    }
    std::optional<std::string> opt_text(int col) {
        if (sqlite3_column_type(st_, col) == SQLITE_NULL) return std::nullopt;
        return text(col);
    }
    std::int64_t integer(int col) { return sqlite3_column_int64(st_, col); }

  private:
    Db& db_;
    sqlite3_stmt* st_;
    int n_ = 0;
};

void Db::defer(const char* sql, std::optional<std::string> param) {
    if (!param) return exec(sql);
    Stmt(*this, sql).bind(*param).run();
}

// the store's lifetime and released by the kernel when the process ends, however it ends.
class ProcessLock {
  public:
    explicit ProcessLock(const std::string& db_path) {
        if (db_path.empty() || db_path == ":memory:") return;
        std::string path = db_path + ".lock";
        fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd_ < 0) throw StoreError("cannot open " + path + ": " + std::strerror(errno));
        if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
            int err = errno;
            ::close(fd_);
            if (err == EWOULDBLOCK)
                throw StoreError("the database " + db_path +
                                 " is in use by another process (a running mxvoip-server?); stop "
                                 "it first");
            throw StoreError("cannot lock " + path + ": " + std::strerror(err));
        }
    }
    ~ProcessLock() {
        if (fd_ >= 0) ::close(fd_);
    }
    ProcessLock(const ProcessLock&) = delete;
    ProcessLock& operator=(const ProcessLock&) = delete;

  private:
    int fd_ = -1;
};

class SqliteStore final : private ProcessLock, public sql::SqlStore<Db> {
  public:
    explicit SqliteStore(const SqliteOptions& opts)
        : ProcessLock(opts.path),
          SqlStore([opts] { return open_writer(opts); }, [opts] { return open_reader(opts); }) {}

    ~SqliteStore() override {
        // Fold the WAL back into the main file so a clean shutdown leaves one file behind.
        try {
            close_reader();
            if (auto* db = writer_db()) db->exec("PRAGMA wal_checkpoint(TRUNCATE)");
        } catch (...) {
        }
    }

  private:
    static std::unique_ptr<Db> open_writer(const SqliteOptions& opts) {
        if (opts.synchronous != "full" && opts.synchronous != "normal")
            throw StoreError("synchronous must be 'full' or 'normal'");
        auto db = std::make_unique<Db>(opts.path, true);
        db->exec("PRAGMA journal_mode=WAL");
        db->exec(opts.synchronous == "full" ? "PRAGMA synchronous=FULL"
                                            : "PRAGMA synchronous=NORMAL");
        db->exec("PRAGMA foreign_keys=OFF");
        // Keep the hot index pages in memory; reads go through mmap.
        db->exec("PRAGMA cache_size=-65536");
        return db;
    }
    static std::unique_ptr<Db> open_reader(const SqliteOptions& opts) {
        auto db = std::make_unique<Db>(opts.path, false);
        db->exec("PRAGMA query_only=ON");
        // No mmap: a database that grows (every commit) is mapped again by each read that
        // finds it larger, which cost half the time of writes to rooms read anew
        // (bench/RESULTS.md, "SQLite's reader without mmap"); reads go through the page cache.
        db->exec("PRAGMA cache_size=-16384");
        return db;
    }
};

}  // namespace

std::unique_ptr<Store> open_sqlite(const SqliteOptions& options) {
    return std::make_unique<SqliteStore>(options);
}

}  // namespace mxvoip::store
