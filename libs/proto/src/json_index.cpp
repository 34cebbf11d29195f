#include "mxvoip/proto/json_index.hpp"

#include <algorithm>
#include <bit>
#include <cstring>

#include "mxvoip/proto/json.hpp"
#include "string_scan.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace mxvoip::proto {
namespace {

constexpr int kMaxDepth = 32;

bool is_space(char c) {
    return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

// The first byte in [p, end) a string scan must stop at: the closing quote, an escape, a
// control character (not allowed raw) or a byte >= 0x80 (the start of a UTF-8 sequence to
// check). Sixteen bytes at a time where SSE2 exists: a signed compare with 0x20 catches both
// control characters and bytes >= 0x80.
const char* find_special(const char* p, const char* end) {
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"');
    const __m128i backslash = _mm_set1_epi8('\\');
    const __m128i space = _mm_set1_epi8(0x20);
    while (end - p >= 16) {
        __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        __m128i hit =
            _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(c, quote), _mm_cmpeq_epi8(c, backslash)),
                         _mm_cmplt_epi8(c, space));
        if (int mask = _mm_movemask_epi8(hit))
            return p + __builtin_ctz(static_cast<unsigned>(mask));
        p += 16;
    }
#endif
    for (; p < end; ++p) {
        unsigned char c = static_cast<unsigned char>(*p);
        if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80) return p;
    }
    return p;
}

// The first 8 bytes of [p, p + n), zero-padded, as a little-endian number: compares keys of up
// to 8 bytes in one step. One 8-byte load where the text has 8 bytes there (assembling it in
// memory byte by byte would stall the load that reads it back).
std::uint64_t prefix_of(const char* p, std::size_t n, const char* text_end) {
    if constexpr (std::endian::native == std::endian::little) {
        if (text_end - p >= 8) {
            std::uint64_t v;
            std::memcpy(&v, p, 8);
            return n >= 8 ? v : v & ((std::uint64_t{1} << (8 * n)) - 1);
        }
    }
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < std::min<std::size_t>(n, 8); ++i)
        v |= std::uint64_t{static_cast<unsigned char>(p[i])} << (8 * i);
    return v;
}

bool is_continuation(const char* p, const char* end) {
    return p < end && (static_cast<unsigned char>(*p) & 0xC0) == 0x80;
}

// Length of the valid UTF-8 sequence starting at p (a byte >= 0x80), or 0 if it is not one:
// no overlong forms, no surrogates, nothing above U+10FFFF.
int utf8_length(const char* p, const char* end) {
    auto b = [&](int i) { return static_cast<unsigned char>(p[i]); };
    unsigned char c = b(0);
    if (c >= 0xC2 && c <= 0xDF) return is_continuation(p + 1, end) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (end - p < 3 || !is_continuation(p + 1, end) || !is_continuation(p + 2, end)) return 0;
        if (c == 0xE0 && b(1) < 0xA0) return 0;  // overlong
        if (c == 0xED && b(1) > 0x9F) return 0;  // surrogates
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (end - p < 4 || !is_continuation(p + 1, end) || !is_continuation(p + 2, end) ||
            !is_continuation(p + 3, end))
            return 0;
        if (c == 0xF0 && b(1) < 0x90) return 0;  // overlong
        if (c == 0xF4 && b(1) > 0x8F) return 0;  // above U+10FFFF
        return 4;
    }
    return 0;
}

}  // namespace

// One recursive-descent pass that either indexes the whole text or gives up.
class JsonIndex::Builder {
  public:
    explicit Builder(JsonIndex& ix)
        : ix_(ix), base_(ix.text_.data()), p_(base_), end_(base_ + ix.text_.size()) {}

    bool run() {
        skip_space();
        if (!value(0)) return false;
        skip_space();
        return p_ == end_;
    }

  private:
    void skip_space() {
        while (p_ < end_ && is_space(*p_)) ++p_;
    }
    std::uint32_t offset(const char* p) const { return static_cast<std::uint32_t>(p - base_); }
    std::uint32_t push(Kind kind) {
        // Built in place: copying a just-built Entry in stalls on store forwarding.
        ix_.tape_.emplace_back().kind = kind;
        return static_cast<std::uint32_t>(ix_.tape_.size() - 1);
    }
    void close(std::uint32_t at) {
        ix_.tape_[at].next = static_cast<std::uint32_t>(ix_.tape_.size());
    }

