// Test support: a reduce that sees the order of its items. The fold is a polynomial hash of the
// sequence and the combine joins two hashed runs, so it is associative but not commutative: a
// partial combined out of order, lost or counted twice changes the value.
#pragma once

#include <procflow/codec.hpp>

#include <cstdint>

namespace procflow::test {

struct Ordered_hash {
  std::uint64_t h = 0, n = 0;
  bool operator==(const Ordered_hash&) const = default;
};
PROCFLOW_CODEC(Ordered_hash, h, n);

inline std::uint64_t pow31(std::uint64_t n) {
  std::uint64_t r = 1, b = 31;
  for (; n; n >>= 1, b *= b)
    if (n & 1) r *= b;
  return r;
}
inline Ordered_hash fold_hash(Ordered_hash a, std::int64_t x) { return {a.h * 31 + static_cast<std::uint64_t>(x), a.n + 1}; }
inline Ordered_hash join_hash(Ordered_hash a, Ordered_hash b) { return {a.h * pow31(b.n) + b.h, a.n + b.n}; }

}  // namespace procflow::test
