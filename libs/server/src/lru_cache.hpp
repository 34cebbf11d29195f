#pragma once

// A bounded map that forgets its least recently used entry when it is full: what a module
// keeps of its tables in memory, so memory does not grow with the database. Not
// synchronised: its owner guards it (the model's lock).
#include <cstddef>
#include <list>
#include <unordered_map>
#include <utility>

namespace mxvoip::server {

template <typename Key, typename Value, typename Hash = std::hash<Key>>
class LruCache {
  public:
    explicit LruCache(std::size_t capacity) : capacity_(capacity == 0 ? 1 : capacity) {}

    // The entry, now the most recently used; nullptr when it is not held.
    Value* get(const Key& key) {
        auto it = index_.find(key);
        if (it == index_.end()) return nullptr;
        entries_.splice(entries_.begin(), entries_, it->second);
        return &it->second->second;
    }

    // Holds `value` under `key` (replacing what was there) as the most recently used; the least
    // recently used entry goes when the cache would hold more than its capacity.
    Value& put(const Key& key, Value value) {
        if (auto* held = get(key)) return *held = std::move(value);
        entries_.emplace_front(key, std::move(value));
        index_.emplace(key, entries_.begin());
        if (entries_.size() > capacity_) {
            index_.erase(entries_.back().first);
            entries_.pop_back();
        }
        return entries_.front().second;
    }

    void erase(const Key& key) {
        if (auto it = index_.find(key); it != index_.end()) {
            entries_.erase(it->second);
            index_.erase(it);
        }
    }

    std::size_t size() const { return entries_.size(); }
    std::size_t capacity() const { return capacity_; }

  private:
    using Entries = std::list<std::pair<Key, Value>>;  // most recently used first
    std::size_t capacity_;
    Entries entries_;
    std::unordered_map<Key, typename Entries::iterator, Hash> index_;
};

}  // namespace mxvoip::server
