// flat_table<K, V, Hash>: the open-addressing hash table behind reduce_by_key's partitions.
//
// Entries live densely in insertion order in one vector of {first, second} (so iteration, encoding
// and decoding are sequential passes over contiguous memory, and a raw K/V pair is copied in bulk);
// a separate power-of-two index of 32-bit slots is probed linearly, at most half full (a quarter
// while small: capacity_of). A slot of an
// index of 2^b slots holds the entry's position + 1 in its low b bits (entries <= 2^(b-1)) and
// 32 - b bits of the hash above them as a tag, so most probes of another key's slot never touch
// that entry (without the tag, 1 M keys probed 1.6x slower). 4 bytes a slot rather than 8 halve
// the index: 64 MB less at 5 M keys. The caller passes the key's mixed hash
// (hash_of: mix_hash(Hash{}(key))) so a partitioned owner hashes each key once; Hash is kept only to
// rebuild the index after decoding.
#pragma once

#include <procflow/codec.hpp>
#include <procflow/error.hpp>
#include <procflow/hash.hpp>
#include <procflow/detail/stored_key.hpp>
#include <procflow/detail/table_memory.hpp>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace procflow {

// One group of a keyed result: `first` is the key, `second` the accumulator (the member names of
// std::pair, so code written for an unordered_map's value_type reads the same; structured
// bindings give `auto& [key, acc]`).
template <class K, class V>
struct keyed_entry {
  K first;
  V second;
  bool operator==(const keyed_entry&) const = default;
  // So std::map<K, V>(r.begin(), r.end()) and the like work as with an unordered_map's entries.
  template <class A, class B>
    requires std::is_constructible_v<A, const K&> && std::is_constructible_v<B, const V&>
  operator std::pair<A, B>() const {  // NOLINT(google-explicit-constructor)
    return std::pair<A, B>(first, second);
  }
};

namespace detail {

// Whether a stored key equals a lookup key. Strings of up to 16 bytes (words, country codes, most
// ETL keys) compare inline as their short_string_words (hash.hpp): the call to memcmp that
// std::string's == makes cost 8% of a keyed fold of 2-byte keys (geoip_etl).
template <class K, class L>
inline bool keys_equal(const K& stored, const L& key) noexcept(noexcept(stored == key)) {
  if constexpr (std::is_same_v<K, std::string> && std::is_convertible_v<const L&, std::string_view>) {
    const std::string_view b(key);
    const std::size_t n = stored.size();
    if (n != b.size()) return false;
    if (n > 16) return std::memcmp(stored.data(), b.data(), n) == 0;
    return short_string_words(stored.data(), n) == short_string_words(b.data(), n);
  } else {
    return stored == key;
  }
}

template <class K, class V, class Hash>
class flat_table {
 public:
  using entry = keyed_entry<K, V>;
  using entry_vector = std::vector<entry, table_allocator<entry>>;

  // std::string keys under the default hasher hash by string_key_hash (hash.hpp), the same for a
  // stored key and a view of it; every other key by Hash.
  static constexpr bool string_keys = std::is_same_v<K, std::string> && std::is_same_v<Hash, std::hash<std::string>>;
  static std::uint64_t hash_of(const K& key) {
    if constexpr (string_keys) return mix_hash(string_key_hash(key));
    else return mix_hash(static_cast<std::uint64_t>(Hash{}(key)));
  }
  // The same hash for a lookup key that compares with K (a std::string_view for std::string keys).
  template <class L>
  static std::uint64_t hash_of(const L& key) {
    if constexpr (string_keys && std::is_convertible_v<const L&, std::string_view>) return mix_hash(string_key_hash(std::string_view(key)));
    else if constexpr (string_keys) return mix_hash(string_key_hash(K(key)));
    else return mix_hash(static_cast<std::uint64_t>(lookup_hash<Hash, K>(key)));
  }

