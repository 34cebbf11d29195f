#pragma once

#include <string_view>

// The two loops JSON strings spend their time in — finding where a string ends while
// checking what is inside it, and unescaping it — over whole 64-byte blocks, with the widest
// vectors the CPU has (chosen once, at first use).
namespace mxvoip::proto::detail {

// Where a block scan of a string's inside stopped.
struct StringScan {
    const char* at = nullptr;  // the closing quote, or the first byte not settled
    bool closed = false;       // `at` is the closing quote
    bool escapes = false;      // backslash escapes were seen before `at`
    bool hard = false;         // the block at `at` needs the byte-by-byte path
};

// The escapes the fast paths take: \" \\ \/ \b \f \n \r \t.
bool is_short_escape(char c);

// Settles 64-byte blocks of a string's inside from p (not in the middle of an escape) while
// they hold only printable ASCII and the short escapes (\" \\ \/ \b \f \n \r \t), without a
// doubled backslash. Stops at the closing quote, at a block it cannot settle (`hard`: a control
// character, a byte >= 0x80, another escape or "\\\\" before the closing quote) or with fewer
// than 64 bytes left; the caller goes on byte by byte from `at`.
StringScan scan_string_blocks(const char* p, const char* end);

// Unescapes [p, end), a string inside the index has checked (short escapes only), into out,
// which has room for end - p bytes. Returns the end of the output.
char* unescape_short(const char* p, const char* end, char* out);

// The kernels in use: "avx512" (AVX-512 BW, VBMI and VBMI2), "sse2" (every x86-64) or "scalar".
// Tests switch to each one the CPU has, to check them all; returns false for one it lacks.
std::string_view string_kernels();
bool use_string_kernels(std::string_view name);

}  // namespace mxvoip::proto::detail
