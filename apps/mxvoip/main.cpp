#include <CLI/CLI.hpp>

#include <iostream>

#include "calls.hpp"
#include "check_event.hpp"

using namespace mxvoip::cli;

namespace {

void media_options(CLI::App* cmd, MediaFlags& m) {
    cmd->add_flag("--video", m.video, "Send and receive video (a test pattern) as well as audio");
    cmd->add_flag("--relay-only", m.relay_only,
                  "Use only relay candidates on our side (all media through TURN)");
    cmd->add_option("--tone", m.tone_hz,
                    "Frequency of the test tone we send, in Hz (default: "
                    "chosen from the user id, 300-1000)")
        ->check(CLI::Range(20.0, 20000.0));
    cmd->add_option("--hangup-after", m.hangup_after, "Hang up S seconds after connecting")
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--invite-lifetime", m.invite_lifetime_ms,
                    "How long our invites ring before they time out, in ms")
        ->default_val(90000)
        ->check(CLI::Range(1000, 3600000));
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"mxvoip: Matrix voice and video calls from the command line"};
    app.require_subcommand(1);
    app.fallthrough();

    Account account;
    app.add_option("--homeserver", account.homeserver,
                   "Homeserver base URL (https://host[:port]); default: the stored session's, "
                   "else found from the user id's server name (.well-known/matrix/client)")
        ->envname("MXVOIP_HOMESERVER");
    app.add_option("--ca-file", account.ca_file,
                   "Trust the certificate authorities in this PEM file instead of the system's "
                   "(a private CA)")
        ->check(CLI::ExistingFile);
    app.add_flag("--allow-insecure-http", account.allow_insecure_http,
                 "Allow plain http:// to a homeserver that is not on this machine (the password "
                 "and access token then cross the network in clear)");
    app.add_option("--user", account.user, "Our user id (@name:server) or localpart")
        ->envname("MXVOIP_USER");
    app.add_option("--password-file", account.password_file,
                   "Read the password from this file (else MXVOIP_PASSWORD, a stored session, or "
                   "a prompt)");
    app.add_option("--state-dir", account.state_dir,
                   "Where `login` stores the session (default: $MXVOIP_STATE_DIR, "
                   "$XDG_STATE_HOME/mxvoip, ~/.local/state/mxvoip)");
    app.add_flag("!--no-encryption", account.encryption,
                 "Turn end-to-end encryption off: no crypto state is kept, new direct chats are "
                 "created unencrypted, and calls in encrypted rooms are refused");
    app.add_flag("--json", account.json,
                 "Print one JSON object per line: states, streams, stats, a final summary");
    app.add_flag("-v,--verbose", account.verbose, "Log what the call machinery does");

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

    auto* login = app.add_subcommand(
        "login", "Log in with a password and store the session so later commands need none");
    auto* reg = app.add_subcommand("register", "Register --user and store the session");

    const char* exits =
        "Exit status: 0 the call ended normally, 3 no answer, 4 rejected or busy, 5 media "
        "failed, 6 signalling failed, 1 usage.";
    CallFlags call_flags;
    auto* call = app.add_subcommand("call", std::string("Call a user (in the direct chat with "
                                                        "them, created if needed) or a room of "
                                                        "two. ") +
                                                exits);
    call->add_option("TARGET", call_flags.target, "@user:server or !room:server")->required();
    media_options(call, call_flags.media);
    call->add_option("--screenshare-at", call_flags.screenshare_at,
                     "Start sharing the screen S seconds after connecting");
    call->add_option("--screenshare-stop-at", call_flags.screenshare_stop_at,
                     "Stop sharing the screen S seconds after connecting");
    call->add_option("--hold-at", call_flags.hold_at,
                     "Put the call on hold S seconds after connecting");
    call->add_option("--resume-at", call_flags.resume_at,
                     "Resume the call S seconds after connecting");
    call->add_option("--start-at", call_flags.start_at_unix_ms,
                     "Place the call at this time (Unix ms), e.g. for two clients calling each "
                     "other at once");

    AnswerFlags answer_flags;
    auto* answer = app.add_subcommand(
        "answer",
        std::string("Join direct-chat invites and answer (or reject) incoming calls. ") + exits);
    media_options(answer, answer_flags.media);
    answer->add_flag("--auto", answer_flags.auto_answer, "Answer without asking");
    answer->add_flag("--reject", answer_flags.reject, "Reject incoming calls instead");
    answer->add_option("--calls", answer_flags.calls, "Handle N calls, then exit")
        ->default_val(1)
        ->check(CLI::PositiveNumber);

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        // --help and --version end here too (status 0); every usage error is status 1.
        return app.exit(e) == 0 ? 0 : 1;
    }
    if (check->parsed())
        return check_event(inputs.empty() ? std::vector<std::string>{"-"} : inputs, type, std::cout,
                           std::cerr);
    if (login->parsed()) return login_command(account);
    if (reg->parsed()) return register_command(account);
    if (call->parsed()) return call_command(account, call_flags);
    if (answer->parsed()) return answer_command(account, answer_flags);
    return 0;
}
