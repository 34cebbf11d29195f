#pragma once

// The store's queries and writes, shared by its SQL backends (sqlite_store.cpp,
// postgres_store.cpp). `Db` is a backend's connection: exec(), begin(), commit(), rollback(),
// a Stmt that binds positionally ('?'), runs and steps through rows, and the statements whose
// SQL differs between the backends (kTakeOneTimeKey, kTakeStreams, kMaxStream). Upserts are written
// as INSERT ... ON CONFLICT, which both understand; every insert is one, so that applying a batch
// again after an unknown outcome changes nothing (Store::apply). No SQL reads inside the stored
// JSON: a
// "\u0000" in content is valid JSON that PostgreSQL's JSON functions refuse to unescape.
#include <boost/json.hpp>

#include <algorithm>
#include <atomic>
#include <climits>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxvoip/store/store.hpp"

namespace mxvoip::store::sql {

#define EVENT_COLUMNS                                                                 \
    "stream_id, event_id, room_id, type, state_key, sender, origin_server_ts, json, " \
    "txn_device_key, txn_id"

// A version's backup keys: all, a room's, or one session's (bind_backup_keys_of).
#define BACKUP_KEYS_OF \
    "user_id = ? AND version = ? AND (? = '' OR room_id = ?) AND (? = '' OR session_id = ?)"

template <typename Stmt>
void bind_backup_keys_of(Stmt& s, const std::string& user_id, std::int64_t version,
                         const std::string& room_id, const std::string& session_id) {
    s.bind(user_id).bind(version).bind(room_id).bind(room_id).bind(session_id).bind(session_id);
}

template <typename Stmt>
EventRecord read_event(Stmt& s) {
    return EventRecord{s.integer(0), s.text(1),    s.text(2), s.text(3), s.opt_text(4),
                       s.text(5),    s.integer(6), s.text(7), s.text(8), s.text(9)};
}

// One process at a time owns a database: the server keeps its model in memory, so rows
// written beside it (by a second server, or `mxvoip-server user add`) would be unknown to it
// and could collide with what it writes next. The lock is an flock on "<path>.lock", held for

// content[key] of an event's JSON when it is a string, else "".
inline std::string content_string(const std::string& event_json, const char* key) {
    boost::system::error_code ec;
    auto v = boost::json::parse(event_json, ec);
    if (ec || !v.is_object()) return {};
    const auto* content = v.get_object().if_contains("content");
    if (!content || !content->is_object()) return {};
    const auto* value = content->get_object().if_contains(key);
    return value && value->is_string() ? std::string(value->get_string()) : std::string();
}

template <typename Db>
class SqlStore : public Store {
    using Stmt = typename Db::Stmt;

  public:
    // Brings the writer's database to the newest schema, then opens the reader (which may
    // need the tables to exist).
    // The openers are kept to replace a connection found broken.
    SqlStore(std::function<std::unique_ptr<Db>()> open_writer,
             std::function<std::unique_ptr<Db>()> open_reader)
        : open_writer_(std::move(open_writer)), open_reader_(std::move(open_reader)) {
        writer_ = open_writer_();
        migrate(*writer_);
        reader_ = open_reader_();
    }

    Snapshot load() override {
        return read([&](Db& db) { return load_from(db); });
    }

    void apply(std::span<const Mutation> batch) override {
        in_transaction(false, [&](Txn& txn) {
            for (const auto& m : batch) txn.write(m);
        });
    }

    std::vector<std::exception_ptr> transact(std::span<const Write> batch) override {
        std::vector<std::exception_ptr> refused(batch.size());
        std::size_t streams = 0;
        for (const auto& w : batch) streams += w.streams;
        in_transaction(streams > 0, [&](DbTxn& txn) {
            // The rooms first, in one order (no two transactions wait for each other), then
            // the batch's positions, at once: each write's are consecutive, and they ascend in
            // the order of the writes.
            if (txn.instance) {
                std::vector<std::string> rooms;
                for (const auto& w : batch)
                    rooms.insert(rooms.end(), w.rooms.begin(), w.rooms.end());
                std::sort(rooms.begin(), rooms.end());
                rooms.erase(std::unique(rooms.begin(), rooms.end()), rooms.end());
                for (const auto& room : rooms) {
                    // The row as it is once locked: its newest event is the room's (a
                    // trigger keeps it, PostgreSQL's schema v7). A room made in this
                    // transaction has no row yet, nor any event.
                    Stmt s(txn.db, "SELECT last_event FROM rooms WHERE room_id = ? FOR UPDATE");
                    s.bind(room);
                    txn.locked_rooms.emplace(room, s.next() ? s.integer(0) : 0);
                }
                std::vector<std::string> users;
                for (const auto& w : batch)
                    users.insert(users.end(), w.users.begin(), w.users.end());
                std::sort(users.begin(), users.end());
                users.erase(std::unique(users.begin(), users.end()), users.end());
                if (Db::kUserLock)
                    for (const auto& user : users) txn.db.defer(Db::kUserLock, user);
            }
            StreamId next = streams ? txn.take_streams(streams) : 0;
            // Each decision has a savepoint, released as the next one is made or by the
            // COMMIT (sent with the statement after them: Db::defer); a write without a
            // decision after it lands in that savepoint, never rolled back once its decision
            // ran.
            bool savepoint = false;
            for (std::size_t i = 0; i < batch.size(); ++i) {
                const Write& w = batch[i];
                const StreamId first = w.streams ? next : 0;
                next += static_cast<StreamId>(w.streams);
                refused[i] = nullptr;
                if (!w.decide) {
                    for (const auto& m : w.mutations) txn.write(m);
                    continue;
                }
                if (savepoint) txn.db.defer("RELEASE SAVEPOINT decision");
                txn.db.defer("SAVEPOINT decision");
                savepoint = true;
                const StreamId max_before = txn.max_stream;
                try {
                    for (const auto& m : w.mutations) txn.write(m);
                    w.decide(txn, first);
                } catch (const StoreUnavailable&) {
                    throw;  // the whole transaction is made again
                } catch (...) {
                    refused[i] = std::current_exception();
                    txn.db.exec("ROLLBACK TO SAVEPOINT decision");
                    txn.max_stream = max_before;
                }
            }
        });
        return refused;
    }

    std::vector<ChangeRecord> changes(StreamId after, StreamId upto) override {
        const int me = instance();
        if (!me) return {};
        return read([&](Db& db) {
            Stmt s(db,
                   "SELECT stream_id, kind, key, instance FROM changes WHERE stream_id > ? AND "
                   "stream_id <= ? AND instance <> ? ORDER BY stream_id, kind, key");
            s.bind(after).bind(upto).bind(std::int64_t{me});
            std::vector<ChangeRecord> out;
            while (s.next())
                out.push_back({s.integer(0), s.text(1), s.text(2), static_cast<int>(s.integer(3))});
            return out;
        });
    }

