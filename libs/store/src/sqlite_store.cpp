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

namespace mxvoip::store {
namespace {

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
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

class Db {
  public:
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

    void exec(const char* sql) {
        char* err = nullptr;
        if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
            std::string msg = err ? err : "unknown error";
            sqlite3_free(err);
            throw StoreError(std::string("SQLite: ") + msg);
        }
    }

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
        throw StoreError(std::string("SQLite ") + what + ": " + sqlite3_errmsg(db_));
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

#define EVENT_COLUMNS                                                                 \
    "stream_id, event_id, room_id, type, state_key, sender, origin_server_ts, json, " \
    "txn_device_key, txn_id"

EventRecord read_event(Stmt& s) {
    return EventRecord{s.integer(0), s.text(1),    s.text(2), s.text(3), s.opt_text(4),
                       s.text(5),    s.integer(6), s.text(7), s.text(8), s.text(9)};
}

// One process at a time owns a database: the server keeps its model in memory, so rows
// written beside it (by a second server, or `mxvoip-server user add`) would be unknown to it
// and could collide with what it writes next. The lock is an flock on "<path>.lock", held for
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

class SqliteStore final : public Store {
  public:
    explicit SqliteStore(const SqliteOptions& opts) : lock_(opts.path), writer_(opts.path, true) {
        if (opts.synchronous != "full" && opts.synchronous != "normal")
            throw StoreError("synchronous must be 'full' or 'normal'");
        writer_.exec("PRAGMA journal_mode=WAL");
        writer_.exec(opts.synchronous == "full" ? "PRAGMA synchronous=FULL"
                                                : "PRAGMA synchronous=NORMAL");
        writer_.exec("PRAGMA foreign_keys=OFF");
        // Keep the hot index pages in memory; reads go through mmap.
        writer_.exec("PRAGMA cache_size=-65536");
        writer_.exec("BEGIN IMMEDIATE");
        writer_.exec(kSchema);
        writer_.exec("COMMIT");
        reader_ = std::make_unique<Db>(opts.path, false);
        reader_->exec("PRAGMA query_only=ON");
        reader_->exec("PRAGMA cache_size=-16384");
        reader_->exec("PRAGMA mmap_size=268435456");
    }

    ~SqliteStore() override {
        // Fold the WAL back into the main file so a clean shutdown leaves one file behind.
        try {
            reader_.reset();
            writer_.exec("PRAGMA wal_checkpoint(TRUNCATE)");
        } catch (...) {
        }
    }

