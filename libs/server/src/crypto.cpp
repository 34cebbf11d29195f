#include "mxvoip/server/crypto.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sodium.h>

#include <cstdlib>
#include <cstring>
#include <initializer_list>
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
const EVP_MD* sha256_md() {
    static const EVP_MD* md = fetched("SHA256");
    return md;
}
const EVP_MD* sha1_md() {
    static const EVP_MD* md = fetched("SHA1");
    return md;
}

struct DigestCtx {
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    ~DigestCtx() { EVP_MD_CTX_free(ctx); }
};

// One digest over the concatenation of `parts`, with a per-thread context.
unsigned digest(const EVP_MD* md, std::initializer_list<std::string_view> parts,
                unsigned char* out) {
    thread_local DigestCtx c;
    unsigned len = 0;
    if (!c.ctx || EVP_DigestInit_ex(c.ctx, md, nullptr) != 1) std::abort();
    for (auto p : parts) EVP_DigestUpdate(c.ctx, p.data(), p.size());
    EVP_DigestFinal_ex(c.ctx, out, &len);
    return len;
}

}  // namespace

std::string sha256_hex(std::string_view data) {
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned len = digest(sha256_md(), {data}, d);
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    out.reserve(len * 2);
    for (unsigned i = 0; i < len; ++i) {
        out += kHex[d[i] >> 4];
        out += kHex[d[i] & 15];
    }
    return out;
}

// RFC 2104 over the pre-fetched SHA-1.
std::string hmac_sha1(std::string_view key, std::string_view message) {
    constexpr std::size_t kBlock = 64;
    unsigned char k[kBlock] = {};
    if (key.size() > kBlock) {
        digest(sha1_md(), {key}, k);
    } else {
        std::memcpy(k, key.data(), key.size());
    }
    unsigned char ipad[kBlock], opad[kBlock];
    for (std::size_t i = 0; i < kBlock; ++i) {
        ipad[i] = k[i] ^ 0x36;
        opad[i] = k[i] ^ 0x5c;
    }
    unsigned char inner[EVP_MAX_MD_SIZE];
    unsigned inner_len = digest(
        sha1_md(), {std::string_view(reinterpret_cast<char*>(ipad), kBlock), message}, inner);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned len = digest(sha1_md(),
                          {std::string_view(reinterpret_cast<char*>(opad), kBlock),
                           std::string_view(reinterpret_cast<char*>(inner), inner_len)},
                          mac);
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

}  // namespace mxvoip::server