    std::vector<EventRecord> events_between(StreamId after, StreamId upto) override {
        return read([&](Db& db) {
            Stmt s(db, "SELECT " EVENT_COLUMNS
                       " FROM events WHERE stream_id > ? AND stream_id <= ? ORDER BY stream_id");
            s.bind(after).bind(upto);
            std::vector<EventRecord> out;
            while (s.next()) out.push_back(read_event(s));
            return out;
        });
    }

    std::optional<ToDeviceRecord> to_device_at(StreamId stream) override {
        return read([&](Db& db) -> std::optional<ToDeviceRecord> {
            Stmt s(db, "SELECT user_id, device_id, message FROM to_device WHERE stream_id = ?");
            s.bind(stream);
            if (!s.next()) return std::nullopt;
            return ToDeviceRecord{stream, s.text(0), s.text(1), s.text(2)};
        });
    }

    std::vector<ToDeviceRecord> to_device_of(const std::string& user_id,
                                             const std::string& device_id) override {
        return read([&](Db& db) {
            // The to_device_target index: the device's messages only.
            Stmt s(db,
                   "SELECT stream_id, message FROM to_device WHERE user_id = ? AND device_id = ? "
                   "ORDER BY stream_id");
            s.bind(user_id).bind(device_id);
            std::vector<ToDeviceRecord> out;
            while (s.next()) out.push_back({s.integer(0), user_id, device_id, s.text(1)});
            return out;
        });
    }

    std::vector<std::vector<ReceiptRecord>> receipts_of(
        const std::vector<std::string>& room_ids) override {
        return read_at_one_moment([&](Db& db) {
            std::vector<std::vector<ReceiptRecord>> out;
            out.reserve(room_ids.size());
            for (const auto& room_id : room_ids) {
                auto& room = out.emplace_back();
                // The primary key's prefix: the room's receipts only.
                Stmt s(db,
                       "SELECT stream_id, user_id, receipt_type, thread_id, event_id, ts FROM "
                       "receipts WHERE room_id = ? ORDER BY stream_id");
                s.bind(room_id);
                while (s.next())
                    room.push_back({s.integer(0), room_id, s.text(1), s.text(2), s.text(3),
                                    s.text(4), s.integer(5)});
            }
            return out;
        });
    }

    std::optional<ReceiptRecord> receipt_at(const std::string& room_id, StreamId stream) override {
        return read([&](Db& db) -> std::optional<ReceiptRecord> {
            Stmt s(db,
                   "SELECT user_id, receipt_type, thread_id, event_id, ts FROM receipts WHERE "
                   "room_id = ? AND stream_id = ?");
            s.bind(room_id).bind(stream);
            if (!s.next()) return std::nullopt;
            return ReceiptRecord{stream,    room_id,   s.text(0),   s.text(1),
                                 s.text(2), s.text(3), s.integer(4)};
        });
    }

    std::vector<std::optional<PresenceRecord>> presence_of(
        const std::vector<std::string>& user_ids) override {
        return read_at_one_moment([&](Db& db) {
            std::vector<std::optional<PresenceRecord>> out;
            out.reserve(user_ids.size());
            for (const auto& user_id : user_ids) {
                Stmt s(db,
                       "SELECT stream_id, presence, status_msg, last_active_ts FROM presence "
                       "WHERE user_id = ?");
                s.bind(user_id);
                if (s.next())
                    out.push_back(
                        PresenceRecord{s.integer(0), user_id, s.text(1), s.text(2), s.integer(3)});
                else
                    out.push_back(std::nullopt);
            }
            return out;
        });
    }

    std::optional<RoomAliasRecord> room_alias(const std::string& alias) override {
        return read([&](Db& db) { return alias_row(db, alias); });
    }

    std::vector<std::string> room_aliases_of(const std::string& room_id) override {
        return read([&](Db& db) {
            Stmt s(db, "SELECT alias FROM room_aliases WHERE room_id = ? ORDER BY alias");
            s.bind(room_id);
            std::vector<std::string> out;
            while (s.next()) out.push_back(s.text(0));
            return out;
        });
    }

    std::vector<std::string> published_rooms() override {
        return read([&](Db& db) {
            Stmt s(db, "SELECT room_id FROM published_rooms ORDER BY room_id");
            std::vector<std::string> out;
            while (s.next()) out.push_back(s.text(0));
            return out;
        });
    }

    std::vector<std::string> open_rooms() override {
        return read([&](Db& db) {
            Stmt s(db, "SELECT room_id FROM open_rooms ORDER BY room_id");
            std::vector<std::string> out;
            while (s.next()) out.push_back(s.text(0));
            return out;
        });
    }

    bool room_published(const std::string& room_id) override {
        return read([&](Db& db) {
            Stmt s(db, "SELECT 1 FROM published_rooms WHERE room_id = ?");
            s.bind(room_id);
            return s.next();
        });
    }

    std::vector<std::vector<PusherRecord>> pushers_of(
        const std::vector<std::string>& user_ids) override {
        return read_at_one_moment([&](Db& db) {
            std::vector<std::vector<PusherRecord>> out;
            out.reserve(user_ids.size());
            for (const auto& user_id : user_ids) out.push_back(pusher_rows(db, user_id));
            return out;
        });
    }

    std::vector<std::optional<std::string>> push_rules_of(
        const std::vector<std::string>& user_ids) override {
        return read_at_one_moment([&](Db& db) {
            std::vector<std::optional<std::string>> out;
            out.reserve(user_ids.size());
            for (const auto& user_id : user_ids) {
                // The primary key: one row at most.
                Stmt s(db,
                       "SELECT content FROM account_data WHERE user_id = ? AND room_id = '' AND "
                       "type = 'm.push_rules'");
                s.bind(user_id);
                out.push_back(s.next() ? std::optional<std::string>(s.text(0)) : std::nullopt);
            }
            return out;
        });
    }

    std::vector<AccountDataRecord> account_data(const std::string& user_id) override {
        return read([&](Db& db) {
            Stmt s(db,
                   "SELECT stream_id, room_id, type, content FROM account_data WHERE user_id = ?");
            s.bind(user_id);
            std::vector<AccountDataRecord> out;
            while (s.next())
                out.push_back({s.integer(0), user_id, s.text(1), s.text(2), s.text(3)});
            return out;
        });
    }

