#pragma once

#include <string_view>

// The loop JSON strings spend their time in — finding where a string ends while checking
// what is inside it, and unescaping it on the way — over whole 64-byte blocks, with the widest
// vectors the CPU has (chosen once, at first use).
namespace mxvoip::proto::detail {

// Where a block read of a string's inside stopped.
struct StringRead {
    const char* at = nullptr;  // the closing quote, or the first byte not settled
    char* out = nullptr;       // the end of the unescaped bytes written
    bool closed = false;       // `at` is the closing quote
    bool hard = false;         // the block at `at` needs the byte-by-byte path
};

// The escapes the fast paths take: \" \\ \/ \b \f \n \r \t.
bool is_short_escape(char c);
// What the short escape "\c" stands for.
char unescaped(char c);

// Reads 64-byte blocks of a string's inside from p (not in the middle of an escape) while they
// hold only printable ASCII and the short escapes without a doubled backslash, writing the
// unescaped bytes to `out`, which must have room for (end - p) + 64 bytes: a block is stored
// whole before the output moves on. Stops at the closing quote, at a block it cannot settle
// (`hard`: a control character, a byte >= 0x80, another escape or "\\\\" before the closing
// quote) or with fewer than 64 bytes left; the caller goes on byte by byte from `at`, writing
// at `out`.
StringRead read_string_blocks(const char* p, const char* end, char* out);

// The kernels in use: "avx512" (AVX-512 BW, VBMI and VBMI2), "sse2" (every x86-64) or "scalar".
// Tests switch to each one the CPU has, to check them all; returns false for one it lacks.
std::string_view string_kernels();
bool use_string_kernels(std::string_view name);

}  // namespace mxvoip::proto::detail
