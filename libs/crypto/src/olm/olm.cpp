#include "olm.hpp"

#include <sodium.h>

namespace mxvoip::crypto::olm {

namespace {

// libolm reads and writes through void pointers; its strings are always ASCII here.
void* data(std::string& s) {
    return s.data();
}
const void* data(std::string_view s) {
    return s.data();
}

template <typename F>
std::size_t check(std::size_t r, F last_error) {
    if (r == olm_error()) throw OlmError(std::string("libolm: ") + last_error());
    return r;
}

}  // namespace

std::string random_bytes(std::size_t n) {
    std::string out(n, '\0');
    if (n) randombytes_buf(out.data(), n);
    return out;
}

// ---- Account -----------------------------------------------------------------------------

Account Account::create() {
    Account a;
    std::string random = random_bytes(olm_create_account_random_length(a.get()));
    check(olm_create_account(a.get(), data(random), random.size()),
          [&] { return olm_account_last_error(a.get()); });
    sodium_memzero(random.data(), random.size());
    return a;
}

Account Account::unpickle(std::string_view key, std::string pickle) {
    Account a;
    check(olm_unpickle_account(a.get(), key.data(), key.size(), data(pickle), pickle.size()),
          [&] { return olm_account_last_error(a.get()); });
    return a;
}

std::string Account::pickle(std::string_view key) const {
    std::string out(olm_pickle_account_length(get()), '\0');
    out.resize(check(olm_pickle_account(get(), key.data(), key.size(), data(out), out.size()),
                     [&] { return olm_account_last_error(get()); }));
    return out;
}

std::string Account::identity_keys() const {
    std::string out(olm_account_identity_keys_length(get()), '\0');
    out.resize(check(olm_account_identity_keys(get(), data(out), out.size()),
                     [&] { return olm_account_last_error(get()); }));
    return out;
}

std::string Account::sign(std::string_view message) const {
    std::string out(olm_account_signature_length(get()), '\0');
    out.resize(check(olm_account_sign(get(), data(message), message.size(), data(out), out.size()),
                     [&] { return olm_account_last_error(get()); }));
    return out;
}

std::size_t Account::max_one_time_keys() const {
    return olm_account_max_number_of_one_time_keys(get());
}

void Account::generate_one_time_keys(std::size_t n) {
    std::string random = random_bytes(olm_account_generate_one_time_keys_random_length(get(), n));
    check(olm_account_generate_one_time_keys(get(), n, data(random), random.size()),
          [&] { return olm_account_last_error(get()); });
    sodium_memzero(random.data(), random.size());
}

std::string Account::one_time_keys() const {
    std::string out(olm_account_one_time_keys_length(get()), '\0');
    out.resize(check(olm_account_one_time_keys(get(), data(out), out.size()),
                     [&] { return olm_account_last_error(get()); }));
    return out;
}

void Account::generate_fallback_key() {
    std::string random = random_bytes(olm_account_generate_fallback_key_random_length(get()));
    check(olm_account_generate_fallback_key(get(), data(random), random.size()),
          [&] { return olm_account_last_error(get()); });
    sodium_memzero(random.data(), random.size());
}

std::string Account::unpublished_fallback_key() const {
    std::string out(olm_account_unpublished_fallback_key_length(get()), '\0');
    out.resize(check(olm_account_unpublished_fallback_key(get(), data(out), out.size()),
                     [&] { return olm_account_last_error(get()); }));
    return out;
}

void Account::mark_keys_as_published() {
    olm_account_mark_keys_as_published(get());
}

// ---- Session -----------------------------------------------------------------------------

Session Session::outbound(const Account& a, std::string_view their_identity_key,
                          std::string_view their_one_time_key) {
    Session s;
    OlmSession* p = s.obj_.get();
    std::string random = random_bytes(olm_create_outbound_session_random_length(p));
    check(olm_create_outbound_session(p, a.get(), data(their_identity_key),
                                      their_identity_key.size(), data(their_one_time_key),
                                      their_one_time_key.size(), data(random), random.size()),
          [&] { return olm_session_last_error(p); });
    sodium_memzero(random.data(), random.size());
    return s;
}

Session Session::inbound(Account& a, std::string_view their_identity_key,
                         std::string_view prekey_message) {
    Session s;
    OlmSession* p = s.obj_.get();
    std::string message(prekey_message);  // libolm decodes in place
    check(olm_create_inbound_session_from(p, a.get(), data(their_identity_key),
                                          their_identity_key.size(), data(message), message.size()),
          [&] { return olm_session_last_error(p); });
    // A session made from the fallback key has no one-time key to remove: not an error.
    olm_remove_one_time_keys(a.get(), p);
    return s;
}

Session Session::unpickle(std::string_view key, std::string pickle) {
    Session s;
    OlmSession* p = s.obj_.get();
    check(olm_unpickle_session(p, key.data(), key.size(), data(pickle), pickle.size()),
          [&] { return olm_session_last_error(p); });
    return s;
}

std::string Session::pickle(std::string_view key) const {
    OlmSession* p = obj_.get();
    std::string out(olm_pickle_session_length(p), '\0');
    out.resize(check(olm_pickle_session(p, key.data(), key.size(), data(out), out.size()),
                     [&] { return olm_session_last_error(p); }));
    return out;
}

std::string Session::id() const {
    OlmSession* p = obj_.get();
    std::string out(olm_session_id_length(p), '\0');
    out.resize(
        check(olm_session_id(p, data(out), out.size()), [&] { return olm_session_last_error(p); }));
    return out;
}

bool Session::matches_inbound(std::string_view their_identity_key,
                              std::string_view prekey_message) const {
    std::string message(prekey_message);
    std::size_t r =
        olm_matches_inbound_session_from(obj_.get(), data(their_identity_key),
                                         their_identity_key.size(), data(message), message.size());
    return r == 1;
}

std::pair<int, std::string> Session::encrypt(std::string_view plaintext) {
    OlmSession* p = obj_.get();
    auto last = [&] { return olm_session_last_error(p); };
    int type = static_cast<int>(check(olm_encrypt_message_type(p), last));
    std::string random = random_bytes(olm_encrypt_random_length(p));
    std::string out(olm_encrypt_message_length(p, plaintext.size()), '\0');
    out.resize(check(olm_encrypt(p, data(plaintext), plaintext.size(), data(random), random.size(),
                                 data(out), out.size()),
                     last));
    sodium_memzero(random.data(), random.size());
    return {type, std::move(out)};
}

std::string Session::decrypt(int type, std::string_view message) {
    OlmSession* p = obj_.get();
    auto last = [&] { return olm_session_last_error(p); };
    std::string scratch(message);  // both calls decode their input in place
    std::size_t max = check(olm_decrypt_max_plaintext_length(p, static_cast<std::size_t>(type),
                                                             data(scratch), scratch.size()),
                            last);
    scratch.assign(message);
    std::string out(max, '\0');
    out.resize(check(olm_decrypt(p, static_cast<std::size_t>(type), data(scratch), scratch.size(),
                                 data(out), out.size()),
                     last));
    return out;
}

// ---- Megolm ------------------------------------------------------------------------------

OutboundGroupSession OutboundGroupSession::create() {
    OutboundGroupSession s;
    auto* p = s.obj_.get();
    std::string random = random_bytes(olm_init_outbound_group_session_random_length(p));
    check(olm_init_outbound_group_session(p, reinterpret_cast<std::uint8_t*>(random.data()),
                                          random.size()),
          [&] { return olm_outbound_group_session_last_error(p); });
    sodium_memzero(random.data(), random.size());
    return s;
}

OutboundGroupSession OutboundGroupSession::unpickle(std::string_view key, std::string pickle) {
    OutboundGroupSession s;
    auto* p = s.obj_.get();
    check(
        olm_unpickle_outbound_group_session(p, key.data(), key.size(), data(pickle), pickle.size()),
        [&] { return olm_outbound_group_session_last_error(p); });
    return s;
}

std::string OutboundGroupSession::pickle(std::string_view key) const {
    auto* p = obj_.get();
    std::string out(olm_pickle_outbound_group_session_length(p), '\0');
    out.resize(
        check(olm_pickle_outbound_group_session(p, key.data(), key.size(), data(out), out.size()),
              [&] { return olm_outbound_group_session_last_error(p); }));
    return out;
}

std::string OutboundGroupSession::id() const {
    auto* p = obj_.get();
    std::string out(olm_outbound_group_session_id_length(p), '\0');
    out.resize(check(
        olm_outbound_group_session_id(p, reinterpret_cast<std::uint8_t*>(out.data()), out.size()),
        [&] { return olm_outbound_group_session_last_error(p); }));
    return out;
}

std::string OutboundGroupSession::session_key() const {
    auto* p = obj_.get();
    std::string out(olm_outbound_group_session_key_length(p), '\0');
    out.resize(check(
        olm_outbound_group_session_key(p, reinterpret_cast<std::uint8_t*>(out.data()), out.size()),
        [&] { return olm_outbound_group_session_last_error(p); }));
    return out;
}

std::uint32_t OutboundGroupSession::message_index() const {
    return olm_outbound_group_session_message_index(obj_.get());
}

std::string OutboundGroupSession::encrypt(std::string_view plaintext) {
    auto* p = obj_.get();
    std::string out(olm_group_encrypt_message_length(p, plaintext.size()), '\0');
    out.resize(check(olm_group_encrypt(p, reinterpret_cast<const std::uint8_t*>(plaintext.data()),
                                       plaintext.size(),
                                       reinterpret_cast<std::uint8_t*>(out.data()), out.size()),
                     [&] { return olm_outbound_group_session_last_error(p); }));
    return out;
}

InboundGroupSession InboundGroupSession::create(std::string_view session_key) {
    InboundGroupSession s;
    auto* p = s.obj_.get();
    check(olm_init_inbound_group_session(
              p, reinterpret_cast<const std::uint8_t*>(session_key.data()), session_key.size()),
          [&] { return olm_inbound_group_session_last_error(p); });
    return s;
}

InboundGroupSession InboundGroupSession::unpickle(std::string_view key, std::string pickle) {
    InboundGroupSession s;
    auto* p = s.obj_.get();
    check(
        olm_unpickle_inbound_group_session(p, key.data(), key.size(), data(pickle), pickle.size()),
        [&] { return olm_inbound_group_session_last_error(p); });
    return s;
}

std::string InboundGroupSession::pickle(std::string_view key) const {
    auto* p = obj_.get();
    std::string out(olm_pickle_inbound_group_session_length(p), '\0');
    out.resize(
        check(olm_pickle_inbound_group_session(p, key.data(), key.size(), data(out), out.size()),
              [&] { return olm_inbound_group_session_last_error(p); }));
    return out;
}

std::string InboundGroupSession::id() const {
    auto* p = obj_.get();
    std::string out(olm_inbound_group_session_id_length(p), '\0');
    out.resize(check(
        olm_inbound_group_session_id(p, reinterpret_cast<std::uint8_t*>(out.data()), out.size()),
        [&] { return olm_inbound_group_session_last_error(p); }));
    return out;
}

std::uint32_t InboundGroupSession::first_known_index() const {
    return olm_inbound_group_session_first_known_index(obj_.get());
}

std::pair<std::string, std::uint32_t> InboundGroupSession::decrypt(std::string_view message) {
    auto* p = obj_.get();
    auto last = [&] { return olm_inbound_group_session_last_error(p); };
    std::string scratch(message);  // decoded in place
    std::size_t max = check(olm_group_decrypt_max_plaintext_length(
                                p, reinterpret_cast<std::uint8_t*>(scratch.data()), scratch.size()),
                            last);
    scratch.assign(message);
    std::string out(max, '\0');
    std::uint32_t index = 0;
    out.resize(
        check(olm_group_decrypt(p, reinterpret_cast<std::uint8_t*>(scratch.data()), scratch.size(),
                                reinterpret_cast<std::uint8_t*>(out.data()), out.size(), &index),
              last));
    return {std::move(out), index};
}

bool ed25519_verify(std::string_view key, std::string_view message, std::string_view signature) {
    Object<OlmUtility, olm_utility_size, olm_utility, olm_clear_utility> u;
    std::string sig(signature);  // libolm decodes the signature in place
    return olm_ed25519_verify(u.get(), data(key), key.size(), data(message), message.size(),
                              data(sig), sig.size()) != olm_error();
}

}  // namespace mxvoip::crypto::olm
