#pragma once

#include <optional>
#include <string>

namespace mxvoip::cli {

// A password for the command line, from the first line of `file` when one is given, else from
// MXVOIP_PASSWORD, else asked for on the terminal (`prompt`, without echo). Without a terminal
// it is the first line of standard input when `from_pipe`, else nothing. Throws when `file`
// cannot be read.
std::optional<std::string> read_password(const std::string& file, const std::string& prompt,
                                         bool from_pipe);

}  // namespace mxvoip::cli
