#include "mxvoip/store/store.hpp"
#include "mxvoip/store/writer.hpp"

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <future>

using namespace mxvoip::store;
namespace fs = std::filesystem;

namespace {

// One fixture per backend. Each gives every test a fresh, empty database, opens stores on it,
// and runs SQL on it beside the store (to age or damage it).
struct SqliteBackend {
    fs::path dir;
    SqliteBackend() {
        dir = fs::temp_directory_path() /
              ("mxvoip-store-" + std::to_string(::getpid()) + "-" + std::to_string(counter()++));
        fs::create_directories(dir);
    }
    ~SqliteBackend() { fs::remove_all(dir); }
    std::unique_ptr<Store> open() { return open_sqlite({(dir / "db.sqlite").string(), "full"}); }
    void sql(const std::string& statement) {
        sqlite3* db = nullptr;
        ASSERT_EQ(sqlite3_open((dir / "db.sqlite").c_str(), &db), SQLITE_OK);
        char* err = nullptr;
        int rc = sqlite3_exec(db, statement.c_str(), nullptr, nullptr, &err);
        std::string msg = err ? err : "";
        sqlite3_free(err);
        sqlite3_close(db);
        ASSERT_EQ(rc, SQLITE_OK) << msg;
    }
    // From now on the database itself refuses an event at `stream`: a write that fails for
    // what it is, not for want of the database.
    void refuse_event(StreamId stream) {
        sql("CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.stream_id = " +
            std::to_string(stream) + " BEGIN SELECT RAISE(ABORT, 'refused'); END");
    }
    static std::atomic<int>& counter() {
        static std::atomic<int> n{0};
        return n;
    }
};

EventRecord event(StreamId stream, const std::string& room,
                  std::optional<std::string> state_key = {}) {
    return EventRecord{stream,
                       "$e" + std::to_string(stream),
                       room,
                       state_key ? "m.room.member" : "m.room.message",
                       state_key,
                       "@a:x",
                       1000 + stream,
                       "{\"n\":" + std::to_string(stream) + "}",
                       {},
                       {}};
}

// A state event of that type and key whose JSON has `content` (a JSON object's text).
EventRecord state_event(StreamId stream, const std::string& room, const std::string& type,
                        const std::string& key, const std::string& content) {
    EventRecord e = event(stream, room, key);
    e.type = type;
    e.json = R"({"content":)" + content + R"(,"type":")" + type + R"("})";
    return e;
}

EventRecord txn_event(StreamId stream, const std::string& room, const std::string& device_key,
                      const std::string& txn) {
    auto e = event(stream, room);
    e.txn_device_key = device_key;
    e.txn_id = txn;
    return e;
}

template <typename Backend>
class StoreTest : public ::testing::Test {
  protected:
    Backend backend;
};

// A real PostgreSQL 15 cluster, started on first use in a temporary directory and stopped
// when the tests end: no TCP, a unix socket in that directory, trust authentication for its
// one user. As root, its programs run as the postgres user (PostgreSQL refuses root).
class PgCluster {
  public:
    static PgCluster& get() {
        static PgCluster cluster;
        return cluster;
    }
    std::string dsn(const std::string& db) const {
        return "host=" + dir_.string() + " port=5432 user=mxvoip dbname=" + db;
    }
    void admin(const std::string& statement) const {
        PGconn* c = PQconnectdb(dsn("postgres").c_str());
        PGresult* r = PQexec(c, statement.c_str());
        auto status = PQresultStatus(r);
        std::string err =
            status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK ? "" : PQresultErrorMessage(r);
        PQclear(r);
        PQfinish(c);
        if (!err.empty()) throw std::runtime_error(statement + ": " + err);
    }
    ~PgCluster() {
        run("pg_ctl -D " + (dir_ / "data").string() + " -m immediate -w stop > /dev/null");
        fs::remove_all(dir_);
    }

  private:
    PgCluster() {
        if (!fs::exists(fs::path(kBin) / "initdb"))
            throw std::runtime_error(std::string("PostgreSQL 15 is missing (no ") + kBin +
                                     "/initdb): run scripts/setup");
        dir_ = fs::temp_directory_path() / ("mxvoip-pg-" + std::to_string(::getpid()));
        fs::create_directories(dir_);
        if (::geteuid() == 0) {
            const passwd* pw = ::getpwnam("postgres");
            if (!pw) throw std::runtime_error("no postgres user: run scripts/setup");
            if (::chown(dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0)
                throw std::runtime_error("cannot chown " + dir_.string());
            as_ = "runuser -u postgres -- ";
        }
        const std::string data = (dir_ / "data").string();
        run("initdb -D " + data + " -U mxvoip --auth=trust -E UTF8 --no-sync > " +
            (dir_ / "initdb.log").string() + " 2>&1");
        run("pg_ctl -D " + data + " -l " + (dir_ / "server.log").string() +
            " -w -o \"-c listen_addresses='' -k " + dir_.string() + "\" start > /dev/null");
    }
    void run(const std::string& command) const {
        std::string line = as_ + kBin + "/" + command;
        if (std::system(line.c_str()) != 0)
            throw std::runtime_error("failed: " + line + " (see " + dir_.string() + ")");
    }

    static constexpr const char* kBin = "/usr/lib/postgresql/15/bin";
    fs::path dir_;
    std::string as_;
};

struct PostgresBackend {
    std::string name;
    PostgresBackend() : name("t" + std::to_string(SqliteBackend::counter()++)) {
        PgCluster::get().admin("CREATE DATABASE " + name);
    }
    ~PostgresBackend() {
        try {
            PgCluster::get().admin("DROP DATABASE " + name + " WITH (FORCE)");
        } catch (...) {
        }
    }
    std::unique_ptr<Store> open() { return open_postgres({PgCluster::get().dsn(name)}); }
    void sql(const std::string& statement) {
        PGconn* c = PQconnectdb(PgCluster::get().dsn(name).c_str());
        PGresult* r = PQexec(c, statement.c_str());
        std::string err = PQresultStatus(r) == PGRES_COMMAND_OK ? "" : PQresultErrorMessage(r);
        PQclear(r);
        PQfinish(c);
        ASSERT_EQ(err, "");
    }
    void refuse_event(StreamId stream) {
        sql("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'refused'; END $$");
        sql("CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW WHEN (NEW.stream_id = " +
            std::to_string(stream) + ") EXECUTE FUNCTION refuse()");
    }
    // Ends every session on this database but the caller's, as a restart of PostgreSQL does.
    void drop_connections() {
        PgCluster::get().admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '" + name +
            "' AND pid <> pg_backend_pid()");
    }
};

using Backends = ::testing::Types<SqliteBackend, PostgresBackend>;
TYPED_TEST_SUITE(StoreTest, Backends);

}  // namespace

TYPED_TEST(StoreTest, AppliedBatchIsThereAfterReopen) {
    {
        auto store = this->backend.open();
        std::vector<Mutation> batch{
            PutUser{{"@a:x", "hash", false, 5, "A", ""}},
            PutToken{{"deadbeef", "@a:x", "DEV", "phone"}},
            PutRoom{{"!r:x", "10"}},
            PutEvent{event(1, "!r:x", "@a:x")},
            PutEvent{txn_event(2, "!r:x", "@a:x|DEV", "t1")},
            PutAccountData{{3, "@a:x", "", "m.direct", "{}"}},
            PutToDevice{{4, "@a:x", "DEV", "{\"type\":\"x\"}"}},
            PutFilter{{"@a:x", 0, "{}"}},
        };
        store->apply(batch);
    }
    auto store = this->backend.open();
    Snapshot s = store->load();
    auto accounts = store->accounts({"@a:x", "@b:x"});
    ASSERT_EQ(accounts.size(), 2u);
    ASSERT_TRUE(accounts[0].user);
    EXPECT_EQ(accounts[0].user->displayname, "A");
    ASSERT_EQ(accounts[0].devices.size(), 1u);
    EXPECT_EQ(accounts[0].devices[0].device_id, "DEV");
    EXPECT_EQ(accounts[0].devices[0].display_name, "phone");
    EXPECT_FALSE(accounts[1].user);
    auto session = store->session("deadbeef");
    ASSERT_TRUE(session);
    EXPECT_EQ(session->user_id, "@a:x");
    EXPECT_EQ(session->device_id, "DEV");
    EXPECT_FALSE(session->is_guest);
    EXPECT_FALSE(store->session("cafe"));
    auto room = store->room("!r:x");
    ASSERT_TRUE(room);
    EXPECT_EQ(room->room.room_version, "10");
    ASSERT_EQ(room->state.size(), 1u);
    EXPECT_EQ(room->state[0].state_key, "@a:x");
    auto txns = store->device_txns("@a:x|DEV", 0, 10);
    ASSERT_EQ(txns.size(), 1u);
    EXPECT_EQ(txns[0].event_id, "$e2");
    EXPECT_EQ(txns[0].device_key, "@a:x|DEV");
    EXPECT_EQ(txns[0].room_id, "!r:x");
    EXPECT_EQ(txns[0].txn_id, "t1");
    EXPECT_EQ(store->account_data("@a:x").size(), 1u);
    EXPECT_EQ(store->push_rules_of({"@a:x"}),
              std::vector<std::optional<std::string>>{std::nullopt});
    EXPECT_EQ(store->to_device_of("@a:x", "DEV").size(), 1u);
    EXPECT_EQ(store->filter("@a:x", 0), "{}");
    EXPECT_FALSE(store->filter("@a:x", 1));
    EXPECT_EQ(s.max_stream, 4);
}

TYPED_TEST(StoreTest, AReceiptReplacesTheSameTypeAndThreadAndAdvancesTheStream) {
    {
        auto store = this->backend.open();
        std::vector<Mutation> first{
            PutReceipt{{5, "!r:x", "@a:x", "m.read", "", "$e1", 100}},
            PutReceipt{{6, "!r:x", "@a:x", "m.read", "main", "$e1", 101}},
            PutReceipt{{7, "!r:x", "@a:x", "m.read.private", "", "$e1", 102}},
        };
        store->apply(first);
        std::vector<Mutation> second{PutReceipt{{8, "!r:x", "@a:x", "m.read", "", "$e2", 103}},
                                     PutReceipt{{9, "!s:x", "@a:x", "m.read", "", "$e9", 104}},
                                     AdvanceStream{10}};
        store->apply(second);
    }
    auto store = this->backend.open();
    Snapshot s = store->load();
    EXPECT_EQ(s.max_stream, 10);
    // Per room, in the order asked, each in stream order; the unthreaded m.read was replaced.
    auto read = store->receipts_of({"!s:x", "!none:x", "!r:x"});
    ASSERT_EQ(read.size(), 3u);
    ASSERT_EQ(read[0].size(), 1u);
    EXPECT_EQ(read[0][0].room_id, "!s:x");
    EXPECT_EQ(read[0][0].event_id, "$e9");
    EXPECT_TRUE(read[1].empty());
    const auto& r = read[2];
    ASSERT_EQ(r.size(), 3u);
    EXPECT_EQ(r[0].thread_id, "main");
    EXPECT_EQ(r[1].receipt_type, "m.read.private");
    EXPECT_EQ(r[2].room_id, "!r:x");
    EXPECT_EQ(r[2].user_id, "@a:x");
    EXPECT_EQ(r[2].receipt_type, "m.read");
    EXPECT_EQ(r[2].thread_id, "");
    EXPECT_EQ(r[2].event_id, "$e2");
    EXPECT_EQ(r[2].ts, 103);
    EXPECT_EQ(r[2].stream, 8);
}

TYPED_TEST(StoreTest, PushersArePutReplacedAndDeletedForOneUserOrAll) {
    {
        auto store = this->backend.open();
        std::vector<Mutation> batch{
            PutPusher{{"@a:x", "app", "key1", "DEV", "{\"v\":1}", 1}},
            PutPusher{{"@a:x", "app", "key1", "DEV", "{\"v\":2}", 2}},
            PutPusher{{"@b:x", "app", "key1", "DEV", "{}", 3}},
            PutPusher{{"@b:x", "app", "key2", "DEV", "{}", 4}},
            PutPusher{{"@c:x", "app", "key3", "DEV", "{}", 5}},
        };
        store->apply(batch);
        std::vector<Mutation> deletes{DeletePusher{"", "app", "key1"},
                                      DeletePusher{"@c:x", "app", "key3"},
                                      DeletePusher{"@a:x", "app", "key2"}};
        store->apply(deletes);
    }
    auto store = this->backend.open();
    auto pushers = store->pushers_of({"@a:x", "@b:x", "@c:x"});
    ASSERT_EQ(pushers.size(), 3u);
    EXPECT_TRUE(pushers[0].empty());
    ASSERT_EQ(pushers[1].size(), 1u);
    EXPECT_EQ(pushers[1][0].user_id, "@b:x");
    EXPECT_EQ(pushers[1][0].pushkey, "key2");
    EXPECT_TRUE(pushers[2].empty());
}