    std::optional<SessionRecord> session(const std::string& token_hash) override {
        return read([&](Db& db) -> std::optional<SessionRecord> {
            Stmt s(db,
                   "SELECT t.user_id, t.device_id, u.is_guest FROM access_tokens t JOIN users u "
                   "ON u.user_id = t.user_id WHERE t.token_hash = ?");
            s.bind(token_hash);
            if (!s.next()) return std::nullopt;
            return SessionRecord{s.text(0), s.text(1), s.integer(2) != 0};
        });
    }

    std::vector<DeviceListChangeRecord> device_lists_changed(StreamId after,
                                                             StreamId upto) override {
        return read([&](Db& db) {
            // The device_list_changes_stream index: the changes in the range only.
            Stmt s(db,
                   "SELECT user_id, stream_id FROM device_list_changes WHERE stream_id > ? AND "
                   "stream_id <= ?");
            s.bind(after).bind(upto);
            std::vector<DeviceListChangeRecord> out;
            while (s.next()) out.push_back({s.text(0), s.integer(1)});
            return out;
        });
    }

    std::vector<HistoryRecord> memberships_of(const std::string& user_id) override {
        return read([&](Db& db) {
            // The events_member_target index: the user's member events only.
            Stmt s(db,
                   "SELECT stream_id, room_id, json FROM events WHERE type = 'm.room.member' AND "
                   "state_key = ? ORDER BY stream_id");
            s.bind(user_id);
            std::vector<HistoryRecord> out;
            while (s.next())
                out.push_back({s.integer(0), s.text(1), "m.room.member", user_id,
                               content_string(s.text(2), "membership")});
            return out;
        });
    }

    std::vector<AccountLoad> accounts(const std::vector<std::string>& user_ids) override {
        return read_at_one_moment([&](Db& db) {
            std::vector<AccountLoad> out;
            out.reserve(user_ids.size());
            for (const auto& user : user_ids) {
                AccountLoad& a = out.emplace_back();
                {
                    Stmt s(db,
                           "SELECT password_hash, is_guest, created_ts, displayname, avatar_url "
                           "FROM users WHERE user_id = ?");
                    s.bind(user);
                    if (!s.next()) continue;
                    a.user = UserRecord{user,         s.text(0), s.integer(1) != 0,
                                        s.integer(2), s.text(3), s.text(4)};
                }
                Stmt s(db,
                       "SELECT device_id, MAX(device_display_name) FROM access_tokens WHERE "
                       "user_id = ? GROUP BY device_id ORDER BY device_id");
                s.bind(user);
                while (s.next()) a.devices.push_back({s.text(0), s.text(1)});
            }
            return out;
        });
    }

    std::vector<UserRecord> find_users(const std::string& term, int limit) override {
        // LIKE's own characters in the term match themselves.
        std::string pattern = "%";
        for (char c : term) {
            if (c == '%' || c == '_' || c == '\\') pattern += '\\';
            pattern += c;
        }
        pattern += '%';
        return read([&](Db& db) {
            Stmt s(db,
                   "SELECT user_id, displayname, avatar_url FROM users WHERE is_guest = 0 AND "
                   "(LOWER(user_id) LIKE ? ESCAPE '\\' OR LOWER(displayname) LIKE ? ESCAPE "
                   "'\\') ORDER BY user_id LIMIT ?");
            s.bind(pattern).bind(pattern).bind(std::int64_t{limit});
            std::vector<UserRecord> out;
            while (s.next()) out.push_back({s.text(0), "", false, 0, s.text(1), s.text(2)});
            return out;
        });
    }

    std::vector<UserKeys> user_keys(const std::vector<std::string>& user_ids) override {
        return read_at_one_moment([&](Db& db) {
            std::vector<UserKeys> out;
            out.reserve(user_ids.size());
            for (const auto& user : user_ids) {
                UserKeys& k = out.emplace_back();
                k.user_id = user;
                {
                    Stmt s(db, "SELECT device_id, json FROM device_keys WHERE user_id = ?");
                    s.bind(user);
                    while (s.next()) k.devices.push_back({user, s.text(0), s.text(1)});
                }
                {
                    Stmt s(db,
                           "SELECT device_id, algorithm, key_id, json, used FROM fallback_keys "
                           "WHERE user_id = ?");
                    s.bind(user);
                    while (s.next())
                        k.fallback.push_back(
                            {user, s.text(0), s.text(1), s.text(2), s.text(3), s.integer(4) != 0});
                }
                {
                    Stmt s(db,
                           "SELECT device_id, algorithm, COUNT(*) FROM one_time_keys WHERE "
                           "user_id = ? GROUP BY device_id, algorithm");
                    s.bind(user);
                    while (s.next())
                        k.one_time_counts.push_back({s.text(0), s.text(1), s.integer(2)});
                }
                {
                    Stmt s(db, "SELECT usage, json FROM cross_signing_keys WHERE user_id = ?");
                    s.bind(user);
                    while (s.next()) k.cross_signing.push_back({user, s.text(0), s.text(1)});
                }
                {
                    Stmt s(db,
                           "SELECT target_key, signer_user, signer_key, signature FROM "
                           "key_signatures WHERE target_user = ?");
                    s.bind(user);
                    while (s.next())
                        k.signatures.push_back({user, s.text(0), s.text(1), s.text(2), s.text(3)});
                }
            }
            return out;
        });
    }

    std::optional<std::string> filter(const std::string& user_id, std::int64_t filter_id) override {
        return read([&](Db& db) -> std::optional<std::string> {
            Stmt s(db, "SELECT json FROM filters WHERE user_id = ? AND filter_id = ?");
            s.bind(user_id).bind(filter_id);
            if (!s.next()) return std::nullopt;
            return s.text(0);
        });
    }

  protected:
    // Told on the writer's connection before a transaction that takes stream positions
    // begins, and after it ended, committed or not (several processes on one database: the
    // frontier, docs/architecture.md).
    virtual void positions_begin(Db&) {}
    // Told on the writer's connection before a transaction that takes none.
    virtual void no_positions_begin(Db&) {}
    virtual void positions_end(Db&, bool /*committed*/) noexcept {}
    // The id of this process among those sharing the database; 0: it is not shared. Every
    // write's change (ChangeRecord) is recorded, as this instance's, when it is not 0.
    virtual int instance() const { return 0; }

    Db& writer() { return *writer_; }

  private:
    // The writer's transaction as decisions see it.
    struct DbTxn final : Txn {
        Db& db;
        const int instance;       // SqlStore::instance()
        StreamId max_stream = 0;  // the newest position written
        StreamId taken = 0;       // the newest position taken (take_streams)
        // The rooms whose rows the transaction locked (Write::rooms), each with its newest
        // event as the lock found it.
        std::unordered_map<std::string, StreamId> locked_rooms;
        const std::uint64_t number;
        DbTxn(Db& d, int i) : db(d), instance(i), number(next_serial()) {}

