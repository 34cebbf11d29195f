// The call-event parser: the first byte picks the event type, the rest is the content. Any
// content the parser accepts serializes to content that parses to the same event, and the
// linter reads it without failing.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "mxvoip/proto/call_events.hpp"
#include "mxvoip/proto/errors.hpp"
#include "mxvoip/proto/json.hpp"

namespace proto = mxvoip::proto;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static constexpr std::string_view kTypes[] = {
        "m.call.invite", "m.call.candidates", "m.call.answer", "m.call.select_answer",
        "m.call.reject", "m.call.negotiate",  "m.call.hangup", "m.call.sdp_stream_metadata_changed",
        "m.call.ring"};
    if (size == 0) return 0;
    std::string_view type = kTypes[data[0] % std::size(kTypes)];
    boost::json::value content;
    try {
        content = proto::parse_json({reinterpret_cast<const char*>(data) + 1, size - 1});
    } catch (const proto::MatrixError&) {
        return 0;
    }
    auto parsed = proto::parse_call_event(type, content);
    if (!parsed.ok()) {
        if (parsed.error().path.empty() || parsed.error().rule.empty()) std::abort();
        return 0;
    }
    proto::lint_call_event(parsed.value());
    if (proto::call_event_type(parsed.value()) != type) std::abort();
    auto again = proto::parse_call_event(type, proto::serialize_call_event(parsed.value()));
    if (!again.ok() || !(again.value() == parsed.value())) std::abort();
    return 0;
}
