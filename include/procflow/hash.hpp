// Key hashing for reduce_by_key.
//
//   procflow::hash<K>          std::hash<K> where the standard library has one; for std::pair and
//                              std::tuple (of anything procflow::hash handles) a combination of
//                              the elements' hashes, so composite keys work out of the box
//   procflow::default_hash_t<K> the hasher reduce_by_key uses when none is given: std::hash<K> if
//                              it exists (so keyed_result::to_unordered_map() gives
//                              std::unordered_map<K, Acc>), otherwise procflow::hash<K>
//   procflow::mix_hash(h)      a strong 64-bit finalizer (murmur3's fmix64)
//
// reduce_by_key's keyed dispatch sends a key to replica keyed_partition_of(mix_hash(hasher(key)))
// % replicas (keyed.hpp; a std::string key under the default std::hash<std::string>:
// detail::string_key_hash(key) in place of hasher(key)); key_by(fn) to mix_hash(procflow::hash(key)) % replicas. The mix matters:
// libstdc++'s integer hash is the identity, so keys 0, 4, 8, ... would all land on one of 4
// replicas with a plain `hash % replicas`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

namespace procflow {

// murmur3's 64-bit finalizer: every input bit affects every output bit (avalanche).
constexpr std::uint64_t mix_hash(std::uint64_t h) noexcept {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

namespace detail {

// A string of at most 16 bytes as two 64-bit words that together hold every one of its bytes:
// two overlapping 8-byte loads (8..16 bytes), two overlapping 4-byte loads (4..7), or the first,
// middle and last byte (1..3). Two strings of the same length are equal exactly when their words
// are: the short-string step of both string_key_hash and keys_equal (flat_table.hpp).
struct string_words {
  std::uint64_t a = 0, b = 0;
  bool operator==(const string_words&) const = default;
};
inline string_words short_string_words(const char* s, std::size_t n) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(s);
  const auto load = [p](std::size_t at, auto word) {
    std::memcpy(&word, p + at, sizeof word);
    return static_cast<std::uint64_t>(word);
  };
  if (n >= 8) return {load(0, std::uint64_t{}), load(n - 8, std::uint64_t{})};
  if (n >= 4) return {load(0, std::uint32_t{}), load(n - 4, std::uint32_t{})};
  if (n > 0) return {std::uint64_t{p[0]} << 16 | std::uint64_t{p[n >> 1]} << 8 | p[n - 1], 0};
  return {};
}

// The hash reduce_by_key keys std::string keys by when their hasher is the default
// std::hash<std::string> (flat_table::hash_of; a stored string and a view of it hash alike).
// Strings of up to 16 bytes — words, codes, most ETL keys — take two loads and one 64x64->128
// multiply (the short-input step of wyhash): libstdc++'s _Hash_bytes, a call per key, was 6.5% of
// a keyed fold of 2-byte keys (geoip_etl). Longer strings: std::hash<std::string_view>.
inline std::uint64_t string_key_hash(std::string_view s) noexcept {
  const std::size_t n = s.size();
  if (n > 16) return static_cast<std::uint64_t>(std::hash<std::string_view>{}(s));
  const string_words w = short_string_words(s.data(), n);
  __extension__ using u128 = unsigned __int128;
  const u128 m = static_cast<u128>(w.a ^ 0xa0761d6478bd642fULL) * (w.b ^ 0xe7037ed1a0b428dbULL ^ n);
  return static_cast<std::uint64_t>(m) ^ static_cast<std::uint64_t>(m >> 64);
}

}  // namespace detail

// True when std::hash<K> is enabled (a disabled specialization is not default constructible).
template <class K>
inline constexpr bool has_std_hash_v =
    std::is_default_constructible_v<std::hash<K>> && std::is_invocable_r_v<std::size_t, const std::hash<K>&, const K&>;

template <class K>
struct hash {
  static_assert(has_std_hash_v<K>,
                "procflow::hash<K>: K has no std::hash and is not a std::pair or std::tuple of hashable types; "
                "specialize std::hash<K> or pass a hasher to reduce_by_key()");
  std::size_t operator()(const K& key) const noexcept(noexcept(std::hash<K>{}(key))) { return std::hash<K>{}(key); }
};

namespace detail {
// Folds one element's hash into a running seed; the element hash is mixed first so that
// identity hashes of small integers do not cancel out.
constexpr std::size_t combine_hash(std::size_t seed, std::size_t element) noexcept {
  return static_cast<std::size_t>(mix_hash(seed ^ (mix_hash(element) + 0x9e3779b97f4a7c15ULL + (seed << 6) + (seed >> 2))));
}

template <class K>
struct is_hashable : std::bool_constant<has_std_hash_v<K>> {};
template <class A, class B>
struct is_hashable<std::pair<A, B>> : std::bool_constant<is_hashable<A>::value && is_hashable<B>::value> {};
template <class... Ts>
struct is_hashable<std::tuple<Ts...>> : std::bool_constant<(is_hashable<Ts>::value && ...)> {};
}  // namespace detail

// True when procflow::hash<K> works: std::hash<K>, or pairs/tuples (nested) of such.
template <class K>
inline constexpr bool hashable_v = detail::is_hashable<K>::value;

template <class A, class B>
struct hash<std::pair<A, B>> {
  std::size_t operator()(const std::pair<A, B>& key) const {
    return detail::combine_hash(detail::combine_hash(0, hash<A>{}(key.first)), hash<B>{}(key.second));
  }
};

template <class... Ts>
struct hash<std::tuple<Ts...>> {
  std::size_t operator()(const std::tuple<Ts...>& key) const {
    return std::apply(
        [](const Ts&... element) {
          std::size_t seed = 0;
          ((seed = detail::combine_hash(seed, hash<Ts>{}(element))), ...);
          return seed;
        },
        key);
  }
};

template <class K>
using default_hash_t = std::conditional_t<has_std_hash_v<K>, std::hash<K>, hash<K>>;

}  // namespace procflow
