#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "mxvoip/call/call_manager.hpp"
#include "mxvoip/client/matrix_client.hpp"
#include "mxvoip/crypto/machine.hpp"
#include "mxvoip/media/media_session.hpp"

namespace mxvoip::client {

using Clock = std::chrono::steady_clock;

struct DriverOptions {
    media::SessionOptions media;  // its `turn` is filled from /voip/turnServer
    call::Ms invite_lifetime = 90000;
    bool join_direct_invites = false;  // join rooms we are invited to as a direct chat
    int sync_timeout_ms = 30000;
    // Where an earlier run with the same session stopped (its last next_batch): the first
    // /sync resumes there with the rooms' full state, so calls that run already dealt with
    // are not seen again. Empty: start afresh.
    std::string resume_from;
    // End-to-end encryption (not owned; outlives the driver). With it, call events in rooms
    // with m.room.encryption are sent encrypted and decrypted before the call manager sees
    // them, and new direct chats are created encrypted. Without it such rooms cannot call.
    crypto::Machine* crypto = nullptr;
};

// A remote stream as the user sees it: its purpose from sdp_stream_metadata, its kinds.
struct RemoteStream {
    std::string stream_id;
    std::string purpose;
    std::set<media::Kind> kinds;
    bool removed = false;
};

// What the driver knows of one call, for status lines and the summary.
struct CallInfo {
    std::string call_id;
    std::string room_id;
    call::Direction direction = call::Direction::outgoing;
    call::CallState state = call::CallState::preparing;
    std::string end_reason;
    bool ended_by_remote = false;
    std::optional<Clock::time_point> signalled_at;  // invite sent (acknowledged) or received
    std::optional<Clock::time_point> connected_at;
    std::map<media::Kind, Clock::time_point> first_frame_at;  // the first decoded remote frame
    std::map<media::Kind, std::int64_t> first_frame_unix_ms;  // the same, on the wall clock
    std::map<std::string, RemoteStream> streams;
    media::Stats last_stats;
    bool relay = false;  // some stats snapshot saw a relay candidate on our side
    std::string media_error;

    // What the call's set-up time ends with: the first remote video frame when the peer sends
    // video, else the first audio frame (a voice call, or video asked and only audio agreed).
    media::Kind setup_kind() const;
    std::optional<Clock::time_point> first_remote_media_at() const;
    std::int64_t first_remote_media_unix_ms() const;  // 0 when there is none yet
};

// What happens, for the program around the driver. Called on the driver's executor.
class CallObserver {
  public:
    virtual ~CallObserver() = default;
    virtual void on_state(const CallInfo&) {}
    virtual void on_stream_added(const CallInfo&, const RemoteStream&, media::Kind) {}
    virtual void on_stream_removed(const CallInfo&, const RemoteStream&) {}
    virtual void on_log(const std::string&) {}
    // A /sync batch has been handled: a later run may resume from `next_batch`.
    virtual void on_sync_position(const std::string& /*next_batch*/) {}
    // Signalling broke down (an event could not be sent, /sync keeps failing, token revoked).
    virtual void on_fatal(const std::string&) {}
};

// Carries a CallManager's actions out: events over HTTP (in order), media through the media
// engine, timers on the executor; feeds it /sync batches, room changes and media events.
// Single-threaded: every method runs on the executor; media callbacks are posted to it.
class CallDriver {
  public:
    CallDriver(asio::any_io_executor ex, MatrixClient& client, media::MediaEngine& engine,
               DriverOptions options, CallObserver& observer);
    ~CallDriver();

    // Fetches TURN credentials, then syncs until stop(). Returns once stopped.
    asio::awaitable<void> run();
    void stop();
    // Whether the first /sync has been processed (rooms known).
    bool ready() const { return synced_; }

    // Returns the call id to follow: a new call, or the peer's call ringing in the same room,
    // which placing a call answers instead.
    std::string place_call(const std::string& room_id, const std::string& invitee);
    void answer(const std::string& call_id);
    void reject(const std::string& call_id);
    void hang_up(const std::string& call_id);
    void set_hold(const std::string& call_id, bool hold);
    void set_screenshare(const std::string& call_id, bool on);
    // Takes fresh media stats (also remembered for the summary).
    void refresh_stats(const std::string& call_id);

