#pragma once

#include <cstdint>
#include <string>

namespace mxvoip::cli {

// Exit statuses of `mxvoip call` and `mxvoip answer`.
enum Exit : int {
    exit_ok = 0,
    exit_usage = 1,
    exit_no_answer = 3,  // invite_timeout
    exit_rejected = 4,   // the callee rejected, or was busy
    exit_media_failed = 5,
    exit_signalling_failed = 6,  // login, /sync, sending, the room
};

struct Account {
    std::string homeserver;  // empty: the stored session's, else found from the user id
    std::string user;
    std::string ca_file;  // trust these CAs instead of the system's
    bool allow_insecure_http = false;
    std::string password_file;
    std::string state_dir;   // where `login` keeps the session; see README
    bool encryption = true;  // end-to-end encryption in rooms with m.room.encryption
    bool json = false;
    bool verbose = false;
};

struct MediaFlags {
    bool video = false;
    bool relay_only = false;
    double tone_hz = 0;  // 0: chosen per user so two clients are told apart
    std::int64_t invite_lifetime_ms = 90000;
    double hangup_after = -1;  // seconds after connecting
};

struct CallFlags {
    std::string target;  // @user:server or !room:server
    MediaFlags media;
    double screenshare_at = -1;
    double screenshare_stop_at = -1;
    double hold_at = -1;
    double resume_at = -1;
    std::int64_t start_at_unix_ms = 0;  // place the call at this wall-clock time
};

struct AnswerFlags {
    MediaFlags media;
    bool auto_answer = false;
    bool reject = false;
    int calls = 1;
};

int login_command(const Account& a);
int register_command(const Account& a);
int call_command(const Account& a, const CallFlags& f);
int answer_command(const Account& a, const AnswerFlags& f);

}  // namespace mxvoip::cli
