#pragma once

// The reads of a cache's entries made without the model's lock, and the writes applied to
// those entries meanwhile: a read that a write overtook may miss what the write changed, so it
// is not cached. Not synchronised: its owner guards it (the model's lock).
#include <cstdint>
#include <functional>
#include <unordered_map>

namespace mxvoip::server {

template <typename Key, typename Hash = std::hash<Key>>
class ReadsInFlight {
  public:
    using Ticket = std::uint64_t;

    // A read of `key` begins; what it returns goes to overtaken() when the read ended.
    Ticket started(const Key& key) {
        Entry& e = entries_[key];
        ++e.readers;
        return e.writes;
    }
    // The read of `key` that started() with `ticket` ended: whether a write to its entry was
    // applied meanwhile.
    bool overtaken(const Key& key, Ticket ticket) {
        auto it = entries_.find(key);
        const bool overtaken = it->second.writes != ticket;
        if (--it->second.readers == 0) entries_.erase(it);
        return overtaken;
    }
    // A write to `key` was applied while its entry was not held.
    void written(const Key& key) {
        if (auto it = entries_.find(key); it != entries_.end()) ++it->second.writes;
    }

  private:
    struct Entry {
        int readers = 0;
        Ticket writes = 0;
    };
    std::unordered_map<Key, Entry, Hash> entries_;
};

}  // namespace mxvoip::server