TYPED_TEST(StoreTest, PresenceKeepsTheNewestPerUser) {
    {
        auto store = this->backend.open();
        std::vector<Mutation> batch{PutPresence{{3, "@a:x", "online", "", 100}},
                                    PutPresence{{4, "@b:x", "unavailable", "away", 90}},
                                    PutPresence{{5, "@a:x", "offline", "lunch", 110}}};
        store->apply(batch);
    }
    auto store = this->backend.open();
    Snapshot s = store->load();
    ASSERT_EQ(s.presence.size(), 1u);  // at start: the users not offline
    EXPECT_EQ(s.presence[0].user_id, "@b:x");
    EXPECT_EQ(s.presence[0].status_msg, "away");
    EXPECT_EQ(s.max_stream, 5);
    auto read = store->presence_of({"@a:x", "@none:x", "@b:x"});  // in the order asked
    ASSERT_EQ(read.size(), 3u);
    ASSERT_TRUE(read[0]);
    EXPECT_EQ(read[0]->presence, "offline");
    EXPECT_EQ(read[0]->status_msg, "lunch");
    EXPECT_EQ(read[0]->last_active_ts, 110);
    EXPECT_EQ(read[0]->stream, 5);
    EXPECT_FALSE(read[1]);
    ASSERT_TRUE(read[2]);
    EXPECT_EQ(read[2]->presence, "unavailable");
}

TYPED_TEST(StoreTest, RedactionReplacesTheStoredJson) {
    {
        auto store = this->backend.open();
        std::vector<Mutation> batch{PutRoom{{"!r:x", "10"}}, PutEvent{event(1, "!r:x")},
                                    PutEvent{event(2, "!r:x")}};
        store->apply(batch);
        std::vector<Mutation> redact{RedactEvent{1, "{\"content\":{},\"redacted\":true}"}};
        store->apply(redact);
    }
    auto store = this->backend.open();
    EXPECT_EQ(store->event_at(1)->json, "{\"content\":{},\"redacted\":true}");
    EXPECT_EQ(store->event_at(2)->json, event(2, "!r:x").json);
}

TYPED_TEST(StoreTest, AliasesAndPublishedRoomsSurviveAndDelete) {
    {
        auto store = this->backend.open();
        std::vector<Mutation> batch{
            PutRoomAlias{{"#a:x", "!r:x", "@u:x"}}, PutRoomAlias{{"#b:x", "!r:x", "@v:x"}},
            PutRoomAlias{{"#c:x", "!s:x", "@u:x"}}, PutRoomVisibility{"!r:x", true},
            PutRoomVisibility{"!s:x", true}};
        store->apply(batch);
        std::vector<Mutation> changes{DeleteRoomAlias{"#b:x"}, PutRoomVisibility{"!s:x", false},
                                      PutRoomVisibility{"!r:x", true}};
        store->apply(changes);
    }
    auto store = this->backend.open();
    auto a = store->room_alias("#a:x");
    ASSERT_TRUE(a);
    EXPECT_EQ(a->room_id, "!r:x");
    EXPECT_EQ(a->creator, "@u:x");
    EXPECT_FALSE(store->room_alias("#b:x"));
    EXPECT_EQ(store->room_aliases_of("!r:x"), std::vector<std::string>{"#a:x"});
    EXPECT_EQ(store->room_aliases_of("!s:x"), std::vector<std::string>{"#c:x"});
    EXPECT_TRUE(store->room_aliases_of("!none:x").empty());
    EXPECT_EQ(store->published_rooms(), std::vector<std::string>{"!r:x"});
    EXPECT_TRUE(store->room_published("!r:x"));
    EXPECT_FALSE(store->room_published("!s:x"));
}

TYPED_TEST(StoreTest, SchemaVersionIsRecordedAndANewerDatabaseIsRefused) {
    this->backend.open();
    // A database made by a newer mxvoip-server: this one must not touch it.
    this->backend.sql("UPDATE schema_version SET version = 1000");
    try {
        this->backend.open();
        FAIL() << "a database from a newer version was opened";
    } catch (const StoreError& e) {
        EXPECT_NE(std::string(e.what()).find("version 1000, newer than this mxvoip-server"),
                  std::string::npos)
            << e.what();
    }
}

TYPED_TEST(StoreTest, ADatabaseBeforeSchemaVersionsIsTakenAsVersionOne) {
    {
        auto store = this->backend.open();
        std::vector<Mutation> batch{PutRoom{{"!r:x", "10"}}, PutEvent{event(1, "!r:x")}};
        store->apply(batch);
    }
    this->backend.sql("DELETE FROM schema_version");
    auto store = this->backend.open();
    EXPECT_EQ(store->events_after("!r:x", 0, 10).size(), 1u);
    // The version was recorded again: ageing it makes the database a newer one.
    store.reset();
    this->backend.sql("UPDATE schema_version SET version = 1000");
    EXPECT_THROW(this->backend.open(), StoreError);
}

TYPED_TEST(StoreTest, AVersionOneDatabaseIsMigrated) {
    {
        auto store = this->backend.open();
        std::vector<Mutation> batch{PutRoom{{"!r:x", "10"}},
                                    PutEvent{txn_event(1, "!r:x", "@a:x|DEV", "t1")}};
        store->apply(batch);
    }
    // As the first mxvoip-server with schema versions left it.
    this->backend.sql("DROP INDEX events_txn");
    this->backend.sql("DROP INDEX events_room_history");
    this->backend.sql("UPDATE schema_version SET version = 1");
    auto store = this->backend.open();
    EXPECT_EQ(store->device_txns("@a:x|DEV", 0, 10).size(), 1u);
    store.reset();
    this->backend.sql("DROP INDEX events_txn");           // fails unless version 2 made it again
    this->backend.sql("DROP INDEX events_room_history");  // and version 3 this one
}

// A device's transactions are found by the device alone: newest first, none older than the
// cut-off, no more than the limit, none of another device or of an event without one.
TYPED_TEST(StoreTest, ADevicesTransactionsAreReadNewestFirst) {
    auto store = this->backend.open();
    std::vector<Mutation> batch{PutRoom{{"!r:x", "10"}}, PutRoom{{"!s:x", "10"}}};
    for (StreamId i = 1; i <= 6; ++i) {
        // At 1000 + i, as event() makes them.
        batch.push_back(
            PutEvent{txn_event(i, i % 2 ? "!r:x" : "!s:x", "@a:x|DEV", "t" + std::to_string(i))});
    }
    batch.push_back(PutEvent{txn_event(7, "!r:x", "@a:x|OTHER", "t7")});
    batch.push_back(PutEvent{event(8, "!r:x")});
    store->apply(batch);
    auto txns = store->device_txns("@a:x|DEV", 1003, 10);
    ASSERT_EQ(txns.size(), 4u);
    EXPECT_EQ(txns[0].txn_id, "t6");
    EXPECT_EQ(txns[0].room_id, "!s:x");
    EXPECT_EQ(txns[0].event_id, "$e6");
    EXPECT_EQ(txns[0].ts, 1006);
    EXPECT_EQ(txns[3].txn_id, "t3");
    EXPECT_EQ(txns[3].room_id, "!r:x");
    auto two = store->device_txns("@a:x|DEV", 0, 2);
    ASSERT_EQ(two.size(), 2u);
    EXPECT_EQ(two[1].txn_id, "t5");
    EXPECT_TRUE(store->device_txns("@b:x|DEV", 0, 10).empty());

    // Signed out: from the cut-off on, the device's events carry no transaction any more.
    std::vector<Mutation> forget{ForgetTxns{"@a:x|DEV", 1005}};
    store->apply(forget);
    store->apply(forget);  // again, as after a lost COMMIT
    auto left = store->device_txns("@a:x|DEV", 0, 10);
    ASSERT_EQ(left.size(), 4u);
    EXPECT_EQ(left[0].txn_id, "t4");
    auto e6 = store->event_at(6);
    ASSERT_TRUE(e6);
    EXPECT_EQ(e6->txn_device_key, "");
    EXPECT_EQ(e6->txn_id, "");
    EXPECT_EQ(store->device_txns("@a:x|OTHER", 0, 10).size(), 1u);
}

TYPED_TEST(StoreTest, FailedBatchLeavesNothingBehind) {
    auto store = this->backend.open();
    std::vector<Mutation> ok{PutRoom{{"!r:x", "10"}}, PutEvent{event(1, "!r:x")}};
    store->apply(ok);
    this->backend.refuse_event(3);
    // The second event is refused: the whole batch must roll back, and the error says it
    // would fail again.
    std::vector<Mutation> bad{PutEvent{event(2, "!r:x")}, PutEvent{event(3, "!r:x")}};
    try {
        store->apply(bad);
        FAIL() << "a refused batch was applied";
    } catch (const StoreUnavailable& e) {
        FAIL() << "a refused batch was taken for an unavailable database: " << e.what();
    } catch (const StoreError&) {
    }
    EXPECT_EQ(store->events_after("!r:x", 0, 10).size(), 1u);
    EXPECT_EQ(store->load().max_stream, 1);
}

TYPED_TEST(StoreTest, ApplyingABatchAgainChangesNothing) {
    auto store = this->backend.open();
    std::vector<Mutation> batch{
        PutUser{{"@a:x", "hash", false, 5, "A", ""}},
        PutToken{{"deadbeef", "@a:x", "DEV", "phone"}},
        PutToken{{"cafe", "@a:x", "OLD", ""}},
        DeleteTokens{"@a:x", "OLD"},
        PutRoom{{"!r:x", "10"}},
        PutEvent{event(1, "!r:x", "@a:x")},
        PutEvent{txn_event(2, "!r:x", "@a:x|DEV", "t1")},
        PutAccountData{{3, "@a:x", "", "m.direct", "{}"}},
        PutToDevice{{4, "@a:x", "DEV", "{\"type\":\"x\"}"}},
        PutToDevice{{5, "@a:x", "DEV", "{\"type\":\"y\"}"}},
        DeleteToDevice{"@a:x", "DEV", 4},
        PutFilter{{"@a:x", 0, "{}"}},
    };
    store->apply(batch);
    // As after a COMMIT whose outcome the connection lost: the writer applies it again.
    ASSERT_NO_THROW(store->apply(batch));
    Snapshot s = store->load();
    auto accounts = store->accounts({"@a:x"});
    ASSERT_TRUE(accounts[0].user);
    ASSERT_EQ(accounts[0].devices.size(), 1u);
    EXPECT_EQ(accounts[0].devices[0].device_id, "DEV");
    EXPECT_FALSE(store->session("cafe"));
    EXPECT_TRUE(store->room("!r:x"));
    EXPECT_EQ(store->events_after("!r:x", 0, 10).size(), 2u);
    EXPECT_EQ(store->device_txns("@a:x|DEV", 0, 10).size(), 1u);
    EXPECT_EQ(store->account_data("@a:x").size(), 1u);
    EXPECT_EQ(store->push_rules_of({"@a:x"}),
              std::vector<std::optional<std::string>>{std::nullopt});
    auto queued = store->to_device_of("@a:x", "DEV");
    ASSERT_EQ(queued.size(), 1u);
    EXPECT_EQ(queued[0].stream, 5);
    EXPECT_EQ(store->filter("@a:x", 0), "{}");
    EXPECT_FALSE(store->filter("@a:x", 1));
    EXPECT_EQ(s.max_stream, 5);
}

namespace {
// A filter decision as the server makes one: the same JSON gets its id, a new one the next id
// unless the user already has `most`.
Write put_filter(const std::string& user, const std::string& json, std::int64_t& id,
                 std::int64_t most = 100) {
    return Write{{}, [=, &id](Txn& txn, StreamId) {
                     if (auto found = txn.filter_id(user, json)) {
                         id = *found;
                         return;
                     }
                     id = txn.next_filter_id(user);
                     if (id >= most) throw std::runtime_error("too many filters");
                     txn.write(PutFilter{{user, id, json}});
                 }};
}
}  // namespace