    const CallInfo* info(const std::string& call_id) const;
    const std::map<std::string, CallInfo>& calls() const { return calls_; }
    // Joined members of a room we are in (empty if unknown).
    std::set<std::string> joined(const std::string& room_id) const;
    bool invited_to(const std::string& room_id) const;
    // Whether the room has m.room.encryption: its events travel as m.room.encrypted.
    bool encrypted(const std::string& room_id) const;
    // Whether calls can be made in it: unencrypted, or encrypted and this driver can encrypt.
    bool can_call_in(const std::string& room_id) const {
        return !encrypted(room_id) || opt_.crypto;
    }
    // Direct chats (m.direct; in direct_chats.cpp). The direct chat with `user` that both
    // of us have joined, the newest if several.
    asio::awaitable<std::optional<std::string>> direct_chat_with(std::string user);
    // A new direct chat with `user` invited, recorded in m.direct.
    asio::awaitable<std::string> create_direct_chat(std::string user);
    // Whether `user` has joined `room_id` (as /sync tells) within `timeout`.
    asio::awaitable<bool> wait_for_join(std::string room_id, std::string user,
                                        Clock::duration timeout);

    // Events still to be sent (a hangup must leave before the program exits).
    bool sending() const { return !outbox_.empty() || send_busy_; }

  private:
    struct Room {
        std::set<std::string> joined;
        bool is_public = false;
        bool encrypted = false;
        bool told_encrypted = false;  // the log already said its events cannot be read
        crypto::RoomSettings encryption;
    };
    // An encrypted event whose room key has not arrived (yet): tried again after each /sync.
    struct Undecrypted {
        std::string room_id;
        json::object event;
        call::Ms first_seen = 0;
    };
    void feed(const call::Input& in);
    void execute(call::Action& a);
    void media_command(call::MediaCommand& m);
    void on_media(const std::string& call_id, media::Event ev);
    media::MediaSession* session_for(const std::string& call_id, bool create);
    void close_session(const std::string& call_id);
    void report_local_streams(const std::string& call_id);
    void stream_seen(const std::string& call_id, const std::string& stream_id, media::Kind kind);
    void streams_changed(const std::string& call_id, const proto::SdpStreamMetadata& m);
    void process_sync(const json::object& sync);
    // Decrypts an m.room.encrypted event into `batch` if it is a call event; false when its
    // room key has not arrived (another try after the next /sync). The first try logs why
    // an event cannot be decrypted.
    bool decrypt_into(const std::string& room_id, const json::object& ev, call::SyncBatch& batch,
                      bool first_try);
    void receive_crypto(const json::object& sync, call::SyncBatch& batch);
    asio::awaitable<void> send_loop();
    // One request of the crypto machine, its response handed back; false if it failed.
    asio::awaitable<bool> send_crypto_request(crypto::Request r);
    asio::awaitable<void> send_crypto_requests();
    asio::awaitable<void> share_room_key(std::string room_id);
    asio::awaitable<void> refresh_turn();
    call::Ms now() const;

    asio::any_io_executor ex_;
    MatrixClient& client_;
    media::MediaEngine& engine_;
    DriverOptions opt_;
    CallObserver& observer_;
    call::CallManager manager_;
    Clock::time_point epoch_ = Clock::now();
    std::map<std::string, std::unique_ptr<media::MediaSession>> sessions_;
    std::map<std::string, CallInfo> calls_;
    std::map<std::string, proto::SdpStreamMetadata> remote_metadata_;
    std::map<std::uint64_t, std::unique_ptr<asio::steady_timer>> timers_;
    std::map<std::string, Room> rooms_;
    std::set<std::string> invites_;
    std::deque<call::SendEvent> outbox_;
    bool send_busy_ = false;
    bool crypto_due_ = false;  // the machine may have uploads or queries to send
    std::deque<Undecrypted> undecrypted_;
    std::set<std::string> told_skipped_;  // devices the log said cannot have a room key
    std::unique_ptr<asio::steady_timer> outbox_signal_;
    std::optional<TurnCredentials> turn_;
    bool stopping_ = false;
    bool synced_ = false;
    std::string since_;
};

}  // namespace mxvoip::client
