// stored_key_t<L>: the key a keyed stage stores for a key function that returns L, and
// lookup_hash<Hash, K>(key): the hash of such a key without building the stored key.
//
// A reduce_by_key key function may return std::string_view (a view into its item, valid while the
// item is): the groups are keyed by std::string, and a row whose key is already a group is looked
// up with the view (heterogeneous lookup) — the std::string is built only when the key is new.
// Without it every row built (and freed) a std::string just to find its group. std::hash<std::string>
// and std::hash<std::string_view> agree on equal text (the standard says so), so a view is hashed
// to its string's hash; a user hasher callable only with const std::string& hashes a copy.
#pragma once

#include <string>
#include <string_view>
#include <type_traits>

namespace procflow::detail {

template <class L>
struct stored_key {
  using type = L;
};
template <>
struct stored_key<std::string_view> {
  using type = std::string;
};

template <class L>
using stored_key_t = typename stored_key<L>::type;

// Hash{}(key) for a lookup key L whose stored key is K (the same value the stored key hashes to).
template <class Hash, class K, class L>
std::size_t lookup_hash(const L& key) {
  if constexpr (std::is_same_v<K, L>) {
    return static_cast<std::size_t>(Hash{}(key));
  } else if constexpr (std::is_same_v<Hash, std::hash<std::string>>) {
    return std::hash<std::string_view>{}(key);
  } else if constexpr (std::is_invocable_r_v<std::size_t, const Hash&, const L&>) {
    return static_cast<std::size_t>(Hash{}(key));
  } else {
    return static_cast<std::size_t>(Hash{}(K(key)));
  }
}

}  // namespace procflow::detail
