#include "string_scan.hpp"

#include <array>
#include <atomic>
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MXVOIP_X86_KERNELS 1
#endif

namespace mxvoip::proto::detail {
namespace {

enum class Kernels { scalar, sse2, avx512 };

Kernels best_kernels() {
#if defined(MXVOIP_X86_KERNELS)
    if (__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vbmi") &&
        __builtin_cpu_supports("avx512vbmi2"))
        return Kernels::avx512;
    return Kernels::sse2;
#else
    return Kernels::scalar;
#endif
}

std::atomic<Kernels>& kernels() {
    static std::atomic<Kernels> k{best_kernels()};
    return k;
}

constexpr auto kShortEscape = [] {
    std::array<bool, 256> t{};
    for (unsigned char c : {'"', '\\', '/', 'b', 'f', 'n', 'r', 't'}) t[c] = true;
    return t;
}();

constexpr auto kUnescaped = [] {
    std::array<char, 256> t{};
    for (int c = 0; c < 256; ++c) t[c] = static_cast<char>(c);
    t['n'] = '\n';
    t['r'] = '\r';
    t['t'] = '\t';
    t['b'] = '\b';
    t['f'] = '\f';
    return t;
}();

char unescaped(char c) {
    return kUnescaped[static_cast<unsigned char>(c)];
}

// What one 64-byte block says, from its bit masks (bit i = byte i): the quotes, backslashes,
// bytes the quick path cannot take (< 0x20 or >= 0x80) and the letters n and r. `carry` is 1
// when the previous block ended in a backslash, whose escaped byte is this block's first.
// Blocks always advance by 64 and carry the escape over: the next block's load never waits
// for this one's masks.
struct Block {
    bool hard = false;
    bool escapes = false;
    int quote = 64;  // the closing quote, 64 if none
};

inline Block settle(std::uint64_t quote, std::uint64_t backslash, std::uint64_t special,
                    std::uint64_t line_end, const char* p, std::uint64_t& carry) {
    Block r;
    std::uint64_t escaped = (backslash << 1) | carry;
    if (backslash & escaped) return {true};  // "\\\\": escaped backslashes
    std::uint64_t real_quote = quote & ~escaped;
    std::uint64_t inside = real_quote ? (real_quote & (0 - real_quote)) - 1 : ~0ull;
    if (special & inside) return {true};
    // SDPs escape little but \r and \n: the other escapes are checked one by one.
    for (std::uint64_t e = escaped & inside & ~line_end; e; e &= e - 1)
        if (!kShortEscape[static_cast<unsigned char>(p[__builtin_ctzll(e)])]) return {true};
    r.escapes = ((backslash | carry) & inside) != 0;
    if (real_quote) r.quote = __builtin_ctzll(real_quote);
    carry = backslash >> 63;
    return r;
}

// Folds one block's result into the scan; false when the scan stops here. A scan that stops
// on a hard block right after a block ending in a backslash backs up to that backslash, so
// the byte-by-byte path starts outside any escape.
inline bool advance(const Block& b, const char*& p, std::uint64_t carry, StringScan& s) {
    if (b.hard) {
        if (carry) --p;
        s.hard = true;
        return false;
    }
    s.escapes |= b.escapes;
    if (b.quote < 64) {
        p += b.quote;
        s.closed = true;
        return false;
    }
    p += 64;
    return true;
}

char* unescape_scalar(const char* p, const char* end, char* o) {
    while (p < end) {
        if (*p == '\\') {
            *o++ = unescaped(p[1]);
            p += 2;
        } else {
            *o++ = *p++;
        }
    }
    return o;
}

#if defined(MXVOIP_X86_KERNELS)

// ---- SSE2: four 16-byte compares per mask ------------------------------------------------

template <typename Compare>
std::uint64_t mask64(const __m128i (&c)[4], Compare compare) {
    auto m = [&](int i) {
        return static_cast<std::uint64_t>(static_cast<unsigned>(_mm_movemask_epi8(compare(c[i]))));
    };
    return m(0) | (m(1) << 16) | (m(2) << 32) | (m(3) << 48);
}

StringScan scan_sse2(const char* p, const char* end) {
    const __m128i quote = _mm_set1_epi8('"');
    const __m128i backslash = _mm_set1_epi8('\\');
    const __m128i space = _mm_set1_epi8(0x20);
    const __m128i n = _mm_set1_epi8('n');
    const __m128i r = _mm_set1_epi8('r');
    StringScan s;
    std::uint64_t carry = 0;
    while (end - p >= 64) {
        std::uint64_t carry_in = carry;
        __m128i c[4];
        for (int i = 0; i < 4; ++i)
            c[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * i));
        Block b = settle(mask64(c, [&](__m128i v) { return _mm_cmpeq_epi8(v, quote); }),
                         mask64(c, [&](__m128i v) { return _mm_cmpeq_epi8(v, backslash); }),
                         // A signed compare: < 0x20 and >= 0x80 at once.
                         mask64(c, [&](__m128i v) { return _mm_cmplt_epi8(v, space); }),
                         mask64(c,
                                [&](__m128i v) {
                                    return _mm_or_si128(_mm_cmpeq_epi8(v, n), _mm_cmpeq_epi8(v, r));
                                }),
                         p, carry);
        if (!advance(b, p, carry_in, s)) break;
    }
    if (carry && !s.hard && !s.closed) --p;  // leave the last escape whole to the caller
    s.at = p;
    return s;
}

// Unescaping only shrinks, so the output never overtakes the input: wherever 16 input bytes
// remain, 16 output bytes fit.
char* unescape_sse2(const char* p, const char* end, char* o) {
    const __m128i backslash = _mm_set1_epi8('\\');
    while (end - p >= 16) {
        __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o), c);
        int mask = _mm_movemask_epi8(_mm_cmpeq_epi8(c, backslash));
        if (mask == 0) {
            p += 16;
            o += 16;
            continue;
        }
        int k = __builtin_ctz(static_cast<unsigned>(mask));
        p += k;
        o += k;
        *o++ = unescaped(p[1]);
        p += 2;
    }
    return unescape_scalar(p, end, o);
}