    Snapshot load(int recent_per_room, std::int64_t txn_since_ts) override {
        std::lock_guard lock(read_mu_);
        Db& db = *reader_;
        Snapshot snap;
        {
            Stmt s(db,
                   "SELECT user_id, password_hash, is_guest, created_ts, displayname, avatar_url "
                   "FROM users");
            while (s.next())
                snap.users.push_back(
                    {s.text(0), s.text(1), s.integer(2) != 0, s.integer(3), s.text(4), s.text(5)});
        }
        {
            Stmt s(db,
                   "SELECT token_hash, user_id, device_id, device_display_name FROM access_tokens");
            while (s.next()) snap.tokens.push_back({s.text(0), s.text(1), s.text(2), s.text(3)});
        }
        {
            Stmt s(db, "SELECT room_id, room_version FROM rooms");
            while (s.next()) snap.rooms.push_back({s.text(0), s.text(1)});
        }
        {
            Stmt s(db,
                   "SELECT e.stream_id, e.event_id, e.room_id, e.type, e.state_key, e.sender, "
                   "e.origin_server_ts, e.json, e.txn_device_key, e.txn_id FROM current_state c "
                   "JOIN events e "
                   "ON e.stream_id = c.stream_id ORDER BY e.stream_id");
            while (s.next()) snap.state_events.push_back(read_event(s));
        }
        {
            Stmt s(db,
                   "SELECT stream_id, room_id, type, state_key, json_extract(json, CASE type WHEN "
                   "'m.room.member' THEN '$.content.membership' ELSE "
                   "'$.content.history_visibility' END) FROM events WHERE type IN "
                   "('m.room.member', 'm.room.history_visibility') AND state_key IS NOT NULL "
                   "ORDER BY stream_id");
            while (s.next())
                snap.history.push_back(
                    {s.integer(0), s.text(1), s.text(2), s.text(3), s.opt_text(4).value_or("")});
        }
        for (const auto& room : snap.rooms) {
            auto events = events_before_locked(room.room_id, INT64_MAX, recent_per_room);
            for (auto it = events.rbegin(); it != events.rend(); ++it)
                snap.recent_events.push_back(std::move(*it));
        }
        std::sort(snap.recent_events.begin(), snap.recent_events.end(),
                  [](const EventRecord& a, const EventRecord& b) { return a.stream < b.stream; });
        {
            // Newest first, stopping at the cut-off: stream order is time order.
            Stmt s(db,
                   "SELECT txn_device_key, room_id, txn_id, event_id, origin_server_ts, txn_id IS "
                   "NOT NULL "
                   "FROM events ORDER BY stream_id DESC");
            while (s.next()) {
                if (s.integer(4) < txn_since_ts) break;
                if (s.integer(5))
                    snap.txns.push_back({s.text(0), s.text(1), s.text(2), s.text(3), s.integer(4)});
            }
        }
        {
            Stmt s(db,
                   "SELECT stream_id, user_id, room_id, type, content FROM account_data ORDER BY "
                   "stream_id");
            while (s.next())
                snap.account_data.push_back(
                    {s.integer(0), s.text(1), s.text(2), s.text(3), s.text(4)});
        }
        {
            Stmt s(db,
                   "SELECT stream_id, user_id, presence, status_msg, last_active_ts FROM presence "
                   "ORDER BY stream_id");
            while (s.next())
                snap.presence.push_back(
                    {s.integer(0), s.text(1), s.text(2), s.text(3), s.integer(4)});
        }
        {
            Stmt s(db, "SELECT alias, room_id, creator FROM room_aliases ORDER BY alias");
            while (s.next()) snap.room_aliases.push_back({s.text(0), s.text(1), s.text(2)});
        }
        {
            Stmt s(db, "SELECT room_id FROM published_rooms ORDER BY room_id");
            while (s.next()) snap.published_rooms.push_back(s.text(0));
        }
        {
            Stmt s(db,
                   "SELECT user_id, app_id, pushkey, device_id, json, created_ts FROM pushers "
                   "ORDER BY created_ts");
            while (s.next())
                snap.pushers.push_back(
                    {s.text(0), s.text(1), s.text(2), s.text(3), s.text(4), s.integer(5)});
        }
        {
            Stmt s(db,
                   "SELECT stream_id, room_id, user_id, receipt_type, thread_id, event_id, ts FROM "
                   "receipts ORDER BY stream_id");
            while (s.next())
                snap.receipts.push_back({s.integer(0), s.text(1), s.text(2), s.text(3), s.text(4),
                                         s.text(5), s.integer(6)});
        }
        {
            Stmt s(
                db,
                "SELECT stream_id, user_id, device_id, message FROM to_device ORDER BY stream_id");
            while (s.next())
                snap.to_device.push_back({s.integer(0), s.text(1), s.text(2), s.text(3)});
        }
        {
            Stmt s(db, "SELECT user_id, filter_id, json FROM filters");
            while (s.next()) snap.filters.push_back({s.text(0), s.integer(1), s.text(2)});
        }
        {
            Stmt s(db, "SELECT user_id, device_id, json FROM device_keys");
            while (s.next()) snap.device_keys.push_back({s.text(0), s.text(1), s.text(2)});
        }
        {
            Stmt s(db,
                   "SELECT user_id, device_id, algorithm, key_id, json FROM one_time_keys ORDER BY "
                   "rowid");
            while (s.next())
                snap.one_time_keys.push_back(
                    {s.text(0), s.text(1), s.text(2), s.text(3), s.text(4)});
        }
        {
            Stmt s(db,
                   "SELECT user_id, device_id, algorithm, key_id, json, used FROM fallback_keys");
            while (s.next())
                snap.fallback_keys.push_back(
                    {s.text(0), s.text(1), s.text(2), s.text(3), s.text(4), s.integer(5) != 0});
        }
        {
            Stmt s(db, "SELECT user_id, stream_id FROM device_list_changes");
            while (s.next()) snap.device_list_changes.push_back({s.text(0), s.integer(1)});
        }
        {
            Stmt s(db,
                   "SELECT user_id, version, algorithm, auth_data, etag, deleted FROM "
                   "backup_versions");
            while (s.next())
                snap.backup_versions.push_back({s.text(0), s.integer(1), s.text(2), s.text(3),
                                                s.integer(4), s.integer(5) != 0});
        }
        {
            // Live versions only: a deleted version's keys are deleted with it.
            Stmt s(db,
                   "SELECT user_id, version, room_id, session_id, is_verified, "
                   "first_message_index, forwarded_count FROM backup_keys");
            while (s.next())
                snap.backup_keys.push_back({s.text(0), s.integer(1), s.text(2), s.text(3),
                                            s.integer(4) != 0, s.integer(5), s.integer(6), ""});
        }
        {
            Stmt s(db, "SELECT user_id, usage, json FROM cross_signing_keys");
            while (s.next()) snap.cross_signing_keys.push_back({s.text(0), s.text(1), s.text(2)});
        }
        {
            Stmt s(db,
                   "SELECT target_user, target_key, signer_user, signer_key, signature FROM "
                   "key_signatures");
            while (s.next())
                snap.key_signatures.push_back(
                    {s.text(0), s.text(1), s.text(2), s.text(3), s.text(4)});
        }
        {
            Stmt s(db, "SELECT max_stream FROM stream_position WHERE id = 1");
            if (s.next()) snap.max_stream = s.integer(0);
        }
        return snap;
    }

