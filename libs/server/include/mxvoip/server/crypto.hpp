#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace mxvoip::server {

// Cryptographically random bytes (OpenSSL RAND_bytes); aborts if the RNG fails.
std::string random_bytes(std::size_t n);
// Random string over [A-Za-z] (room id localparts, device ids).
std::string random_letters(std::size_t n);
// Random decimal digits, the first not 0 (generated user id localparts).
std::string random_digits(std::size_t n);
// 256-bit random access token, url-safe text.
std::string new_access_token();
// Lower-case hex SHA-256: how access tokens are stored and looked up.
std::string sha256_hex(std::string_view data);
// Raw HMAC-SHA1 (20 bytes).
std::string hmac_sha1(std::string_view key, std::string_view message);
// Constant-time equality for secrets of equal length (false if lengths differ).
bool secure_equals(std::string_view a, std::string_view b);

enum class HashCost { min, interactive, moderate };
HashCost parse_hash_cost(std::string_view name);
// Argon2id in libsodium's self-describing string format. Slow by design: call off the I/O threads.
std::string hash_password(std::string_view password, HashCost cost);
bool verify_password(std::string_view password, const std::string& stored_hash);

// Whether `signature` is the Ed25519 signature of `message` by `public_key` (both unpadded
// base64, as Matrix writes them).
bool verify_ed25519(std::string_view public_key, std::string_view message,
                    std::string_view signature);

}  // namespace mxvoip::server
