#pragma once

// Push rules and what they decide: each user's rule set (the spec's predefined rules with the
// user's changes, GET/PUT/DELETE /pushrules/...), evaluated for every member on every event;
// the unread notification and highlight counts /sync reports per room; the recent
// notifications of GET /notifications; and the listeners (the pushers) told of each event that
// notifies someone.
//
// A user's changed rule set is kept as their m.push_rules account data (what clients read in
// /sync); the predefined rules' conditions always come from this version of the server. Rule
// sets are read from the store when first needed (those of an event's whole audience in one
// read) and held per user (caches.push_rules), whether changed or not.
// Counts are held in memory: after a restart each is counted again when first needed, from the
// user's read position (at most kScanLimit events back), under the rules in force then. They
// are held per user with the user's recent notifications (caches.notifications users): a
// user let go is counted again the same way, and their recent notifications go, as at a
// restart.
#include <boost/asio/awaitable.hpp>
#include <boost/json.hpp>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "account_data.hpp"
#include "core.hpp"
#include "http_types.hpp"
#include "lru_cache.hpp"
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
    // Told, under the lock, of all the users an event notifies before on_notify's listeners
    // are told of each: what they read per user can be read for all at once.
    using AudienceListener = std::function<void(const std::vector<std::string>& users)>;
    void on_audience(AudienceListener f) { audience_listeners_.push_back(std::move(f)); }

  private:
    // A user's rule set as evaluated: the predefined rules (template_, shared by every user
    // who changed none) or the user's own.
    using Rules = std::shared_ptr<const boost::json::object>;
    struct Unread {
        std::deque<std::pair<StreamId, bool>> events;  // notifying, after the read position
    };
    struct Recent {
        std::string room_id;
        EventPtr event;
        boost::json::array actions;
        std::int64_t ts = 0;
    };
    struct Held {
        std::unordered_map<std::string, Unread> unread;  // by room id
        std::deque<Recent> recent;                       // oldest first
    };
    // The user's counts and recent notifications, held from now on if they were not.
    Held& held_locked(const std::string& user);

    // The user's rule set, read from the store when it is not held: StoreUnavailable when the
    // database cannot be reached.
    Rules rules_locked(const std::string& user) const;
    // The rule sets of the users (in order), those not held read in one store read. For what
    // cannot answer 503 (what runs after a commit): nullptr for each user not held when the
    // database cannot be reached (logged).
    std::vector<Rules> rules_or_skip_locked(const std::vector<std::string>& users) const;
    // The rule set stored as `content` (none: the user changed nothing).
    Rules parse_rules(const std::string& user, const std::optional<std::string>& content) const;
    // A copy of the user's rule set as GET /pushrules/ shows it.
    boost::json::object user_rules_locked(const std::string& user) const;
    // {attribute: value} of the rule the path names.
    Response rule_attribute(const Request& req, const char* attribute);
    push::Outcome evaluate_locked(const Room& room, const boost::json::object& event,
                                  const std::string& sender, const std::string& user,
                                  const boost::json::object& rules) const;
    void appended_locked(const Room& room, const EventPtr& ev);
    // The user's count in the room, counted under `rules` when it is not held.
    Unread& unread_locked(const Room& room, const std::string& user, const Rules& rules);
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
    Rules template_;  // the predefined rules, with @@USER@@ and @@LOCALPART@@
    // Each user's rule set that was read (caches.push_rules users), least recently used out:
    // only ever read under the lock, so no read is overtaken by a change.
    mutable LruCache<std::string, Rules> rules_;
    // Each user's counts and recent notifications (caches.notifications users), least
    // recently used out.
    LruCache<std::string, Held> held_;
    std::vector<Listener> listeners_;
    std::vector<AudienceListener> audience_listeners_;
};

}  // namespace mxvoip::server