TYPED_TEST(StoreTest, DecisionsSeeTheirTransactionAndARefusalUndoesOnlyItsOwnWrite) {
    auto store = this->backend.open();
    std::int64_t a = -1, b = -1, c = -1, d = -1;
    std::vector<Write> batch{
        Write{{PutRoom{{"!r:x", "10"}}}, {}}, put_filter("@a:x", "{\"n\":1}", a),
        put_filter("@a:x", "{\"n\":2}", b),
        put_filter("@a:x", "{\"n\":1}", c),  // the same JSON: the first write's id
        // Refused after it wrote both its mutation and a filter: neither stays.
        Write{{PutAccountData{{7, "@a:x", "", "m.direct", "{}"}}},
              [](Txn& txn, StreamId) {
                  txn.write(PutFilter{{"@a:x", 9, "{}"}});
                  throw std::invalid_argument("refused");
              }},
        put_filter("@a:x", "{\"n\":3}", d, 2),  // past the most: refused
    };
    auto refused = store->transact(batch);
    ASSERT_EQ(refused.size(), batch.size());
    EXPECT_FALSE(refused[0] || refused[1] || refused[2] || refused[3]);
    ASSERT_TRUE(refused[4]);
    EXPECT_THROW(std::rethrow_exception(refused[4]), std::invalid_argument);
    ASSERT_TRUE(refused[5]);
    EXPECT_THROW(std::rethrow_exception(refused[5]), std::runtime_error);
    EXPECT_EQ(a, 0);
    EXPECT_EQ(b, 1);
    EXPECT_EQ(c, 0);
    EXPECT_EQ(store->filter("@a:x", 0), "{\"n\":1}");
    EXPECT_EQ(store->filter("@a:x", 1), "{\"n\":2}");
    EXPECT_FALSE(store->filter("@a:x", 2));
    EXPECT_FALSE(store->filter("@a:x", 9));
    Snapshot s = store->load();
    EXPECT_TRUE(store->room("!r:x"));
    EXPECT_TRUE(store->account_data("@a:x").empty());
    EXPECT_EQ(s.max_stream, 0);
    // Made again (as after an unknown outcome), the decisions find what committed.
    a = b = -1;
    refused = store->transact(std::span(batch).subspan(1, 2));
    EXPECT_FALSE(refused[0] || refused[1]);
    EXPECT_EQ(a, 0);
    EXPECT_EQ(b, 1);
    EXPECT_FALSE(store->filter("@a:x", 2));
}

TYPED_TEST(StoreTest, WritesTakeConsecutivePositionsInTheirOrderAndNoneTwice) {
    auto store = this->backend.open();
    // Positions written by hand (a record's own) are passed by the ones taken after them.
    store->apply(std::vector<Mutation>{PutEvent{event(3, "!r:x")}});
    std::vector<StreamId> first(4, -1);
    auto take = [&](std::size_t i, bool refuse = false) {
        return [&, i, refuse](Txn& txn, StreamId f) {
            first[i] = f;
            if (refuse) throw std::invalid_argument("refused");
            txn.write(PutRoom{{"!r" + std::to_string(i) + ":x", "10"}});
        };
    };
    std::vector<Write> batch{
        Write{{}, take(0), 2},
        Write{{}, take(1), 0},  // takes none: given 0
        Write{{}, take(2, true), 3},
        Write{{}, take(3), 1},
    };
    auto refused = store->transact(batch);
    EXPECT_FALSE(refused[0] || refused[1] || refused[3]);
    ASSERT_TRUE(refused[2]);
    EXPECT_EQ(first, (std::vector<StreamId>{4, 0, 6, 9}));
    // A client's token may name a refused write's position 8 (the visible position passes it):
    // after a restart the next position is above every one taken.
    store.reset();
    store = this->backend.open();
    EXPECT_EQ(store->load().max_stream, 9);
    StreamId next = -1;
    std::vector<Write> again{Write{{}, [&](Txn&, StreamId f) { next = f; }, 1}};
    EXPECT_FALSE(store->transact(again)[0]);
    EXPECT_EQ(next, 10);
    // A transaction that does not commit leaves its positions unused too; they may be taken
    // again or not, but never twice by writes that committed.
    std::vector<Write> lost{
        Write{{}, [&](Txn&, StreamId) { throw StoreUnavailable("connection lost"); }, 5}};
    EXPECT_THROW(store->transact(lost), StoreUnavailable);
    EXPECT_FALSE(store->transact(again)[0]);
    EXPECT_GT(next, 10);
    EXPECT_EQ(store->load().max_stream, next);
}

TYPED_TEST(StoreTest, DecisionsReadByKeyAndCount) {
    auto store = this->backend.open();
    store->apply(std::vector<Mutation>{
        PutAccountData{{0, "@b:x", "", "m.push_rules", "{\"global\":{}}"}},
        PutAccountData{{1, "@a:x", "", "m.direct", "{}"}},
        PutAccountData{{2, "@a:x", "!r:x", "m.tag", "{\"t\":1}"}},
        PutAccountData{{3, "@b:x", "", "m.direct", "{}"}},
        PutUser{{"@a:x", "hash", false, 1, "a", ""}},
        PutToken{{"h1", "@a:x", "PHONE", ""}},
        PutToDevice{{5, "@a:x", "PHONE", "{}"}},
        PutToDevice{{6, "@a:x", "PHONE", "{}"}},
        PutToDevice{{7, "@a:x", "LAPTOP", "{}"}},
    });
    std::optional<AccountDataRecord> tag, global_tag;
    std::int64_t count = -1, after_write = -1, waiting = -1;
    bool phone = false, laptop = true, a = false, b = true, c = false;
    auto decide = [&](Txn& txn, StreamId) {
        a = txn.user_exists("@a:x");
        b = txn.user_exists("@b:x");  // account data, but no account
        txn.write(PutUser{{"@c:x", "hash", false, 2, "c", ""}});
        c = txn.user_exists("@c:x");
        tag = txn.account_data("@a:x", "!r:x", "m.tag");
        global_tag = txn.account_data("@a:x", "", "m.tag");  // not the room's
        count = txn.account_data_count("@a:x");
        txn.write(PutAccountData{{8, "@a:x", "", "m.tag", "{}"}});
        after_write = txn.account_data_count("@a:x");
        phone = txn.device_exists("@a:x", "PHONE");
        laptop = txn.device_exists("@a:x", "LAPTOP");
        waiting = txn.to_device_count("@a:x", "PHONE");
    };
    std::vector<Write> batch{Write{{}, decide}};
    auto refused = store->transact(batch);
    EXPECT_FALSE(refused[0]);
    ASSERT_TRUE(tag);
    EXPECT_EQ(tag->stream, 2);
    EXPECT_EQ(tag->content, "{\"t\":1}");
    EXPECT_FALSE(global_tag);
    EXPECT_EQ(count, 2);
    EXPECT_EQ(after_write, 3);
    EXPECT_TRUE(a);
    EXPECT_FALSE(b);
    EXPECT_TRUE(c);
    EXPECT_TRUE(phone);
    EXPECT_FALSE(laptop);  // it has messages waiting, but no token
    EXPECT_EQ(waiting, 2);
    Snapshot snap = store->load();
    EXPECT_EQ(snap.max_stream, 8);
    // Push rules by user: the m.push_rules global account data alone.
    auto rules = store->push_rules_of({"@a:x", "@b:x", "@none:x"});
    ASSERT_EQ(rules.size(), 3u);
    EXPECT_FALSE(rules[0]);  // m.direct and a room's m.tag are not push rules
    EXPECT_EQ(rules[1], "{\"global\":{}}");
    EXPECT_FALSE(rules[2]);
    auto all = store->account_data("@a:x");
    ASSERT_EQ(all.size(), 3u);
    std::sort(all.begin(), all.end(), [](auto& x, auto& y) { return x.stream < y.stream; });
    EXPECT_EQ(all[1].room_id, "!r:x");
    EXPECT_EQ(all[1].content, "{\"t\":1}");
    EXPECT_EQ(all[2].type, "m.tag");
}

// Key backups are decided in transactions: version numbers are never made twice, a deleted
// version is gone to readers and takes its keys with it, and an upload replaces a session's
// key only when it is better by the spec's rule.
TYPED_TEST(StoreTest, KeyBackupsAreDecidedInTheirTransactions) {
    auto store = this->backend.open();
    auto decide = [&](std::function<void(Txn&)> f) {
        std::vector<Write> batch{Write{{}, [&](Txn& txn, StreamId) { f(txn); }}};
        ASSERT_FALSE(store->transact(batch)[0]);
    };
    auto key = [](std::int64_t version, const char* session, bool verified, std::int64_t fmi,
                  std::int64_t fc, const char* json) {
        return BackupKeyRecord{"@a:x", version, "!r:x", session, verified, fmi, fc, json};
    };
    std::vector<bool> stored;
    std::int64_t deleted = -1, max_before = -1, max_after = -1, live = -1;
    decide([&](Txn& txn) {
        max_before = txn.backup_versions("@a:x").max;
        txn.write(PutBackupVersion{{"@a:x", 1, "alg", "{}", 0, false}});
        txn.write(PutBackupVersion{{"@a:x", 2, "alg", "{\"n\":2}", 0, false}});
        txn.write(PutBackupVersion{{"@b:x", 7, "alg", "{}", 0, false}});
        for (const auto& k : {key(2, "s1", false, 5, 1, "{\"v\":1}"),
                              key(2, "s1", false, 5, 1, "{\"v\":2}"),  // as good: kept
                              key(2, "s1", false, 4, 9, "{\"v\":3}"),  // lower index
                              key(2, "s1", false, 4, 3, "{\"v\":4}"),  // then fewer forwards
                              key(2, "s1", false, 1, 0, "{\"v\":8}")})
            stored.push_back(txn.put_backup_key(k));
        stored.push_back(txn.put_backup_key(key(2, "s2", true, 9, 9, "{\"v\":5}")));
        // A verified key is not replaced by an unverified one, however good.
        stored.push_back(txn.put_backup_key(key(2, "s2", false, 0, 0, "{\"v\":6}")));
        stored.push_back(txn.put_backup_key(key(1, "s1", false, 0, 0, "{\"v\":7}")));
        max_after = txn.backup_versions("@a:x").max;
        live = txn.backup_versions("@a:x").live;
    });
    EXPECT_EQ(max_before, 0);
    EXPECT_EQ(max_after, 2);
    EXPECT_EQ(live, 2);
    EXPECT_EQ(stored, (std::vector<bool>{true, false, true, true, true, true, false, true}));
    auto current = store->backup_version("@a:x", 0);
    ASSERT_TRUE(current);
    EXPECT_EQ(current->version.version, 2);
    EXPECT_EQ(current->version.auth_data, "{\"n\":2}");
    EXPECT_EQ(current->count, 2);
    auto keys = store->backup_keys("@a:x", 2, "", "");
    ASSERT_EQ(keys.size(), 2u);
    EXPECT_EQ(keys[0].json, "{\"v\":8}");
    EXPECT_EQ(keys[0].first_message_index, 1);
    EXPECT_EQ(keys[1].json, "{\"v\":5}");  // verified beats unverified
    EXPECT_FALSE(store->backup_version("@a:x", 3));

    decide([&](Txn& txn) {
        txn.write(PutBackupVersion{{"@a:x", 2, "alg", "{}", 1, true}});
        deleted = txn.delete_backup_keys("@a:x", 2, "", "");
        max_after = txn.backup_versions("@a:x").max;
        live = txn.backup_versions("@a:x").live;
    });
    EXPECT_EQ(deleted, 2);
    EXPECT_EQ(max_after, 2);  // a deleted version's number is not made again
    EXPECT_EQ(live, 1);
    EXPECT_FALSE(store->backup_version("@a:x", 2));
    current = store->backup_version("@a:x", 0);
    ASSERT_TRUE(current);
    EXPECT_EQ(current->version.version, 1);
    EXPECT_EQ(current->count, 1);
    decide([&](Txn& txn) { deleted = txn.delete_backup_keys("@a:x", 1, "!other:x", ""); });
    EXPECT_EQ(deleted, 0);
    decide([&](Txn& txn) { deleted = txn.delete_backup_keys("@a:x", 1, "!r:x", "s1"); });
    EXPECT_EQ(deleted, 1);
    EXPECT_EQ(store->backup_version("@a:x", 1)->count, 0);
    EXPECT_EQ(store->backup_version("@b:x", 0)->version.version, 7);

    // Deleted versions below a number are forgotten; the highest stays, deleted, so that its
    // number is not made again, and the live ones stay.
    decide([&](Txn& txn) {
        txn.write(PutBackupVersion{{"@a:x", 3, "alg", "{}", 0, true}});
        txn.forget_deleted_backup_versions("@a:x", 3);
        max_after = txn.backup_versions("@a:x").max;
        live = txn.backup_versions("@a:x").live;
    });
    EXPECT_EQ(max_after, 3);
    EXPECT_EQ(live, 1);
    EXPECT_TRUE(store->backup_version("@a:x", 1));
    // Below 4, 3 goes too: what is left is the live version alone.
    decide([&](Txn& txn) {
        txn.forget_deleted_backup_versions("@a:x", 4);
        max_after = txn.backup_versions("@a:x").max;
    });
    EXPECT_EQ(max_after, 1);
}