        static std::uint64_t next_serial() {
            static std::atomic<std::uint64_t> last{0};
            return ++last;
        }
        std::uint64_t serial() const override { return number; }

        StreamId room_last_event(const std::string& room_id) override {
            // Only what the room's lock read is true until the transaction ends.
            auto it = locked_rooms.find(room_id);
            if (it == locked_rooms.end())
                throw StoreError("the newest event of " + room_id +
                                 " was asked for outside the room's lock");
            return it->second;
        }
        std::optional<RoomAliasRecord> room_alias(const std::string& alias) override {
            return alias_row(db, alias);
        }
        std::int64_t room_alias_count(const std::string& room_id) override {
            Stmt s(db, "SELECT COUNT(*) FROM room_aliases WHERE room_id = ?");
            s.bind(room_id);
            return s.next() ? s.integer(0) : 0;
        }
        std::vector<PusherRecord> pushers(const std::string& user_id) override {
            return pusher_rows(db, user_id);
        }
        std::optional<BackupVersionState> backup_version(const std::string& user_id,
                                                         std::int64_t version) override {
            return backup_version_row(db, user_id, version);
        }
        BackupVersionCounts backup_versions(const std::string& user_id) override {
            Stmt s(db,
                   "SELECT COALESCE(MAX(version), 0), COUNT(*) - COALESCE(SUM(deleted), 0) FROM "
                   "backup_versions WHERE user_id = ?");
            s.bind(user_id);
            if (!s.next()) return {};
            return {s.integer(0), s.integer(1)};
        }
        void forget_deleted_backup_versions(const std::string& user_id,
                                            std::int64_t below) override {
            Stmt(db,
                 "DELETE FROM backup_versions WHERE user_id = ? AND deleted <> 0 AND version < ?")
                .bind(user_id)
                .bind(below)
                .run();
        }
        bool put_backup_key(const BackupKeyRecord& k) override {
            // Replaces the key the version has for the session only when the new one is
            // better: a row comes back when it was stored.
            Stmt s(db,
                   "INSERT INTO backup_keys AS k VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT "
                   "(user_id, version, room_id, session_id) DO UPDATE SET is_verified = "
                   "excluded.is_verified, first_message_index = excluded.first_message_index, "
                   "forwarded_count = excluded.forwarded_count, json = excluded.json WHERE "
                   "excluded.is_verified > k.is_verified OR (excluded.is_verified = "
                   "k.is_verified AND (excluded.first_message_index < k.first_message_index OR "
                   "(excluded.first_message_index = k.first_message_index AND "
                   "excluded.forwarded_count < k.forwarded_count))) RETURNING 1");
            s.bind(k.user_id)
                .bind(k.version)
                .bind(k.room_id)
                .bind(k.session_id)
                .bind(k.is_verified)
                .bind(k.first_message_index)
                .bind(k.forwarded_count)
                .bind(k.json);
            return s.next();
        }
        std::int64_t delete_backup_keys(const std::string& user_id, std::int64_t version,
                                        const std::string& room_id,
                                        const std::string& session_id) override {
            Stmt s(db, "DELETE FROM backup_keys WHERE " BACKUP_KEYS_OF " RETURNING 1");
            bind_backup_keys_of(s, user_id, version, room_id, session_id);
            std::int64_t n = 0;
            while (s.next()) ++n;
            return n;
        }
        std::optional<EventRecord> txn_event(const std::string& device_key,
                                             const std::string& room_id, const std::string& txn_id,
                                             std::int64_t since_ts) override {
            // Only a shared (PostgreSQL) database asks: its events_txn_id index (v6).
            Stmt s(db, "SELECT " EVENT_COLUMNS
                       " FROM events WHERE txn_device_key = ? AND txn_id = ? AND room_id = ? AND "
                       "origin_server_ts >= ? LIMIT 1");
            s.bind(device_key).bind(txn_id).bind(room_id).bind(since_ts);
            if (!s.next()) return std::nullopt;
            return read_event(s);
        }
        // Takes `n` consecutive positions above every one taken or written so far (at least
        // `at_least`) and returns the first.
        StreamId take_streams(std::size_t n, StreamId at_least = 0) {
            Stmt s(db, Db::kTakeStreams);
            s.bind(at_least).bind(static_cast<std::int64_t>(n));
            if (!s.next()) throw StoreError("no stream position could be taken");
            taken = s.integer(0);
            return taken - static_cast<StreamId>(n) + 1;
        }