  std::size_t size() const noexcept { return entries_.size(); }
  bool empty() const noexcept { return entries_.empty(); }
  const entry* begin() const noexcept { return entries_.data(); }
  const entry* end() const noexcept { return entries_.data() + entries_.size(); }
  entry* begin() noexcept { return entries_.data(); }
  entry* end() noexcept { return entries_.data() + entries_.size(); }
  entry_vector& entries() noexcept { return entries_; }
  const entry_vector& entries() const noexcept { return entries_; }

  void clear() noexcept {
    entries_.clear();
    index_.clear();
    capacity_ = 0;
    mask_ = 0;
    position_bits_ = 0;
    position_mask_ = 0;
  }

  // The entry for `key` (hash = hash_of(key)), or null.
  const entry* find(const K& key, std::uint64_t hash) const noexcept {
    if (index_.empty()) return nullptr;
    const std::uint32_t tag = tag_of(hash);
    for (std::size_t slot = hash & mask_;; slot = (slot + 1) & mask_) {
      const std::uint32_t s = index_[slot];
      if (s == 0) return nullptr;
      if ((s & ~position_mask_) == tag) {
        const entry& e = entries_[(s & position_mask_) - 1];
        if (keys_equal(e.first, key)) return &e;
      }
    }
  }
  entry* find(const K& key, std::uint64_t hash) noexcept {
    return const_cast<entry*>(std::as_const(*this).find(key, hash));
  }

  // Starts loading the index slot that a probe for `hash` reads first, and (when that slot is
  // already cached) the entry it names: a hint only. Batched inserts call it for a window of items
  // before probing any of them, so that their cache misses overlap instead of following one another.
  void prefetch(std::uint64_t hash) const noexcept {
    if (!index_.empty()) __builtin_prefetch(index_.data() + (hash & mask_));
  }
  void prefetch_entry(std::uint64_t hash) const noexcept {
    if (index_.empty()) return;
    const std::uint32_t s = index_[hash & mask_];
    if (s != 0) __builtin_prefetch(entries_.data() + ((s & position_mask_) - 1));
  }

  // The accumulator for `key` (a K or a lookup key that compares with K, e.g. a std::string_view:
  // K is built from it only when it is inserted), inserted as `init` (a copy) when absent. The probe of a key already
  // present is the per-item path of every reduce_by_key: small enough to inline into the caller's
  // loop; growing and inserting stay out of line (inlined, they made the whole call too big to
  // inline, and the call's register saves cost about a tenth of the probe).
  template <class Key>
  V& find_or_insert(Key&& key, std::uint64_t hash, const V& init) {
    if (entries_.size() < capacity_) [[likely]] {
      const std::uint32_t tag = tag_of(hash);
      for (std::size_t slot = hash & mask_;; slot = (slot + 1) & mask_) {
        const std::uint32_t s = index_[slot];
        if (s == 0) return insert_at(slot, std::forward<Key>(key), tag, init);
        if ((s & ~position_mask_) == tag) {
          entry& e = entries_[(s & position_mask_) - 1];
          if (keys_equal(e.first, key)) return e.second;
        }
      }
    }
    return grow_and_find_or_insert(std::forward<Key>(key), hash, init);
  }

  // Appends an entry known to be absent (decoding, merging disjoint partitions).
  void insert_new(entry&& e, std::uint64_t hash) {
    if (entries_.size() >= capacity_) [[unlikely]] grow();
    if (entries_.size() >= max_entries) throw procflow::error("reduce_by_key: more than 2^31 keys in one partition");
    entries_.push_back(std::move(e));
    place(hash, entries_.size());
  }

  // Capacity for n entries without growing.
  void reserve(std::size_t n) {
    entries_.reserve(n);
    if (n > capacity_) rebuild_index(slots_for(n));
  }

  // Builds the index from the entries (after decoding); throws on a duplicate key.
  void rebuild_after_decode() {
    if (entries_.size() > max_entries) throw codec_error("codec: more than 2^31 keys in one partition of a keyed result");
    rebuild_index(slots_for(entries_.size()), true);
  }

 private:
  // Positions + 1 fit an index slot, and the index (2 slots an entry at most) fits a size_t.
  static constexpr std::size_t max_entries = std::size_t{1} << 31;

