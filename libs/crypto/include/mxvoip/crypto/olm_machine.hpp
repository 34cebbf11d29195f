#pragma once
// The Machine on libolm 3.2 (Debian's libolm-dev). libolm is deprecated upstream and has
// known timing side channels (CVE-2024-45191, -45192, -45193); it is used because it is the
// Olm/Megolm implementation this platform packages. Nothing outside this file and src/olm/
// names it, so vodozemac can replace it behind the same Machine interface.
#include "mxvoip/crypto/machine.hpp"

#include <array>
#include <filesystem>
#include <stdexcept>

namespace mxvoip::crypto {

// The state cannot be read: damaged, encrypted with another key, or another device's.
struct StateError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

using StateKey = std::array<unsigned char, 32>;

struct OlmMachineOptions {
    std::string user_id;
    std::string device_id;
    // Every key and session, pickled and encrypted with `key`; rewritten (mode 0600) before
    // any change leaves the machine: a restart keeps every session.
    std::filesystem::path state_file;
    StateKey key{};
};

// Opens the device's state, or creates a new identity when there is none.
std::unique_ptr<Machine> open_olm_machine(const OlmMachineOptions& options);

// The key in `file` (32 random bytes, mode 0600), created on first use.
StateKey load_or_create_state_key(const std::filesystem::path& file);

}  // namespace mxvoip::crypto
