// homeserver.yaml: any text is a configuration or a ConfigError naming what is wrong.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "mxvoip/server/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    try {
        mxvoip::server::parse_config(std::string(reinterpret_cast<const char*>(data), size),
                                     "fuzz.yaml");
    } catch (const mxvoip::server::ConfigError& e) {
        if (std::string(e.what()).empty()) std::abort();
    }
    return 0;
}