  // How many entries an index of `slots` slots takes before it grows: a quarter of its slots up to
  // sparse_slots (32 KiB), half above. In a sparser index fewer probes pass another key's slot
  // before they reach their own: groupby_bench at 1e5 keys (64 tables of ~1 600 keys a replica)
  // 0.161-0.164 s -> 0.150-0.154 s; a single-process fold of 10 M items 12.3 -> 10.9 ns an item
  // (README, group-by). Above, the index of millions of keys stays half full: its memory counts.
  static constexpr std::size_t sparse_slots = std::size_t{1} << 13;
  static constexpr std::size_t capacity_of(std::size_t slots) noexcept { return slots <= sparse_slots ? slots >> 2 : slots >> 1; }
  // The smallest index (at least 16 slots) that takes n entries.
  static std::size_t slots_for(std::size_t n) noexcept {
    std::size_t slots = 16;
    while (capacity_of(slots) < n && slots <= max_entries) slots *= 2;
    return slots;
  }

  void grow() { rebuild_index(std::max<std::size_t>(16, index_.size() * 2)); }

  // find_or_insert's slow paths. `slot` is the empty slot its probe for `key` ended on.
  template <class Key>
  [[gnu::noinline]] V& insert_at(std::size_t slot, Key&& key, std::uint32_t tag, const V& init) {
    if (entries_.size() >= max_entries) throw procflow::error("reduce_by_key: more than 2^31 keys in one partition");
    entries_.push_back(entry{K(std::forward<Key>(key)), init});
    index_[slot] = tag | static_cast<std::uint32_t>(entries_.size());
    return entries_.back().second;
  }
  template <class Key>
  [[gnu::noinline]] V& grow_and_find_or_insert(Key&& key, std::uint64_t hash, const V& init) {
    grow();
    return find_or_insert(std::forward<Key>(key), hash, init);
  }

  void place(std::uint64_t hash, std::size_t position) noexcept {
    std::size_t slot = hash & mask_;
    while (index_[slot] != 0) slot = (slot + 1) & mask_;
    index_[slot] = tag_of(hash) | static_cast<std::uint32_t>(position);
  }

  // The tag: hash bits 32 .. 63 - b (not the top bits, which name the partition) above the b
  // position bits of an index of 2^b slots; 0 when b = 32.
  std::uint32_t tag_of(std::uint64_t hash) const noexcept {
    return static_cast<std::uint32_t>(((hash >> 32) << position_bits_) & 0xffffffffULL);
  }

  void rebuild_index(std::size_t slots, bool check_duplicates = false) {
    if (slots > (std::size_t{1} << 32)) throw procflow::error("reduce_by_key: more than 2^31 keys in one partition");
    index_.assign(slots, 0);
    capacity_ = capacity_of(slots);
    mask_ = slots - 1;
    position_bits_ = static_cast<unsigned>(std::countr_zero(slots));
    position_mask_ = static_cast<std::uint32_t>((std::uint64_t{1} << position_bits_) - 1);
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      const std::uint64_t hash = hash_of(entries_[i].first);
      std::size_t slot = hash & mask_;
      const std::uint32_t tag = tag_of(hash);
      for (; index_[slot] != 0; slot = (slot + 1) & mask_)
        if (check_duplicates && (index_[slot] & ~position_mask_) == tag &&
            entries_[(index_[slot] & position_mask_) - 1].first == entries_[i].first)
          throw codec_error("codec: duplicate key in a keyed result");
      index_[slot] = tag | static_cast<std::uint32_t>(i + 1);
    }
  }

  entry_vector entries_;
  std::vector<std::uint32_t, table_allocator<std::uint32_t, true>> index_;  // 0 = empty, else tag | (the entry's position + 1)
  std::size_t capacity_ = 0;            // entries the index takes before it grows (capacity_of)
  std::size_t mask_ = 0;
  unsigned position_bits_ = 0;         // log2(index_.size())
  std::uint32_t position_mask_ = 0;    // the low position_bits_ bits
};

}  // namespace detail
}  // namespace procflow