// A user's device-list change replaces their last; the changes are read by position range.
TYPED_TEST(StoreTest, DeviceListChangesAreReadByTheirNewestPosition) {
    auto store = this->backend.open();
    std::vector<Mutation> batch{PutDeviceListChange{{"@c:x", 3}}, PutDeviceListChange{{"@a:x", 5}},
                                PutDeviceListChange{{"@b:x", 7}}};
    store->apply(batch);
    std::vector<Mutation> later{PutDeviceListChange{{"@a:x", 9}}};
    store->apply(later);
    auto changed = [&](StreamId after, StreamId upto) {
        std::vector<std::pair<std::string, StreamId>> out;
        for (const auto& c : store->device_lists_changed(after, upto))
            out.emplace_back(c.user_id, c.stream);
        std::sort(out.begin(), out.end());
        return out;
    };
    using Changes = std::vector<std::pair<std::string, StreamId>>;
    EXPECT_EQ(changed(4, 9), (Changes{{"@a:x", 9}, {"@b:x", 7}}));
    EXPECT_EQ(changed(0, 5), (Changes{{"@c:x", 3}}));  // @a's change at 5 was replaced
    EXPECT_EQ(changed(7, 8), Changes{});
    EXPECT_EQ(changed(9, 100), Changes{});
}

TYPED_TEST(StoreTest, KeysAreReadPerUserAndOneTimeKeysTakenOldestFirstOnce) {
    auto store = this->backend.open();
    store->apply(std::vector<Mutation>{
        PutToken{{"h1", "@a:x", "PHONE", ""}},
        PutDeviceKeys{{"@a:x", "PHONE", "{\"k\":1}"}},
        PutDeviceKeys{{"@b:x", "TV", "{\"k\":2}"}},
        PutOneTimeKeys{{{"@a:x", "PHONE", "signed_curve25519", "z", "\"first\""},
                        {"@a:x", "PHONE", "signed_curve25519", "a", "\"second\""},
                        {"@a:x", "PHONE", "other", "o", "\"other\""}}},
        PutFallbackKey{{"@a:x", "PHONE", "signed_curve25519", "f", "\"fb\"", false}},
        PutCrossSigningKey{{"@a:x", "master", "{\"m\":1}"}},
        PutKeySignature{{"@a:x", "PHONE", "@a:x", "ed25519:S", "sig"}},
        PutKeySignature{{"@b:x", "TV", "@a:x", "ed25519:U", "other"}},
    });
    auto keys = store->user_keys({"@a:x", "@nobody:x"});
    ASSERT_EQ(keys.size(), 2u);
    EXPECT_EQ(keys[0].user_id, "@a:x");
    ASSERT_EQ(keys[0].devices.size(), 1u);
    EXPECT_EQ(keys[0].devices[0].json, "{\"k\":1}");
    ASSERT_EQ(keys[0].fallback.size(), 1u);
    EXPECT_EQ(keys[0].fallback[0].key_id, "f");
    EXPECT_FALSE(keys[0].fallback[0].used);
    std::map<std::string, std::int64_t> counts;
    for (const auto& c : keys[0].one_time_counts) counts[c.device_id + "/" + c.algorithm] = c.count;
    EXPECT_EQ(counts, (std::map<std::string, std::int64_t>{{"PHONE/other", 1},
                                                           {"PHONE/signed_curve25519", 2}}));
    ASSERT_EQ(keys[0].cross_signing.size(), 1u);
    EXPECT_EQ(keys[0].cross_signing[0].usage, "master");
    ASSERT_EQ(keys[0].signatures.size(), 1u);  // only those on @a's keys
    EXPECT_EQ(keys[0].signatures[0].signature, "sig");
    EXPECT_EQ(keys[1].user_id, "@nobody:x");
    EXPECT_TRUE(keys[1].devices.empty() && keys[1].one_time_counts.empty());

    std::vector<std::optional<OneTimeKeyRecord>> taken;
    std::optional<std::string> existing, missing, device, cross;
    std::optional<FallbackKeyRecord> fallback;
    std::vector<OneTimeKeyCount> left;
    auto decide = [&](Txn& txn, StreamId) {
        existing = txn.one_time_key("@a:x", "PHONE", "signed_curve25519", "a");
        missing = txn.one_time_key("@a:x", "PHONE", "other", "a");
        device = txn.device_keys("@b:x", "TV");
        cross = txn.cross_signing_key("@a:x", "master");
        fallback = txn.fallback_key("@a:x", "PHONE", "signed_curve25519");
        taken.clear();
        for (int i = 0; i < 3; ++i)
            taken.push_back(txn.take_one_time_key("@a:x", "PHONE", "signed_curve25519"));
        left = txn.one_time_key_counts("@a:x", "PHONE");
    };
    std::vector<Write> batch{Write{{}, decide}};
    EXPECT_FALSE(store->transact(batch)[0]);
    EXPECT_EQ(existing, "\"second\"");
    EXPECT_FALSE(missing);
    EXPECT_EQ(device, "{\"k\":2}");
    EXPECT_EQ(cross, "{\"m\":1}");
    ASSERT_TRUE(fallback);
    EXPECT_EQ(fallback->json, "\"fb\"");
    // Upload order, not key-id order; each once; then none.
    ASSERT_EQ(taken.size(), 3u);
    ASSERT_TRUE(taken[0] && taken[1]);
    EXPECT_EQ(taken[0]->key_id, "z");
    EXPECT_EQ(taken[0]->json, "\"first\"");
    EXPECT_EQ(taken[1]->key_id, "a");
    EXPECT_FALSE(taken[2]);
    ASSERT_EQ(left.size(), 1u);
    EXPECT_EQ(left[0].algorithm, "other");
    // Taken for good: committed.
    auto after = store->user_keys({"@a:x"});
    ASSERT_EQ(after[0].one_time_counts.size(), 1u);
    EXPECT_EQ(after[0].one_time_counts[0].algorithm, "other");
}

TYPED_TEST(StoreTest, PagesEventsBothWays) {
    auto store = this->backend.open();
    std::vector<Mutation> batch{PutRoom{{"!r:x", "10"}}, PutRoom{{"!s:x", "10"}}};
    for (StreamId i = 1; i <= 20; ++i) batch.push_back(PutEvent{event(i, i % 2 ? "!r:x" : "!s:x")});
    store->apply(batch);
    auto before = store->events_before("!r:x", 15, 3);
    ASSERT_EQ(before.size(), 3u);
    EXPECT_EQ(before[0].stream, 13);
    EXPECT_EQ(before[2].stream, 9);
    auto after = store->events_after("!r:x", 15, 100);
    ASSERT_EQ(after.size(), 2u);
    EXPECT_EQ(after[0].stream, 17);
    EXPECT_EQ(store->event_at(4)->room_id, "!s:x");
    EXPECT_FALSE(store->event_at(999).has_value());
}

TYPED_TEST(StoreTest, DeliveredToDeviceMessagesAreDeleted) {
    auto store = this->backend.open();
    std::vector<Mutation> batch;
    for (StreamId i = 1; i <= 5; ++i) batch.push_back(PutToDevice{{i, "@a:x", "D", "{}"}});
    store->apply(batch);
    std::vector<Mutation> ack{DeleteToDevice{"@a:x", "D", 3}};
    store->apply(ack);
    // A device's queue, oldest first; another device's is its own.
    std::vector<Mutation> other{PutToDevice{{6, "@a:x", "E", "{\"e\":1}"}}};
    store->apply(other);
    auto streams = [&](const std::string& user, const std::string& device) {
        std::vector<StreamId> out;
        for (const auto& m : store->to_device_of(user, device)) {
            EXPECT_EQ(m.user_id, user);
            EXPECT_EQ(m.device_id, device);
            out.push_back(m.stream);
        }
        return out;
    };
    EXPECT_EQ(streams("@a:x", "D"), (std::vector<StreamId>{4, 5}));
    EXPECT_EQ(streams("@a:x", "E"), (std::vector<StreamId>{6}));
    EXPECT_EQ(streams("@b:x", "D"), (std::vector<StreamId>{}));
    EXPECT_EQ(store->to_device_of("@a:x", "E")[0].message, "{\"e\":1}");
}

TYPED_TEST(StoreTest, StateAtAPositionAndTheMembershipHistory) {
    auto store = this->backend.open();
    auto member = [](StreamId stream, const std::string& user, const std::string& membership) {
        EventRecord e = event(stream, "!r:x", user);
        e.json = R"({"content":{"membership":")" + membership + R"("},"type":"m.room.member"})";
        return e;
    };
    EventRecord visibility = event(3, "!r:x", "");
    visibility.type = "m.room.history_visibility";
    visibility.json = R"({"content":{"history_visibility":"joined"}})";
    std::vector<Mutation> batch{PutRoom{{"!r:x", "10"}},
                                PutEvent{member(1, "@a:x", "join")},
                                PutEvent{member(2, "@b:x", "join")},
                                PutEvent{visibility},
                                PutEvent{event(4, "!r:x")},
                                PutEvent{member(5, "@b:x", "leave")},
                                PutEvent{member(6, "@c:x", "join")}};
    store->apply(batch);
    // After the event at 4, @b was still joined and @c not yet there.
    auto state = store->state_at("!r:x", 4);
    ASSERT_EQ(state.size(), 3u);
    EXPECT_EQ(state[0].stream, 1);
    EXPECT_EQ(state[1].stream, 2);
    EXPECT_EQ(state[2].stream, 3);
    EXPECT_EQ(store->state_at("!r:x", 6).size(), 4u);
    EXPECT_TRUE(store->state_at("!r:other", 6).empty());

    store.reset();
    store = this->backend.open();
    // A user's memberships are read when needed, each of their member events in stream
    // order, and nobody else's.
    auto b = store->memberships_of("@b:x");
    ASSERT_EQ(b.size(), 2u);
    EXPECT_EQ(b[0].stream, 2);
    EXPECT_EQ(b[0].value, "join");
    EXPECT_EQ(b[1].room_id, "!r:x");
    EXPECT_EQ(b[1].type, "m.room.member");
    EXPECT_EQ(b[1].state_key, "@b:x");
    EXPECT_EQ(b[1].value, "leave");
    EXPECT_EQ(b[1].stream, 5);
    EXPECT_EQ(store->memberships_of("@c:x").size(), 1u);
    EXPECT_TRUE(store->memberships_of("@nobody:x").empty());
}

// A room read into memory: its current state, its membership and visibility history and the
// newest of its events, none of another room's; nothing for a room that does not exist.
TYPED_TEST(StoreTest, ARoomIsReadWithItsStateHistoryAndNewestPosition) {
    auto store = this->backend.open();
    const auto state = state_event;
    std::vector<Mutation> batch{
        PutRoom{{"!r:x", "9"}},
        PutRoom{{"!o:x", "10"}},
        PutEvent{state(1, "!r:x", "m.room.member", "@a:x", R"({"membership":"join"})")},
        PutEvent{state(2, "!r:x", "m.room.join_rules", "", R"({"join_rule":"invite"})")},
        PutEvent{state(3, "!o:x", "m.room.member", "@b:x", R"({"membership":"join"})")},
        PutEvent{state(4, "!r:x", "m.room.history_visibility", "",
                       R"({"history_visibility":"world_readable"})")},
        PutEvent{state(5, "!r:x", "m.room.join_rules", "", R"({"join_rule":"public"})")},
        PutEvent{state(6, "!r:x", "m.room.member", "@a:x",
                       R"({"membership":"join","displayname":"A"})")},
        PutEvent{event(7, "!r:x")},
        PutEvent{event(8, "!o:x")},
    };
    store->apply(batch);
    auto room = store->room("!r:x");
    ASSERT_TRUE(room);
    EXPECT_EQ(room->room.room_id, "!r:x");
    EXPECT_EQ(room->room.room_version, "9");
    EXPECT_EQ(room->upto, 7);
    std::vector<StreamId> state_streams;
    for (const auto& e : room->state) state_streams.push_back(e.stream);
    EXPECT_EQ(state_streams, (std::vector<StreamId>{4, 5, 6}));
    ASSERT_EQ(room->history.size(), 3u);
    EXPECT_EQ(room->history[0].stream, 1);
    EXPECT_EQ(room->history[1].type, "m.room.history_visibility");
    EXPECT_EQ(room->history[1].value, "world_readable");
    EXPECT_EQ(room->history[2].stream, 6);
    EXPECT_EQ(room->history[2].value, "join");
    EXPECT_FALSE(store->room("!none:x"));
    // An empty room (made, no event yet) is there, with nothing in it.
    std::vector<Mutation> empty{PutRoom{{"!e:x", "10"}}};
    store->apply(empty);
    auto e = store->room("!e:x");
    ASSERT_TRUE(e);
    EXPECT_EQ(e->upto, 0);
    EXPECT_TRUE(e->state.empty());
}