        void write(const Mutation& m) override {
            std::visit([&](const auto& v) { SqlStore::write(db, v, max_stream); }, m);
            if (!instance) return;
            if (auto change = change_of(m))
                Stmt(db, "INSERT INTO changes VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING")
                    .bind(change->stream)
                    .bind(std::int64_t{instance})
                    .bind(change->kind)
                    .bind(change->key)
                    .run();
        }
        std::optional<std::int64_t> filter_id(const std::string& user_id,
                                              const std::string& json) override {
            Stmt s(db, "SELECT filter_id FROM filters WHERE user_id = ? AND json = ?");
            s.bind(user_id).bind(json);
            if (!s.next()) return std::nullopt;
            return s.integer(0);
        }
        std::int64_t next_filter_id(const std::string& user_id) override {
            Stmt s(db, "SELECT COALESCE(MAX(filter_id) + 1, 0) FROM filters WHERE user_id = ?");
            s.bind(user_id);
            return s.next() ? s.integer(0) : 0;
        }
        std::optional<AccountDataRecord> account_data(const std::string& user_id,
                                                      const std::string& room_id,
                                                      const std::string& type) override {
            Stmt s(db,
                   "SELECT stream_id, content FROM account_data WHERE user_id = ? AND room_id = ? "
                   "AND type = ?");
            s.bind(user_id).bind(room_id).bind(type);
            if (!s.next()) return std::nullopt;
            return AccountDataRecord{s.integer(0), user_id, room_id, type, s.text(1)};
        }
        std::int64_t account_data_count(const std::string& user_id) override {
            Stmt s(db, "SELECT COUNT(*) FROM account_data WHERE user_id = ?");
            s.bind(user_id);
            return s.next() ? s.integer(0) : 0;
        }
        bool user_exists(const std::string& user_id) override {
            Stmt s(db, "SELECT 1 FROM users WHERE user_id = ?");
            s.bind(user_id);
            return s.next();
        }
        bool device_exists(const std::string& user_id, const std::string& device_id) override {
            Stmt s(db, "SELECT 1 FROM access_tokens WHERE user_id = ? AND device_id = ? LIMIT 1");
            s.bind(user_id).bind(device_id);
            return s.next();
        }
        std::vector<std::string> token_hashes(const std::string& user_id,
                                              const std::string& device_id) override {
            Stmt s(db,
                   "SELECT token_hash FROM access_tokens WHERE user_id = ? AND (? = '' OR "
                   "device_id = ?)");
            s.bind(user_id).bind(device_id).bind(device_id);
            std::vector<std::string> out;
            while (s.next()) out.push_back(s.text(0));
            return out;
        }
        std::int64_t to_device_count(const std::string& user_id,
                                     const std::string& device_id) override {
            Stmt s(db, "SELECT COUNT(*) FROM to_device WHERE user_id = ? AND device_id = ?");
            s.bind(user_id).bind(device_id);
            return s.next() ? s.integer(0) : 0;
        }
        std::optional<std::string> device_keys(const std::string& user_id,
                                               const std::string& device_id) override {
            Stmt s(db, "SELECT json FROM device_keys WHERE user_id = ? AND device_id = ?");
            s.bind(user_id).bind(device_id);
            if (!s.next()) return std::nullopt;
            return s.text(0);
        }
        std::optional<std::string> one_time_key(const std::string& user_id,
                                                const std::string& device_id,
                                                const std::string& algorithm,
                                                const std::string& key_id) override {
            Stmt s(db,
                   "SELECT json FROM one_time_keys WHERE user_id = ? AND device_id = ? AND "
                   "algorithm = ? AND key_id = ?");
            s.bind(user_id).bind(device_id).bind(algorithm).bind(key_id);
            if (!s.next()) return std::nullopt;
            return s.text(0);
        }
        std::vector<OneTimeKeyCount> one_time_key_counts(const std::string& user_id,
                                                         const std::string& device_id) override {
            Stmt s(db,
                   "SELECT algorithm, COUNT(*) FROM one_time_keys WHERE user_id = ? AND "
                   "device_id = ? GROUP BY algorithm");
            s.bind(user_id).bind(device_id);
            std::vector<OneTimeKeyCount> out;
            while (s.next()) out.push_back({device_id, s.text(0), s.integer(1)});
            return out;
        }
        std::optional<OneTimeKeyRecord> take_one_time_key(const std::string& user_id,
                                                          const std::string& device_id,
                                                          const std::string& algorithm) override {
            Stmt s(db, Db::kTakeOneTimeKey);
            s.bind(user_id).bind(device_id).bind(algorithm);
            if (!s.next()) return std::nullopt;
            return OneTimeKeyRecord{user_id, device_id, algorithm, s.text(0), s.text(1)};
        }
        std::optional<FallbackKeyRecord> fallback_key(const std::string& user_id,
                                                      const std::string& device_id,
                                                      const std::string& algorithm) override {
            Stmt s(db,
                   "SELECT key_id, json, used FROM fallback_keys WHERE user_id = ? AND "
                   "device_id = ? AND algorithm = ?");
            s.bind(user_id).bind(device_id).bind(algorithm);
            if (!s.next()) return std::nullopt;
            return FallbackKeyRecord{user_id,   device_id, algorithm,
                                     s.text(0), s.text(1), s.integer(2) != 0};
        }
        std::optional<ReceiptRecord> receipt(const std::string& room_id, const std::string& user_id,
                                             const std::string& receipt_type,
                                             const std::string& thread_id) override {
            Stmt s(db,
                   "SELECT stream_id, event_id, ts FROM receipts WHERE room_id = ? AND user_id = ? "
                   "AND receipt_type = ? AND thread_id = ?");
            s.bind(room_id).bind(user_id).bind(receipt_type).bind(thread_id);
            if (!s.next()) return std::nullopt;
            return ReceiptRecord{s.integer(0), room_id,   user_id,     receipt_type,
                                 thread_id,    s.text(1), s.integer(2)};
        }
        bool to_device_txn(const std::string& device_key, const std::string& txn_id,
                           std::int64_t since_ts) override {
            Stmt s(db,
                   "SELECT 1 FROM to_device_txns WHERE device_key = ? AND txn_id = ? AND ts >= ?");
            s.bind(device_key).bind(txn_id).bind(since_ts);
            return s.next();
        }
        std::int64_t receipt_threads(const std::string& room_id, const std::string& user_id,
                                     const std::string& receipt_type) override {
            Stmt s(db,
                   "SELECT COUNT(*) FROM receipts WHERE room_id = ? AND user_id = ? AND "
                   "receipt_type = ? AND thread_id <> ''");
            s.bind(room_id).bind(user_id).bind(receipt_type);
            return s.next() ? s.integer(0) : 0;
        }
        std::optional<std::string> cross_signing_key(const std::string& user_id,
                                                     const std::string& usage) override {
            Stmt s(db, "SELECT json FROM cross_signing_keys WHERE user_id = ? AND usage = ?");
            s.bind(user_id).bind(usage);
            if (!s.next()) return std::nullopt;
            return s.text(0);
        }
    };

    // Runs `body` in one transaction on the writer and commits it durably; a connection found
    // broken is replaced on the next call. `positions`: the transaction takes stream positions.
    template <typename F>
    void in_transaction(bool positions, F&& body) {
        if (!writer_ || writer_->broken()) writer_ = open_writer_();
        Db& db = *writer_;
        if (positions)
            positions_begin(db);
        else
            no_positions_begin(db);
        try {
            db.begin();
            DbTxn txn(db, instance());
            body(txn);
            // Positions written that were not taken here (AdvanceStream, a record's own)
            // are never taken again either.
            if (txn.max_stream > txn.taken) txn.take_streams(0, txn.max_stream);
            db.commit();
        } catch (...) {
            db.rollback();
            if (positions) positions_end(db, false);
            if (db.broken()) writer_.reset();  // reconnected on the next apply
            throw;
        }
        if (positions) positions_end(db, true);
    }

    static Snapshot load_from(Db& db) {
        Snapshot snap;
        {
            Stmt s(db, Db::kMaxStream);
            if (s.next()) snap.max_stream = s.integer(0);
        }
        {
            // The presence_present index: the users not offline only.
            Stmt s(db,
                   "SELECT stream_id, user_id, presence, status_msg, last_active_ts FROM presence "
                   "WHERE presence <> 'offline' ORDER BY stream_id");
            while (s.next())
                snap.presence.push_back(
                    {s.integer(0), s.text(1), s.text(2), s.text(3), s.integer(4)});
        }
        return snap;
    }

