#include "password.hpp"

#include <termios.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <stdexcept>

namespace mxvoip::cli {

std::optional<std::string> read_password(const std::string& file, const std::string& prompt,
                                         bool from_pipe) {
    std::string pw;
    if (!file.empty()) {
        std::ifstream in(file);
        if (!in) throw std::runtime_error("cannot read the password file " + file);
        std::getline(in, pw);
        return pw;
    }
    if (const char* env = std::getenv("MXVOIP_PASSWORD"); env && *env) return std::string(env);
    if (!::isatty(STDIN_FILENO)) {
        if (!from_pipe) return std::nullopt;
        std::getline(std::cin, pw);
        return pw;
    }
    std::cerr << prompt << std::flush;
    termios old{};
    ::tcgetattr(STDIN_FILENO, &old);
    termios quiet = old;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    ::tcsetattr(STDIN_FILENO, TCSANOW, &quiet);
    std::getline(std::cin, pw);
    ::tcsetattr(STDIN_FILENO, TCSANOW, &old);
    std::cerr << "\n";
    return pw;
}

}  // namespace mxvoip::cli
