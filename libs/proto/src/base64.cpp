#include "mxvoip/proto/base64.hpp"

#include <array>
#include <cstdint>

namespace mxvoip::proto {
namespace {

constexpr char kStd[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
constexpr char kUrl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

std::string encode(std::string_view in, const char* alphabet, bool pad) {
    std::string out;
    out.reserve((in.size() + 2) / 3 * 4);
    std::size_t i = 0;
    auto byte = [&](std::size_t k) {
        return static_cast<std::uint32_t>(static_cast<unsigned char>(in[k]));
    };
    for (; i + 3 <= in.size(); i += 3) {
        std::uint32_t v = byte(i) << 16 | byte(i + 1) << 8 | byte(i + 2);
        out += alphabet[v >> 18 & 63];
        out += alphabet[v >> 12 & 63];
        out += alphabet[v >> 6 & 63];
        out += alphabet[v & 63];
    }
    std::size_t rest = in.size() - i;
    if (rest == 1) {
        std::uint32_t v = byte(i) << 16;
        out += alphabet[v >> 18 & 63];
        out += alphabet[v >> 12 & 63];
        if (pad) out += "==";
    } else if (rest == 2) {
        std::uint32_t v = byte(i) << 16 | byte(i + 1) << 8;
        out += alphabet[v >> 18 & 63];
        out += alphabet[v >> 12 & 63];
        out += alphabet[v >> 6 & 63];
        if (pad) out += '=';
    }
    return out;
}

constexpr std::array<std::int8_t, 256> make_decode_table() {
    std::array<std::int8_t, 256> t{};
    for (auto& v : t) v = -1;
    for (int i = 0; i < 64; ++i) {
        t[static_cast<unsigned char>(kStd[i])] = static_cast<std::int8_t>(i);
        t[static_cast<unsigned char>(kUrl[i])] = static_cast<std::int8_t>(i);
    }
    return t;
}
constexpr auto kDecode = make_decode_table();

}  // namespace

std::string base64_encode(std::string_view bytes) {
    return encode(bytes, kStd, true);
}
std::string base64url_encode(std::string_view bytes) {
    return encode(bytes, kUrl, false);
}

std::optional<std::string> base64_decode(std::string_view text) {
    while (!text.empty() && text.back() == '=') text.remove_suffix(1);
    if (text.size() % 4 == 1) return std::nullopt;
    std::string out;
    out.reserve(text.size() * 3 / 4);
    std::uint32_t acc = 0;
    int bits = 0;
    for (char c : text) {
        auto v = kDecode[static_cast<unsigned char>(c)];
        if (v < 0) return std::nullopt;
        acc = acc << 6 | static_cast<std::uint32_t>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out += static_cast<char>(acc >> bits & 0xff);
        }
    }
    return out;
}

}  // namespace mxvoip::proto
