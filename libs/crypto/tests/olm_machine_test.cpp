// Two or more real machines talking through a homeserver's key endpoints, kept in memory here:
// keys are uploaded, queried and claimed, room keys travel as Olm to-device messages, room
// events as Megolm. The interop tests run the same machine against matrix-js-sdk's Rust crypto.
#include "mxvoip/crypto/olm_machine.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <deque>
#include <filesystem>
#include <fstream>

using namespace mxvoip::crypto;
namespace fs = std::filesystem;

namespace {

const std::string kRoom = "!dm:example.org";
const std::string kAlice = "@alice:example.org";
const std::string kBob = "@bob:example.org";

// What a homeserver keeps for end-to-end encryption, and nothing else.
struct KeyServer {
    std::map<std::string, std::map<std::string, json::object>> device_keys;
    std::map<std::pair<std::string, std::string>, std::deque<std::pair<std::string, json::value>>>
        one_time_keys;
    std::map<std::pair<std::string, std::string>, std::pair<std::string, json::value>> fallback;
    std::map<std::pair<std::string, std::string>, bool> fallback_used;
    std::map<std::pair<std::string, std::string>, json::array> inbox;
    std::vector<Request> sent_to_device;

    json::object serve(const Machine& m, const Request& r) {
        auto who = std::pair{m.user_id(), m.device_id()};
        switch (r.kind) {
            case RequestKind::keys_upload: {
                if (auto* dk = r.body.if_contains("device_keys"))
                    device_keys[m.user_id()][m.device_id()] = dk->as_object();
                if (auto* otks = r.body.if_contains("one_time_keys"))
                    for (const auto& [id, k] : otks->as_object())
                        one_time_keys[who].emplace_back(std::string(id), k);
                if (auto* fb = r.body.if_contains("fallback_keys"))
                    for (const auto& [id, k] : fb->as_object()) {
                        fallback[who] = {std::string(id), k};
                        fallback_used[who] = false;
                    }
                return {
                    {"one_time_key_counts", {{"signed_curve25519", one_time_keys[who].size()}}}};
            }
            case RequestKind::keys_query: {
                json::object out;
                for (const auto& [user, v] : r.body.at("device_keys").as_object()) {
                    json::object devices;
                    for (const auto& [d, keys] : device_keys[std::string(user)]) devices[d] = keys;
                    out[user] = devices;
                }
                return {{"device_keys", out}, {"failures", json::object()}};
            }
            case RequestKind::keys_claim: {
                json::object out;
                for (const auto& [user, devices] : r.body.at("one_time_keys").as_object())
                    for (const auto& [d, alg] : devices.as_object()) {
                        auto key = std::pair{std::string(user), std::string(d)};
                        auto& q = one_time_keys[key];
                        std::pair<std::string, json::value> k;
                        if (!q.empty()) {
                            k = q.front();
                            q.pop_front();
                        } else if (fallback.count(key)) {
                            k = fallback[key];
                            fallback_used[key] = true;
                        } else {
                            continue;
                        }
                        if (!out.contains(user)) out[user] = json::object();
                        out[user].as_object()[d] = json::object{{k.first, k.second}};
                    }
                return {{"one_time_keys", out}, {"failures", json::object()}};
            }
            case RequestKind::to_device:
                sent_to_device.push_back(r);
                for (const auto& [user, devices] : r.body.at("messages").as_object())
                    for (const auto& [d, content] : devices.as_object())
                        inbox[{std::string(user), std::string(d)}].push_back(json::object{
                            {"sender", m.user_id()}, {"type", r.event_type}, {"content", content}});
                return {};
        }
        return {};
    }

    SyncChanges sync(const Machine& m) {
        auto who = std::pair{m.user_id(), m.device_id()};
        SyncChanges c;
        c.to_device = std::move(inbox[who]);
        inbox[who].clear();
        c.one_time_key_counts["signed_curve25519"] =
            static_cast<std::int64_t>(one_time_keys[who].size());
        c.unused_fallback_key_types = std::vector<std::string>{};
        if (fallback.count(who) && !fallback_used[who])
            c.unused_fallback_key_types->push_back("signed_curve25519");
        return c;
    }
};

struct Device {
    fs::path file;
    StateKey key{};
    std::unique_ptr<Machine> m;
    std::vector<std::string> problems;