  public:
    std::vector<EventRecord> events_before(const std::string& room_id, StreamId before,
                                           int limit) override {
        return read([&](Db& db) {
            return page(db,
                        "SELECT " EVENT_COLUMNS
                        " FROM events WHERE room_id = ? AND stream_id < ? ORDER BY stream_id DESC "
                        "LIMIT ?",
                        room_id, before, limit);
        });
    }

    std::vector<EventRecord> events_after(const std::string& room_id, StreamId after,
                                          int limit) override {
        return read([&](Db& db) {
            return page(db,
                        "SELECT " EVENT_COLUMNS
                        " FROM events WHERE room_id = ? AND stream_id > ? ORDER BY stream_id ASC "
                        "LIMIT ?",
                        room_id, after, limit);
        });
    }

    std::optional<EventRecord> event_at(StreamId stream) override {
        return read([&](Db& db) -> std::optional<EventRecord> {
            Stmt s(db, "SELECT " EVENT_COLUMNS " FROM events WHERE stream_id = ?");
            s.bind(stream);
            if (!s.next()) return std::nullopt;
            return read_event(s);
        });
    }

    std::optional<RoomLoad> room(const std::string& room_id) override {
        return read_at_one_moment([&](Db& db) -> std::optional<RoomLoad> {
            RoomLoad out;
            {
                Stmt s(db, "SELECT room_version FROM rooms WHERE room_id = ?");
                s.bind(room_id);
                if (!s.next()) return std::nullopt;
                out.room = {room_id, s.text(0)};
            }
            {
                Stmt s(db, "SELECT MAX(stream_id) FROM events WHERE room_id = ?");
                s.bind(room_id);
                if (s.next()) out.upto = s.integer(0);
            }
            {
                Stmt s(db, "SELECT " EVENT_COLUMNS
                           " FROM events WHERE stream_id IN (SELECT stream_id FROM current_state "
                           "WHERE room_id = ?) ORDER BY stream_id");
                s.bind(room_id);
                while (s.next()) out.state.push_back(read_event(s));
            }
            {
                // The events_room_history index: the room's membership and visibility events
                // only, however many messages it has.
                Stmt s(db,
                       "SELECT stream_id, type, state_key, json FROM events WHERE room_id = ? AND "
                       "type IN ('m.room.member', 'm.room.history_visibility') AND state_key IS "
                       "NOT NULL ORDER BY stream_id");
                s.bind(room_id);
                while (s.next()) {
                    std::string type = s.text(1);
                    const char* key = type == "m.room.member" ? "membership" : "history_visibility";
                    out.history.push_back({s.integer(0), room_id, std::move(type), s.text(2),
                                           content_string(s.text(3), key)});
                }
            }
            return out;
        });
    }

    std::vector<EventRecord> state_at(const std::string& room_id, StreamId at) override {
        return read([&](Db& db) {
            Stmt s(db, "SELECT " EVENT_COLUMNS
                       " FROM events WHERE stream_id IN (SELECT MAX(stream_id) FROM events WHERE "
                       "room_id = ? AND stream_id <= ? AND state_key IS NOT NULL GROUP BY type, "
                       "state_key) ORDER BY stream_id");
            s.bind(room_id).bind(at);
            std::vector<EventRecord> out;
            while (s.next()) out.push_back(read_event(s));
            return out;
        });
    }

    std::vector<TxnRecord> device_txns(const std::string& device_key, std::int64_t since_ts,
                                       int limit) override {
        return read([&](Db& db) {
            // The events_txn index, newest first: no more rows than `limit`.
            Stmt s(db,
                   "SELECT room_id, txn_id, event_id, origin_server_ts FROM events WHERE "
                   "txn_device_key = ? AND txn_id IS NOT NULL AND origin_server_ts >= ? ORDER BY "
                   "stream_id DESC LIMIT ?");
            s.bind(device_key).bind(since_ts).bind(std::int64_t{limit});
            std::vector<TxnRecord> out;
            while (s.next())
                out.push_back({device_key, s.text(0), s.text(1), s.text(2), s.integer(3)});
            return out;
        });
    }

    std::optional<BackupVersionState> backup_version(const std::string& user_id,
                                                     std::int64_t version) override {
        return read([&](Db& db) { return backup_version_row(db, user_id, version); });
    }

    std::vector<BackupKeyRecord> backup_keys(const std::string& user_id, std::int64_t version,
                                             const std::string& room_id,
                                             const std::string& session_id) override {
        return read([&](Db& db) {
            Stmt s(db,
                   "SELECT room_id, session_id, is_verified, first_message_index, "
                   "forwarded_count, json FROM backup_keys WHERE " BACKUP_KEYS_OF
                   " ORDER BY room_id, session_id");
            bind_backup_keys_of(s, user_id, version, room_id, session_id);
            std::vector<BackupKeyRecord> out;
            while (s.next())
                out.push_back({user_id, version, s.text(0), s.text(1), s.integer(2) != 0,
                               s.integer(3), s.integer(4), s.text(5)});
            return out;
        });
    }

  private:
    // A page of a room's events: `sql` binds the room, a position and the limit.
    static std::vector<EventRecord> page(Db& db, const char* sql, const std::string& room_id,
                                         StreamId from, int limit) {
        Stmt s(db, sql);
        s.bind(room_id).bind(from).bind(static_cast<std::int64_t>(limit));
        std::vector<EventRecord> out;
        while (s.next()) out.push_back(read_event(s));
        return out;
    }

    // Runs `f` on the reader under its lock. A connection that went stale while idle (the
    // database restarted since its last use) is found broken by its first query: `f` runs
    // once more on a new one.
    template <typename F>
    auto read(F&& f) {
        std::lock_guard lock(read_mu_);
        try {
            if (!reader_ || reader_->broken()) reader_ = open_reader_();
            return f(*reader_);
        } catch (const StoreUnavailable&) {
            if (!reader_ || !reader_->broken()) throw;
            reader_.reset();
        }
        reader_ = open_reader_();
        return f(*reader_);
    }

    // As read(), with every query of `f` seeing the database as of one moment (a read
    // transaction: Db::kBeginRead).
    template <typename F>
    auto read_at_one_moment(F&& f) {
        return read([&](Db& db) {
            db.exec(Db::kBeginRead);
            try {
                auto out = f(db);
                db.commit();
                return out;
            } catch (...) {
                db.rollback();
                throw;
            }
        });
    }

