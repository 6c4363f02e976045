// procflow::keyed_result<K, V, Hash>: what reduce_by_key returns. The groups stay in the disjoint
// partitions the replicas built (a key lives in partition keyed_partition_of(hash) of
// keyed_partition_count): no serial rebuild in the caller.
//
//   auto r = pf::pipeline("p").source(...).reduce_by_key("count", key, 0L, fold, combine).run();
//   for (const auto& [key, acc] : r.value) ...          // every group once, partition by partition
//   r.value.size(); r.value.find(key); r.value.at(key); r.value.contains(key);
//   for (const auto& part : r.value.partitions()) ...    // e.g. one writer thread per partition
//   std::unordered_map<K, V, Hash> m = r.value.to_unordered_map();  // (or implicitly) on request
//
// Each partition is a flat open-addressing table over a dense array of {first, second} entries
// (detail/flat_table.hpp): lookup is one probe sequence in the partition the hash names, and
// iteration is a sequential walk over contiguous memory.
#pragma once

#include <procflow/detail/flat_table.hpp>
#include <procflow/hash.hpp>

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <span>
#include <stdexcept>
#include <unordered_map>
#include <utility>
#include <vector>

namespace procflow {

// The number of partitions of a keyed result, and the partition of a key's mixed hash
// (mix_hash(hasher(key))): its top bits. Keyed dispatch sends partition p to replica p % replicas,
// so with reduce_by_key in processes of its own each partition comes from exactly one replica.
inline constexpr unsigned keyed_partition_bits = 6;
inline constexpr std::size_t keyed_partition_count = std::size_t{1} << keyed_partition_bits;
constexpr std::size_t keyed_partition_of(std::uint64_t mixed_hash) noexcept {
  return static_cast<std::size_t>(mixed_hash >> (64 - keyed_partition_bits));
}

template <class K, class V, class Hash = default_hash_t<K>>
class keyed_result {
 public:
  using key_type = K;
  using mapped_type = V;
  using hasher = Hash;
  using value_type = keyed_entry<K, V>;
  using partition = detail::flat_table<K, V, Hash>;

  class const_iterator {
   public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = keyed_entry<K, V>;
    using difference_type = std::ptrdiff_t;
    using pointer = const value_type*;
    using reference = const value_type&;

    const_iterator() = default;
    reference operator*() const noexcept { return *entry_; }
    pointer operator->() const noexcept { return entry_; }
    const_iterator& operator++() noexcept {
      if (++entry_ == part_->end()) skip_to_next(part_ + 1);
      return *this;
    }
    const_iterator operator++(int) noexcept {
      const_iterator old = *this;
      ++*this;
      return old;
    }
    friend bool operator==(const const_iterator& a, const const_iterator& b) noexcept { return a.entry_ == b.entry_; }

   private:
    friend class keyed_result;
    const_iterator(const partition* part, const partition* last, const value_type* entry) noexcept
        : part_(part), last_(last), entry_(entry) {}
    // Moves to the first entry of the first non-empty partition from `part` on (or to the end).
    void skip_to_next(const partition* part) noexcept {
      while (part != last_ && part->empty()) ++part;
      part_ = part;
      entry_ = part == last_ ? nullptr : part->begin();
    }

    const partition* part_ = nullptr;
    const partition* last_ = nullptr;
    const value_type* entry_ = nullptr;  // null at the end
  };
  using iterator = const_iterator;

  keyed_result() : parts_(keyed_partition_count) {}
  // `parts` must hold keyed_partition_count partitions, each key in partition keyed_partition_of.
  explicit keyed_result(std::vector<partition> parts) : parts_(std::move(parts)) {
    if (parts_.size() != keyed_partition_count) throw std::invalid_argument("procflow::keyed_result: wrong partition count");
  }

  std::size_t size() const noexcept {
    std::size_t n = 0;
    for (const auto& p : parts_) n += p.size();
    return n;
  }
  bool empty() const noexcept { return size() == 0; }

  const_iterator begin() const noexcept {
    const_iterator it(parts_.data(), parts_.data() + parts_.size(), nullptr);
    it.skip_to_next(parts_.data());
    return it;
  }
  const_iterator end() const noexcept {
    return const_iterator(parts_.data() + parts_.size(), parts_.data() + parts_.size(), nullptr);
  }

  const_iterator find(const K& key) const {
    const std::uint64_t h = partition::hash_of(key);
    const partition& p = parts_[keyed_partition_of(h)];
    const value_type* e = p.find(key, h);
    return e ? const_iterator(&p, parts_.data() + parts_.size(), e) : end();
  }
  bool contains(const K& key) const { return find(key) != end(); }
  std::size_t count(const K& key) const { return contains(key) ? 1 : 0; }
  const V& at(const K& key) const {
    const auto it = find(key);
    if (it == end()) throw std::out_of_range("procflow::keyed_result::at: no such key");
    return it->second;
  }

  // The disjoint partitions, each iterable as {first, second} entries with size() (and find(key,
  // partition::hash_of(key))); process them independently, e.g. one thread or writer each.
  std::span<const partition> partitions() const noexcept { return parts_; }

  std::unordered_map<K, V, Hash> to_unordered_map() const& {
    std::unordered_map<K, V, Hash> m;
    m.reserve(size());
    for (const auto& [k, v] : *this) m.emplace(k, v);
    return m;
  }
  std::unordered_map<K, V, Hash> to_unordered_map() && {
    std::unordered_map<K, V, Hash> m;
    m.reserve(size());
    for (auto& p : parts_)
      for (auto& e : p) m.emplace(std::move(e.first), std::move(e.second));
    parts_.assign(keyed_partition_count, partition{});
    return m;
  }
  // The partitions moved out (keyed_partition_count of them; this result is left empty), e.g. to
  // hand each to a thread or a writer of its own.
  std::vector<partition> take_partitions() && {
    std::vector<partition> out = std::move(parts_);
    parts_.assign(keyed_partition_count, partition{});
    return out;
  }
  // Code written when reduce_by_key returned a std::unordered_map keeps compiling.
  operator std::unordered_map<K, V, Hash>() const& { return to_unordered_map(); }  // NOLINT(google-explicit-constructor)
  operator std::unordered_map<K, V, Hash>() && { return std::move(*this).to_unordered_map(); }  // NOLINT

  // Same groups with equal accumulators (V needs ==).
  friend bool operator==(const keyed_result& a, const keyed_result& b) {
    if (a.size() != b.size()) return false;
    for (const auto& [k, v] : a) {
      const auto it = b.find(k);
      if (it == b.end() || !(it->second == v)) return false;
    }
    return true;
  }
  template <class H, class Eq, class Alloc>
  friend bool operator==(const keyed_result& a, const std::unordered_map<K, V, H, Eq, Alloc>& b) {
    if (a.size() != b.size()) return false;
    for (const auto& [k, v] : a) {
      const auto it = b.find(k);
      if (it == b.end() || !(it->second == v)) return false;
    }
    return true;
  }

 private:
  std::vector<partition> parts_;
};

}  // namespace procflow
