// Session descriptions as the media engine reads and edits them: whatever parses can have
// its directions rewritten, is written out as text that parses again, and answers stream-id
// and candidate questions.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "sdp.hpp"

using namespace mxvoip::media;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string text(reinterpret_cast<const char*>(data), size);
    SdpMessage sdp = parse_sdp(text);
    if (!sdp) return 0;
    std::string first_mid;
    rewrite_directions(*sdp, [&](const std::string& mid, const std::string& dir) {
        if (first_mid.empty()) first_mid = mid;
        return direction(receives(dir), sends(dir));
    });
    stream_id(*sdp, first_mid);
    has_candidate(*sdp, "candidate:1 1 UDP 1 127.0.0.1 9 typ host");
    if (!parse_sdp(sdp_text(*sdp))) std::abort();
    return 0;
}
