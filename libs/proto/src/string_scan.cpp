#include "string_scan.hpp"

#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>

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

// What one 64-byte block says, from its bit masks (bit i = byte i): the quotes, backslashes,
// bytes the quick path cannot take (< 0x20 or >= 0x80) and the letters n and r. `carry` is 1
// when the previous block ended in a backslash, whose escaped byte is this block's first.
// Blocks always advance by 64 and carry the escape over: the next block's load never waits
// for this one's output.
struct Block {
    bool hard = false;
    int end = 64;                 // the closing quote, 64 if none
    std::uint64_t escaped = 0;    // bytes inside the string that a backslash escapes
    std::uint64_t backslash = 0;  // backslashes inside the string (not written out)
};

inline Block settle(std::uint64_t quote, std::uint64_t backslash, std::uint64_t special,
                    std::uint64_t line_end, const char* p, std::uint64_t& carry) {
    std::uint64_t escaped = (backslash << 1) | carry;
    // An SDP's block: the string goes on, nothing to check one by one, only \r and \n
    // escaped. One test settles it.
    if (((backslash & escaped) | (quote & ~escaped) | special | (escaped & ~line_end)) == 0) {
        carry = backslash >> 63;
        return {false, 64, escaped, backslash};
    }
    if (backslash & escaped) return {true};  // "\\\\": escaped backslashes
    std::uint64_t real_quote = quote & ~escaped;
    std::uint64_t inside = real_quote ? (real_quote & (0 - real_quote)) - 1 : ~0ull;
    if (special & inside) return {true};
    // SDPs escape little but \r and \n: the other escapes are checked one by one.
    for (std::uint64_t e = escaped & inside & ~line_end; e; e &= e - 1)
        if (!kShortEscape[static_cast<unsigned char>(p[__builtin_ctzll(e)])]) return {true};
    Block r;
    r.escaped = escaped & inside;
    r.backslash = backslash & inside;
    if (real_quote) r.end = __builtin_ctzll(real_quote);
    carry = backslash >> 63;
    return r;
}

// Folds one block into the read once its bytes are written; false when the read stops here.
// A read that stops on a hard block right after a block ending in a backslash backs up to
// that backslash (not written out), so the byte-by-byte path starts outside any escape.
inline bool advance(const Block& b, const char*& p, std::uint64_t carry_in, StringRead& s) {
    if (b.hard) {
        if (carry_in) --p;
        s.hard = true;
        return false;
    }
    if (b.end < 64) {
        p += b.end;
        s.closed = true;
        return false;
    }
    p += 64;
    return true;
}

// After the last block: one that ended in a backslash leaves that escape whole to the caller.
inline StringRead finish(StringRead s, const char* p, char* o, std::uint64_t carry) {
    if (carry && !s.hard && !s.closed) --p;
    s.at = p;
    s.out = o;
    return s;
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

// A settled block's bytes without its backslashes, escaped bytes unescaped: the runs between
// backslashes are copied whole.
char* write_block(const char* p, const Block& b, char* o) {
    int start = 0;
    if (b.escaped & 1 && !(b.backslash & 1)) {  // escaped by the previous block's last byte
        *o++ = unescaped(p[0]);
        start = 1;
    }
    for (std::uint64_t m = b.backslash; m; m &= m - 1) {
        int at = __builtin_ctzll(m);
        std::memcpy(o, p + start, static_cast<std::size_t>(at - start));
        o += at - start;
        if (at + 1 < b.end) *o++ = unescaped(p[at + 1]);
        start = at + 2;
    }
    if (start < b.end) {
        std::memcpy(o, p + start, static_cast<std::size_t>(b.end - start));
        o += b.end - start;
    }
    return o;
}

StringRead read_sse2(const char* p, const char* end, char* o) {
    const __m128i quote = _mm_set1_epi8('"');
    const __m128i backslash = _mm_set1_epi8('\\');
    const __m128i space = _mm_set1_epi8(0x20);
    const __m128i n = _mm_set1_epi8('n');
    const __m128i r = _mm_set1_epi8('r');
    StringRead s;
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
        if (!b.hard) {
            if (b.escaped == 0 && b.backslash == 0) {
                for (int i = 0; i < 4; ++i)
                    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 16 * i), c[i]);
                o += b.end;
            } else {
                o = write_block(p, b, o);
            }
        }
        if (!advance(b, p, carry_in, s)) break;
    }
    return finish(s, p, o, carry);
}

// ---- AVX-512: one compare per mask; VBMI2 compresses the backslashes out ------------------

#define MXVOIP_AVX512 __attribute__((target("avx512f,avx512bw,avx512vbmi,avx512vbmi2")))

// The block loop is written out again rather than shared with read_sse2 through a template:
// a shared, always-inlined loop with a target-attributed mask functor measured ~12 % slower
// here, and this loop is the hot one.
MXVOIP_AVX512 StringRead read_avx512(const char* p, const char* end, char* o) {
    const __m512i quote = _mm512_set1_epi8('"');
    const __m512i backslash = _mm512_set1_epi8('\\');
    const __m512i space = _mm512_set1_epi8(0x20);
    const __m512i n = _mm512_set1_epi8('n');
    const __m512i r = _mm512_set1_epi8('r');
    // What each escaped ASCII byte stands for, as one 128-byte table for a two-register permute.
    const __m512i low = _mm512_loadu_si512(kUnescaped.data());
    const __m512i high = _mm512_loadu_si512(kUnescaped.data() + 64);
    StringRead s;
    std::uint64_t carry = 0;
    while (end - p >= 64) {
        std::uint64_t carry_in = carry;
        // Text off the wire is often not in cache yet: ask for the block 512 bytes on now.
        _mm_prefetch(p + 512, _MM_HINT_T0);
        __m512i c = _mm512_loadu_si512(p);
        std::uint64_t bs = _mm512_cmpeq_epi8_mask(c, backslash);
        std::uint64_t q = _mm512_cmpeq_epi8_mask(c, quote);
        std::uint64_t special = _mm512_cmplt_epi8_mask(c, space);
        std::uint64_t line_end = _mm512_cmpeq_epi8_mask(c, n) | _mm512_cmpeq_epi8_mask(c, r);
        Block b = settle(q, bs, special, line_end, p, carry);
        if (!b.hard) {
            // Escaped bytes are ASCII (checked above): each is its own 7-bit table index.
            __m512i t = _mm512_mask_mov_epi8(c, b.escaped, _mm512_permutex2var_epi8(low, c, high));
            std::uint64_t keep = ~b.backslash & (b.end == 64 ? ~0ull : (1ull << b.end) - 1);
            _mm512_storeu_si512(o, _mm512_maskz_compress_epi8(keep, t));
            o += __builtin_popcountll(keep);
        }
        if (!advance(b, p, carry_in, s)) break;
    }
    return finish(s, p, o, carry);
}

#endif  // MXVOIP_X86_KERNELS

}  // namespace

bool is_short_escape(char c) {
    return kShortEscape[static_cast<unsigned char>(c)];
}

char unescaped(char c) {
    return kUnescaped[static_cast<unsigned char>(c)];
}

StringRead read_string_blocks(const char* p, const char* end, char* out) {
    switch (kernels().load(std::memory_order_relaxed)) {
#if defined(MXVOIP_X86_KERNELS)
        case Kernels::avx512:
            return read_avx512(p, end, out);
        case Kernels::sse2:
            return read_sse2(p, end, out);
#endif
        default:
            return StringRead{p, out};
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
