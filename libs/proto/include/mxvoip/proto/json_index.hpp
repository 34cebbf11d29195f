#pragma once

#include <boost/container/small_vector.hpp>
#include <boost/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace mxvoip::proto {

namespace json = boost::json;

// JSON text checked and indexed in one pass, without building a DOM: values stay where they
// lie in the text and are copied out only when read. It exists for the hot path of call
// events, whose SDPs are kilobytes of escaped text that a DOM would copy once more.
//
// The index takes only the plain shape clients send: objects, arrays, strings with the short
// escapes (\" \\ \/ \b \f \n \r \t), integers within +-(2^53-1), true, false, null, at most 32
// levels deep, unique keys without escapes. For anything else — including text that is not
// JSON at all — ok() is false and the caller uses parse_json and the DOM instead, so a value
// read through the index is always the one the DOM would hold.
//
// The text is not copied: it must outlive the index.
class JsonIndex {
  public:
    enum class Kind : std::uint8_t { object, array, string, integer, boolean, null };

  private:
    struct Entry {
        Kind kind = Kind::null;
        bool escaped = false;      // a string with backslash escapes
        std::uint32_t begin = 0;   // strings: after the opening quote; others: first character
        std::uint32_t end = 0;     // strings: at the closing quote; others: after the last one
        std::uint32_t next = 0;    // the entry after this value and everything inside it
        std::uint32_t count = 0;   // members of an object, elements of an array
        std::int64_t integer = 0;  // integers; booleans as 0/1; strings: their first 8 bytes
    };

  public:
    explicit JsonIndex(std::string_view text);
    bool ok() const { return ok_; }
    std::string_view text() const { return text_; }

    // A value in the index. Cheap to copy; valid while the index lives.
    class Node {
      public:
        Kind kind() const { return e().kind; }
        bool is_object() const { return kind() == Kind::object; }
        bool is_array() const { return kind() == Kind::array; }
        bool is_string() const { return kind() == Kind::string; }
        bool is_integer() const { return kind() == Kind::integer; }
        bool is_bool() const { return kind() == Kind::boolean; }
        bool is_number() const { return is_integer(); }  // the index holds integers only
        std::optional<std::int64_t> as_integer() const {
            return is_integer() ? std::optional(e().integer) : std::nullopt;
        }

        // Object member by key, or nullopt.
        std::optional<Node> find(std::string_view key) const;
        // Calls f(key, node) for each member of an object, in text order.
        template <typename F>
        void for_each_member(F&& f) const {
            std::uint32_t i = index_ + 1;
            for (std::uint32_t n = 0; n < e().count; ++n) {
                Node key(*ix_, i);
                Node value(*ix_, i + 1);
                f(key.raw(), value);
                i = value.e().next;
            }
        }
        std::uint32_t size() const { return e().count; }  // members or elements
        // Calls f(node) for each element of an array.
        template <typename F>
        void for_each_element(F&& f) const {
            std::uint32_t i = index_ + 1;
            for (std::uint32_t n = 0; n < e().count; ++n) {
                Node v(*ix_, i);
                f(v);
                i = v.e().next;
            }
        }

        // A string's value, unescaped.
        std::string string() const;
        // A string as written between its quotes (equal to its value when it has no escapes).
        std::string_view raw() const { return ix_->text_.substr(e().begin, e().end - e().begin); }
        bool string_equals(std::string_view s) const {
            return e().escaped ? string() == s : raw() == s;
        }
        bool has_escapes() const { return e().escaped; }
        std::int64_t integer() const { return e().integer; }
        bool boolean() const { return e().integer != 0; }
        // The value as a DOM (for fields kept verbatim); parses just this value's text.
        json::value to_value() const;

      private:
        friend class JsonIndex;
        Node(const JsonIndex& ix, std::uint32_t index) : ix_(&ix), index_(index) {}
        const Entry& e() const { return ix_->tape_[index_]; }
        const JsonIndex* ix_;
        std::uint32_t index_;
    };

    // The top-level value; only when ok().
    Node root() const { return Node(*this, 0); }

  private:
    class Builder;

    std::string_view text_;
    bool ok_ = false;
    boost::container::small_vector<Entry, 48> tape_;
};

}  // namespace mxvoip::proto