TYPED_TEST(StoreTest, OpenRoomsAreWrittenAndTheMigrationFindsThemInTheCurrentState) {
    auto store = this->backend.open();
    auto state = [](StreamId stream, const std::string& room, const std::string& type,
                    const std::string& content) {
        return state_event(stream, room, type, "", content);
    };
    std::vector<Mutation> batch{
        PutRoom{{"!p:x", "10"}},
        PutRoom{{"!w:x", "10"}},
        PutRoom{{"!c:x", "10"}},
        PutRoom{{"!n:x", "10"}},
        // Public, through its current join rule only.
        PutEvent{state(1, "!p:x", "m.room.join_rules", R"({"join_rule":"invite"})")},
        PutEvent{state(2, "!p:x", "m.room.join_rules", R"({"join_rule":"public"})")},
        // World readable.
        PutEvent{state(3, "!w:x", "m.room.history_visibility",
                       R"({"history_visibility":"world_readable"})")},
        // Closed again; and one whose values hold a NUL escape (compared, never unescaped).
        PutEvent{state(4, "!c:x", "m.room.join_rules", R"({"join_rule":"public"})")},
        PutEvent{state(5, "!c:x", "m.room.join_rules", R"({"join_rule":"invite"})")},
        PutEvent{state(6, "!n:x", "m.room.join_rules", R"({"join_rule":"pub\u0000lic"})")},
        PutEvent{
            state(7, "!n:x", "m.room.history_visibility", R"({"history_visibility":"\u0000"})")},
    };
    store->apply(batch);
    // Written by the decisions that change it.
    EXPECT_TRUE(store->open_rooms().empty());
    std::vector<Mutation> open{PutRoomOpen{"!w:x", true}, PutRoomOpen{"!c:x", true},
                               PutRoomOpen{"!p:x", true}, PutRoomOpen{"!c:x", false},
                               PutRoomOpen{"!w:x", true}};
    store->apply(open);
    EXPECT_EQ(store->open_rooms(), (std::vector<std::string>{"!p:x", "!w:x"}));
    // The migration that made the table filled it from each room's current state, and doing
    // it again changes nothing.
    store.reset();
    this->backend.sql("DELETE FROM open_rooms");
    this->backend.sql("UPDATE schema_version SET version = version - 1");
    store = this->backend.open();
    EXPECT_EQ(store->open_rooms(), (std::vector<std::string>{"!p:x", "!w:x"}));
    store.reset();
    this->backend.sql("UPDATE schema_version SET version = version - 1");
    store = this->backend.open();
    EXPECT_EQ(store->open_rooms(), (std::vector<std::string>{"!p:x", "!w:x"}));
}

TYPED_TEST(StoreTest, JsonWithANulEscapeIsStoredAndReadBack) {
    // "\u0000" is valid JSON the server accepts in content; PostgreSQL's text cannot hold a
    // NUL, so nothing may unescape it on the way in or out.
    const std::string json =
        R"({"content":{"displayname":"a\u0000b","membership":"join"},"type":"m.room.member"})";
    {
        auto store = this->backend.open();
        EventRecord e = event(1, "!r:x", "@a:x");
        e.json = json;
        std::vector<Mutation> batch{PutRoom{{"!r:x", "10"}}, PutEvent{e}};
        store->apply(batch);
    }
    auto store = this->backend.open();
    auto memberships = store->memberships_of("@a:x");
    ASSERT_EQ(memberships.size(), 1u);
    EXPECT_EQ(memberships[0].value, "join");
    auto room = store->room("!r:x");
    ASSERT_TRUE(room);
    ASSERT_EQ(room->state.size(), 1u);
    EXPECT_EQ(room->state[0].json, json);
    ASSERT_EQ(room->history.size(), 1u);
    EXPECT_EQ(room->history[0].value, "join");
}

TYPED_TEST(StoreTest, WriterGroupsConcurrentSubmissionsAndCompletesInOrder) {
    auto store = this->backend.open();
    std::vector<Mutation> room{PutRoom{{"!r:x", "10"}}};
    store->apply(room);
    GroupCommitWriter writer(*store);
    constexpr int kN = 500;
    std::vector<int> order;
    std::mutex mu;
    std::promise<void> all_done;
    std::atomic<int> remaining{kN};
    for (int i = 1; i <= kN; ++i) {
        writer.submit({PutEvent{event(i, "!r:x")}}, [&, i](std::exception_ptr e) {
            EXPECT_FALSE(e);
            {
                std::lock_guard lock(mu);
                order.push_back(i);
            }
            if (--remaining == 0) all_done.set_value();
        });
    }
    all_done.get_future().wait();
    writer.stop();
    ASSERT_EQ(order.size(), static_cast<std::size_t>(kN));
    for (int i = 0; i < kN; ++i) EXPECT_EQ(order[i], i + 1);
    EXPECT_LT(writer.stats().transactions, static_cast<std::uint64_t>(kN));
    EXPECT_EQ(store->events_after("!r:x", 0, 1000).size(), static_cast<std::size_t>(kN));
}

TYPED_TEST(StoreTest, WriterFailureIsFinalAndNothingAfterItIsApplied) {
    auto store = this->backend.open();
    std::vector<Mutation> room{PutRoom{{"!r:x", "10"}}};
    store->apply(room);
    GroupCommitWriter writer(*store);
    std::promise<std::exception_ptr> first, bad, after;
    auto s1 = writer.submit({PutEvent{event(1, "!r:x")}},
                            [&](std::exception_ptr e) { first.set_value(e); });
    EXPECT_FALSE(first.get_future().get());
    // A submission that cannot commit: the database refuses it.
    this->backend.refuse_event(2);
    auto s2 = writer.submit({PutEvent{event(2, "!r:x")}},
                            [&](std::exception_ptr e) { bad.set_value(e); });
    EXPECT_TRUE(bad.get_future().get());
    // A valid one after it may rest on what the failed one would have written: refused.
    auto s3 = writer.submit({PutEvent{event(3, "!r:x")}},
                            [&](std::exception_ptr e) { after.set_value(e); });
    EXPECT_TRUE(after.get_future().get());
    EXPECT_LT(s1, s2);
    EXPECT_LT(s2, s3);
    EXPECT_EQ(writer.durable(), s1);

    std::promise<std::exception_ptr> durable1, durable3;
    writer.when_durable(s1, [&](std::exception_ptr e) { durable1.set_value(e); });
    writer.when_durable(s3, [&](std::exception_ptr e) { durable3.set_value(e); });
    EXPECT_FALSE(durable1.get_future().get());
    EXPECT_TRUE(durable3.get_future().get());
    writer.stop();
    auto events = store->events_after("!r:x", 0, 10);
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0].stream, 1);
}

TYPED_TEST(StoreTest, WhenDurableWaitsForEverySubmissionUpToItsNumber) {
    auto store = this->backend.open();
    std::vector<Mutation> room{PutRoom{{"!r:x", "10"}}};
    store->apply(room);
    GroupCommitWriter writer(*store);
    constexpr int kN = 200;
    std::atomic<int> committed{0};
    std::uint64_t last = 0;
    for (int i = 1; i <= kN; ++i)
        last = writer.submit({PutEvent{event(i, "!r:x")}}, [&](std::exception_ptr e) {
            EXPECT_FALSE(e);
            ++committed;
        });
    std::promise<int> seen;
    writer.when_durable(last, [&](std::exception_ptr e) {
        EXPECT_FALSE(e);
        seen.set_value(committed.load());
    });
    // Every submission's own completion ran before the wait on the last one ended.
    EXPECT_EQ(seen.get_future().get(), kN);
    EXPECT_EQ(writer.durable(), last);
    writer.stop();
}

TYPED_TEST(StoreTest, ADatabaseHasOneOwningProcessAtATime) {
    auto store = this->backend.open();
    try {
        auto second = this->backend.open();
        FAIL() << "a second open of a database in use succeeded";
    } catch (const StoreError& e) {
        EXPECT_NE(std::string(e.what()).find("in use by another process"), std::string::npos)
            << e.what();
    }
    store.reset();
    EXPECT_NO_THROW(this->backend.open());
}

TYPED_TEST(StoreTest, WriterReportsFailureToEverySubmitter) {
    auto store = this->backend.open();
    this->backend.refuse_event(2);
    GroupCommitWriter writer(*store);
    std::promise<std::exception_ptr> result;
    writer.submit({PutEvent{event(1, "!r:x")}, PutEvent{event(2, "!r:x")}},
                  [&](std::exception_ptr e) { result.set_value(e); });
    EXPECT_TRUE(result.get_future().get());
    writer.stop();
    std::promise<std::exception_ptr> late;
    writer.submit({}, [&](std::exception_ptr e) { late.set_value(e); });
    EXPECT_TRUE(late.get_future().get());
}

namespace {

// A store whose database is unavailable for the next `outages` applications, then back.
class FlakyStore final : public Store {
  public:
    static constexpr int kForever = -1;
    // The first `outages` applications fail (every one with kForever), the rest go through.
    explicit FlakyStore(Store& inner, int outages)
        : inner_(inner), forever_(outages == kForever), outages_(outages) {}
    Snapshot load() override { return inner_.load(); }
    void apply(std::span<const Mutation> batch) override {
        if (forever_ || outages_.fetch_sub(1) > 0)
            throw StoreUnavailable("the database is restarting");
        inner_.apply(batch);
    }
    std::vector<std::exception_ptr> transact(std::span<const Write> batch) override {
        if (forever_ || outages_.fetch_sub(1) > 0)
            throw StoreUnavailable("the database is restarting");
        return inner_.transact(batch);
    }
    std::vector<UserKeys> user_keys(const std::vector<std::string>& users) override {
        return inner_.user_keys(users);
    }
    std::optional<SessionRecord> session(const std::string& hash) override {
        return inner_.session(hash);
    }
    std::vector<AccountLoad> accounts(const std::vector<std::string>& users) override {
        return inner_.accounts(users);
    }
    std::vector<UserRecord> find_users(const std::string& term, int limit) override {
        return inner_.find_users(term, limit);
    }
    std::vector<AccountDataRecord> account_data(const std::string& u) override {
        return inner_.account_data(u);
    }
    std::optional<std::string> filter(const std::string& u, std::int64_t id) override {
        return inner_.filter(u, id);
    }
    std::vector<EventRecord> events_before(const std::string& r, StreamId b, int l) override {
        return inner_.events_before(r, b, l);
    }
    std::vector<EventRecord> events_after(const std::string& r, StreamId a, int l) override {
        return inner_.events_after(r, a, l);
    }
    std::optional<EventRecord> event_at(StreamId s) override { return inner_.event_at(s); }
    std::optional<RoomLoad> room(const std::string& r) override { return inner_.room(r); }
    std::vector<EventRecord> state_at(const std::string& r, StreamId a) override {
        return inner_.state_at(r, a);
    }
    std::vector<TxnRecord> device_txns(const std::string& d, std::int64_t t, int l) override {
        return inner_.device_txns(d, t, l);
    }
    std::optional<BackupVersionState> backup_version(const std::string& u,
                                                     std::int64_t v) override {
        return inner_.backup_version(u, v);
    }
    std::vector<BackupKeyRecord> backup_keys(const std::string& u, std::int64_t v,
                                             const std::string& r, const std::string& s) override {
        return inner_.backup_keys(u, v, r, s);
    }
    std::vector<ChangeRecord> changes(StreamId a, StreamId u) override {
        return inner_.changes(a, u);
    }
    std::vector<EventRecord> events_between(StreamId a, StreamId u) override {
        return inner_.events_between(a, u);
    }
    std::optional<ToDeviceRecord> to_device_at(StreamId s) override {
        return inner_.to_device_at(s);
    }
    std::vector<ToDeviceRecord> to_device_of(const std::string& u, const std::string& d) override {
        return inner_.to_device_of(u, d);
    }
    std::vector<DeviceListChangeRecord> device_lists_changed(StreamId a, StreamId u) override {
        return inner_.device_lists_changed(a, u);
    }
    std::vector<HistoryRecord> memberships_of(const std::string& u) override {
        return inner_.memberships_of(u);
    }
    std::vector<std::vector<ReceiptRecord>> receipts_of(
        const std::vector<std::string>& rooms) override {
        return inner_.receipts_of(rooms);
    }
    std::optional<ReceiptRecord> receipt_at(const std::string& r, StreamId s) override {
        return inner_.receipt_at(r, s);
    }
    std::vector<std::optional<PresenceRecord>> presence_of(
        const std::vector<std::string>& u) override {
        return inner_.presence_of(u);
    }
    std::vector<std::vector<PusherRecord>> pushers_of(const std::vector<std::string>& u) override {
        return inner_.pushers_of(u);
    }
    std::vector<std::optional<std::string>> push_rules_of(
        const std::vector<std::string>& u) override {
        return inner_.push_rules_of(u);
    }
    std::optional<RoomAliasRecord> room_alias(const std::string& a) override {
        return inner_.room_alias(a);
    }
    bool room_published(const std::string& r) override { return inner_.room_published(r); }
    std::vector<std::string> room_aliases_of(const std::string& r) override {
        return inner_.room_aliases_of(r);
    }
    std::vector<std::string> published_rooms() override { return inner_.published_rooms(); }
    std::vector<std::string> open_rooms() override { return inner_.open_rooms(); }