// ---- AVX-512: one compare per mask; VBMI2 compresses the backslashes out ------------------

#define MXVOIP_AVX512 __attribute__((target("avx512f,avx512bw,avx512vbmi,avx512vbmi2")))

// The block loop is written out again rather than shared with scan_sse2 through a template:
// a shared, always-inlined loop with a target-attributed mask functor measured ~12 % slower
// here (BM_Invite in a side-by-side run), and this loop is the hot one.
MXVOIP_AVX512 StringScan scan_avx512(const char* p, const char* end) {
    const __m512i quote = _mm512_set1_epi8('"');
    const __m512i backslash = _mm512_set1_epi8('\\');
    const __m512i space = _mm512_set1_epi8(0x20);
    const __m512i n = _mm512_set1_epi8('n');
    const __m512i r = _mm512_set1_epi8('r');
    StringScan s;
    std::uint64_t carry = 0;
    while (end - p >= 64) {
        std::uint64_t carry_in = carry;
        __m512i c = _mm512_loadu_si512(p);
        Block b = settle(_mm512_cmpeq_epi8_mask(c, quote), _mm512_cmpeq_epi8_mask(c, backslash),
                         _mm512_cmplt_epi8_mask(c, space),
                         _mm512_cmpeq_epi8_mask(c, n) | _mm512_cmpeq_epi8_mask(c, r), p, carry);
        if (!advance(b, p, carry_in, s)) break;
    }
    if (carry && !s.hard && !s.closed) --p;  // leave the last escape whole to the caller
    s.at = p;
    return s;
}

MXVOIP_AVX512 char* unescape_avx512(const char* p, const char* end, char* o) {
    const __m512i backslash = _mm512_set1_epi8('\\');
    // What each escaped ASCII byte stands for, as one 128-byte table for a two-register permute.
    const __m512i low = _mm512_loadu_si512(kUnescaped.data());
    const __m512i high = _mm512_loadu_si512(kUnescaped.data() + 64);
    while (end - p >= 64) {
        __m512i c = _mm512_loadu_si512(p);
        std::uint64_t back = _mm512_cmpeq_epi8_mask(c, backslash);
        if (back == 0) {
            _mm512_storeu_si512(o, c);
            p += 64;
            o += 64;
            continue;
        }
        if (back & (back << 1)) {
            // Escaped backslashes: this block one by one (it may end one byte into the next).
            const char* stop = p + 64;
            while (p < stop) {
                if (*p == '\\') {
                    *o++ = unescaped(p[1]);
                    p += 2;
                } else {
                    *o++ = *p++;
                }
            }
            continue;
        }
        // A backslash in the last byte starts the next block instead.
        int take = 64 - static_cast<int>(back >> 63);
        std::uint64_t keep = ~back & (~0ull >> (64 - take));
        // Escaped bytes are ASCII (checked when indexing): each is its own 7-bit table index.
        c = _mm512_mask_mov_epi8(c, back << 1, _mm512_permutex2var_epi8(low, c, high));
        _mm512_storeu_si512(o, _mm512_maskz_compress_epi8(keep, c));
        p += take;
        o += __builtin_popcountll(keep);
    }
    return unescape_scalar(p, end, o);
}

#endif  // MXVOIP_X86_KERNELS

}  // namespace

bool is_short_escape(char c) {
    return kShortEscape[static_cast<unsigned char>(c)];
}

StringScan scan_string_blocks(const char* p, const char* end) {
    switch (kernels().load(std::memory_order_relaxed)) {
#if defined(MXVOIP_X86_KERNELS)
        case Kernels::avx512:
            return scan_avx512(p, end);
        case Kernels::sse2:
            return scan_sse2(p, end);
#endif
        default:
            return StringScan{p};
    }
}

char* unescape_short(const char* p, const char* end, char* out) {
    switch (kernels().load(std::memory_order_relaxed)) {
#if defined(MXVOIP_X86_KERNELS)
        case Kernels::avx512:
            return unescape_avx512(p, end, out);
        case Kernels::sse2:
            return unescape_sse2(p, end, out);
#endif
        default:
            return unescape_scalar(p, end, out);
    }
}

std::string_view string_kernels() {
    switch (kernels().load()) {
        case Kernels::avx512:
            return "avx512";
        case Kernels::sse2:
            return "sse2";
        default:
            return "scalar";
    }
}

bool use_string_kernels(std::string_view name) {
    Kernels best = best_kernels();
    Kernels want;
    if (name == "avx512")
        want = Kernels::avx512;
    else if (name == "sse2")
        want = Kernels::sse2;
    else if (name == "scalar")
        want = Kernels::scalar;
    else
        return false;
    if (static_cast<int>(want) > static_cast<int>(best)) return false;
    kernels().store(want);
    return true;
}

}  // namespace mxvoip::proto::detail