    void apply(std::span<const Mutation> batch) override {
        Db& db = writer_;
        db.exec("BEGIN IMMEDIATE");
        try {
            StreamId max_stream = 0;
            for (const auto& m : batch)
                std::visit([&](const auto& v) { write(db, v, max_stream); }, m);
            if (max_stream > 0) {
                Stmt s(db,
                       "UPDATE stream_position SET max_stream = max(max_stream, ?) WHERE id = 1");
                s.bind(max_stream).run();
            }
            db.exec("COMMIT");
        } catch (...) {
            sqlite3_exec(db.handle(), "ROLLBACK", nullptr, nullptr, nullptr);
            throw;
        }
    }

    std::vector<EventRecord> events_before(const std::string& room_id, StreamId before,
                                           int limit) override {
        std::lock_guard lock(read_mu_);
        return events_before_locked(room_id, before, limit);
    }

    std::vector<EventRecord> events_after(const std::string& room_id, StreamId after,
                                          int limit) override {
        std::lock_guard lock(read_mu_);
        Stmt s(*reader_,
               "SELECT " EVENT_COLUMNS
               " FROM events WHERE room_id = ? AND stream_id > ? ORDER BY stream_id ASC LIMIT ?");
        s.bind(room_id).bind(after).bind(static_cast<std::int64_t>(limit));
        std::vector<EventRecord> out;
        while (s.next()) out.push_back(read_event(s));
        return out;
    }

    std::optional<EventRecord> event_at(StreamId stream) override {
        std::lock_guard lock(read_mu_);
        Stmt s(*reader_, "SELECT " EVENT_COLUMNS " FROM events WHERE stream_id = ?");
        s.bind(stream);
        if (!s.next()) return std::nullopt;
        return read_event(s);
    }

    std::vector<EventRecord> state_at(const std::string& room_id, StreamId at) override {
        std::lock_guard lock(read_mu_);
        Stmt s(*reader_,
               "SELECT " EVENT_COLUMNS
               " FROM events WHERE stream_id IN (SELECT MAX(stream_id) FROM events WHERE room_id "
               "= ? AND stream_id <= ? AND state_key IS NOT NULL GROUP BY type, state_key) ORDER "
               "BY stream_id");
        s.bind(room_id).bind(at);
        std::vector<EventRecord> out;
        while (s.next()) out.push_back(read_event(s));
        return out;
    }

    std::vector<BackupKeyRecord> backup_keys(const std::string& user_id, std::int64_t version,
                                             const std::string& room_id,
                                             const std::string& session_id) override {
        std::lock_guard lock(read_mu_);
        Stmt s(*reader_,
               "SELECT room_id, session_id, is_verified, first_message_index, forwarded_count, "
               "json FROM backup_keys WHERE user_id = ? AND version = ? AND (? = '' OR room_id = "
               "?) AND (? = '' OR session_id = ?) ORDER BY room_id, session_id");
        s.bind(user_id).bind(version).bind(room_id).bind(room_id).bind(session_id).bind(session_id);
        std::vector<BackupKeyRecord> out;
        while (s.next())
            out.push_back({user_id, version, s.text(0), s.text(1), s.integer(2) != 0, s.integer(3),
                           s.integer(4), s.text(5)});
        return out;
    }

