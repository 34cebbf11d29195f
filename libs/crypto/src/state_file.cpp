#include "state_file.hpp"

#include <fcntl.h>
#include <sodium.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace mxvoip::crypto {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kMagic = "mxvoip-crypto-1\n";

void init_sodium() {
    if (sodium_init() < 0) throw std::runtime_error("libsodium cannot start");
}

std::optional<std::string> read_file(const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    if (!in) {
        if (!fs::exists(file)) return std::nullopt;
        throw StateError("cannot read " + file.string() + ": " + std::strerror(errno));
    }
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

// Writes `bytes` to `file` so that a crash leaves either the old file or the new one.
void replace_file(const fs::path& file, std::string_view bytes) {
    fs::create_directories(file.parent_path().empty() ? "." : file.parent_path());
    fs::path tmp = file;
    tmp += ".tmp";
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        throw std::runtime_error("cannot write " + tmp.string() + ": " + std::strerror(errno));
    std::size_t done = 0;
    while (done < bytes.size()) {
        ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int e = errno;
            ::close(fd);
            throw std::runtime_error("cannot write " + tmp.string() + ": " + std::strerror(e));
        }
        done += static_cast<std::size_t>(n);
    }
    if (::fsync(fd) != 0 || ::close(fd) != 0)
        throw std::runtime_error("cannot write " + tmp.string() + ": " + std::strerror(errno));
    fs::rename(tmp, file);
    // The rename itself is durable once the directory is.
    int dir = ::open(file.parent_path().empty() ? "." : file.parent_path().c_str(),
                     O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0) {
        ::fsync(dir);
        ::close(dir);
    }
}

}  // namespace

std::optional<std::string> read_state(const fs::path& file, const StateKey& key) {
    init_sodium();
    std::optional<std::string> bytes = read_file(file);
    if (!bytes) return std::nullopt;
    const std::size_t header = kMagic.size() + crypto_secretbox_NONCEBYTES;
    if (bytes->size() < header + crypto_secretbox_MACBYTES || !bytes->starts_with(kMagic))
        throw StateError(file.string() + " is not mxvoip crypto state");
    const auto* nonce = reinterpret_cast<const unsigned char*>(bytes->data() + kMagic.size());
    const auto* box = reinterpret_cast<const unsigned char*>(bytes->data() + header);
    std::size_t box_len = bytes->size() - header;
    std::string plain(box_len - crypto_secretbox_MACBYTES, '\0');
    if (crypto_secretbox_open_easy(reinterpret_cast<unsigned char*>(plain.data()), box, box_len,
                                   nonce, key.data()) != 0)
        throw StateError(file.string() + " cannot be decrypted: damaged, or another key's");
    return plain;
}

void write_state(const fs::path& file, const StateKey& key, const std::string& plaintext) {
    init_sodium();
    std::string out(kMagic);
    out.resize(kMagic.size() + crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES +
               plaintext.size());
    auto* nonce = reinterpret_cast<unsigned char*>(out.data() + kMagic.size());
    randombytes_buf(nonce, crypto_secretbox_NONCEBYTES);
    crypto_secretbox_easy(nonce + crypto_secretbox_NONCEBYTES,
                          reinterpret_cast<const unsigned char*>(plaintext.data()),
                          plaintext.size(), nonce, key.data());
    replace_file(file, out);
}

StateKey load_or_create_state_key(const fs::path& file) {
    init_sodium();
    StateKey key{};
    if (std::optional<std::string> bytes = read_file(file)) {
        if (bytes->size() != key.size())
            throw StateError(file.string() + " is not a crypto state key (32 bytes)");
        std::memcpy(key.data(), bytes->data(), key.size());
        sodium_memzero(bytes->data(), bytes->size());
        return key;
    }
    randombytes_buf(key.data(), key.size());
    replace_file(file, std::string_view(reinterpret_cast<const char*>(key.data()), key.size()));
    return key;
}

}  // namespace mxvoip::crypto
