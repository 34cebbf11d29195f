// Call events read from their JSON text straight into the typed event: one pass over the
// text, no DOM and no index in between. This is the hot path of the call manager (every call
// event off /sync comes through it), and the text it reads holds kilobytes of escaped SDP.
//
// The pass takes the shape clients send and nothing else. Whatever it is not sure of —
// escapes other than the short ones, non-ASCII bytes, duplicate keys, numbers other than
// plain integers, a missing or malformed field — makes it give up, and the DOM path reads
// the text instead. Giving up is always safe, so this file never has to produce an error
// message or decide a corner of JSON: those stay in one place, the DOM path.
#include "call_event_text.hpp"

#include <algorithm>
#include <cstring>
#include <memory>

#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/ids.hpp"
#include "mxvoip/proto/json.hpp"
#include "string_scan.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace mxvoip::proto {
namespace {

// The text is outside what this pass takes. Thrown and caught in this file only.
struct GiveUp {};
[[noreturn]] void give_up() {
    throw GiveUp{};
}

constexpr int kMaxDepth = 32;  // of unknown fields' values; the DOM allows 64 in all

// The first byte in [p, end) a string scan must stop at: a quote, a backslash, a control
// character or a byte >= 0x80. Sixteen bytes at a time where SSE2 exists: a signed compare
// with 0x20 catches both control characters and bytes >= 0x80.
[[gnu::always_inline]] inline const char* find_special(const char* p, const char* end) {
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

// Room for `n` bytes, reused from one string to the next on this thread: it grows to the
// longest content read here (event content is limited to 64 KiB by the spec).
char* scratch(std::size_t n) {
    thread_local std::unique_ptr<char[]> buf;
    thread_local std::size_t size = 0;
    if (n > size) {
        size = std::max(n, 2 * size);
        buf = std::make_unique<char[]>(size);
    }
    return buf.get();
}

// Marks a field of one object as read; a second time means a duplicate key.
void mark(unsigned& seen, unsigned bit) {
    if (seen & bit) give_up();
    seen |= bit;
}

class Reader {
  public:
    explicit Reader(std::string_view text) : p_(text.data()), end_(text.data() + text.size()) {}

    // Nothing but whitespace is left.
    bool at_end() {
        ws();
        return p_ == end_;
    }
    bool next_is(char c) const { return p_ < end_ && *p_ == c; }

    // The object that starts here: member(key) is called for each member and reads its value.
    template <typename Member>
    void object(Member&& member) {
        ws();
        expect('{');
        ws();
        if (take('}')) return;
        for (;;) {
            std::string_view k = key();
            ws();
            expect(':');
            ws();
            member(k);
            ws();
            if (take(',')) {
                ws();
                continue;
            }
            expect('}');
            return;
        }
    }
    // The array that starts here: element() is called for each element and reads it.
    template <typename Element>
    void array(Element&& element) {
        expect('[');
        ws();
        if (take(']')) return;
        for (;;) {
            ws();
            element();
            ws();
            if (take(',')) continue;
            expect(']');
            return;
        }
    }

    // A string of printable ASCII and the short escapes (\" \\ \/ \b \f \n \r \t), unescaped
    // into `out`.
    [[gnu::always_inline]] void string(std::string& out) {
        expect('"');
        // Ids, candidates and the like end within 64 bytes, without escapes: a look at those
        // first.
        const char* q = find_special(p_, std::min(end_, p_ + 64));
        if (q < end_ && *q == '"') {
            out.clear();  // (append, not assign: the string is all but always empty)
            out.append(p_, static_cast<std::size_t>(q - p_));
            p_ = q + 1;
            return;
        }
        long_string(out);
    }

    // -?(0|[1-9][0-9]*) within +-(2^53-1); fractions, exponents and -0 are the DOM's.
    std::int64_t integer() {
        bool negative = take('-');
        if (p_ == end_ || *p_ < '0' || *p_ > '9') give_up();
        std::int64_t v = 0;
        if (*p_ == '0') {
            ++p_;
        } else {
            while (p_ < end_ && *p_ >= '0' && *p_ <= '9') {
                v = v * 10 + (*p_ - '0');
                if (v > kMaxSafeInteger) give_up();
                ++p_;
            }
        }
        if (p_ < end_ && (*p_ == '.' || *p_ == 'e' || *p_ == 'E' || (*p_ >= '0' && *p_ <= '9')))
            give_up();
        if (negative && v == 0) give_up();
        return negative ? -v : v;
    }

    bool boolean() {
        if (take_word("true")) return true;
        if (take_word("false")) return false;
        give_up();
    }

    // A member this pass does not know: its value goes into `extra` as the DOM reads it
    // (parse_json on just the value's text).
    void unknown(std::string_view key, json::object& extra) {
        std::string_view value = skip();
        try {
            if (!extra.emplace(key, parse_json(value)).second) give_up();  // a duplicate key
        } catch (const MatrixError&) {
            give_up();
        }
    }

    // Steps over one value and returns its text, checking only enough to find where it ends
    // (the caller parses the text, or does not need it).
    std::string_view skip() {
        const char* begin = p_;
        int depth = 0;
        for (;;) {
            if (p_ == end_) break;
            char c = *p_;
            if (c == '"') {
                skip_string();
                if (depth == 0) break;
            } else if (c == '{' || c == '[') {
                if (++depth > kMaxDepth) give_up();
                ++p_;
            } else if (c == '}' || c == ']') {
                if (depth == 0) break;
                ++p_;
                if (--depth == 0) break;
            } else if (c == ',' && depth == 0) {
                break;
            } else {
                ++p_;
            }
        }
        if (depth != 0) give_up();
        return {begin, static_cast<std::size_t>(p_ - begin)};
    }

    // The exact text `w` is next: stepped over.
    bool take_word(std::string_view w) {
        if (static_cast<std::size_t>(end_ - p_) < w.size() ||
            std::memcmp(p_, w.data(), w.size()) != 0)
            return false;
        p_ += w.size();
        return true;
    }

  private:
    // A string that did not end within its first 64 bytes, or has escapes.
    [[gnu::noinline]] void long_string(std::string& out) {
        // Longer ones are unescaped while they are read, into a buffer kept for the next one.
        char* const buf = scratch(static_cast<std::size_t>(end_ - p_) + 64);
        char* o = buf;
        for (;;) {
            if (end_ - p_ >= 64) {
                detail::StringRead read = detail::read_string_blocks(p_, end_, o);
                p_ = read.at;
                o = read.out;
                if (read.closed) break;
            }
            // The tail, or a block the quick check cannot settle: up to the next special.
            const char* q = find_special(p_, end_);
            std::memcpy(o, p_, static_cast<std::size_t>(q - p_));
            o += q - p_;
            p_ = q;
            if (p_ == end_) give_up();
            if (*p_ == '"') break;
            if (*p_ != '\\' || end_ - p_ < 2 || !detail::is_short_escape(p_[1])) give_up();
            *o++ = detail::unescaped(p_[1]);
            p_ += 2;
        }
        out.assign(buf, static_cast<std::size_t>(o - buf));
        ++p_;  // the closing quote
    }

    // Whitespace. Text from clients mostly has none: one compare settles that.
    void ws() {
        while (p_ < end_ && static_cast<unsigned char>(*p_) <= ' ') {
            if (*p_ != ' ' && *p_ != '\n' && *p_ != '\r' && *p_ != '\t') return;
            ++p_;
        }
    }
    bool take(char c) {
        if (p_ < end_ && *p_ == c) {
            ++p_;
            return true;
        }
        return false;
    }
    void expect(char c) {
        if (!take(c)) give_up();
    }
    // A key: printable ASCII, no escapes.
    std::string_view key() {
        expect('"');
        const char* begin = p_;
        p_ = find_special(p_, end_);
        if (p_ == end_ || *p_ != '"') give_up();
        return {begin, static_cast<std::size_t>(p_++ - begin)};
    }
    void skip_string() {
        ++p_;
        while (p_ < end_) {
            if (*p_ == '"') {
                ++p_;
                return;
            }
            if (*p_ == '\\' && end_ - p_ < 2) break;
            p_ += *p_ == '\\' ? 2 : 1;
        }
        give_up();
    }

    const char* p_;
    const char* end_;
};

// call_id and party_id: 1-255 characters of [0-9A-Za-z-._~].
void opaque_id(Reader& r, std::string& out) {
    r.string(out);
    if (!is_valid_opaque_id(out)) give_up();
}

std::int64_t lifetime(Reader& r) {
    std::int64_t v = r.integer();
    if (v < 0) give_up();
    return v;
}

// The fields every call event has. Bits 1, 2 and 4 of `seen`; the events' own fields use
// the bits above.
constexpr unsigned kCallId = 1, kPartyId = 2, kVersion = 4;
bool common_field(Reader& r, std::string_view key, CallCommon& c, unsigned& seen) {
    if (key == "call_id") {
        mark(seen, kCallId);
        opaque_id(r, c.call_id);
    } else if (key == "party_id") {
        mark(seen, kPartyId);
        opaque_id(r, c.party_id);
    } else if (key == "version") {
        mark(seen, kVersion);
        if (r.take_word("\"1\"")) {
            c.version = CallVersion::v1;  // what nearly every client sends
        } else if (r.next_is('"')) {
            std::string v;
            r.string(v);
            c.version = v == "0" ? CallVersion::v0 : CallVersion::v1;
            if (v != "1") c.version_sent = json::string(v);
        } else {
            std::int64_t v = r.integer();
            c.version = v == 0 ? CallVersion::v0 : CallVersion::v1;
            c.version_sent = v;
        }
    } else {
        return false;
    }
    return true;
}

void check_common(const CallCommon& c, unsigned seen) {
    if (!(seen & kCallId) || !(seen & kVersion)) give_up();
    if (c.version == CallVersion::v1 && !(seen & kPartyId)) give_up();
}

void description(Reader& r, SessionDescription& d, std::initializer_list<std::string_view> types) {
    unsigned seen = 0;
    r.object([&](std::string_view key) {
        if (key == "type") {
            mark(seen, 1);
            r.string(d.type);
        } else if (key == "sdp") {
            mark(seen, 2);
            r.string(d.sdp);
        } else {
            r.unknown(key, d.extra);
        }
    });
    if (seen != 3 || std::find(types.begin(), types.end(), d.type) == types.end()) give_up();
}

void metadata(Reader& r, SdpStreamMetadata& out) {
    r.object([&](std::string_view id) {
        StreamMetadata m;
        unsigned seen = 0;
        r.object([&](std::string_view key) {
            if (key == "purpose") {
                mark(seen, 1);
                r.string(m.purpose);
            } else if (key == "audio_muted") {
                mark(seen, 2);
                m.audio_muted = r.boolean();
            } else if (key == "video_muted") {
                mark(seen, 4);
                m.video_muted = r.boolean();
            } else {
                r.unknown(key, m.extra);
            }
        });
        if (!(seen & 1) || !out.emplace(std::string(id), std::move(m)).second) give_up();
    });
}

// Stream metadata under either key; the stable one wins, as on the DOM path. The unstable
// one, when both are sent, is read all the same (and anything odd in it gives up).
struct Metadata {
    unsigned seen = 0;
    SdpStreamMetadata stable, unstable;

    bool field(Reader& r, std::string_view key) {
        if (key == kMetadataKey) {
            mark(seen, 1);
            metadata(r, stable);
        } else if (key == kMetadataUnstableKey) {
            mark(seen, 2);
            metadata(r, unstable);
        } else {
            return false;
        }
        return true;
    }
    bool any() const { return seen != 0; }
    SdpStreamMetadata take() { return std::move(seen & 1 ? stable : unstable); }
    void into(std::optional<SdpStreamMetadata>& out) {
        if (any()) out = take();
    }
};

// An event of type T read in place, where the caller gets it: `field(key)` reads the fields
// particular to T (false for a key it does not know), `done()` checks T's required fields.
template <typename T, typename Field, typename Done>
Parsed<CallEvent> read(Reader& r, Field&& field, Done&& done) {
    Parsed<CallEvent> out(std::in_place, std::in_place_type<T>);
    T& e = *std::get_if<T>(&out.value());
    unsigned seen = 0;
    r.object([&](std::string_view key) {
        if (!common_field(r, key, e, seen) && !field(e, key)) r.unknown(key, e.extra);
    });
    if (!r.at_end()) give_up();
    check_common(e, seen);
    done(e);
    return out;
}

Parsed<CallEvent> read_event(std::string_view type, std::string_view text) {
    Reader r(text);
    unsigned seen = 0;  // the event's own fields
    Metadata meta;
    auto required = [&](unsigned bits) {
        if ((seen & bits) != bits) give_up();
    };
    if (type == "m.call.invite") {
        return read<CallInvite>(
            r,
            [&](CallInvite& e, std::string_view key) {
                if (key == "offer") {
                    mark(seen, 1);
                    description(r, e.offer, {"offer"});
                } else if (key == "lifetime") {
                    mark(seen, 2);
                    e.lifetime = lifetime(r);
                } else if (key == "invitee") {
                    mark(seen, 4);
                    r.string(e.invitee.emplace());
                    if (!parse_user_id(*e.invitee)) give_up();
                } else {
                    return meta.field(r, key);
                }
                return true;
            },
            [&](CallInvite& e) {
                required(1 | 2);
                meta.into(e.metadata);
            });
    }
    if (type == "m.call.candidates") {
        return read<CallCandidates>(
            r,
            [&](CallCandidates& e, std::string_view key) {
                if (key != "candidates") return false;
                mark(seen, 1);
                e.candidates.reserve(4);
                r.array([&] {
                    Candidate& c = e.candidates.emplace_back();
                    unsigned cs = 0;
                    r.object([&](std::string_view k) {
                        if (k == "candidate") {
                            mark(cs, 1);
                            r.string(c.candidate);
                        } else if (k == "sdpMid") {
                            mark(cs, 2);
                            r.string(c.sdp_mid.emplace());
                        } else if (k == "sdpMLineIndex") {
                            mark(cs, 4);
                            c.sdp_mline_index = r.integer();
                            if (*c.sdp_mline_index < 0) give_up();
                        } else {
                            r.unknown(k, c.extra);
                        }
                    });
                    if (!(cs & 1) || (!c.candidate.empty() && !(cs & 6))) give_up();
                });
                return true;
            },
            [&](CallCandidates&) { required(1); });
    }
    if (type == "m.call.answer") {
        return read<CallAnswer>(
            r,
            [&](CallAnswer& e, std::string_view key) {
                if (key != "answer") return meta.field(r, key);
                mark(seen, 1);
                description(r, e.answer, {"answer"});
                return true;
            },
            [&](CallAnswer& e) {
                required(1);
                meta.into(e.metadata);
            });
    }
    if (type == "m.call.select_answer") {
        return read<CallSelectAnswer>(
            r,
            [&](CallSelectAnswer& e, std::string_view key) {
                if (key != "selected_party_id") return false;
                mark(seen, 1);
                opaque_id(r, e.selected_party_id);
                return true;
            },
            [&](CallSelectAnswer&) { required(1); });
    }
    if (type == "m.call.reject") {
        return read<CallReject>(
            r, [](CallReject&, std::string_view) { return false; }, [](CallReject&) {});
    }
    if (type == "m.call.negotiate") {
        return read<CallNegotiate>(
            r,
            [&](CallNegotiate& e, std::string_view key) {
                if (key == "description") {
                    mark(seen, 1);
                    description(r, e.description, {"offer", "answer"});
                } else if (key == "lifetime") {
                    mark(seen, 2);
                    e.lifetime = lifetime(r);
                } else {
                    return meta.field(r, key);
                }
                return true;
            },
            [&](CallNegotiate& e) {
                required(1 | 2);
                meta.into(e.metadata);
            });
    }
    if (type == "m.call.hangup") {
        return read<CallHangup>(
            r,
            [&](CallHangup& e, std::string_view key) {
                if (key != "reason") return false;
                mark(seen, 1);
                r.string(e.reason.emplace());
                return true;
            },
            [](CallHangup&) {});
    }
    if (type == "m.call.sdp_stream_metadata_changed") {
        return read<CallSdpStreamMetadataChanged>(
            r,
            [&](CallSdpStreamMetadataChanged&, std::string_view key) { return meta.field(r, key); },
            [&](CallSdpStreamMetadataChanged& e) {
                if (!meta.any()) give_up();
                e.metadata = meta.take();
            });
    }
    give_up();  // not a call event type: the DOM path names the error
}

}  // namespace

namespace detail {

std::optional<CallEvent> read_call_event(std::string_view type, std::string_view text) {
    try {
        return std::move(read_event(type, text).value());
    } catch (const GiveUp&) {
        return std::nullopt;
    }
}

}  // namespace detail

Parsed<CallEvent> parse_call_event_json(std::string_view type, std::string_view text) {
    try {
        return read_event(type, text);
    } catch (const GiveUp&) {
    }
    try {
        return parse_call_event(type, parse_json(text));
    } catch (const MatrixError& e) {
        return CallEventError{"content", e.what()};
    }
}

std::optional<std::string> json_string_member(std::string_view text, std::string_view key) {
    try {
        Reader r(text);
        std::optional<std::string> found;
        bool again = false;
        r.object([&](std::string_view k) {
            if (k != key) {
                r.skip();
            } else if (found || again) {
                give_up();  // a duplicate key
            } else if (r.next_is('"')) {
                r.string(found.emplace());
            } else {
                again = true;
                r.skip();
            }
        });
        if (!r.at_end()) give_up();
        return found;
    } catch (const GiveUp&) {
    }
    try {
        json::value v = parse_json(text);
        const json::value* m = v.is_object() ? v.get_object().if_contains(key) : nullptr;
        if (m && m->is_string()) return std::string(m->get_string());
    } catch (const MatrixError&) {
    }
    return std::nullopt;
}

}  // namespace mxvoip::proto