  private:
    Store& inner_;
    const bool forever_;
    std::atomic<int> outages_;  // left to fail; below zero once they are over
};

// What the writer reported about the database's health, in order.
struct HealthLog {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<std::pair<bool, std::string>> seen;
    GroupCommitWriter::Health observer() {
        return [this](bool ok, const std::string& why) {
            {
                std::lock_guard lock(mu);
                seen.emplace_back(ok, why);
            }
            cv.notify_all();
        };
    }
    void wait_for(std::size_t reports) {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return seen.size() >= reports; });
    }
};

}  // namespace

TYPED_TEST(StoreTest, WriterReportsARefusalToItsWriteAloneAndDecidesAgainAfterAnOutage) {
    auto store = this->backend.open();
    GroupCommitWriter writer(*store);
    std::promise<std::pair<std::exception_ptr, std::exception_ptr>> refused_done, kept_done;
    std::promise<std::exception_ptr> plain_done;
    std::atomic<int> runs{0};
    std::int64_t id = -1;
    // The first run loses the database in the middle of the decision: the transaction is made
    // again, and the decision with it.
    Write kept{{}, [&](Txn& txn, StreamId) {
                   if (runs.fetch_add(1) == 0) throw StoreUnavailable("connection lost");
                   id = txn.next_filter_id("@a:x");
                   txn.write(PutFilter{{"@a:x", id, "{}"}});
               }};
    Write refused{{PutRoom{{"!refused:x", "10"}}},
                  [](Txn&, StreamId) { throw std::invalid_argument("not allowed"); }};
    writer.submit(std::move(refused), [&](std::exception_ptr f, std::exception_ptr r) {
        refused_done.set_value({f, r});
    });
    writer.submit({PutRoom{{"!r:x", "10"}}},
                  [&](std::exception_ptr e) { plain_done.set_value(e); });
    writer.submit(std::move(kept), [&](std::exception_ptr f, std::exception_ptr r) {
        kept_done.set_value({f, r});
    });
    auto [f1, r1] = refused_done.get_future().get();
    EXPECT_FALSE(f1);
    ASSERT_TRUE(r1);
    EXPECT_THROW(std::rethrow_exception(r1), std::invalid_argument);
    EXPECT_FALSE(plain_done.get_future().get());
    auto [f2, r2] = kept_done.get_future().get();
    EXPECT_FALSE(f2);
    EXPECT_FALSE(r2);
    EXPECT_GE(runs.load(), 2);
    EXPECT_EQ(id, 0);
    EXPECT_EQ(store->filter("@a:x", 0), "{}");
    auto room = store->room("!r:x");
    ASSERT_TRUE(room);
    EXPECT_EQ(room->room.room_id, "!r:x");
    EXPECT_GE(writer.stats().retries, 1u);
}

TYPED_TEST(StoreTest, WriterKeepsABatchThroughAnOutageAndCommitsItOnceBack) {
    auto real = this->backend.open();
    std::vector<Mutation> room{PutRoom{{"!r:x", "10"}}};
    real->apply(room);
    FlakyStore store(*real, 3);
    HealthLog health;
    GroupCommitWriter writer(store, health.observer());
    std::promise<std::exception_ptr> first, second;
    auto s1 = writer.submit({PutEvent{event(1, "!r:x")}},
                            [&](std::exception_ptr e) { first.set_value(e); });
    auto s2 = writer.submit({PutEvent{event(2, "!r:x")}},
                            [&](std::exception_ptr e) { second.set_value(e); });
    EXPECT_FALSE(first.get_future().get());
    EXPECT_FALSE(second.get_future().get());
    // The two may have gone in one batch or in two; either way the outage is retried through
    // once, and durable() moves on after the completions, when when_durable is told.
    std::promise<std::exception_ptr> durable;
    writer.when_durable(s2, [&](std::exception_ptr e) { durable.set_value(e); });
    EXPECT_FALSE(durable.get_future().get());
    EXPECT_EQ(writer.durable(), s2);
    EXPECT_LT(s1, s2);
    EXPECT_TRUE(writer.available());
    EXPECT_EQ(writer.stats().retries, 3u);
    writer.stop();
    {
        std::lock_guard lock(health.mu);
        ASSERT_EQ(health.seen.size(), 2u);
        EXPECT_FALSE(health.seen[0].first);
        EXPECT_EQ(health.seen[0].second, "the database is restarting");
        EXPECT_TRUE(health.seen[1].first);
    }
    auto events = real->events_after("!r:x", 0, 10);
    ASSERT_EQ(events.size(), 2u);
    EXPECT_EQ(events[0].stream, 1);
    EXPECT_EQ(events[1].stream, 2);
}

TYPED_TEST(StoreTest, WriterStoppedInAnOutageFailsWhatIsLeftInsteadOfWaiting) {
    auto real = this->backend.open();
    FlakyStore store(*real, FlakyStore::kForever);
    HealthLog health;
    GroupCommitWriter writer(store, health.observer());
    std::promise<std::exception_ptr> result;
    auto seq = writer.submit({PutRoom{{"!r:x", "10"}}},
                             [&](std::exception_ptr e) { result.set_value(e); });
    // Once the outage is seen, stop: the submission fails instead of waiting for ever.
    health.wait_for(1);
    EXPECT_FALSE(writer.available());
    std::promise<std::exception_ptr> waited;
    writer.when_durable(seq, [&](std::exception_ptr e) { waited.set_value(e); });
    writer.stop();
    auto e = result.get_future().get();
    ASSERT_TRUE(e);
    EXPECT_THROW(std::rethrow_exception(e), StoreUnavailable);
    EXPECT_TRUE(waited.get_future().get());
    EXPECT_FALSE(real->room("!r:x"));
}

// A restart of PostgreSQL ends every session: the store replaces its connections, a read
// on a stale one is made again on a new one, and the writer's batch commits once the
// writer's connection is replaced.
TEST(PostgresStore, ConnectionsEndedByTheServerAreReplaced) {
    PostgresBackend backend;
    auto store = backend.open();
    std::vector<Mutation> room{PutRoom{{"!r:x", "10"}}, PutEvent{event(1, "!r:x")}};
    store->apply(room);
    backend.drop_connections();
    EXPECT_EQ(store->events_after("!r:x", 0, 10).size(), 1u);

    HealthLog health;
    GroupCommitWriter writer(*store, health.observer());
    std::promise<std::exception_ptr> done;
    writer.submit({PutEvent{event(2, "!r:x")}}, [&](std::exception_ptr e) { done.set_value(e); });
    EXPECT_FALSE(done.get_future().get());
    writer.stop();
    EXPECT_EQ(store->events_after("!r:x", 0, 10).size(), 2u);
    std::lock_guard lock(health.mu);
    ASSERT_EQ(health.seen.size(), 2u);  // the stale connection's failure, then back
    EXPECT_FALSE(health.seen[0].first);
    EXPECT_TRUE(health.seen[1].first);
}

// Version 4 moved the stream position from a row into a sequence: the positions handed out
// before it are never handed out after it.
TEST(PostgresStore, TheStreamPositionOfAVersionThreeDatabaseIsKept) {
    PostgresBackend backend;
    backend.open().reset();
    backend.sql(
        "CREATE TABLE stream_position (id BIGINT PRIMARY KEY CHECK (id = 1), "
        "max_stream BIGINT NOT NULL)");
    backend.sql("INSERT INTO stream_position VALUES (1, 42)");
    backend.sql("DROP SEQUENCE stream_seq CASCADE");
    backend.sql("UPDATE schema_version SET version = 3");
    auto store = backend.open();
    EXPECT_EQ(store->load().max_stream, 42);
    StreamId first = -1;
    std::vector<Write> one{Write{{}, [&](Txn&, StreamId f) { first = f; }, 1}};
    EXPECT_FALSE(store->transact(one)[0]);
    EXPECT_EQ(first, 43);
    store.reset();
    backend.sql("CREATE TABLE stream_position (id BIGINT)");  // fails unless version 4 dropped it
}

// A process whose connection was lost while its row went (PostgreSQL crashed: the unlogged
// table is empty) registers again when it reconnects: live, and its frontier published.
TEST(PostgresStore, AnInstanceReconnectingAfterACrashIsLiveAgain) {
    PostgresBackend backend;
    const std::string dsn = PgCluster::get().dsn(backend.name);
    auto store = open_postgres({dsn, true});
    auto listener = store->listen();
    ASSERT_TRUE(listener);
    EXPECT_EQ(listener->live_instances(), 1);
    backend.sql("TRUNCATE instances");
    backend.drop_connections();
    std::vector<Write> w{Write{{}, [](Txn&, StreamId) {}, 1}};
    for (int attempt = 0; attempt < 2; ++attempt) {  // the first finds its connection gone
        try {
            EXPECT_FALSE(store->transact(w)[0]);
            break;
        } catch (const StoreUnavailable&) {
        }
    }
    store->settled(false);
    listener = store->listen();
    EXPECT_EQ(listener->live_instances(), 1);
    EXPECT_EQ(listener->safe_position(), 1);
}

// Processes started together on a new shared database: one makes the tables, the others
// find them made.
TEST(PostgresStore, ProcessesStartedTogetherOnANewDatabaseAllOpenIt) {
    PostgresBackend backend;
    const std::string dsn = PgCluster::get().dsn(backend.name);
    constexpr int kProcesses = 4;
    std::vector<std::unique_ptr<Store>> stores(kProcesses);
    std::vector<std::string> errors(kProcesses);
    std::vector<std::thread> starting;
    for (int i = 0; i < kProcesses; ++i)
        starting.emplace_back([&, i] {
            try {
                stores[i] = open_postgres({dsn, true});
            } catch (const std::exception& e) {
                errors[i] = e.what();
            }
        });
    for (auto& t : starting) t.join();
    for (int i = 0; i < kProcesses; ++i) {
        EXPECT_EQ(errors[i], "") << "process " << i;
        EXPECT_TRUE(stores[i]) << "process " << i;
    }
}

namespace {
// A raw connection to the test's database, for what a process would hold.
struct RawConnection {
    PGconn* c;
    explicit RawConnection(const std::string& dsn) : c(PQconnectdb(dsn.c_str())) {}
    ~RawConnection() { PQfinish(c); }
    void sql(const std::string& statement) {
        PGresult* r = PQexec(c, statement.c_str());
        auto status = PQresultStatus(r);
        std::string err =
            status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK ? "" : PQresultErrorMessage(r);
        PQclear(r);
        ASSERT_EQ(err, "");
    }
    // The first column of the first row ("" when there is none).
    std::string value(const std::string& query) {
        PGresult* r = PQexec(c, query.c_str());
        std::string v =
            PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
        PQclear(r);
        return v;
    }
};
}  // namespace