    static void write(Db& db, const PutUser& m, StreamId&) {
        const auto& u = m.user;
        Stmt(db, "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")
            .bind(u.user_id)
            .bind(u.password_hash)
            .bind(u.is_guest)
            .bind(u.created_ts)
            .bind(u.displayname)
            .bind(u.avatar_url)
            .run();
    }
    static void write(Db& db, const PutProfile& m, StreamId&) {
        if (m.displayname)
            Stmt(db, "UPDATE users SET displayname = ? WHERE user_id = ?")
                .bind(*m.displayname)
                .bind(m.user_id)
                .run();
        if (m.avatar_url)
            Stmt(db, "UPDATE users SET avatar_url = ? WHERE user_id = ?")
                .bind(*m.avatar_url)
                .bind(m.user_id)
                .run();
    }
    static void write(Db& db, const PutToken& m, StreamId&) {
        const auto& t = m.token;
        Stmt(db, "INSERT INTO access_tokens VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING")
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
        Stmt(db, "INSERT INTO rooms VALUES (?, ?) ON CONFLICT DO NOTHING")
            .bind(m.room.room_id)
            .bind(m.room.room_version)
            .run();
    }
    static void write(Db& db, const PutEvent& m, StreamId& max_stream) {
        const auto& e = m.event;
        std::optional<std::string> txn_key, txn_id;
        if (!e.txn_id.empty()) txn_key = e.txn_device_key, txn_id = e.txn_id;
        Stmt(db, "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")
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
            Stmt(db,
                 "INSERT INTO current_state VALUES (?, ?, ?, ?) ON CONFLICT (room_id, type, "
                 "state_key) DO UPDATE SET stream_id = excluded.stream_id")
                .bind(e.room_id)
                .bind(e.type)
                .bind(*e.state_key)
                .bind(e.stream)
                .run();
        max_stream = std::max(max_stream, e.stream);
    }
    static void write(Db& db, const PutAccountData& m, StreamId& max_stream) {
        const auto& a = m.data;
        Stmt(db,
             "INSERT INTO account_data VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, room_id, type) "
             "DO UPDATE SET stream_id = excluded.stream_id, content = excluded.content")
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
        Stmt(db,
             "INSERT INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (room_id, user_id, "
             "receipt_type, thread_id) DO UPDATE SET stream_id = excluded.stream_id, event_id = "
             "excluded.event_id, ts = excluded.ts")
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
        Stmt(db,
             "INSERT INTO presence VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET "
             "stream_id = excluded.stream_id, presence = excluded.presence, status_msg = "
             "excluded.status_msg, last_active_ts = excluded.last_active_ts")
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
    static void write(Db& db, const ForgetTxns& m, StreamId&) {
        Stmt(db,
             "UPDATE events SET txn_device_key = NULL, txn_id = NULL WHERE txn_device_key = ? AND "
             "txn_id IS NOT NULL AND origin_server_ts >= ?")
            .bind(m.device_key)
            .bind(m.since_ts)
            .run();
        Stmt(db, "DELETE FROM to_device_txns WHERE device_key = ?").bind(m.device_key).run();
    }
    static void write(Db& db, const PutToDeviceTxn& m, StreamId&) {
        Stmt(db, "INSERT INTO to_device_txns VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
            .bind(m.device_key)
            .bind(m.txn_id)
            .bind(m.ts)
            .run();
        // The oldest go: those past their lifetime, and those older than the `keep`-th newest
        // (found by the index, `keep` entries in).
        Stmt(db,
             "DELETE FROM to_device_txns WHERE device_key = ? AND (ts < ? OR ts < (SELECT ts "
             "FROM to_device_txns WHERE device_key = ? ORDER BY ts DESC LIMIT 1 OFFSET ?))")
            .bind(m.device_key)
            .bind(m.forget_before)
            .bind(m.device_key)
            .bind(std::max<std::int64_t>(m.keep - 1, 0))
            .run();
    }
    static void write(Db& db, const PutRoomAlias& m, StreamId&) {
        Stmt(db, "INSERT INTO room_aliases VALUES (?, ?, ?) ON CONFLICT (alias) DO NOTHING")
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
            Stmt(db, "INSERT INTO published_rooms VALUES (?) ON CONFLICT DO NOTHING")
                .bind(m.room_id)
                .run();
        else
            Stmt(db, "DELETE FROM published_rooms WHERE room_id = ?").bind(m.room_id).run();
    }
    static void write(Db& db, const PutRoomOpen& m, StreamId&) {
        if (m.open)
            Stmt(db, "INSERT INTO open_rooms VALUES (?) ON CONFLICT DO NOTHING")
                .bind(m.room_id)
                .run();
        else
            Stmt(db, "DELETE FROM open_rooms WHERE room_id = ?").bind(m.room_id).run();
    }
    static void write(Db& db, const PutPusher& m, StreamId&) {
        const auto& p = m.pusher;
        Stmt(db,
             "INSERT INTO pushers VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, app_id, pushkey) "
             "DO UPDATE SET device_id = excluded.device_id, json = excluded.json, created_ts = "
             "excluded.created_ts")
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
    // What other processes must learn of a mutation (ChangeRecord), if anything.
    static std::optional<ChangeRecord> change_of(const Mutation& m) {
        if (const auto* v = std::get_if<PutChange>(&m)) return v->change;
        if (const auto* v = std::get_if<PutEvent>(&m))
            return ChangeRecord{v->event.stream, "event", v->event.room_id};
        if (const auto* v = std::get_if<PutAccountData>(&m))
            return ChangeRecord{v->data.stream, "account_data", v->data.user_id};
        if (const auto* v = std::get_if<PutToDevice>(&m))
            return ChangeRecord{v->message.stream, "to_device",
                                v->message.user_id + '|' + v->message.device_id};
        if (const auto* v = std::get_if<PutReceipt>(&m))
            return ChangeRecord{v->receipt.stream, "receipt", v->receipt.room_id};
        if (const auto* v = std::get_if<PutPresence>(&m))
            return ChangeRecord{v->presence.stream, "presence", v->presence.user_id};
        if (const auto* v = std::get_if<PutDeviceListChange>(&m))
            return ChangeRecord{v->change.stream, "device_list", v->change.user_id};
        return std::nullopt;
    }
    // Written only to a shared database (DbTxn::write), as a changes row.
    static void write(Db&, const PutChange&, StreamId&) {}
    static void write(Db&, const AdvanceStream& m, StreamId& max_stream) {
        max_stream = std::max(max_stream, m.stream);
    }
    static void write(Db& db, const PutToDevice& m, StreamId& max_stream) {
        const auto& t = m.message;
        Stmt(db, "INSERT INTO to_device VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING")
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
        Stmt(db, "INSERT INTO filters VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
            .bind(m.filter.user_id)
            .bind(m.filter.filter_id)
            .bind(m.filter.json)
            .run();
    }

    static void write(Db& db, const PutDeviceKeys& m, StreamId&) {
        Stmt(db,
             "INSERT INTO device_keys VALUES (?, ?, ?) ON CONFLICT (user_id, device_id) DO UPDATE "
             "SET json = excluded.json")
            .bind(m.keys.user_id)
            .bind(m.keys.device_id)
            .bind(m.keys.json)
            .run();
    }
    static void write(Db& db, const PutOneTimeKeys& m, StreamId&) {
        for (const auto& k : m.keys)
            Stmt(db,
                 "INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, json) VALUES "
                 "(?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")
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
        Stmt(db,
             "INSERT INTO fallback_keys VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, device_id, "
             "algorithm) DO UPDATE SET key_id = excluded.key_id, json = excluded.json, used = "
             "excluded.used")
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
        Stmt(db,
             "INSERT INTO cross_signing_keys VALUES (?, ?, ?) ON CONFLICT (user_id, usage) DO "
             "UPDATE SET json = excluded.json")
            .bind(m.key.user_id)
            .bind(m.key.usage)
            .bind(m.key.json)
            .run();
    }
    static void write(Db& db, const PutKeySignature& m, StreamId&) {
        const auto& k = m.signature;
        Stmt(db,
             "INSERT INTO key_signatures VALUES (?, ?, ?, ?, ?) ON CONFLICT (target_user, "
             "target_key, signer_user, signer_key) DO UPDATE SET signature = excluded.signature")
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
        Stmt(db,
             "INSERT INTO backup_versions VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, version) "
             "DO UPDATE SET algorithm = excluded.algorithm, auth_data = excluded.auth_data, etag = "
             "excluded.etag, deleted = excluded.deleted")
            .bind(v.user_id)
            .bind(v.version)
            .bind(v.algorithm)
            .bind(v.auth_data)
            .bind(v.etag)
            .bind(v.deleted)
            .run();
    }
    static void write(Db& db, const PutDeviceListChange& m, StreamId& max_stream) {
        Stmt(db,
             "INSERT INTO device_list_changes VALUES (?, ?) ON CONFLICT (user_id) DO UPDATE SET "
             "stream_id = excluded.stream_id")
            .bind(m.change.user_id)
            .bind(m.change.stream)
            .run();
        max_stream = std::max(max_stream, m.change.stream);
    }

  protected:
    Db* writer_db() { return writer_.get(); }
    void close_reader() {
        std::lock_guard lock(read_mu_);
        reader_.reset();
    }

  private:
    static std::vector<PusherRecord> pusher_rows(Db& db, const std::string& user_id) {
        Stmt s(db,
               "SELECT app_id, pushkey, device_id, json, created_ts FROM pushers WHERE user_id = ? "
               "ORDER BY created_ts");
        s.bind(user_id);
        std::vector<PusherRecord> out;
        while (s.next())
            out.push_back({user_id, s.text(0), s.text(1), s.text(2), s.text(3), s.integer(4)});
        return out;
    }
    static std::optional<RoomAliasRecord> alias_row(Db& db, const std::string& alias) {
        Stmt s(db, "SELECT room_id, creator FROM room_aliases WHERE alias = ?");
        s.bind(alias);
        if (!s.next()) return std::nullopt;
        return RoomAliasRecord{alias, s.text(0), s.text(1)};
    }
    static std::optional<BackupVersionState> backup_version_row(Db& db, const std::string& user_id,
                                                                std::int64_t version) {
        Stmt s(db,
               "SELECT version, algorithm, auth_data, etag FROM backup_versions WHERE user_id = ? "
               "AND (? = 0 OR version = ?) AND deleted = 0 ORDER BY version DESC LIMIT 1");
        s.bind(user_id).bind(version).bind(version);
        if (!s.next()) return std::nullopt;
        BackupVersionState out{{user_id, s.integer(0), s.text(1), s.text(2), s.integer(3), false}};
        Stmt count(db, "SELECT COUNT(*) FROM backup_keys WHERE user_id = ? AND version = ?");
        count.bind(user_id).bind(out.version.version);
        out.count = count.next() ? count.integer(0) : 0;
        return out;
    }

    // schema_version holds the version the tables are at; Db::kMigrations[i] takes them from
    // version i to i + 1 (the first creates them). All in one transaction.
    static void migrate(Db& db) {
        db.begin();
        try {
            if (Db::kMigrationLock) Stmt(db, Db::kMigrationLock).run();
            db.exec("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)");
            std::int64_t version = 0;
            bool recorded = false;
            {
                Stmt s(db, "SELECT version FROM schema_version");
                if (s.next()) version = s.integer(0), recorded = true;
            }
            const auto latest = static_cast<std::int64_t>(std::size(Db::kMigrations));
            if (version > latest)
                throw StoreError("the database's schema is version " + std::to_string(version) +
                                 ", newer than this mxvoip-server knows (up to " +
                                 std::to_string(latest) + "): run a newer mxvoip-server");
            for (auto v = version; v < latest; ++v) {
                db.exec(Db::kMigrations[v]);
                if (v + 1 == Db::kOpenRoomsVersion) fill_open_rooms(db);
            }
            if (!recorded)
                Stmt(db, "INSERT INTO schema_version VALUES (?)").bind(latest).run();
            else if (version != latest)
                Stmt(db, "UPDATE schema_version SET version = ?").bind(latest).run();
            db.commit();
        } catch (...) {
            db.rollback();
            throw;
        }
    }

    // The rooms anyone may join or read, found in each room's current state when the table
    // that keeps them is made: parsed here, since SQL's JSON functions refuse content that holds
    // a \u0000 (PostgreSQL's) or JSON that is not valid.
    static void fill_open_rooms(Db& db) {
        std::vector<std::string> open;
        {
            Stmt s(db,
                   "SELECT c.room_id, c.type, e.json FROM current_state c JOIN events e ON "
                   "e.stream_id = c.stream_id WHERE c.state_key = '' AND c.type IN "
                   "('m.room.join_rules', 'm.room.history_visibility')");
            while (s.next()) {
                const bool rule = s.text(1) == "m.room.join_rules";
                if (content_string(s.text(2), rule ? "join_rule" : "history_visibility") ==
                    (rule ? "public" : "world_readable"))
                    open.push_back(s.text(0));
            }
        }
        for (const auto& room_id : open)
            Stmt(db, "INSERT INTO open_rooms VALUES (?) ON CONFLICT DO NOTHING")
                .bind(room_id)
                .run();
    }

    std::function<std::unique_ptr<Db>()> open_writer_;
    std::function<std::unique_ptr<Db>()> open_reader_;
    std::unique_ptr<Db> writer_;
    std::mutex read_mu_;
    std::unique_ptr<Db> reader_;
};

}  // namespace mxvoip::store::sql
