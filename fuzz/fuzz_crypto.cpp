// What other devices and servers hand the crypto machine: to-device events, device-list
// changes, key counts, /keys/query and /keys/claim answers and room events, as one JSON
// object per input. Whatever they hold, the machine reports problems or errors and never
// crashes, and what it keeps can be read back.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "mxvoip/crypto/olm_machine.hpp"

namespace crypto = mxvoip::crypto;
namespace json = boost::json;
namespace fs = std::filesystem;

namespace {

// On tmpfs when there is one: the state is rewritten (and fsynced) after most inputs.
struct StateDir {
    fs::path path;
    StateDir() {
        fs::path base = fs::exists("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
        path = base / ("mxvoip-fuzz-crypto-" + std::to_string(::getpid()));
        fs::create_directories(path);
    }
    ~StateDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

crypto::OlmMachineOptions options() {
    static const StateDir dir;
    crypto::OlmMachineOptions o{"@alice:fuzz", "ALICE", dir.path / "state", {}};
    o.key.fill(7);
    return o;
}

std::vector<std::string> strings(const json::object& o, std::string_view key) {
    std::vector<std::string> out;
    if (const json::value* v = o.if_contains(key); v && v->is_array())
        for (const auto& s : v->get_array())
            if (s.is_string()) out.emplace_back(s.get_string());
    return out;
}

const json::object& object_or_empty(const json::object& o, std::string_view key) {
    static const json::object empty;
    const json::value* v = o.if_contains(key);
    return v && v->is_object() ? v->get_object() : empty;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static std::unique_ptr<crypto::Machine> m = crypto::open_olm_machine(options());
    boost::system::error_code ec;
    json::value v = json::parse(std::string_view(reinterpret_cast<const char*>(data), size), ec);
    if (ec || !v.is_object()) return 0;
    const json::object& in = v.get_object();

    crypto::SyncChanges c;
    if (const json::value* td = in.if_contains("to_device"); td && td->is_array())
        c.to_device = td->get_array();
    c.changed = strings(in, "changed");
    c.left = strings(in, "left");
    for (const auto& [alg, n] : object_or_empty(in, "counts"))
        if (n.is_int64()) c.one_time_key_counts[std::string(alg)] = n.as_int64();
    if (in.contains("fallback")) c.unused_fallback_key_types = strings(in, "fallback");
    m->receive_sync(c, 1000);

    std::vector<std::string> users = strings(in, "users");
    m->track_users(users);
    for (const auto& r : m->outgoing_requests())
        m->mark_sent(r.id, r.kind == crypto::RequestKind::keys_query
                               ? object_or_empty(in, "query")
                               : object_or_empty(in, "upload"));
    if (auto claim = m->claim_missing_sessions(users, 1000))
        m->mark_sent(claim->id, object_or_empty(in, "claim"));
    std::string room = "!room:fuzz";
    if (const json::value* r = in.if_contains("room"); r && r->is_string()) room = r->get_string();
    crypto::Sharing sharing = m->share_room_key(room, users, {}, 1000);
    for (const auto& r : sharing.requests) m->mark_failed(r.id);
    if (const json::value* ev = in.if_contains("event"); ev && ev->is_object()) {
        crypto::Decryption d = m->decrypt(room, ev->get_object());
        if (!d.event && d.error.empty()) std::abort();
    }
    return 0;
}
