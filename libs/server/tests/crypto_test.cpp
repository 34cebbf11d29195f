#include "mxvoip/server/crypto.hpp"

#include <gtest/gtest.h>

#include <set>

#include "mxvoip/proto/base64.hpp"

using namespace mxvoip::server;

TEST(Crypto, Sha256KnownAnswer) {
    EXPECT_EQ(sha256_hex("abc"),
              "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Crypto, HmacSha1Rfc2202) {
    // RFC 2202 test case 2.
    EXPECT_EQ(
        mxvoip::proto::base64_encode(hmac_sha1("Jefe", "what do ya want for nothing?")),
        mxvoip::proto::base64_encode(std::string(
            "\xef\xfc\xdf\x6a\xe5\xeb\x2f\xa2\xd2\x74\x16\xd5\xf1\x84\xdf\x9c\x25\x9a\x7c\x79",
            20)));
    // Test case 6: a key longer than the block is hashed first.
    EXPECT_EQ(
        mxvoip::proto::base64_encode(hmac_sha1(
            std::string(80, '\xaa'), "Test Using Larger Than Block-Size Key - Hash Key First")),
        mxvoip::proto::base64_encode(std::string(
            "\xaa\x4a\xe5\xe1\x52\x72\xd0\x0e\x95\x70\x56\x37\xce\x8a\x3b\x55\xed\x40\x21\x12",
            20)));
}

TEST(Crypto, TokensAreRandomAndUrlSafe) {
    std::set<std::string> seen;
    for (int i = 0; i < 100; ++i) {
        auto t = new_access_token();
        EXPECT_EQ(t.size(), 4u + 43u);
        EXPECT_EQ(t.find_first_not_of(
                      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", 4),
                  std::string::npos);
        seen.insert(t);
    }
    EXPECT_EQ(seen.size(), 100u);
    auto letters = random_letters(1000);
    EXPECT_EQ(letters.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"),
              std::string::npos);
    std::set<char> digits_seen;
    for (int i = 0; i < 200; ++i) {
        auto digits = random_digits(10);
        ASSERT_EQ(digits.size(), 10u);
        EXPECT_EQ(digits.find_first_not_of("0123456789"), std::string::npos);
        EXPECT_NE(digits[0], '0');
        digits_seen.insert(digits.begin(), digits.end());
    }
    EXPECT_EQ(digits_seen.size(), 10u);
}

TEST(Crypto, SecureEquals) {
    EXPECT_TRUE(secure_equals("abc", "abc"));
    EXPECT_FALSE(secure_equals("abc", "abd"));
    EXPECT_FALSE(secure_equals("abc", "abcd"));
}

TEST(Crypto, PasswordHashIsArgon2idAndVerifies) {
    auto h = hash_password("correct horse", HashCost::min);
    EXPECT_EQ(h.rfind("$argon2id$", 0), 0u);
    EXPECT_EQ(h.find("correct horse"), std::string::npos);
    EXPECT_TRUE(verify_password("correct horse", h));
    EXPECT_FALSE(verify_password("correct horsf", h));
    EXPECT_FALSE(verify_password("anything", ""));
    EXPECT_NE(hash_password("correct horse", HashCost::min), h) << "salted";
}

namespace {
std::string unhex(std::string_view hex) {
    std::string out;
    for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
        out += static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16));
    return out;
}
}  // namespace

// RFC 8032 section 7.1, test 2 (one-byte message), in Matrix's unpadded base64.
TEST(Crypto, Ed25519Rfc8032) {
    auto b64 = [](std::string_view hex) {
        std::string s = mxvoip::proto::base64_encode(unhex(hex));
        return s.substr(0, s.find('='));
    };
    const std::string key = b64("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c");
    const std::string sig =
        b64("92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f36"
            "13d0f1"
            "1d8c387b2eaeb4302aeeb00d291612bb0c00");
    const std::string message = unhex("72");
    EXPECT_TRUE(verify_ed25519(key, message, sig));
    EXPECT_FALSE(verify_ed25519(key, "s", sig));
    EXPECT_FALSE(verify_ed25519(key, message, sig.substr(1)));
    EXPECT_FALSE(verify_ed25519("not base64!", message, sig));
    EXPECT_FALSE(verify_ed25519(key.substr(4), message, sig));
}
