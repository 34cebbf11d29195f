#pragma once
// Owning wrappers for libolm's objects: each lives in a buffer of its own size, is wiped when
// destroyed, and turns libolm's error returns into exceptions with libolm's reason.
#include <olm/inbound_group_session.h>
#include <olm/olm.h>
#include <olm/outbound_group_session.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

namespace mxvoip::crypto::olm {

struct OlmError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

std::string random_bytes(std::size_t n);

template <typename T, std::size_t (*Size)(), T* (*Init)(void*), std::size_t (*Clear)(T*)>
class Object {
  public:
    Object() : mem_(new std::byte[Size()]), ptr_(Init(mem_.get())) {}
    ~Object() {
        if (ptr_) Clear(ptr_);
    }
    Object(Object&& o) noexcept : mem_(std::move(o.mem_)), ptr_(o.ptr_) { o.ptr_ = nullptr; }
    Object& operator=(Object&& o) noexcept {
        if (this != &o) {
            if (ptr_) Clear(ptr_);
            mem_ = std::move(o.mem_);
            ptr_ = o.ptr_;
            o.ptr_ = nullptr;
        }
        return *this;
    }
    T* get() const { return ptr_; }

  private:
    std::unique_ptr<std::byte[]> mem_;
    T* ptr_;
};

class Account {
  public:
    static Account create();
    static Account unpickle(std::string_view key, std::string pickle);
    std::string pickle(std::string_view key) const;

    std::string identity_keys() const;  // {"curve25519": ..., "ed25519": ...}
    std::string sign(std::string_view message) const;
    std::size_t max_one_time_keys() const;
    void generate_one_time_keys(std::size_t n);
    std::string one_time_keys() const;  // {"curve25519": {id: key}}, unpublished only
    void generate_fallback_key();
    std::string unpublished_fallback_key() const;  // {"curve25519": {id: key}}, maybe empty
    void mark_keys_as_published();
    OlmAccount* get() const { return obj_.get(); }

  private:
    Object<OlmAccount, olm_account_size, olm_account, olm_clear_account> obj_;
};

class Session {
  public:
    static Session outbound(const Account& a, std::string_view their_identity_key,
                            std::string_view their_one_time_key);
    // From a pre-key message; the one-time key it used is removed from the account.
    static Session inbound(Account& a, std::string_view their_identity_key,
                           std::string_view prekey_message);
    static Session unpickle(std::string_view key, std::string pickle);
    std::string pickle(std::string_view key) const;

    std::string id() const;
    bool matches_inbound(std::string_view their_identity_key,
                         std::string_view prekey_message) const;
    // Returns (type, body): 0 for a pre-key message, 1 for a normal one.
    std::pair<int, std::string> encrypt(std::string_view plaintext);
    // Throws on a message this session cannot decrypt.
    std::string decrypt(int type, std::string_view message);

  private:
    Object<OlmSession, olm_session_size, olm_session, olm_clear_session> obj_;
};

class OutboundGroupSession {
  public:
    static OutboundGroupSession create();
    static OutboundGroupSession unpickle(std::string_view key, std::string pickle);
    std::string pickle(std::string_view key) const;
    std::string id() const;
    std::string session_key() const;  // at the current index
    std::uint32_t message_index() const;
    std::string encrypt(std::string_view plaintext);

  private:
    Object<OlmOutboundGroupSession, olm_outbound_group_session_size, olm_outbound_group_session,
           olm_clear_outbound_group_session>
        obj_;
};

class InboundGroupSession {
  public:
    static InboundGroupSession create(std::string_view session_key);
    static InboundGroupSession unpickle(std::string_view key, std::string pickle);
    std::string pickle(std::string_view key) const;
    std::string id() const;
    std::uint32_t first_known_index() const;
    // Returns (plaintext, message index); throws when it cannot decrypt.
    std::pair<std::string, std::uint32_t> decrypt(std::string_view message);

  private:
    Object<OlmInboundGroupSession, olm_inbound_group_session_size, olm_inbound_group_session,
           olm_clear_inbound_group_session>
        obj_;
};

bool ed25519_verify(std::string_view key, std::string_view message, std::string_view signature);

}  // namespace mxvoip::crypto::olm
