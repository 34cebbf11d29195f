#pragma once

// A bounded map that forgets its least recently used entry when it is full: what a module
// keeps of its tables in memory, so memory does not grow with the database. Not
// synchronised: its owner guards it (the model's lock).
#include <cstddef>
#include <functional>
#include <iterator>
#include <list>
#include <unordered_map>
#include <utility>

namespace mxvoip::server {

template <typename Key, typename Value, typename Hash = std::hash<Key>>
class LruCache {
  public:
    // An entry for which `keep` says so is passed over when one must go (it is in use): the
    // cache may then hold more than its capacity until it is no longer kept.
    using Keep = std::function<bool(const Value&)>;
    explicit LruCache(std::size_t capacity, Keep keep = {})
        : capacity_(capacity == 0 ? 1 : capacity), keep_(std::move(keep)) {}

    // The entry, now the most recently used; nullptr when it is not held.
    Value* get(const Key& key) {
        auto it = index_.find(key);
        if (it == index_.end()) return nullptr;
        entries_.splice(entries_.begin(), entries_, it->second);
        return &it->second->second;
    }

    // The entry, its place in the order left as it is; nullptr when it is not held.
    Value* peek(const Key& key) {
        auto it = index_.find(key);
        return it == index_.end() ? nullptr : &it->second->second;
    }

    // Holds `value` under `key` (replacing what was there) as the most recently used; the least
    // recently used entry goes when the cache would hold more than its capacity.
    Value& put(const Key& key, Value value) {
        Value& held = hold(key, std::move(value));
        shrink(entries_.begin());  // never the one just put
        return held;
    }

    // As put(), but nothing goes: for a cache whose users may still hold references to its
    // entries, which then calls trim() when none does.
    Value& hold(const Key& key, Value value) {
        if (auto* held = get(key)) return *held = std::move(value);
        entries_.emplace_front(key, std::move(value));
        index_.emplace(key, entries_.begin());
        return entries_.front().second;
    }

    // The least recently used entries that are not kept go until the cache holds no more than
    // its capacity. Returns how many went.
    std::size_t trim() { return shrink(entries_.end()); }

    void erase(const Key& key) {
        if (auto it = index_.find(key); it != index_.end()) {
            entries_.erase(it->second);
            index_.erase(it);
        }
    }
    // Every entry `pred(key, value)` is true of goes (a walk over all: for what is rare).
    template <typename Pred>
    void erase_if(Pred pred) {
        for (auto it = entries_.begin(); it != entries_.end();) {
            if (pred(it->first, it->second)) {
                index_.erase(it->first);
                it = entries_.erase(it);
            } else {
                ++it;
            }
        }
    }

    // Calls f(key, value) for every entry, leaving the order as it is (a walk over all: for
    // what is rare).
    template <typename F>
    void for_each(F f) {
        for (auto& [key, value] : entries_) f(key, value);
    }

    std::size_t size() const { return entries_.size(); }
    std::size_t capacity() const { return capacity_; }

  private:
    // Drops the least recently used entries not kept, stopping at `spared`, down to capacity.
    std::size_t shrink(typename std::list<std::pair<Key, Value>>::iterator spared) {
        std::size_t dropped = 0;
        for (auto it = entries_.end(); entries_.size() > capacity_ && it != entries_.begin();) {
            auto victim = std::prev(it);
            if (victim == spared) break;
            if (keep_ && keep_(victim->second)) {
                it = victim;
                continue;
            }
            index_.erase(victim->first);
            entries_.erase(victim);
            ++dropped;
        }
        return dropped;
    }

    using Entries = std::list<std::pair<Key, Value>>;  // most recently used first
    std::size_t capacity_;
    Keep keep_;
    Entries entries_;
    std::unordered_map<Key, typename Entries::iterator, Hash> index_;
};

}  // namespace mxvoip::server