  private:
    std::vector<EventRecord> events_before_locked(const std::string& room_id, StreamId before,
                                                  int limit) {
        Stmt s(*reader_,
               "SELECT " EVENT_COLUMNS
               " FROM events WHERE room_id = ? AND stream_id < ? ORDER BY stream_id DESC LIMIT ?");
        s.bind(room_id).bind(before).bind(static_cast<std::int64_t>(limit));
        std::vector<EventRecord> out;
        while (s.next()) out.push_back(read_event(s));
        return out;
    }

    static void write(Db& db, const PutUser& m, StreamId&) {
        const auto& u = m.user;
        Stmt(db, "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?)")
            .bind(u.user_id)
            .bind(u.password_hash)
            .bind(u.is_guest)
            .bind(u.created_ts)
            .bind(u.displayname)
            .bind(u.avatar_url)
            .run();
    }
    static void write(Db& db, const PutProfile& m, StreamId&) {
        Stmt(db, "UPDATE users SET displayname = ?, avatar_url = ? WHERE user_id = ?")
            .bind(m.displayname)
            .bind(m.avatar_url)
            .bind(m.user_id)
            .run();
    }
    static void write(Db& db, const PutToken& m, StreamId&) {
        const auto& t = m.token;
        Stmt(db, "INSERT INTO access_tokens VALUES (?, ?, ?, ?)")
            .bind(t.token_hash)
            .bind(t.user_id)
            .bind(t.device_id)
            .bind(t.device_display_name)
            .run();
    }
    static void write(Db& db, const DeleteTokens& m, StreamId&) {
        if (m.device_id.empty())
            Stmt(db, "DELETE FROM access_tokens WHERE user_id = ?").bind(m.user_id).run();
        else
            Stmt(db, "DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?")
                .bind(m.user_id)
                .bind(m.device_id)
                .run();
    }
    static void write(Db& db, const PutDeviceName& m, StreamId&) {
        Stmt(db,
             "UPDATE access_tokens SET device_display_name = ? WHERE user_id = ? AND device_id = ?")
            .bind(m.display_name)
            .bind(m.user_id)
            .bind(m.device_id)
            .run();
    }
    static void write(Db& db, const PutRoom& m, StreamId&) {
        Stmt(db, "INSERT INTO rooms VALUES (?, ?)")
            .bind(m.room.room_id)
            .bind(m.room.room_version)
            .run();
    }
    static void write(Db& db, const PutEvent& m, StreamId& max_stream) {
        const auto& e = m.event;
        std::optional<std::string> txn_key, txn_id;
        if (!e.txn_id.empty()) txn_key = e.txn_device_key, txn_id = e.txn_id;
        Stmt(db, "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(e.stream)
            .bind(e.event_id)
            .bind(e.room_id)
            .bind(e.type)
            .bind(e.state_key)
            .bind(e.sender)
            .bind(e.origin_server_ts)
            .bind(e.json)
            .bind(txn_key)
            .bind(txn_id)
            .run();
        if (e.state_key)
            Stmt(db, "INSERT OR REPLACE INTO current_state VALUES (?, ?, ?, ?)")
                .bind(e.room_id)
                .bind(e.type)
                .bind(*e.state_key)
                .bind(e.stream)
                .run();
        max_stream = std::max(max_stream, e.stream);
    }
    static void write(Db& db, const PutAccountData& m, StreamId& max_stream) {
        const auto& a = m.data;
        Stmt(db, "INSERT OR REPLACE INTO account_data VALUES (?, ?, ?, ?, ?)")
            .bind(a.user_id)
            .bind(a.room_id)
            .bind(a.type)
            .bind(a.stream)
            .bind(a.content)
            .run();
        max_stream = std::max(max_stream, a.stream);
    }
    static void write(Db& db, const PutReceipt& m, StreamId& max_stream) {
        const auto& r = m.receipt;
        Stmt(db, "INSERT OR REPLACE INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(r.room_id)
            .bind(r.user_id)
            .bind(r.receipt_type)
            .bind(r.thread_id)
            .bind(r.stream)
            .bind(r.event_id)
            .bind(r.ts)
            .run();
        max_stream = std::max(max_stream, r.stream);
    }
    static void write(Db& db, const PutPresence& m, StreamId& max_stream) {
        const auto& p = m.presence;
        Stmt(db, "INSERT OR REPLACE INTO presence VALUES (?, ?, ?, ?, ?)")
            .bind(p.user_id)
            .bind(p.stream)
            .bind(p.presence)
            .bind(p.status_msg)
            .bind(p.last_active_ts)
            .run();
        max_stream = std::max(max_stream, p.stream);
    }
    static void write(Db& db, const RedactEvent& m, StreamId&) {
        Stmt(db, "UPDATE events SET json = ? WHERE stream_id = ?")
            .bind(m.json)
            .bind(m.stream)
            .run();
    }
    static void write(Db& db, const PutRoomAlias& m, StreamId&) {
        Stmt(db, "INSERT OR REPLACE INTO room_aliases VALUES (?, ?, ?)")
            .bind(m.alias.alias)
            .bind(m.alias.room_id)
            .bind(m.alias.creator)
            .run();
    }
    static void write(Db& db, const DeleteRoomAlias& m, StreamId&) {
        Stmt(db, "DELETE FROM room_aliases WHERE alias = ?").bind(m.alias).run();
    }
    static void write(Db& db, const PutRoomVisibility& m, StreamId&) {
        if (m.published)
            Stmt(db, "INSERT OR IGNORE INTO published_rooms VALUES (?)").bind(m.room_id).run();
        else
            Stmt(db, "DELETE FROM published_rooms WHERE room_id = ?").bind(m.room_id).run();
    }
    static void write(Db& db, const PutPusher& m, StreamId&) {
        const auto& p = m.pusher;
        Stmt(db, "INSERT OR REPLACE INTO pushers VALUES (?, ?, ?, ?, ?, ?)")
            .bind(p.user_id)
            .bind(p.app_id)
            .bind(p.pushkey)
            .bind(p.device_id)
            .bind(p.json)
            .bind(p.created_ts)
            .run();
    }
    static void write(Db& db, const DeletePusher& m, StreamId&) {
        Stmt(db, "DELETE FROM pushers WHERE (? = '' OR user_id = ?) AND app_id = ? AND pushkey = ?")
            .bind(m.user_id)
            .bind(m.user_id)
            .bind(m.app_id)
            .bind(m.pushkey)
            .run();
    }
    static void write(Db&, const AdvanceStream& m, StreamId& max_stream) {
        max_stream = std::max(max_stream, m.stream);
    }
    static void write(Db& db, const PutToDevice& m, StreamId& max_stream) {
        const auto& t = m.message;
        Stmt(db, "INSERT INTO to_device VALUES (?, ?, ?, ?)")
            .bind(t.stream)
            .bind(t.user_id)
            .bind(t.device_id)
            .bind(t.message)
            .run();
        max_stream = std::max(max_stream, t.stream);
    }
    static void write(Db& db, const DeleteToDevice& m, StreamId&) {
        Stmt(db, "DELETE FROM to_device WHERE user_id = ? AND device_id = ? AND stream_id <= ?")
            .bind(m.user_id)
            .bind(m.device_id)
            .bind(m.up_to)
            .run();
    }
    static void write(Db& db, const PutFilter& m, StreamId&) {
        Stmt(db, "INSERT INTO filters VALUES (?, ?, ?)")
            .bind(m.filter.user_id)
            .bind(m.filter.filter_id)
            .bind(m.filter.json)
            .run();
    }

    static void write(Db& db, const PutDeviceKeys& m, StreamId&) {
        Stmt(db, "INSERT OR REPLACE INTO device_keys VALUES (?, ?, ?)")
            .bind(m.keys.user_id)
            .bind(m.keys.device_id)
            .bind(m.keys.json)
            .run();
    }
    static void write(Db& db, const PutOneTimeKeys& m, StreamId&) {
        for (const auto& k : m.keys)
            Stmt(db, "INSERT OR IGNORE INTO one_time_keys VALUES (?, ?, ?, ?, ?)")
                .bind(k.user_id)
                .bind(k.device_id)
                .bind(k.algorithm)
                .bind(k.key_id)
                .bind(k.json)
                .run();
    }
    static void write(Db& db, const DeleteOneTimeKey& m, StreamId&) {
        Stmt(db,
             "DELETE FROM one_time_keys WHERE user_id = ? AND device_id = ? AND algorithm = ? AND "
             "key_id = ?")
            .bind(m.user_id)
            .bind(m.device_id)
            .bind(m.algorithm)
            .bind(m.key_id)
            .run();
    }
    static void write(Db& db, const PutFallbackKey& m, StreamId&) {
        const auto& k = m.key;
        Stmt(db, "INSERT OR REPLACE INTO fallback_keys VALUES (?, ?, ?, ?, ?, ?)")
            .bind(k.user_id)
            .bind(k.device_id)
            .bind(k.algorithm)
            .bind(k.key_id)
            .bind(k.json)
            .bind(k.used)
            .run();
    }
    static void write(Db& db, const DeleteDeviceKeys& m, StreamId&) {
        for (const char* sql :
             {"DELETE FROM device_keys WHERE user_id = ? AND device_id = ?",
              "DELETE FROM one_time_keys WHERE user_id = ? AND device_id = ?",
              "DELETE FROM fallback_keys WHERE user_id = ? AND device_id = ?",
              "DELETE FROM key_signatures WHERE target_user = ? AND target_key = ?"})
            Stmt(db, sql).bind(m.user_id).bind(m.device_id).run();
    }
    static void write(Db& db, const PutCrossSigningKey& m, StreamId&) {
        Stmt(db, "INSERT OR REPLACE INTO cross_signing_keys VALUES (?, ?, ?)")
            .bind(m.key.user_id)
            .bind(m.key.usage)
            .bind(m.key.json)
            .run();
    }
    static void write(Db& db, const PutKeySignature& m, StreamId&) {
        const auto& k = m.signature;
        Stmt(db, "INSERT OR REPLACE INTO key_signatures VALUES (?, ?, ?, ?, ?)")
            .bind(k.target_user)
            .bind(k.target_key)
            .bind(k.signer_user)
            .bind(k.signer_key)
            .bind(k.signature)
            .run();
    }
    static void write(Db& db, const DeleteKeySignatures& m, StreamId&) {
        Stmt(db, "DELETE FROM key_signatures WHERE target_user = ? AND target_key = ?")
            .bind(m.target_user)
            .bind(m.target_key)
            .run();
    }
    static void write(Db& db, const PutBackupVersion& m, StreamId&) {
        const auto& v = m.version;
        Stmt(db, "INSERT OR REPLACE INTO backup_versions VALUES (?, ?, ?, ?, ?, ?)")
            .bind(v.user_id)
            .bind(v.version)
            .bind(v.algorithm)
            .bind(v.auth_data)
            .bind(v.etag)
            .bind(v.deleted)
            .run();
    }
    static void write(Db& db, const PutBackupKey& m, StreamId&) {
        const auto& k = m.key;
        Stmt(db, "INSERT OR REPLACE INTO backup_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(k.user_id)
            .bind(k.version)
            .bind(k.room_id)
            .bind(k.session_id)
            .bind(k.is_verified)
            .bind(k.first_message_index)
            .bind(k.forwarded_count)
            .bind(k.json)
            .run();
    }
    static void write(Db& db, const DeleteBackupKeys& m, StreamId&) {
        Stmt(db,
             "DELETE FROM backup_keys WHERE user_id = ? AND version = ? AND (? = '' OR room_id = "
             "?) AND (? = '' OR session_id = ?)")
            .bind(m.user_id)
            .bind(m.version)
            .bind(m.room_id)
            .bind(m.room_id)
            .bind(m.session_id)
            .bind(m.session_id)
            .run();
    }
    static void write(Db& db, const PutDeviceListChange& m, StreamId& max_stream) {
        Stmt(db, "INSERT OR REPLACE INTO device_list_changes VALUES (?, ?)")
            .bind(m.change.user_id)
            .bind(m.change.stream)
            .run();
        max_stream = std::max(max_stream, m.change.stream);
    }

    ProcessLock lock_;  // first in, last out: held while any connection is open
    Db writer_;
    std::mutex read_mu_;
    std::unique_ptr<Db> reader_;
};

}  // namespace

std::unique_ptr<Store> open_sqlite(const SqliteOptions& options) {
    return std::make_unique<SqliteStore>(options);
}

}  // namespace mxvoip::store
