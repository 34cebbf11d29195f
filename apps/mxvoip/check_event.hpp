#pragma once

#include <iosfwd>
#include <string>
#include <vector>

namespace mxvoip::cli {

// `mxvoip check-event`: validates m.call.* events. Each input is a file name or "-" (standard
// input) holding one event or a JSON array of them; an event is {"type","content",...}, or bare
// content when `type` is given. Prints "ok" or each violation ("path: rule") per event.
// Returns 0 when every event is valid, 1 otherwise, 2 when an input cannot be read.
int check_event(const std::vector<std::string>& inputs, const std::string& type, std::ostream& out,
                std::ostream& err);

}  // namespace mxvoip::cli
