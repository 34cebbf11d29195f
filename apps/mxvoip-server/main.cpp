#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <fstream>
#include <iostream>
#include <sstream>

#include "mxvoip/server/config.hpp"
#include "mxvoip/server/server.hpp"
#include "password.hpp"

int main(int argc, char** argv) {
    CLI::App app{"mxvoip-server: a Matrix homeserver for voice and video calls"};
    std::string config_path;
    app.add_option("-c,--config", config_path,
                   "YAML configuration file (Synapse key names). Without it the server runs with "
                   "development defaults: server_name localhost, 127.0.0.1:8008, ./mxvoip.db, open "
                   "registration")
        ->check(CLI::ExistingFile);
    auto* user_cmd = app.add_subcommand("user", "Manage accounts (while the server is stopped)");
    auto* add_cmd =
        user_cmd->add_subcommand("add", "Create an account, e.g. when registration is closed");
    std::string new_user;
    std::string password_file;
    add_cmd->add_option("USER_ID", new_user, "Full user id, e.g. @alice:example.org")->required();
    add_cmd->add_option(
        "--password-file", password_file,
        "File whose first line is the password (otherwise MXVOIP_PASSWORD, or a prompt)");
    user_cmd->require_subcommand(1);
    CLI11_PARSE(app, argc, argv);

    auto logger = spdlog::stderr_color_mt("mxvoip");
    spdlog::set_default_logger(logger);
    spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");

    mxvoip::server::Config config;
    try {
        config = config_path.empty() ? mxvoip::server::development_config()
                                     : mxvoip::server::load_config(config_path);
    } catch (const std::exception& e) {
        std::cerr << "mxvoip-server: configuration error: " << e.what() << "\n";
        return 2;
    }
    spdlog::set_level(spdlog::level::from_str(config.log_level));

    if (add_cmd->parsed()) {
        try {
            mxvoip::server::add_user(
                config, new_user, *mxvoip::cli::read_password(password_file, "Password: ", true));
        } catch (const std::exception& e) {
            std::cerr << "mxvoip-server: " << e.what() << "\n";
            return 1;
        }
        std::cout << "created " << new_user << "\n";
        return 0;
    }

    if (config.development_defaults)
        spdlog::warn(
            "no --config given: development defaults (server_name localhost, 127.0.0.1:8008, "
            "database ./mxvoip.db, open registration)");
    else
        spdlog::info("configuration from {}: server_name {}", config.source, config.server_name);
    for (const auto& w : config.warnings) spdlog::warn("{}", w);
    if (config.turn.configured())
        spdlog::info("TURN: {} URI(s), {} credentials, lifetime {} s{}", config.turn.uris.size(),
                     config.turn.shared_secret.empty() ? "static" : "shared-secret",
                     config.turn.user_lifetime_s,
                     config.turn.allow_guests ? "" : ", not for guests");
    else
        spdlog::info("TURN: not configured; /voip/turnServer answers {{}}");
    try {
        mxvoip::server::Server server(config);
        server.start();
        const auto& first = server.addresses().front();
        spdlog::info("mxvoip-server ready: {} on http://{}:{}/", config.server_name, first.host,
                     first.port);
        server.run(true);
    } catch (const std::exception& e) {
        spdlog::critical("{}", e.what());
        return 1;
    }
    return 0;
}
