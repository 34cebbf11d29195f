#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace mxvoip::server {

// The transaction ids each device used, so that a retried request gets the first attempt's
// answer instead of acting twice. An id is honoured for a day (as Synapse does), for at most
// the device's `per_device` newest ids, and while the device exists: a retry only ever comes
// from the same device, soon, and a device that signed out sends nothing more. So what this
// holds is bounded by the devices signed in, not by the traffic of the last day.
//
// Across a restart, ids that were stored (those of room events) are read back per device, on
// its first request with one (recall): start-up reads none, and what is held is bounded by the
// devices that sent something since, not by the database.
class TxnIds {
  public:
    static constexpr std::int64_t kLifetimeMs = 24 * 3600 * 1000;

    explicit TxnIds(std::size_t per_device) : per_device_(per_device) {}
    std::size_t per_device() const { return per_device_; }

    // Whether the device's stored ids were recalled since start.
    bool recalled(const std::string& device) const {
        auto d = devices_.find(device);
        return d != devices_.end() && d->second.recalled;
    }
    struct Stored {
        std::string txn;
        std::string value;
        std::int64_t ts = 0;
    };
    // The device's stored ids, newest first: older than any remembered since, they go in
    // front, as far as the device's limit leaves room. Only the first recall counts.
    void recall(const std::string& device, std::vector<Stored> newest_first) {
        auto& d = devices_[device];
        if (d.recalled) return;
        d.recalled = true;
        for (auto& r : newest_first) {
            if (d.order.size() >= per_device_) break;
            auto [it, fresh] =
                d.by_txn.try_emplace(std::move(r.txn), Entry{std::move(r.value), r.ts});
            if (fresh) d.order.push_front(&it->first);
        }
    }

    // What was remembered for the device's `txn`, or nullptr.
    const std::string* find(const std::string& device, const std::string& txn,
                            std::int64_t now_ms) const {
        auto d = devices_.find(device);
        if (d == devices_.end()) return nullptr;
        auto it = d->second.by_txn.find(txn);
        if (it == d->second.by_txn.end() || it->second.ts < now_ms - kLifetimeMs) return nullptr;
        return &it->second.value;
    }

    void remember(const std::string& device, std::string txn, std::string value, std::int64_t ts) {
        auto& d = devices_[device];
        auto [it, fresh] = d.by_txn.try_emplace(std::move(txn), Entry{std::move(value), ts});
        if (!fresh) return;
        d.order.push_back(&it->first);
        while (d.order.size() > per_device_ ||
               (!d.order.empty() && d.by_txn.at(*d.order.front()).ts < ts - kLifetimeMs)) {
            d.by_txn.erase(d.by_txn.find(*d.order.front()));
            d.order.pop_front();
        }
    }

    void forget_device(const std::string& device) { devices_.erase(device); }

    // A transaction id whose first attempt is being written: claimed until that write settled
    // (stored or refused), so that a retry meanwhile waits for its outcome instead of acting
    // twice.
    bool in_flight(const std::string& device, const std::string& txn) const {
        return in_flight_.count(device + '\n' + txn) != 0;
    }
    void claim(const std::string& device, const std::string& txn) {
        in_flight_.insert(device + '\n' + txn);
    }
    void settled(const std::string& device, const std::string& txn) {
        in_flight_.erase(device + '\n' + txn);
    }

    std::size_t size() const {
        std::size_t n = 0;
        for (const auto& [_, d] : devices_) n += d.by_txn.size();
        return n;
    }

  private:
    struct Entry {
        std::string value;
        std::int64_t ts = 0;
    };
    struct Device {
        std::unordered_map<std::string, Entry> by_txn;
        // The keys of by_txn, oldest first (stable: it is a node container).
        std::deque<const std::string*> order;
        bool recalled = false;
    };
    std::size_t per_device_;
    std::unordered_map<std::string, Device> devices_;
    std::unordered_set<std::string> in_flight_;  // device + '\n' + txn
};

}  // namespace mxvoip::server