    Device(const fs::path& dir, const std::string& user, const std::string& device) {
        file = dir / (user.substr(1, user.find(':') - 1) + "-" + device + ".crypto");
        key.fill(static_cast<unsigned char>(device.size() + user.size()));
        reopen();
    }
    void reopen() {
        m.reset();
        m = open_olm_machine({user_of(), device_of(), file, key});
    }
    std::string user_of() const {
        std::string name = file.filename().string();
        return "@" + name.substr(0, name.find('-')) + ":example.org";
    }
    std::string device_of() const {
        std::string name = file.stem().string();
        return name.substr(name.find('-') + 1);
    }
};

class E2ee : public ::testing::Test {
  protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() /
               ("mxvoip-crypto-" + std::to_string(::getpid()) + "-" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(dir_);
        fs::create_directories(dir_);
    }
    void TearDown() override { fs::remove_all(dir_); }

    Device& device(const std::string& user, const std::string& id) {
        devices_.push_back(std::make_unique<Device>(dir_, user, id));
        Device& d = *devices_.back();
        sync(d);
        return d;
    }

    // One round of what a client does between two /sync responses.
    void sync(Device& d, Ms now = 1000) {
        for (auto& p : d.m->receive_sync(server_.sync(*d.m), now)) d.problems.push_back(p);
        for (const auto& r : d.m->outgoing_requests())
            for (auto& p : d.m->mark_sent(r.id, server_.serve(*d.m, r))) d.problems.push_back(p);
    }

    // What a client does before sending into the room: devices, sessions, the room key.
    Sharing share(Device& from, const std::vector<std::string>& members, Ms now = 1000,
                  RoomSettings settings = {}) {
        from.m->track_users(members);
        sync(from, now);
        if (auto claim = from.m->claim_missing_sessions(members, now))
            for (auto& p : from.m->mark_sent(claim->id, server_.serve(*from.m, *claim)))
                from.problems.push_back(p);
        Sharing s = from.m->share_room_key(kRoom, members, settings, now);
        for (const auto& r : s.requests) from.m->mark_sent(r.id, server_.serve(*from.m, r));
        return s;
    }

    json::object room_event(const Device& from, const json::object& content,
                            const std::string& event_id) {
        return json::object{{"type", "m.room.encrypted"},
                            {"sender", from.m->user_id()},
                            {"event_id", event_id},
                            {"content", content}};
    }

    json::object invite(const std::string& call_id) {
        return json::object{{"call_id", call_id},
                            {"party_id", "P"},
                            {"version", "1"},
                            {"lifetime", 60000},
                            {"offer", {{"type", "offer"}, {"sdp", "v=0..."}}}};
    }