    bool value(int depth) {
        if (p_ == end_) return false;
        switch (*p_) {
            case '{':
                return object(depth);
            case '[':
                return array(depth);
            case '"':
                return string();
            case 't':
                return literal("true", Kind::boolean, 1);
            case 'f':
                return literal("false", Kind::boolean, 0);
            case 'n':
                return literal("null", Kind::null, 0);
            default:
                return integer();
        }
    }

    bool literal(std::string_view word, Kind kind, std::int64_t v) {
        if (static_cast<std::size_t>(end_ - p_) < word.size() ||
            std::memcmp(p_, word.data(), word.size()) != 0)
            return false;
        std::uint32_t at = push(kind);
        Entry& e = ix_.tape_[at];
        e.begin = offset(p_);
        p_ += word.size();
        e.end = offset(p_);
        e.integer = v;
        close(at);
        return true;
    }

    // -?(0|[1-9][0-9]*) within +-(2^53-1); fractions and exponents are left to the DOM.
    bool integer() {
        const char* start = p_;
        bool negative = p_ < end_ && *p_ == '-';
        if (negative) ++p_;
        if (p_ == end_ || *p_ < '0' || *p_ > '9') return false;
        std::int64_t v = 0;
        if (*p_ == '0') {
            ++p_;
        } else {
            while (p_ < end_ && *p_ >= '0' && *p_ <= '9') {
                v = v * 10 + (*p_ - '0');
                if (v > kMaxSafeInteger) return false;
                ++p_;
            }
        }
        if (p_ < end_ && (*p_ == '.' || *p_ == 'e' || *p_ == 'E' || (*p_ >= '0' && *p_ <= '9')))
            return false;
        if (negative && v == 0) return false;  // -0 is a double in the DOM
        std::uint32_t at = push(Kind::integer);
        Entry& e = ix_.tape_[at];
        e.begin = offset(start);
        e.end = offset(p_);
        e.integer = negative ? -v : v;
        close(at);
        return true;
    }

    bool string() {
        ++p_;  // the opening quote
        std::uint32_t at = push(Kind::string);
        bool escaped = false;
        const char* begin = p_;
        // Keys, ids and the like end within a few bytes: one look at the next 16 bytes.
        if (const char* q = find_special(p_, std::min(end_, p_ + 16)); q < end_ && *q == '"') {
            p_ = q;
            return close_string(at, begin, false);
        }
        for (;;) {
            // Whole 64-byte blocks while the quick check settles them; a block it cannot, and
            // the tail, byte by byte.
            detail::StringScan scan = detail::scan_string_blocks(p_, end_);
            p_ = scan.at;
            escaped |= scan.escapes;
            if (scan.closed) return close_string(at, begin, escaped);
            const char* slow_end = scan.hard ? p_ + 64 : end_;
            while (p_ < slow_end) {
                p_ = find_special(p_, end_);
                if (p_ == end_) return false;
                unsigned char c = static_cast<unsigned char>(*p_);
                if (c == '"') return close_string(at, begin, escaped);
                if (c == '\\') {
                    // \u is left to the DOM (its surrogate rules); anything else is invalid.
                    if (end_ - p_ < 2 || !detail::is_short_escape(p_[1])) return false;
                    escaped = true;
                    p_ += 2;
                } else if (c < 0x20) {
                    return false;
                } else {
                    int n = utf8_length(p_, end_);
                    if (n == 0) return false;
                    p_ += n;
                }
            }
            if (p_ >= end_) return false;
        }
    }
    bool close_string(std::uint32_t at, const char* begin, bool escaped) {
        Entry& e = ix_.tape_[at];
        e.begin = offset(begin);
        e.end = offset(p_);
        e.escaped = escaped;
        e.integer =
            static_cast<std::int64_t>(prefix_of(begin, static_cast<std::size_t>(p_ - begin), end_));
        ++p_;  // the closing quote
        close(at);
        return true;
    }