// Several processes on one database: a reader never passes a position another process has in
// flight, and hears of every commit.
TEST(PostgresStore, TheSafePositionNeverPassesAPositionInFlightInAnyProcess) {
    PostgresBackend backend;
    const std::string dsn = PgCluster::get().dsn(backend.name);
    auto a = open_postgres({dsn, true});
    auto b = open_postgres({dsn, true});
    auto listener = a->listen();
    ASSERT_TRUE(listener);
    EXPECT_EQ(listener->safe_position(), 0);

    // A takes position 1 and holds it in flight until released.
    std::promise<void> release;
    std::promise<StreamId> taken;
    std::thread in_flight([&] {
        auto released = release.get_future();
        std::vector<Write> w{Write{{},
                                   [&](Txn& txn, StreamId first) {
                                       txn.write(PutRoom{{"!a:x", "10"}});
                                       txn.write(PutEvent{event(first, "!a:x")});
                                       taken.set_value(first);
                                       released.wait();
                                   },
                                   1}};
        a->transact(w);
        // As the writer does once the completions ran: until then it is in flight still.
        a->settled(false);
    });
    const StreamId first = taken.get_future().get();
    EXPECT_EQ(first, 1);
    // B takes and commits position 2 meanwhile: what B wrote is not safe to read yet.
    StreamId second = 0;
    std::vector<Write> w{Write{{},
                               [&](Txn& txn, StreamId f) {
                                   second = f;
                                   txn.write(PutRoom{{"!b:x", "10"}});
                                   txn.write(PutEvent{event(f, "!b:x")});
                                   txn.write(PutChange{{f, "typing", "!b:x"}});
                               },
                               1}};
    EXPECT_FALSE(b->transact(w)[0]);
    EXPECT_EQ(listener->safe_position(), 0);  // B's commit is B's to apply first
    b->settled(false);
    EXPECT_EQ(second, 2);
    using Woken = ChangeListener::Woken;
    EXPECT_EQ(listener->wait(std::chrono::seconds(10)), Woken::notified);
    EXPECT_EQ(listener->safe_position(), 0);
    release.set_value();
    in_flight.join();
    EXPECT_EQ(listener->wait(std::chrono::seconds(10)), Woken::notified);
    EXPECT_EQ(listener->safe_position(), 2);
    // Each process reads what the others changed.
    auto theirs = a->changes(0, 2);
    ASSERT_EQ(theirs.size(), 2u);
    EXPECT_EQ(theirs[0].stream, 2);
    EXPECT_EQ(theirs[0].kind, "event");
    EXPECT_EQ(theirs[0].key, "!b:x");
    EXPECT_EQ(theirs[1].kind, "typing");
    auto ours = b->changes(0, 2);
    ASSERT_EQ(ours.size(), 1u);
    EXPECT_EQ(ours[0].stream, 1);
    EXPECT_EQ(ours[0].key, "!a:x");
    EXPECT_EQ(b->changes(1, 2).size(), 0u);
    auto events = a->events_between(0, 2);
    ASSERT_EQ(events.size(), 2u);
    EXPECT_EQ(events[1].room_id, "!b:x");

    // A process that dies with a position in flight holds nobody back: its transaction died
    // with its connection, and so did its instance's lock.
    {
        RawConnection dead(dsn);
        dead.sql("SELECT pg_advisory_lock(28024, 999)");
        dead.sql("INSERT INTO instances VALUES (999, 1)");
        EXPECT_EQ(listener->safe_position(), 1);
        EXPECT_EQ(listener->live_instances(), 3);  // a, b and the one about to die
    }
    // Its session ends on the server a moment after the connection closes: the lock, taken
    // (and given back) by another session, is free once it has.
    {
        RawConnection after(dsn);
        after.sql("SELECT pg_advisory_lock(28024, 999)");
        after.sql("SELECT pg_advisory_unlock(28024, 999)");
    }
    EXPECT_EQ(listener->safe_position(), 2);
    EXPECT_EQ(listener->live_instances(), 2);

    // A process that does not share the database cannot open it while others share it.
    try {
        open_postgres({dsn});
        FAIL() << "an owner opened a shared database";
    } catch (const StoreUnavailable& e) {
        EXPECT_NE(std::string(e.what()).find("in use by another process"), std::string::npos)
            << e.what();
    }
    listener->stop();
    EXPECT_EQ(listener->wait(std::chrono::seconds(10)), Woken::stopped);
}

// The changes every process has fed are deleted, and no others: not those a process has yet
// to feed, nor any while a process has not told where it starts. A process out of touch for
// longer than the grace is no longer waited for, and learns when it comes back that it lost
// changes.
TEST(PostgresStore, ChangesAreKeptUntilEveryProcessFedThem) {
    PostgresBackend backend;
    const std::string dsn = PgCluster::get().dsn(backend.name);
    const PostgresOptions opts{.dsn = dsn, .shared = true, .feed_grace = std::chrono::seconds(0)};
    auto a = open_postgres(opts);
    auto b = open_postgres(opts);
    auto la = a->listen();
    auto lb = b->listen();
    la->fed(0);
    lb->fed(0);
    // B writes a change at each of positions 1 to 3.
    auto write_changes = [](Store& store, std::size_t n) {
        std::vector<Write> w{Write{{},
                                   [n](Txn& txn, StreamId first) {
                                       for (std::size_t i = 0; i < n; ++i) {
                                           auto at = first + static_cast<StreamId>(i);
                                           txn.write(PutChange{{at, "typing", "!r:x"}});
                                       }
                                   },
                                   n}};
        EXPECT_FALSE(store.transact(w)[0]);
        store.settled(false);
    };
    write_changes(*b, 3);
    EXPECT_EQ(a->changes(0, 3).size(), 3u);
    la->fed(3);  // B has fed none of them
    EXPECT_EQ(a->changes(0, 3).size(), 3u);
    lb->fed(2);
    auto left = a->changes(0, 3);
    ASSERT_EQ(left.size(), 1u);
    EXPECT_EQ(left[0].stream, 3);

    // A process that registered and has not yet told where it starts holds everything back;
    // once it is gone (it never listened), it holds back nothing.
    RawConnection raw(dsn);
    {
        auto c = open_postgres(opts);
        lb->fed(3);
        EXPECT_EQ(a->changes(0, 3).size(), 1u);
    }
    // Its session ends on the server a moment after its connection closed: waited for by
    // taking its lock.
    const std::string c_id = raw.value("SELECT id FROM instances WHERE fed IS NULL");
    ASSERT_NE(c_id, "");
    raw.sql("SELECT pg_advisory_lock(28024, " + c_id + ")");
    raw.sql("SELECT pg_advisory_unlock(28024, " + c_id + ")");
    lb->fed(3);
    EXPECT_EQ(a->changes(0, 3).size(), 0u);
    EXPECT_EQ(raw.value("SELECT COUNT(*) FROM instances"), "2");
    EXPECT_EQ(raw.value("SELECT upto FROM changes_pruned"), "3");

    // B is cut off from the database (both its connections, so both its locks) for longer
    // than the grace, while A writes and feeds on: A no longer waits for it.
    const std::string b_id = raw.value("SELECT MAX(id) FROM instances");
    auto cut_off = [&](const std::string& id, std::initializer_list<const char*> classes) {
        for (std::string cls : classes)
            raw.sql(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND classid = " +
                cls + " AND objid = " + id + " AND objsubid = 2 AND granted");
        // Waited for as above: each lock taken once the session that held it ended.
        for (std::string cls : classes) {
            raw.sql("SELECT pg_advisory_lock(" + cls + ", " + id + ")");
            raw.sql("SELECT pg_advisory_unlock(" + cls + ", " + id + ")");
        }
    };
    cut_off(b_id, {"28024", "28025"});
    write_changes(*a, 2);
    la->fed(5);
    EXPECT_EQ(a->changes(0, 5).size(), 0u);
    EXPECT_EQ(raw.value("SELECT COUNT(*) FROM instances WHERE id = " + b_id), "0");
    // Back, B finds changes it never fed gone.
    using Woken = ChangeListener::Woken;
    // Each wait either finds the connection gone, or connects again and tells how that went
    // (a notification that came before may be read first).
    auto reconnect = [](ChangeListener& listener) {
        Woken woken = Woken::timeout;
        for (int i = 0; i < 5 && woken != Woken::lost && woken != Woken::reconnected; ++i)
            woken = listener.wait(std::chrono::seconds(10));
        return woken;
    };
    EXPECT_EQ(reconnect(*lb), Woken::lost);
    EXPECT_EQ(raw.value("SELECT fed FROM instances WHERE id = " + b_id), "3");  // its row back

    // A process whose listener reconnects having missed nothing carries on.
    const std::string a_id = raw.value("SELECT MIN(id) FROM instances");
    cut_off(a_id, {"28025"});
    EXPECT_EQ(reconnect(*la), Woken::reconnected);
}

// A process stopped is let go by the pruning at once; one whose connections are gone without
// a word (cut off: it may come back) only after the grace.
TEST(PostgresStore, AProcessStoppedIsLetGoAtOnceOneCutOffAfterTheGrace) {
    PostgresBackend backend;
    const std::string dsn = PgCluster::get().dsn(backend.name);
    RawConnection raw(dsn);
    auto open_and_feed = [&] {
        auto store = open_postgres({.dsn = dsn, .shared = true});
        auto listener = store->listen();
        listener->fed(0);
        return std::pair{std::move(store), std::move(listener)};
    };
    // Each is waited for by taking its instance's locks once its sessions ended.
    auto wait_gone = [&](const std::string& id) {
        raw.sql("SELECT pg_advisory_lock(28024, " + id + "), pg_advisory_lock(28025, " + id + ")");
        raw.sql("SELECT pg_advisory_unlock_all()");
    };
    auto [stopped, stopped_listener] = open_and_feed();
    auto [cut, cut_listener] = open_and_feed();
    stopped_listener.reset();
    stopped.reset();
    wait_gone("1");
    raw.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND "
        "classid IN (28024, 28025) AND objid = 2 AND objsubid = 2 AND database = (SELECT "
        "oid FROM pg_database WHERE datname = current_database())");
    wait_gone("2");
    EXPECT_EQ(raw.value("SELECT prune_changes('1 hour')"), "0");  // the cut one's fed
    EXPECT_EQ(raw.value("SELECT string_agg(id::text, ',') FROM instances"), "2");
    raw.sql("UPDATE instances SET seen = now() - interval '2 hours'");
    EXPECT_EQ(raw.value("SELECT prune_changes('1 hour')"), "");  // none left to feed
    EXPECT_EQ(raw.value("SELECT COUNT(*) FROM instances"), "0");
}

// pg_locks lists the locks of every database of the cluster: an instance of another mxvoip
// database, with the same id as a dead one of this, does not make it live, hold back the safe
// position or keep its changes.
TEST(PostgresStore, TheInstancesOfAnotherDatabaseOnTheClusterAreNotThisOnes) {
    PostgresBackend mine;
    PostgresBackend other;
    const std::string dsn = PgCluster::get().dsn(mine.name);
    auto store = open_postgres({.dsn = dsn, .shared = true, .feed_grace = std::chrono::seconds(0)});
    auto listener = store->listen();
    listener->fed(0);
    RawConnection there(PgCluster::get().dsn(other.name));
    there.sql("SELECT pg_advisory_lock(28024, 999), pg_advisory_lock(28025, 999)");
    RawConnection here(dsn);
    here.sql("INSERT INTO instances (id, frontier, fed) VALUES (999, 0, 0)");
    std::vector<Write> w{Write{{},
                               [](Txn& txn, StreamId f) {
                                   txn.write(PutChange{{f, "typing", "!r:x"}});
                               },
                               1}};
    EXPECT_FALSE(store->transact(w)[0]);
    store->settled(false);
    EXPECT_EQ(listener->live_instances(), 1);
    EXPECT_EQ(listener->safe_position(), 1);
    listener->fed(1);
    EXPECT_EQ(here.value("SELECT upto FROM changes_pruned"), "1");
    EXPECT_EQ(here.value("SELECT COUNT(*) FROM instances WHERE id = 999"), "0");
}