    fs::path dir_;
    KeyServer server_;
    std::vector<std::unique_ptr<Device>> devices_;
};

TEST_F(E2ee, ACallEventEncryptedByOneDeviceIsReadByTheOther) {
    Device& alice = device(kAlice, "ALICE1");
    Device& bob = device(kBob, "BOB1");
    Sharing s = share(alice, {kAlice, kBob});
    EXPECT_TRUE(s.skipped.empty());
    ASSERT_EQ(s.requests.size(), 1u);
    EXPECT_EQ(s.requests[0].event_type, "m.room.encrypted");
    json::object content = alice.m->encrypt(kRoom, "m.call.invite", invite("c1"), 1000);
    EXPECT_EQ(content.at("algorithm"), "m.megolm.v1.aes-sha2");
    EXPECT_EQ(content.at("sender_key"), json::value(alice.m->identity_key()));
    EXPECT_EQ(json::serialize(content).find("v=0"), std::string::npos) << "the SDP is encrypted";

    sync(bob);  // the room key arrives
    EXPECT_TRUE(bob.problems.empty()) << bob.problems.front();
    Decryption d = bob.m->decrypt(kRoom, room_event(alice, content, "$1"));
    ASSERT_TRUE(d.event) << d.error;
    EXPECT_EQ(d.event->type, "m.call.invite");
    EXPECT_EQ(d.event->content, invite("c1"));
    EXPECT_EQ(d.event->sender_key, alice.m->identity_key());
    EXPECT_EQ(d.event->sender_device, "") << "bob has not queried alice's devices yet";
    bob.m->track_users({kAlice, kBob});
    sync(bob);
    d = bob.m->decrypt(kRoom, room_event(alice, content, "$1"));
    ASSERT_TRUE(d.event) << d.error;
    EXPECT_EQ(d.event->sender_device, "ALICE1");

    // And back: bob has an Olm session only from alice's pre-key message, and uses it.
    Sharing back = share(bob, {kAlice, kBob});
    EXPECT_TRUE(back.skipped.empty());
    json::object answer = bob.m->encrypt(kRoom, "m.call.answer", {{"call_id", "c1"}}, 1000);
    sync(alice);
    d = alice.m->decrypt(kRoom, room_event(bob, answer, "$2"));
    ASSERT_TRUE(d.event) << d.error;
    EXPECT_EQ(d.event->type, "m.call.answer");
    EXPECT_EQ(d.event->sender_device, "BOB1");
    // Alice reads her own event back too.
    d = alice.m->decrypt(kRoom, room_event(alice, content, "$1"));
    ASSERT_TRUE(d.event) << d.error;
}

TEST_F(E2ee, AReplayedMessageIndexIsRefusedAndOtherFailuresSayWhy) {
    Device& alice = device(kAlice, "ALICE1");
    Device& bob = device(kBob, "BOB1");
    share(alice, {kAlice, kBob});
    json::object content = alice.m->encrypt(kRoom, "m.call.hangup", {{"call_id", "c1"}}, 1000);
    sync(bob);
    ASSERT_TRUE(bob.m->decrypt(kRoom, room_event(alice, content, "$1")).event);
    EXPECT_TRUE(bob.m->decrypt(kRoom, room_event(alice, content, "$1")).event)
        << "the same event again (a sync repeated after a restart) is no replay";
    Decryption replay = bob.m->decrypt(kRoom, room_event(alice, content, "$forged"));
    EXPECT_FALSE(replay.event);
    EXPECT_NE(replay.error.find("replayed"), std::string::npos) << replay.error;

    Decryption other_room = bob.m->decrypt("!other:example.org", room_event(alice, content, "$3"));
    EXPECT_FALSE(other_room.event);
    EXPECT_NE(other_room.error.find("no room key"), std::string::npos) << other_room.error;
    EXPECT_TRUE(other_room.key_missing);
    EXPECT_FALSE(replay.key_missing);

    json::object bad = content;
    std::string ct(bad.at("ciphertext").as_string());
    ct[10] = ct[10] == 'A' ? 'B' : 'A';
    bad["ciphertext"] = ct;
    EXPECT_FALSE(bob.m->decrypt(kRoom, room_event(alice, bad, "$4")).event);

    // Keys for a room key session that another device claims as its own are refused.
    json::object spoofed = content;
    spoofed["sender_key"] = bob.m->identity_key();
    EXPECT_FALSE(bob.m->decrypt(kRoom, room_event(alice, spoofed, "$5")).event);
}

TEST_F(E2ee, TheRoomKeyRotatesByCountByAgeAndWhenADeviceLeavesButNotForANewDevice) {
    Device& alice = device(kAlice, "ALICE1");
    Device& bob = device(kBob, "BOB1");
    RoomSettings two_messages;
    two_messages.rotation_period_msgs = 2;
    share(alice, {kAlice, kBob}, 1000, two_messages);
    auto session = [&] {
        return std::string(
            alice.m->encrypt(kRoom, "m.call.candidates", {}, 1000).at("session_id").as_string());
    };
    std::string first = session();
    EXPECT_EQ(session(), first);
    Sharing again = share(alice, {kAlice, kBob}, 1000, two_messages);
    EXPECT_EQ(again.requests.size(), 1u) << "two messages sent: a new key, shared again";
    std::string second = session();
    EXPECT_NE(second, first);

    RoomSettings one_hour;
    one_hour.rotation_period_ms = 3600000;
    EXPECT_TRUE(share(alice, {kAlice, kBob}, 2000, one_hour).requests.empty())
        << "already shared, not due: nothing to send";
    EXPECT_EQ(session(), second);
    share(alice, {kAlice, kBob}, 2000 + 3600000, one_hour);
    std::string third = session();
    EXPECT_NE(third, second);

    // Bob signs in on a second device: it gets the current key, nobody else is sent anything.
    Device& bob2 = device(kBob, "BOB2");
    alice.m->receive_sync(SyncChanges{{}, {kBob}, {}, {}, {}}, 5000);
    Sharing to_new = share(alice, {kAlice, kBob}, 5000, one_hour);
    ASSERT_EQ(to_new.requests.size(), 1u);
    const auto& messages = to_new.requests[0].body.at("messages").as_object();
    ASSERT_EQ(messages.size(), 1u);
    EXPECT_EQ(messages.at(kBob).as_object().size(), 1u);
    EXPECT_TRUE(messages.at(kBob).as_object().contains("BOB2"));
    json::object c = alice.m->encrypt(kRoom, "m.call.invite", invite("c2"), 5000);
    EXPECT_EQ(c.at("session_id"), json::value(third));
    sync(bob2);
    sync(bob);
    EXPECT_TRUE(bob2.m->decrypt(kRoom, room_event(alice, c, "$a")).event);
    EXPECT_TRUE(bob.m->decrypt(kRoom, room_event(alice, c, "$a")).event);

    // The second device is gone: what follows must not be readable by it.
    server_.device_keys[kBob].erase("BOB2");
    alice.m->receive_sync(SyncChanges{{}, {kBob}, {}, {}, {}}, 6000);
    share(alice, {kAlice, kBob}, 6000, one_hour);
    json::object after = alice.m->encrypt(kRoom, "m.call.invite", invite("c3"), 6000);
    EXPECT_NE(after.at("session_id"), json::value(third));
    sync(bob2);
    sync(bob);
    EXPECT_FALSE(bob2.m->decrypt(kRoom, room_event(alice, after, "$b")).event);
    EXPECT_TRUE(bob.m->decrypt(kRoom, room_event(alice, after, "$b")).event);
}

TEST_F(E2ee, ARestartKeepsEverySessionAndTheStateIsEncryptedForItsOwnerOnly) {
    Device& alice = device(kAlice, "ALICE1");
    Device& bob = device(kBob, "BOB1");
    share(alice, {kAlice, kBob});
    json::object before = alice.m->encrypt(kRoom, "m.call.invite", invite("c1"), 1000);
    std::string identity = alice.m->identity_key();

    alice.reopen();
    EXPECT_EQ(alice.m->identity_key(), identity);
    EXPECT_TRUE(share(alice, {kAlice, kBob}).requests.empty()) << "the key was already shared";
    json::object after = alice.m->encrypt(kRoom, "m.call.hangup", {{"call_id", "c1"}}, 1000);
    EXPECT_EQ(after.at("session_id"), before.at("session_id"));
    sync(bob);
    bob.reopen();
    EXPECT_TRUE(bob.m->decrypt(kRoom, room_event(alice, before, "$1")).event);
    Decryption d = bob.m->decrypt(kRoom, room_event(alice, after, "$2"));
    ASSERT_TRUE(d.event) << d.error << " (a reused message index would read as a replay)";

    // Bob's Olm session with alice survived too: his room key reaches her without a claim.
    Sharing back = share(bob, {kAlice, kBob});
    EXPECT_TRUE(back.skipped.empty());
    sync(alice);
    json::object answer = bob.m->encrypt(kRoom, "m.call.answer", {{"call_id", "c1"}}, 1000);
    EXPECT_TRUE(alice.m->decrypt(kRoom, room_event(bob, answer, "$3")).event);

    struct stat st {};
    ASSERT_EQ(::stat(alice.file.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600);
    std::ifstream in(alice.file, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    EXPECT_EQ(bytes.find(kRoom), std::string::npos) << "nothing readable in the file";
    EXPECT_EQ(bytes.find(identity), std::string::npos);

    StateKey wrong = alice.key;
    wrong[0] ^= 1;
    EXPECT_THROW(open_olm_machine({kAlice, "ALICE1", alice.file, wrong}), StateError);
    EXPECT_THROW(open_olm_machine({kAlice, "OTHER", alice.file, alice.key}), StateError);
}

TEST_F(E2ee, OneTimeKeysAreReplenishedAndTheFallbackKeyIsUsedAndReplaced) {
    Device& bob = device(kBob, "BOB1");
    auto who = std::pair{kBob, std::string("BOB1")};
    ASSERT_EQ(server_.one_time_keys[who].size(), 50u);
    ASSERT_TRUE(server_.fallback.count(who));
    const auto& dk = server_.device_keys[kBob]["BOB1"];
    EXPECT_EQ(dk.at("keys").at("curve25519:BOB1"), json::value(bob.m->identity_key()));
    EXPECT_TRUE(dk.at("signatures").at(kBob).as_object().contains("ed25519:BOB1"));

    // Three callers claim keys: bob tops his keys back up at the next sync.
    for (int i = 0; i < 3; i++) {
        Device& caller = device("@c" + std::to_string(i) + ":example.org", "C");
        share(caller, {caller.m->user_id(), kBob});
    }
    EXPECT_EQ(server_.one_time_keys[who].size(), 47u);
    sync(bob);
    EXPECT_EQ(server_.one_time_keys[who].size(), 50u);

    // All one-time keys gone: the next caller gets the fallback key and still gets through,
    // after which bob uploads a new fallback key.
    server_.one_time_keys[who].clear();
    std::string old_fallback = server_.fallback[who].first;
    Device& late = device("@late:example.org", "L");
    share(late, {late.m->user_id(), kBob});
    EXPECT_TRUE(server_.fallback_used[who]);
    json::object c = late.m->encrypt(kRoom, "m.call.invite", invite("c9"), 1000);
    sync(bob);
    EXPECT_TRUE(bob.m->decrypt(kRoom, room_event(late, c, "$1")).event);
    sync(bob);
    EXPECT_NE(server_.fallback[who].first, old_fallback);
    EXPECT_FALSE(server_.fallback_used[who]);
}

TEST_F(E2ee, KeysThatDoNotVerifyAreNotUsed) {
    Device& alice = device(kAlice, "ALICE1");
    Device& bob = device(kBob, "BOB1");
    // The server (or someone in between) swaps bob's identity key: the signature fails.
    json::object genuine = server_.device_keys[kBob]["BOB1"];
    server_.device_keys[kBob]["BOB1"].at("keys").as_object()["curve25519:BOB1"] =
        alice.m->identity_key();
    Sharing s = share(alice, {kAlice, kBob});
    EXPECT_TRUE(s.requests.empty());
    ASSERT_FALSE(alice.problems.empty());
    EXPECT_NE(alice.problems.front().find("do not verify"), std::string::npos);

    // Genuine keys, but a one-time key signed by nobody: no Olm session, bob is skipped.
    server_.device_keys[kBob]["BOB1"] = genuine;
    alice.m->receive_sync(SyncChanges{{}, {kBob}, {}, {}, {}}, 1000);
    auto who = std::pair{kBob, std::string("BOB1")};
    for (auto& [id, k] : server_.one_time_keys[who]) k.as_object()["key"] = alice.m->identity_key();
    server_.fallback.erase(who);
    s = share(alice, {kAlice, kBob});
    ASSERT_EQ(s.skipped.size(), 1u);
    EXPECT_NE(s.skipped[0].find("BOB1"), std::string::npos);

    // A device with bob's device id but new keys, signed by themselves: a device keeps its
    // signing key for life, so alice keeps the one she knew.
    fs::create_directories(dir_ / "impostor");
    Device impostor(dir_ / "impostor", kBob, "BOB1");
    for (const auto& r : impostor.m->outgoing_requests()) server_.serve(*impostor.m, r);
    alice.problems.clear();
    alice.m->receive_sync(SyncChanges{{}, {kBob}, {}, {}, {}}, 1000);
    sync(alice);
    ASSERT_EQ(alice.problems.size(), 1u);
    EXPECT_NE(alice.problems[0].find("signing key changed"), std::string::npos)
        << alice.problems[0];
    (void)bob;
}

TEST_F(E2ee, AnOlmMessageForSomeoneElseIsIgnored) {
    Device& alice = device(kAlice, "ALICE1");
    Device& bob = device(kBob, "BOB1");
    share(alice, {kAlice, kBob});
    // The to-device message for bob, delivered by a malicious server as coming from carol.
    auto& inbox = server_.inbox[{kBob, "BOB1"}];
    ASSERT_EQ(inbox.size(), 1u);
    inbox[0].as_object()["sender"] = "@carol:example.org";
    json::object c = alice.m->encrypt(kRoom, "m.call.invite", invite("c1"), 1000);
    sync(bob);
    ASSERT_FALSE(bob.problems.empty());
    EXPECT_NE(bob.problems.front().find("not addressed right"), std::string::npos)
        << bob.problems.front();
    EXPECT_FALSE(bob.m->decrypt(kRoom, room_event(alice, c, "$1")).event);
}

}  // namespace
