#pragma once

// Push rules and what they decide: each user's rule set (the spec's predefined rules with the
// user's changes, GET/PUT/DELETE /pushrules/...), evaluated for every member on every event;
// the unread notification and highlight counts /sync reports per room; the recent
// notifications of GET /notifications; and the listeners (the pushers) told of each event that
// notifies someone.
//
// A user's changed rule set is kept as their m.push_rules account data (what clients read in
// /sync); the predefined rules' conditions always come from this version of the server.
// Counts are held in memory: after a restart each is counted again when first needed, from the
// user's read position (at most kScanLimit events back), under the rules in force then.
#include <boost/asio/awaitable.hpp>
#include <boost/json.hpp>

#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "account_data.hpp"
#include "core.hpp"
#include "http_types.hpp"
#include "push_rules.hpp"
#include "receipts.hpp"
#include "rooms.hpp"

namespace mxvoip::server {

class Notifications {
  public:
    static constexpr std::size_t kUnreadPerRoom = 1000;  // counted per user and room, at most
    static constexpr std::size_t kRecentPerUser = 100;   // kept for GET /notifications
    static constexpr std::size_t kScanLimit = 5000;      // events read back to count again
    static constexpr std::size_t kUserRules = 500;       // rules a user may add
    static constexpr std::size_t kMaxRuleSetBytes = 65536;

    Notifications(Core& core, Rooms& rooms, AccountData& account_data, Receipts& receipts);

    void load(store::Snapshot& snap);

    asio::awaitable<Response> get_rules(Request&);
    asio::awaitable<Response> get_global_rules(Request&);
    asio::awaitable<Response> get_rule(Request&);
    asio::awaitable<Response> put_rule(Request&);
    asio::awaitable<Response> delete_rule(Request&);
    asio::awaitable<Response> get_rule_enabled(Request&);
    asio::awaitable<Response> get_rule_actions(Request&);
    asio::awaitable<Response> put_rule_enabled(Request&);
    asio::awaitable<Response> put_rule_actions(Request&);
    asio::awaitable<Response> get_notifications(Request&);

    // "unread_notifications":{...} of `user` in the room.
    void render_counts_locked(std::string& out, const Room& room, const std::string& user);
    // The user's unread notifications over all their joined rooms (a push's badge count).
    std::size_t unread_total_locked(const std::string& user);

    // Told, under the lock, of every event that notifies `user`, with the write it is part of.
    using Listener = std::function<void(const std::string& user, const Room& room,
                                        const EventPtr& ev, const push::Outcome& outcome)>;
    void on_notify(Listener f) { listeners_.push_back(std::move(f)); }

  private:
    // The push rules of `snap` (users who changed theirs) replace those held.
    void load_locked(store::Snapshot& snap);
    struct Unread {
        std::deque<std::pair<StreamId, bool>> events;  // notifying, after the read position
    };
    struct Recent {
        std::string room_id;
        EventPtr event;
        boost::json::array actions;
        std::int64_t ts = 0;
    };

    const boost::json::object& rules_locked(const std::string& user) const;
    // A copy of the user's rule set as GET /pushrules/ shows it.
    boost::json::object user_rules_locked(const std::string& user) const;
    // {attribute: value} of the rule the path names.
    Response rule_attribute(const Request& req, const char* attribute);
    push::Outcome evaluate_locked(const Room& room, const boost::json::object& event,
                                  const std::string& sender, const std::string& user) const;
    void appended_locked(const Room& room, const EventPtr& ev);
    Unread& unread_locked(const Room& room, const std::string& user);
    void read_locked(const std::string& room_id, const std::string& user, StreamId upto);
    // Applies `edit` to the user's rule set and stores the result as their m.push_rules
    // account data.
    asio::awaitable<void> change(const std::string& user,
                                 const std::function<void(boost::json::object&)>& edit);
    // The rule set with the predefined rules of this version, keeping the user's enabled and
    // actions of each, and the user's own rules.
    boost::json::object with_current_defaults(const std::string& user,
                                              const boost::json::object& stored) const;

    Core& core_;
    Rooms& rooms_;
    AccountData& account_data_;
    Receipts& receipts_;
    boost::json::object template_;  // the predefined rules, with @@USER@@ and @@LOCALPART@@
    std::unordered_map<std::string, boost::json::object> changed_;  // users who changed rules
    std::unordered_map<std::string, std::unordered_map<std::string, Unread>> unread_;
    std::unordered_map<std::string, std::deque<Recent>> recent_;  // by user, oldest first
    std::vector<Listener> listeners_;
};

}  // namespace mxvoip::server
