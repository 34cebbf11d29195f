#include "mxvoip/server/crypto.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sodium.h>

#include <cstdlib>
#include <stdexcept>

#include "mxvoip/proto/base64.hpp"

namespace mxvoip::server {

std::string random_bytes(std::size_t n) {
    std::string out(n, '\0');
    if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1)
        std::abort();
    return out;
}

std::string random_letters(std::size_t n) {
    static constexpr char kLetters[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    std::string out;
    out.reserve(n);
    // Rejection sampling keeps the distribution uniform over 52 letters.
    while (out.size() < n) {
        for (unsigned char c : random_bytes(n)) {
            if (c < 208 && out.size() < n) out += kLetters[c % 52];
        }
    }
    return out;
}

std::string random_digits(std::size_t n) {
    std::string out;
    out.reserve(n);
    // Rejection sampling keeps the distribution uniform over 10 digits.
    while (out.size() < n)
        for (unsigned char c : random_bytes(n))
            if (c < 250 && out.size() < n && !(out.empty() && c % 10 == 0))
                out += char('0' + c % 10);
    return out;
}

std::string new_access_token() {
    return "mxv_" + proto::base64url_encode(random_bytes(32));
}

namespace {

// OpenSSL 3 looks algorithms up by name on every implicit use (a lock and a hash lookup per
// call, ~12 % of a /voip/turnServer request): fetch them once.
const EVP_MD* fetched(const char* name) {
    EVP_MD* md = EVP_MD_fetch(nullptr, name, nullptr);
    if (!md) std::abort();
    return md;
}

}  // namespace

std::string sha256_hex(std::string_view data) {
    static const EVP_MD* md = fetched("SHA256");
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    if (EVP_Digest(data.data(), data.size(), d, &len, md, nullptr) != 1) std::abort();
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    out.reserve(len * 2);
    for (unsigned i = 0; i < len; ++i) {
        out += kHex[d[i] >> 4];
        out += kHex[d[i] & 15];
    }
    return out;
}

std::string hmac_sha1(std::string_view key, std::string_view message) {
    static const EVP_MD* md = fetched("SHA1");
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    if (!HMAC(md, key.data(), static_cast<int>(key.size()),
              reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac, &len))
        std::abort();
    return std::string(reinterpret_cast<char*>(mac), len);
}

bool secure_equals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

HashCost parse_hash_cost(std::string_view name) {
    if (name == "min") return HashCost::min;
    if (name == "moderate") return HashCost::moderate;
    return HashCost::interactive;
}

std::string hash_password(std::string_view password, HashCost cost) {
    static const bool ready = sodium_init() >= 0;
    if (!ready) throw std::runtime_error("libsodium failed to initialise");
    unsigned long long ops = crypto_pwhash_OPSLIMIT_INTERACTIVE;
    std::size_t mem = crypto_pwhash_MEMLIMIT_INTERACTIVE;
    if (cost == HashCost::min) {
        ops = crypto_pwhash_OPSLIMIT_MIN;
        mem = crypto_pwhash_MEMLIMIT_MIN;
    } else if (cost == HashCost::moderate) {
        ops = crypto_pwhash_OPSLIMIT_MODERATE;
        mem = crypto_pwhash_MEMLIMIT_MODERATE;
    }
    char out[crypto_pwhash_STRBYTES];
    if (crypto_pwhash_str_alg(out, password.data(), password.size(), ops, mem,
                              crypto_pwhash_ALG_ARGON2ID13) != 0)
        throw std::runtime_error("out of memory while hashing a password");
    return out;
}

bool verify_password(std::string_view password, const std::string& stored_hash) {
    if (stored_hash.empty()) return false;
    return crypto_pwhash_str_verify(stored_hash.c_str(), password.data(), password.size()) == 0;
}

bool verify_ed25519(std::string_view public_key, std::string_view message,
                    std::string_view signature) {
    static const bool ready = sodium_init() >= 0;
    if (!ready) throw std::runtime_error("libsodium failed to initialise");
    auto key = proto::base64_decode(public_key);
    auto sig = proto::base64_decode(signature);
    if (!key || key->size() != crypto_sign_PUBLICKEYBYTES || !sig ||
        sig->size() != crypto_sign_BYTES)
        return false;
    return crypto_sign_verify_detached(reinterpret_cast<const unsigned char*>(sig->data()),
                                       reinterpret_cast<const unsigned char*>(message.data()),
                                       message.size(),
                                       reinterpret_cast<const unsigned char*>(key->data())) == 0;
}

}  // namespace mxvoip::server