    // An object or an array, up to `close_char`; `item(at)` reads one member or element (`at`
    // is the container's own entry).
    template <typename Item>
    bool container(Kind kind, char close_char, int depth, Item item) {
        if (depth >= kMaxDepth) return false;
        std::uint32_t at = push(kind);
        ix_.tape_[at].begin = offset(p_);
        ++p_;
        skip_space();
        std::uint32_t count = 0;
        if (p_ < end_ && *p_ == close_char) {
            ++p_;
        } else {
            for (;;) {
                if (!item(at)) return false;
                ++count;
                skip_space();
                if (p_ == end_) return false;
                if (*p_ == ',') {
                    ++p_;
                    skip_space();
                    continue;
                }
                if (*p_ != close_char) return false;
                ++p_;
                break;
            }
        }
        Entry& e = ix_.tape_[at];
        e.end = offset(p_);
        e.count = count;
        close(at);
        return true;
    }

    bool object(int depth) {
        return container(Kind::object, '}', depth, [&](std::uint32_t at) {
            if (p_ == end_ || *p_ != '"') return false;
            std::uint32_t key = static_cast<std::uint32_t>(ix_.tape_.size());
            if (!string()) return false;
            if (ix_.tape_[key].escaped || duplicate(at + 1, key)) return false;
            skip_space();
            if (p_ == end_ || *p_ != ':') return false;
            ++p_;
            skip_space();
            return value(depth + 1);
        });
    }

    bool array(int depth) {
        return container(Kind::array, ']', depth, [&](std::uint32_t) { return value(depth + 1); });
    }

    // Whether the key at `key` repeats one of the earlier keys of its object (walked from
    // `first`). Objects here have a handful of keys, so a linear walk is the quick way.
    bool duplicate(std::uint32_t first, std::uint32_t key) const {
        std::string_view name = raw(key);
        const std::int64_t prefix = ix_.tape_[key].integer;
        for (std::uint32_t k = first; k < key; k = ix_.tape_[k + 1].next)
            if (ix_.tape_[k].integer == prefix && raw(k) == name) return true;
        return false;
    }
    std::string_view raw(std::uint32_t i) const {
        const Entry& e = ix_.tape_[i];
        return ix_.text_.substr(e.begin, e.end - e.begin);
    }

    JsonIndex& ix_;
    const char* base_;
    const char* p_;
    const char* end_;
};

JsonIndex::JsonIndex(std::string_view text) : text_(text) {
    // Offsets are 32-bit; event content is limited to 64 KiB by the spec anyway.
    if (text.size() >= (1u << 31)) return;
    ok_ = Builder(*this).run();
    if (!ok_) tape_.clear();
}

std::optional<JsonIndex::Node> JsonIndex::Node::find(std::string_view key) const {
    // Keys are unique and unescaped (checked when indexing). Most are at most 8 bytes, which
    // the prefix settles on its own.
    const auto prefix =
        static_cast<std::int64_t>(prefix_of(key.data(), key.size(), key.data() + key.size()));
    std::uint32_t i = index_ + 1;
    for (std::uint32_t n = 0; n < e().count; ++n) {
        const Entry& k = ix_->tape_[i];
        Node v(*ix_, i + 1);
        if (k.integer == prefix && k.end - k.begin == key.size() &&
            (key.size() <= 8 || Node(*ix_, i).raw() == key))
            return v;
        i = v.e().next;
    }
    return std::nullopt;
}

std::string JsonIndex::Node::string() const {
    std::string_view s = raw();
    if (!e().escaped) return std::string(s);
    std::string out(s.size(), '\0');
    char* end = detail::unescape_short(s.data(), s.data() + s.size(), out.data());
    out.resize(static_cast<std::size_t>(end - out.data()));
    return out;
}

json::value JsonIndex::Node::to_value() const {
    const Entry& en = e();
    switch (en.kind) {
        case Kind::string:
            return json::string(string());
        case Kind::integer:
            return en.integer;
        case Kind::boolean:
            return en.integer != 0;
        case Kind::null:
            return nullptr;
        case Kind::object:
        case Kind::array:
            break;
    }
    return json::parse(ix_->text_.substr(en.begin, en.end - en.begin));
}

}  // namespace mxvoip::proto
