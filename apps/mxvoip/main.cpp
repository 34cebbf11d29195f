#include <CLI/CLI.hpp>

#include <iostream>

#include "check_event.hpp"

int main(int argc, char** argv) {
    CLI::App app{"mxvoip: Matrix voice and video calls from the command line"};
    app.require_subcommand(1);

    auto* check = app.add_subcommand("check-event",
                                     "Validate m.call.* events against the Matrix VoIP rules; "
                                     "prints 'ok' or each violation with its JSON "
                                     "path. Exit status 0 when all are valid, 1 otherwise");
    std::vector<std::string> inputs;
    std::string type;
    check
        ->add_option("FILE", inputs,
                     "Files holding an event or a JSON array of events; '-' for standard input")
        ->default_val(std::vector<std::string>{"-"});
    check->add_option("--type", type,
                      "The event type, when the input is bare content (e.g. m.call.invite)");

    CLI11_PARSE(app, argc, argv);
    if (check->parsed())
        return mxvoip::cli::check_event(inputs.empty() ? std::vector<std::string>{"-"} : inputs,
                                        type, std::cout, std::cerr);
    return 0;
}
