#pragma once
// A small file of secrets: encrypted and authenticated (XSalsa20-Poly1305) with the state key,
// replaced atomically (a temporary file, fsync, rename), readable by its owner only.
#include "mxvoip/crypto/olm_machine.hpp"

#include <filesystem>
#include <optional>
#include <string>

namespace mxvoip::crypto {

// The plaintext, or nothing when there is no file; StateError when it cannot be opened.
std::optional<std::string> read_state(const std::filesystem::path& file, const StateKey& key);
void write_state(const std::filesystem::path& file, const StateKey& key,
                 const std::string& plaintext);

}  // namespace mxvoip::crypto