// Two processes deciding about one user's data (Write::users) decide one after the other:
// the second reads what the first wrote. Without the lock both would read no backup version
// and both would make version 1.
namespace {

// Whether a connection to the database comes to wait for a lock (within a minute): PostgreSQL
// tells of a lock wait only when asked.
bool lock_waited_for(const std::string& dsn) {
    RawConnection watch(dsn);
    for (auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
         std::chrono::steady_clock::now() < give_up;) {
        PGresult* r = PQexec(watch.c,
                             "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s USING (pid) "
                             "WHERE NOT l.granted AND s.datname = current_database()");
        const bool waiting =
            PQresultStatus(r) == PGRES_TUPLES_OK && std::string(PQgetvalue(r, 0, 0)) != "0";
        PQclear(r);
        if (waiting) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
}

}  // namespace

TEST(PostgresStore, DecisionsAboutOneUserAreMadeOneAfterTheOtherAcrossProcesses) {
    PostgresBackend backend;
    const std::string dsn = PgCluster::get().dsn(backend.name);
    auto a = open_postgres({dsn, true});
    auto b = open_postgres({dsn, true});
    auto make_version = [](std::int64_t& made, std::function<void()> then) {
        Write w{{}, [&made, then](Txn& txn, StreamId) {
                    made = txn.backup_versions("@u:x").max + 1;
                    txn.write(PutBackupVersion{{"@u:x", made, "alg", "{}", 0, false}});
                    then();
                }};
        w.users = {"@u:x"};
        return std::vector<Write>{std::move(w)};
    };
    std::promise<void> release, decided;
    std::int64_t first = 0, second = 0;
    std::thread holding([&] {
        auto w = make_version(first, [&] {
            decided.set_value();
            release.get_future().wait();
        });
        EXPECT_FALSE(a->transact(w)[0]);
    });
    decided.get_future().wait();
    std::thread waiting([&] {
        auto w = make_version(second, [] {});
        EXPECT_FALSE(b->transact(w)[0]);
    });
    // Released once B waits for a lock (the user's; without it, for A's row of version 1).
    const bool blocked = lock_waited_for(dsn);
    release.set_value();
    holding.join();
    waiting.join();
    ASSERT_TRUE(blocked) << "B never waited for a lock";
    EXPECT_EQ(first, 1);
    EXPECT_EQ(second, 2);
    EXPECT_EQ(a->backup_version("@u:x", 0)->version.version, 2);
}

// A statement the database refuses, sent in one pipeline with the savepoint before it: only
// its write is refused, as a fault (StoreError), and the writes around it commit.
TEST(PostgresStore, AStatementRefusedInAPipelineRefusesOnlyItsWrite) {
    PostgresBackend backend;
    auto store = backend.open();
    std::int64_t before = -1, after = -1;
    std::vector<Write> batch{
        put_filter("@a:x", "{\"n\":1}", before),
        Write{{},
              [](Txn& txn, StreamId) {
                  txn.write(PutFilter{{"@a:x", 5, "{}"}});
                  txn.write(PutFilter{{"@a:x", 6, "\xff"}});  // not UTF-8: refused
              }},
        put_filter("@a:x", "{\"n\":2}", after),
    };
    auto refused = store->transact(batch);
    ASSERT_EQ(refused.size(), 3u);
    EXPECT_FALSE(refused[0] || refused[2]);
    ASSERT_TRUE(refused[1]);
    try {
        std::rethrow_exception(refused[1]);
    } catch (const StoreUnavailable& e) {
        ADD_FAILURE() << "taken for an outage: " << e.what();
    } catch (const StoreError& e) {
        EXPECT_NE(std::string(e.what()).find("UTF8"), std::string::npos) << e.what();
    }
    EXPECT_EQ(store->filter("@a:x", before), "{\"n\":1}");
    EXPECT_EQ(store->filter("@a:x", after), "{\"n\":2}");
    EXPECT_FALSE(store->filter("@a:x", 5));
    // The connection goes on: the next transaction commits.
    std::int64_t next = -1;
    EXPECT_FALSE(store->transact(std::vector<Write>{put_filter("@a:x", "{\"n\":3}", next)})[0]);
    EXPECT_EQ(store->filter("@a:x", next), "{\"n\":3}");
}

// A process that locks a room another is appending to waits, then reads the room's newest
// event as the other left it: its copy of the room is stale.
TEST(PostgresStore, TheRoomLockReadsTheNewestEventAnotherProcessCommitted) {
    PostgresBackend backend;
    const std::string dsn = PgCluster::get().dsn(backend.name);
    auto a = open_postgres({dsn, true});
    auto b = open_postgres({dsn, true});
    a->apply(std::vector<Mutation>{PutRoom{{"!r:x", "10"}}});
    auto append = [](StreamId& at, std::function<void()> then) {
        Write w{{}, [&at, then](Txn& txn, StreamId first) {
                    at = first;
                    txn.write(PutEvent{event(first, "!r:x")});
                    then();
                }};
        w.rooms = {"!r:x"};
        w.streams = 1;
        return std::vector<Write>{std::move(w)};
    };
    StreamId earlier = 0, later = 0, read = -1;
    ASSERT_FALSE(a->transact(append(earlier, [] {}))[0]);
    std::promise<void> release, appended;
    std::thread holding([&] {
        auto w = append(later, [&] {
            appended.set_value();
            release.get_future().wait();
        });
        EXPECT_FALSE(a->transact(w)[0]);
    });
    appended.get_future().wait();
    std::thread reading([&] {
        Write w{{}, [&read](Txn& txn, StreamId) { read = txn.room_last_event("!r:x"); }};
        w.rooms = {"!r:x"};
        EXPECT_FALSE(b->transact(std::vector<Write>{std::move(w)})[0]);
    });
    const bool blocked = lock_waited_for(dsn);
    release.set_value();
    holding.join();
    reading.join();
    ASSERT_TRUE(blocked) << "B never waited for the room's lock";
    EXPECT_GT(later, earlier);
    EXPECT_EQ(read, later);
    // Asked outside the room's lock, the answer could be stale by the time it is used.
    Write unlocked{{}, [](Txn& txn, StreamId) { txn.room_last_event("!r:x"); }};
    auto refused = b->transact(std::vector<Write>{std::move(unlocked)});
    ASSERT_TRUE(refused[0]);
    EXPECT_THROW(std::rethrow_exception(refused[0]), StoreError);
}

// A pusher or an alias is decided in its transaction: it reads what it counts there,
// including what the same transaction wrote before.
TYPED_TEST(StoreTest, PushersAndAliasesAreReadInTheTransaction) {
    auto store = this->backend.open();
    store->apply(std::vector<Mutation>{
        PutRoom{{"!r:x", "10"}},
        PutPusher{{"@a:x", "app", "key2", "PHONE", "{}", 20}},
        PutPusher{{"@a:x", "app", "key1", "PHONE", "{}", 10}},
        PutPusher{{"@b:x", "app", "key1", "TABLET", "{}", 5}},
        PutRoomAlias{{"#a:x", "!r:x", "@a:x"}},
        PutRoomAlias{{"#b:x", "!other:x", "@a:x"}},
    });
    std::vector<PusherRecord> before, after;
    std::int64_t aliases_before = -1, aliases_after = -1, elsewhere = -1;
    std::vector<Write> batch{
        Write{{}, [&](Txn& txn, StreamId) {
                  before = txn.pushers("@a:x");
                  txn.write(DeletePusher{"", "app", "key1"});  // every user's
                  txn.write(PutPusher{{"@a:x", "app", "key3", "LAPTOP", "{}", 30}});
                  after = txn.pushers("@a:x");
                  aliases_before = txn.room_alias_count("!r:x");
                  txn.write(PutRoomAlias{{"#c:x", "!r:x", "@b:x"}});
                  aliases_after = txn.room_alias_count("!r:x");
                  elsewhere = txn.room_alias_count("!none:x");
              }}};
    ASSERT_FALSE(store->transact(batch)[0]);
    ASSERT_EQ(before.size(), 2u);
    EXPECT_EQ(before[0].pushkey, "key1");  // oldest first
    EXPECT_EQ(before[0].device_id, "PHONE");
    EXPECT_EQ(before[1].pushkey, "key2");
    ASSERT_EQ(after.size(), 2u);
    EXPECT_EQ(after[0].pushkey, "key2");
    EXPECT_EQ(after[1].pushkey, "key3");
    EXPECT_EQ(after[1].device_id, "LAPTOP");
    EXPECT_TRUE(store->pushers_of({"@b:x"})[0].empty());
    EXPECT_EQ(aliases_before, 1);
    EXPECT_EQ(aliases_after, 2);
    EXPECT_EQ(elsewhere, 0);
}

// To-device transaction ids: found by device and id from a time on, forgotten past their
// lifetime, past the newest `keep` of the device, and when the device signs out.
TYPED_TEST(StoreTest, ToDeviceTransactionIdsAreRememberedAndForgotten) {
    auto store = this->backend.open();
    auto seen = [&](const std::string& device, const std::string& txn, std::int64_t since) {
        bool out = false;
        std::vector<Write> batch{
            Write{{}, [&](Txn& txn_, StreamId) { out = txn_.to_device_txn(device, txn, since); }}};
        EXPECT_FALSE(store->transact(batch)[0]);
        return out;
    };
    store->apply(std::vector<Mutation>{
        PutToDeviceTxn{"@a:x|PHONE", "t1", 100, 0, 3},
        PutToDeviceTxn{"@a:x|PHONE", "t2", 200, 0, 3},
        PutToDeviceTxn{"@a:x|PHONE", "t2", 250, 0, 3},  // a retry: the first is kept
        PutToDeviceTxn{"@b:x|PHONE", "t1", 300, 0, 3},
    });
    EXPECT_TRUE(seen("@a:x|PHONE", "t1", 0));
    EXPECT_TRUE(seen("@a:x|PHONE", "t2", 200));
    EXPECT_FALSE(seen("@a:x|PHONE", "t2", 201));  // older than asked for
    EXPECT_FALSE(seen("@a:x|LAPTOP", "t1", 0));
    // Past the newest 3 of the device: t1 goes; past its lifetime: nothing else yet.
    store->apply(std::vector<Mutation>{
        PutToDeviceTxn{"@a:x|PHONE", "t3", 400, 0, 3},
        PutToDeviceTxn{"@a:x|PHONE", "t4", 500, 150, 3},
    });
    EXPECT_FALSE(seen("@a:x|PHONE", "t1", 0));
    EXPECT_TRUE(seen("@a:x|PHONE", "t2", 0));
    EXPECT_TRUE(seen("@a:x|PHONE", "t4", 0));
    // Past their lifetime.
    store->apply(std::vector<Mutation>{PutToDeviceTxn{"@a:x|PHONE", "t5", 600, 450, 3}});
    EXPECT_FALSE(seen("@a:x|PHONE", "t2", 0));
    EXPECT_FALSE(seen("@a:x|PHONE", "t3", 0));
    EXPECT_TRUE(seen("@a:x|PHONE", "t5", 0));
    // Signed out: all of the device's go, no one else's.
    store->apply(std::vector<Mutation>{ForgetTxns{"@a:x|PHONE", 0}});
    EXPECT_FALSE(seen("@a:x|PHONE", "t4", 0));
    EXPECT_FALSE(seen("@a:x|PHONE", "t5", 0));
    EXPECT_TRUE(seen("@b:x|PHONE", "t1", 0));
}

// What another process reads of a change: the record at its position, by key.
TYPED_TEST(StoreTest, ChangedRecordsAreReadByTheirPosition) {
    auto store = this->backend.open();
    store->apply(std::vector<Mutation>{
        PutRoom{{"!r:x", "10"}},
        PutToDevice{{5, "@a:x", "PHONE", "{\"n\":1}"}},
        PutReceipt{{6, "!r:x", "@a:x", "m.read", "", "$e1", 100}},
        PutPresence{{7, "@a:x", "online", "here", 99}},
        PutEvent{event(8, "!r:x")},
        PutPusher{{"@a:x", "app", "key2", "PHONE", "{}", 20}},
        PutPusher{{"@a:x", "app", "key1", "PHONE", "{}", 10}},
        PutPusher{{"@b:x", "app", "key3", "TABLET", "{}", 5}},
        PutRoomAlias{{"#a:x", "!r:x", "@a:x"}},
        PutRoomAlias{{"#a:x", "!other:x", "@b:x"}},  // made already: left as it is
        PutRoomVisibility{"!r:x", true},
    });
    auto message = store->to_device_at(5);
    ASSERT_TRUE(message);
    EXPECT_EQ(message->user_id, "@a:x");
    EXPECT_EQ(message->device_id, "PHONE");
    EXPECT_EQ(message->message, "{\"n\":1}");
    EXPECT_FALSE(store->to_device_at(6));
    auto receipt = store->receipt_at("!r:x", 6);
    ASSERT_TRUE(receipt);
    EXPECT_EQ(receipt->user_id, "@a:x");
    EXPECT_EQ(receipt->event_id, "$e1");
    EXPECT_EQ(receipt->ts, 100);
    EXPECT_FALSE(store->receipt_at("!other:x", 6));
    auto presence = store->presence_of({"@a:x", "@b:x"});
    ASSERT_TRUE(presence[0]);
    EXPECT_EQ(presence[0]->stream, 7);
    EXPECT_EQ(presence[0]->status_msg, "here");
    EXPECT_FALSE(presence[1]);
    auto pushers = store->pushers_of({"@c:x", "@a:x", "@b:x"});  // in the order asked
    ASSERT_EQ(pushers.size(), 3u);
    EXPECT_TRUE(pushers[0].empty());
    ASSERT_EQ(pushers[1].size(), 2u);
    EXPECT_EQ(pushers[1][0].pushkey, "key1");  // oldest first
    EXPECT_EQ(pushers[1][1].pushkey, "key2");
    EXPECT_EQ(pushers[1][1].device_id, "PHONE");
    ASSERT_EQ(pushers[2].size(), 1u);
    EXPECT_EQ(pushers[2][0].device_id, "TABLET");
    auto alias = store->room_alias("#a:x");
    ASSERT_TRUE(alias);
    EXPECT_EQ(alias->room_id, "!r:x");
    EXPECT_EQ(alias->creator, "@a:x");
    EXPECT_FALSE(store->room_alias("#b:x"));
    EXPECT_TRUE(store->room_published("!r:x"));
    EXPECT_FALSE(store->room_published("!other:x"));
    auto events = store->events_between(5, 8);
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0].stream, 8);
    EXPECT_TRUE(store->events_between(8, 100).empty());
    // A database one process owns has no change feed.
    EXPECT_FALSE(store->listen());
    EXPECT_TRUE(store->changes(0, 100).empty());
}
