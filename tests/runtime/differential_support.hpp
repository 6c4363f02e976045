// The differential property test's machinery, shared by differential_core_test (int64, string and
// vector<int> items), differential_types_test (fixed-size raw, user-codec, zero-byte items; iota at
// the limits of every integral type) and differential_env_test (the host program's signal and
// stream setup). Split in three translation units so that each compiles within memory under ASan.
//
// Every seed builds one random pipeline: a source (iota, from(vector), a generator, a generator
// that pauses now and then) of item type S, a chain of 1-5 stages drawn from a menu of typed
// operations (the chain may convert S into a second item type T part way; a flat_map may fan out
// heavy-tailed, up to ~200 items per input), random replica counts 1-4 and now and then 5-8 (above
// the core count), random batch_bytes (64 B .. 64 KiB, so items larger than a slot occur, as do
// items of 64-200 KiB, larger than any default slot) and ring_slots (1..32), random own_process /
// fusion(false) / dispatch::round_robin, and a terminal: collect (compared as a sorted multiset, or
// as the exact sequence under pf::ordered), reduce (a sum; under pf::ordered the exact sequence,
// kept by an associative but non-commutative concatenation), reduce_by_key (on 1, 7 or one well-mixed
// key per item, or structured ones: multiples of 2^k, strings with a common prefix, pairs; under a
// random pre_aggregate setting: default, always, off, until_keys(1..64); the keys each replica
// held are recorded and, when the reduce runs in processes of its own, checked: every key met one
// accumulator and no replica got more than twice its fair share) or sink (writing every item to a
// file read back afterwards). The same chain then runs as a plain sequential loop over the same
// operations, and both answers must agree, as must the per-stage item counts of the run's report.
// One seed in ten injects a fault: one chain stage throws on one item of its input; run() must
// then throw stage_error naming that stage and, in its message, that item.
// Under MPI (tests/mpi/mpi_differential_test.cpp, built with PROCFLOW_DIFFTEST_MPI) every run goes
// through pf::mpi::run; Features::on_ranks then leaves out what MPI refuses or reports otherwise.
// Replacements (drawn from a stream of their own, so the fixed seeds kept the shapes they had
// before): one seed in six without that fault and without a sink runs under pf::restart(3) with
// one chain stage's process killed (SIGKILL, SIGSEGV or _exit(3)) the first time any process meets
// one small item of its input — the answer must still agree and the report list exactly one restart; and
// one seed in six recycles one chain stage's processes (pf::recycle::after_items, a sixth to a half
// of its input) — the answer must still agree. Not in thread mode, not with a caller-fed source.
//
// Each seed runs in a child process under a watchdog (support/isolated.hpp): a hang fails naming
// the seed. The fixed seeds are a regression set; rotating seeds (derived from the time, printed)
// add new shapes every run. A failure prints its seed: PROCFLOW_SEED=<seed> replays that one
// pipeline, PROCFLOW_DIFF_RUNS=<n> sets the number of fixed seeds, PROCFLOW_ROTATING_RUNS=<n> the
// number of rotating ones, PROCFLOW_DIFF_VERBOSE=1 prints every pipeline.
#pragma once

#include "support/child_process.hpp"
#include "support/isolated.hpp"

#include <procflow/procflow.hpp>
#ifdef PROCFLOW_DIFFTEST_MPI
#include <procflow/mpi.hpp>  // tests/mpi/mpi_differential_test.cpp: every run across MPI ranks
#endif

#include "scheduler/elastic.hpp"

#include <doctest/doctest.h>
#include <fmt/core.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace difftest {

namespace pf = procflow;
namespace pt = procflow::test;

using i64 = std::int64_t;
using vec = std::vector<int>;
using Rng = std::mt19937_64;

// ------------------------------------------------------------------ item kinds beyond the core

// Fixed-size raw: an array of numbers, encoded by memcpy.
using Raw = std::array<std::int32_t, 4>;

// A plain struct of numbers opted in to raw encoding with one line (PROCFLOW_CODEC).
struct Record {
  std::int64_t id = 0;
  double x = 0;
  std::int32_t a = 0;
  std::int32_t b = 0;
  friend bool operator==(const Record&, const Record&) = default;
  friend auto operator<=>(const Record&, const Record&) = default;
};
PROCFLOW_CODEC(Record, id, x, a, b);

// Trivially copyable, with a codec of its own that transforms the value (a version byte, then the
// value XOR a key): a runtime that memcpy'd it instead of calling the codec delivers wrong values.
struct Tagged {
  std::int64_t v = 0;
  friend bool operator==(const Tagged&, const Tagged&) = default;
  friend auto operator<=>(const Tagged&, const Tagged&) = default;
};

// Not trivially copyable, with a codec of its own.
struct Labeled {
  std::string label;
  std::int64_t v = 0;
  friend bool operator==(const Labeled&, const Labeled&) = default;
  friend auto operator<=>(const Labeled&, const Labeled&) = default;
};

// Encodes to zero bytes.
struct Empty {
  friend bool operator==(const Empty&, const Empty&) = default;
  friend auto operator<=>(const Empty&, const Empty&) = default;
};

// A structured reduce_by_key key: a pair, hashed the way users often do (a*31 + b).
struct KeyPair {
  std::int64_t a = 0;
  std::int64_t b = 0;
  friend bool operator==(const KeyPair&, const KeyPair&) = default;
};

}  // namespace difftest

template <>
struct procflow::codec<difftest::Tagged> {
  static constexpr std::uint8_t version = 7;
  static constexpr std::uint64_t key = 0x5a5a'1234'8765'a5a5ULL;
  static std::size_t encoded_size(const difftest::Tagged&) noexcept { return 9; }
  static std::byte* encode(const difftest::Tagged& t, std::byte* out) noexcept {
    out[0] = static_cast<std::byte>(version);
    const std::uint64_t x = static_cast<std::uint64_t>(t.v) ^ key;
    std::memcpy(out + 1, &x, 8);
    return out + 9;
  }
  static difftest::Tagged decode(procflow::decoder& in) {
    if (static_cast<std::uint8_t>(*in.take(1)) != version) throw procflow::codec_error("Tagged: bad version byte");
    std::uint64_t x = 0;
    std::memcpy(&x, in.take(8), 8);
    return {static_cast<std::int64_t>(x ^ key)};
  }
};

template <>
struct procflow::codec<difftest::Labeled> {
  using fields = procflow::codec<std::pair<std::string, std::int64_t>>;
  static std::size_t encoded_size(const difftest::Labeled& l) noexcept { return fields::encoded_size({l.label, l.v}); }
  static std::byte* encode(const difftest::Labeled& l, std::byte* out) noexcept { return fields::encode({l.label, l.v}, out); }
  static difftest::Labeled decode(procflow::decoder& in) {
    auto [label, v] = fields::decode(in);
    return {std::move(label), v};
  }
};

template <>
struct procflow::codec<difftest::Empty> {
  static std::size_t encoded_size(const difftest::Empty&) noexcept { return 0; }
  static std::byte* encode(const difftest::Empty&, std::byte* out) noexcept { return out; }
  static difftest::Empty decode(procflow::decoder&) { return {}; }
};

template <>
struct procflow::codec<difftest::KeyPair> {
  static std::size_t encoded_size(const difftest::KeyPair&) noexcept { return 16; }
  static std::byte* encode(const difftest::KeyPair& k, std::byte* out) noexcept {
    std::memcpy(out, &k.a, 8);
    std::memcpy(out + 8, &k.b, 8);
    return out + 16;
  }
  static difftest::KeyPair decode(procflow::decoder& in) {
    difftest::KeyPair k;
    std::memcpy(&k.a, in.take(8), 8);
    std::memcpy(&k.b, in.take(8), 8);
    return k;
  }
};

template <>
struct std::hash<difftest::KeyPair> {
  std::size_t operator()(const difftest::KeyPair& k) const noexcept { return static_cast<std::size_t>(k.a * 31 + k.b); }
};

namespace difftest {

// ------------------------------------------------------------------ deterministic item digests

inline std::uint64_t mix(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

inline std::uint64_t weight(i64 x) { return mix(static_cast<std::uint64_t>(x)); }
inline std::uint64_t weight(const std::string& s) {
  std::uint64_t h = 1469598103934665603ULL;
  for (const char c : s) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
  return mix(h ^ s.size());
}
inline std::uint64_t weight(const vec& v) {
  std::uint64_t h = v.size();
  for (const int e : v) h = mix(h ^ static_cast<std::uint32_t>(e));
  return mix(h);
}
inline std::uint64_t weight(const Raw& r) {
  std::uint64_t h = 0x7261;
  for (const auto e : r) h = mix(h ^ static_cast<std::uint32_t>(e));
  return h;
}
inline std::uint64_t weight(const Record& r) {
  return mix(static_cast<std::uint64_t>(r.id) ^ mix(static_cast<std::uint64_t>(r.a) << 32 ^ static_cast<std::uint32_t>(r.b)) ^
             static_cast<std::uint64_t>(static_cast<i64>(r.x * 1024)));
}
inline std::uint64_t weight(const Tagged& t) { return mix(static_cast<std::uint64_t>(t.v) ^ 0x7467); }
inline std::uint64_t weight(const Labeled& l) { return mix(weight(l.label) ^ static_cast<std::uint64_t>(l.v)); }
inline std::uint64_t weight(const Empty&) { return 0x656d707479ULL; }

template <class T>
const char* type_name() {
  if constexpr (std::is_same_v<T, i64>) return "int64";
  else if constexpr (std::is_same_v<T, std::string>) return "string";
  else if constexpr (std::is_same_v<T, vec>) return "vector<int>";
  else if constexpr (std::is_same_v<T, Raw>) return "raw array<int32,4>";
  else if constexpr (std::is_same_v<T, Record>) return "Record (PROCFLOW_CODEC raw struct)";
  else if constexpr (std::is_same_v<T, Tagged>) return "Tagged (trivially copyable, user codec)";
  else if constexpr (std::is_same_v<T, Labeled>) return "Labeled (user codec)";
  else return "Empty (zero-byte codec)";
}

// ------------------------------------------------------------------ the operation menu
//
// The same functions run inside the pipeline's lambdas and in the sequential reference, so the
// test checks the runtime (transport, fusion, dispatch, ordering, merging), not the operations.

enum class OpKind { map, map_by_value, filter, flat_map, flat_map_emit, convert };

struct Op {
  OpKind kind = OpKind::map;
  unsigned variant = 0;
  std::uint64_t salt = 0;
  bool heavy = false;                 // flat_map: heavy-tailed fan-out
  std::optional<std::uint64_t> fault;  // throw on the item of this weight
  void (*probe)() = nullptr;           // called by the stage on every item (pipeline only)
  // Under pf::restart: the first process that meets the item of this weight dies (crash_how:
  // SIGKILL, SIGSEGV or _exit(3)); `crashed`, in memory shared by the run's processes, says it
  // happened (pipeline only: null in the sequential reference).
  std::optional<std::uint64_t> crash;
  int crash_how = 0;
  std::atomic<int>* crashed = nullptr;
};

inline const char* crash_name(int how) { return how == 0 ? "SIGKILL" : how == 1 ? "SIGSEGV" : "_exit(3)"; }

// Thrown by a stage with an injected fault; its message names the item by its weight.
inline std::string fault_message(std::uint64_t w) { return fmt::format("injected fault at item of weight {:#x}", w); }

template <class T>
void maybe_fault(const Op& op, const T& x) {
  if (op.probe) op.probe();
  if (op.fault && weight(x) == *op.fault) throw std::runtime_error(fault_message(*op.fault));
  if (op.crashed && weight(x) == *op.crash && op.crashed->exchange(1) == 0) {
    if (op.crash_how == 0) ::raise(SIGKILL);
    if (op.crash_how == 1) {
      ::signal(SIGSEGV, SIG_DFL);  // this process only: doctest's handler would report a crash of the test
      ::raise(SIGSEGV);
    }
    ::_exit(3);
  }
}

inline i64 op_map(const Op& op, i64 x) {
  switch (op.variant % 3) {
    case 0: return (x * 3 + static_cast<i64>(op.salt % 97)) % 1000003;
    case 1: return x ^ static_cast<i64>(op.salt & 0xff);
    default: return x / 2 - 5;
  }
}
inline std::string op_map(const Op& op, const std::string& s) {
  switch (op.variant % 3) {
    case 0: return s + static_cast<char>('a' + op.salt % 26);
    case 1: return std::string(s.rbegin(), s.rend());
    default: return s.substr(0, (s.size() + 1) / 2);
  }
}
inline vec op_map(const Op& op, const vec& v) {
  vec out = v;
  switch (op.variant % 3) {
    case 0:
      for (int& e : out) e += static_cast<int>(op.salt % 10);
      break;
    case 1: out.push_back(static_cast<int>(v.size())); break;
    default: std::reverse(out.begin(), out.end());
  }
  return out;
}
inline Raw op_map(const Op& op, const Raw& r) {
  Raw out = r;
  switch (op.variant % 2) {
    case 0:
      for (auto& e : out) e = static_cast<std::int32_t>(e ^ static_cast<std::int32_t>(op.salt & 0xffff));
      break;
    default: std::reverse(out.begin(), out.end());
  }
  return out;
}
inline Record op_map(const Op& op, const Record& r) {
  return op.variant % 2 ? Record{r.id + 1, r.x * 0.5, r.b, r.a} : Record{r.id ^ static_cast<i64>(op.salt & 0xfff), r.x + 1.0, r.a + 1, r.b};
}
inline Tagged op_map(const Op& op, const Tagged& t) { return {op.variant % 2 ? t.v ^ static_cast<i64>(op.salt) : t.v / 3 - 1}; }
inline Labeled op_map(const Op& op, const Labeled& l) {
  return op.variant % 2 ? Labeled{l.label + static_cast<char>('a' + op.salt % 26), l.v} : Labeled{l.label.substr(0, l.label.size() / 2), l.v + 1};
}
inline Empty op_map(const Op&, const Empty&) { return {}; }

// Source item i. Now and then a string or vector of a few KiB (larger than small ring slots),
// rarely one of 64-200 KiB (larger than any default slot); strings are empty one time in 20.
template <class T>
T make_item(std::uint64_t i, std::uint64_t salt) {
  const std::uint64_t r = mix(i ^ salt);
  if constexpr (std::is_same_v<T, i64>) {
    return static_cast<i64>(r % 2000001) - 1000000;
  } else if constexpr (std::is_same_v<T, std::string>) {
    const std::uint64_t len = r % 1999 == 0 ? 65536 + r % 140000 : r % 97 == 0 ? 1000 + r % 4000 : r % 20;
    std::string s(len, 'a');
    for (std::uint64_t j = 0; j < len; ++j) s[j] = static_cast<char>('a' + (r >> (j % 40)) % 26 + j % 7);
    return s;
  } else if constexpr (std::is_same_v<T, vec>) {
    const std::uint64_t len = r % 1999 == 0 ? 16384 + r % 35000 : r % 97 == 0 ? 500 + r % 2500 : r % 8;
    vec v(len);
    for (std::uint64_t j = 0; j < len; ++j) v[j] = static_cast<int>(mix(r + j) % 2001) - 1000;
    return v;
  } else if constexpr (std::is_same_v<T, Raw>) {
    return Raw{static_cast<std::int32_t>(r), static_cast<std::int32_t>(r >> 32), static_cast<std::int32_t>(r % 1000), -static_cast<std::int32_t>(r % 77)};
  } else if constexpr (std::is_same_v<T, Record>) {
    return Record{static_cast<i64>(r % 1000000), static_cast<double>(r % 4096) / 8.0, static_cast<std::int32_t>(r >> 40), static_cast<std::int32_t>(r % 77)};
  } else if constexpr (std::is_same_v<T, Tagged>) {
    return Tagged{static_cast<i64>(r % 2000001) - 1000000};
  } else if constexpr (std::is_same_v<T, Labeled>) {
    return Labeled{r % 10 == 0 ? std::string{} : fmt::format("label-{}", r % 1000), static_cast<i64>(r % 100000)};
  } else {
    return Empty{};
  }
}

template <class T>
std::size_t weight_size(const T& x) {
  if constexpr (std::is_same_v<T, std::string>) return x.size();
  else if constexpr (std::is_same_v<T, vec>) return x.size() * sizeof(int);
  else if constexpr (std::is_same_v<T, Labeled>) return x.label.size();
  else return sizeof(T);
}

template <class T>
bool op_keep(const Op& op, const T& x) {
  const std::uint64_t h = mix(weight(x) ^ op.salt);
  if (op.variant % 4 == 0) return h % 8 == 0;  // drops most
  return h % (2 + op.variant % 4) != 0;
}

// The j-th output of a flat_map on x.
inline i64 vary(i64 x, std::uint64_t j) { return x + static_cast<i64>(j); }
inline std::string vary(const std::string& x, std::uint64_t j) { return x + static_cast<char>('0' + j % 64); }
inline vec vary(const vec& x, std::uint64_t j) {
  vec v = x;
  v.push_back(static_cast<int>(j));
  return v;
}
inline Raw vary(const Raw& x, std::uint64_t j) {
  Raw r = x;
  r[j % r.size()] += static_cast<std::int32_t>(j);
  return r;
}
inline Record vary(const Record& x, std::uint64_t j) { return {x.id, x.x, x.a, x.b + static_cast<std::int32_t>(j)}; }
inline Tagged vary(const Tagged& x, std::uint64_t j) { return {x.v + static_cast<i64>(j)}; }
inline Labeled vary(const Labeled& x, std::uint64_t j) { return {x.label, x.v + static_cast<i64>(j)}; }
inline Empty vary(const Empty&, std::uint64_t) { return {}; }

template <class T>
std::vector<T> op_expand(const Op& op, const T& x) {
  const std::uint64_t h = mix(weight(x) ^ op.salt);
  // 0, 1 or 2 outputs (the size stays put); heavy-tailed: one input in 64 gives 20-219.
  const std::uint64_t k = op.heavy && h % 64 == 0 ? 20 + (h >> 8) % 200 : h % 3;
  std::vector<T> out;
  // Large items are not fanned out widely: the sizes of both runs stay modest.
  const std::uint64_t limit = weight_size(x) > 4096 ? std::min<std::uint64_t>(k, 2) : k;
  for (std::uint64_t j = 0; j < limit; ++j) out.push_back(vary(x, j));
  return out;
}

template <class T, class S>
T convert(const S& x) {
  if constexpr (std::is_same_v<S, i64> && std::is_same_v<T, std::string>) {
    return std::to_string(x);
  } else if constexpr (std::is_same_v<S, i64> && std::is_same_v<T, vec>) {
    vec v;
    const i64 len = (x < 0 ? -x : x) % 5;
    for (i64 j = 0; j < len; ++j) v.push_back(static_cast<int>((x + j) % 100));
    return v;
  } else if constexpr (std::is_same_v<S, std::string> && std::is_same_v<T, i64>) {
    return static_cast<i64>(x.size()) * 1000 + (x.empty() ? 0 : x[0]);
  } else if constexpr (std::is_same_v<S, std::string> && std::is_same_v<T, vec>) {
    return vec(x.begin(), x.end());
  } else if constexpr (std::is_same_v<S, vec> && std::is_same_v<T, i64>) {
    i64 sum = 0;
    for (const int e : x) sum += e;
    return sum;
  } else if constexpr (std::is_same_v<S, vec> && std::is_same_v<T, std::string>) {
    std::string s;
    for (const int e : x) s += std::to_string(e) + ",";
    return s;
  } else {
    // The other kinds: an item of T derived from the input's digest.
    return make_item<T>(weight(x), 0xc0de);
  }
}

// ------------------------------------------------------------------ random declarations

struct StageSpec {
  std::optional<std::uint32_t> replicas;
  std::optional<std::uint32_t> bytes;
  std::optional<std::uint32_t> slots;
  bool own = false;
  bool ordered = false;
  bool round_robin = false;
  bool automatic = false;  // replicas(auto_scale)
  std::uint64_t recycle_items = 0;  // pf::recycle::after_items (0: none), with any profile
};

struct PipeSpec {
  std::optional<std::uint32_t> bytes;
  std::optional<std::uint32_t> slots;
  bool no_fusion = false;
  bool ordered = false;
  std::uint32_t restarts = 0;  // pf::restart(n) (0: none)
};

struct Step {
  Op op;
  StageSpec spec;
};

enum class SourceKind { iota, from, generate, delayed, caller };
enum class Terminal { collect, reduce, reduce_by_key, sink };
enum class KeyProfile { mixed, pow2, prefix, pairs };

// The smallest batch_bytes drawn (pipeline and stage): random_bytes is log-uniform from it to 64 KiB.
inline constexpr std::uint32_t min_batch_bytes = 64;
// The restart draw kills a process on an item this small at most, below any ring: an item larger than
// its whole input ring that was in hand at a death cannot be read again, and run() fails naming it,
// as README's Restart section says.
inline constexpr std::size_t max_crash_item_bytes = min_batch_bytes / 2;

inline std::uint32_t random_bytes(Rng& rng) {
  const double e = std::uniform_real_distribution<double>(std::log2(double{min_batch_bytes}), 16.0)(rng);
  return static_cast<std::uint32_t>(std::pow(2.0, e));
}
inline std::uint32_t random_slots(Rng& rng) { return 1u << std::uniform_int_distribution<unsigned>(0, 5)(rng); }
inline bool chance(Rng& rng, double p) { return std::bernoulli_distribution(p)(rng); }

inline std::uint32_t random_replicas(Rng& rng) {
  // Mostly 1-4; one time in ten 5-8, above the core count of most machines (2 in CI).
  return chance(rng, 0.1) ? std::uniform_int_distribution<std::uint32_t>(5, 8)(rng) : std::uniform_int_distribution<std::uint32_t>(1, 4)(rng);
}

inline StageSpec random_stage_spec(Rng& rng) {
  StageSpec s;
  if (chance(rng, 0.5)) s.replicas = random_replicas(rng);
  const bool automatic = chance(rng, 0.15);
  const double roll = std::uniform_real_distribution<double>(0, 1)(rng);
  if (roll < 0.2) {
    s.own = true;
  } else if (roll < 0.45) {
    s.bytes = random_bytes(rng);
    s.slots = random_slots(rng);
  } else if (roll < 0.55) {
    s.round_robin = true;
  }
  if (automatic) {  // its own option profile (see with_stage_options)
    s = StageSpec{};
    s.automatic = true;
  }
  return s;
}

// Ordered, possibly with replicas: the only profile with pf::ordered (see with_stage_options).
inline void make_ordered(StageSpec& s) {
  s.ordered = true;
  s.automatic = false;
  s.own = false;
  s.round_robin = false;
  s.bytes.reset();
  s.slots.reset();
}

inline std::string describe(const StageSpec& s) {
  std::string d;
  if (s.replicas) d += fmt::format(" replicas({})", *s.replicas);
  if (s.automatic) d += " replicas(auto_scale)";
  if (s.bytes) d += fmt::format(" batch_bytes({})", *s.bytes);
  if (s.slots) d += fmt::format(" ring_slots({})", *s.slots);
  if (s.own) d += " own_process";
  if (s.round_robin) d += " dispatch::round_robin";
  if (s.ordered) d += " ordered";
  if (s.recycle_items) d += fmt::format(" recycle::after_items({})", s.recycle_items);
  return d;
}

inline const char* kind_name(OpKind k) {
  switch (k) {
    case OpKind::map: return "map";
    case OpKind::map_by_value: return "map(by value)";
    case OpKind::filter: return "filter";
    case OpKind::flat_map: return "flat_map";
    case OpKind::flat_map_emit: return "flat_map<T>(emit)";
    case OpKind::convert: return "map(convert)";
  }
  return "?";
}

// Calls k(options...) with exactly the stage options `s` asks for (options are types, so each
// combination is its own call).
template <class K>
auto with_stage_options(const StageSpec& s, K&& kk) {
  // A few option profiles rather than every combination: each combination of option types is a
  // separate instantiation of the whole builder call, and compile time matters. Every profile
  // takes a pf::recycle (all zero: none), so recycling adds no instantiation.
  auto k = [&](auto... o) {
    pf::recycle recycle;
    recycle.items = s.recycle_items;
    return kk(o..., recycle);
  };
  if (s.ordered) return s.replicas ? k(pf::replicas(*s.replicas), pf::ordered) : k(pf::ordered);
  if (s.automatic) return k(pf::replicas(pf::auto_scale));
  if (s.bytes) {
    const pf::batch_bytes bytes(*s.bytes);
    const pf::ring_slots slots(s.slots.value_or(16));
    return s.replicas ? k(pf::replicas(*s.replicas), bytes, slots) : k(bytes, slots);
  }
  if (s.own) return s.replicas ? k(pf::replicas(*s.replicas), pf::own_process) : k(pf::own_process);
  if (s.round_robin) return s.replicas ? k(pf::replicas(*s.replicas), pf::dispatch::round_robin) : k(pf::dispatch::round_robin);
  return s.replicas ? k(pf::replicas(*s.replicas)) : k();
}

template <class K>
auto with_pipeline_options(const PipeSpec& p, K&& k) {
  auto with_ordered = [&](auto... o) { return p.ordered ? k(o..., pf::ordered) : k(o...); };
  auto with_fusion = [&](auto... o) { return p.no_fusion ? with_ordered(o..., pf::fusion(false)) : with_ordered(o...); };
  auto with_restart = [&](auto... o) { return p.restarts ? with_fusion(o..., pf::restart(p.restarts)) : with_fusion(o...); };
  auto with_slots = [&](auto... o) { return p.slots ? with_restart(o..., pf::ring_slots(*p.slots)) : with_restart(o...); };
  return p.bytes ? with_slots(pf::batch_bytes(*p.bytes)) : with_slots();
}

// The stage callables are made outside with_stage_options(): a lambda defined inside its generic
// callback would be a new type (a new stage instantiation) for every option profile, which
// multiplies compile time and memory.
template <class T>
pf::flow<T> add_step(const pf::flow<T>& f, const Step& st, const std::string& name) {
  const Op op = st.op;
  auto map_fn = [op](const T& x) {
    maybe_fault(op, x);
    return op_map(op, x);
  };
  auto map_by_value_fn = [op](T x) {
    maybe_fault(op, x);
    return op_map(op, x);
  };
  auto keep_fn = [op](const T& x) {
    maybe_fault(op, x);
    return op_keep(op, x);
  };
  auto expand_fn = [op](const T& x) {
    maybe_fault(op, x);
    return op_expand(op, x);
  };
  auto emit_fn = [op](const T& x, pf::emitter<T>& emit) {
    maybe_fault(op, x);
    for (auto& y : op_expand(op, x)) emit(std::move(y));
  };
  return with_stage_options(st.spec, [&](auto... o) -> pf::flow<T> {
    switch (op.kind) {
      case OpKind::map: return f.map(name, map_fn, o...);
      case OpKind::map_by_value: return f.map(name, map_by_value_fn, o...);
      case OpKind::filter: return f.filter(name, keep_fn, o...);
      case OpKind::flat_map: return f.flat_map(name, expand_fn, o...);
      case OpKind::flat_map_emit: return f.template flat_map<T>(name, emit_fn, o...);
      case OpKind::convert: break;
    }
    throw std::logic_error("add_step: conversion on a same-type step");
  });
}

template <class T>
std::vector<T> apply_step(const Step& st, const std::vector<T>& in) {
  std::vector<T> out;
  for (const T& x : in) {
    switch (st.op.kind) {
      case OpKind::map:
      case OpKind::map_by_value: out.push_back(op_map(st.op, x)); break;
      case OpKind::filter:
        if (op_keep(st.op, x)) out.push_back(x);
        break;
      case OpKind::flat_map:
      case OpKind::flat_map_emit:
        for (auto& y : op_expand(st.op, x)) out.push_back(std::move(y));
        break;
      case OpKind::convert: throw std::logic_error("apply_step: conversion on a same-type step");
    }
  }
  return out;
}

inline Op random_op(Rng& rng) {
  static constexpr OpKind kinds[] = {OpKind::map, OpKind::map_by_value, OpKind::filter, OpKind::flat_map, OpKind::flat_map_emit};
  Op op;
  op.kind = kinds[std::uniform_int_distribution<std::size_t>(0, std::size(kinds) - 1)(rng)];
  op.variant = std::uniform_int_distribution<unsigned>(0, 11)(rng);
  op.salt = rng();
  return op;
}

// ------------------------------------------------------------------ keys and their load

using Sum = std::uint64_t;
// count, sum of weights, and the pid of the replica that folded the key (0: none yet, -1: more
// than one replica folded it). The pid is the per-replica load record.
using Group = std::tuple<i64, std::uint64_t, i64>;

inline Group fold_group(Group g, std::uint64_t w) {
  return {std::get<0>(g) + 1, std::get<1>(g) + w, std::get<2>(g) == 0 ? static_cast<i64>(::getpid()) : std::get<2>(g)};
}
inline Group combine_group(Group a, Group b) {
  const i64 pa = std::get<2>(a), pb = std::get<2>(b);
  return {std::get<0>(a) + std::get<0>(b), std::get<1>(a) + std::get<1>(b), pa == 0 ? pb : pb == 0 || pa == pb ? pa : -1};
}

struct KeySpec {
  KeyProfile profile = KeyProfile::mixed;
  unsigned shift = 0;  // pow2: keys are multiples of 2^shift
  std::uint64_t mixed_keys = 7;  // mixed: this many keys; 0: one per distinct item
  pf::pre_aggregate pre = pf::pre_aggregate::until_keys(pf::pre_aggregate::default_switch_keys);
};

inline std::string describe(const pf::pre_aggregate& p) {
  if (p.switch_keys == pf::pre_aggregate::default_switch_keys) return "";
  if (p.switch_keys == pf::pre_aggregate::never) return ", pre_aggregate::always()";
  if (p.switch_keys == 0) return ", pre_aggregate::off()";
  return fmt::format(", pre_aggregate::until_keys({})", p.switch_keys);
}

inline std::string describe(const KeySpec& k) {
  std::string keys = "?";
  switch (k.profile) {
    case KeyProfile::mixed:
      keys = k.mixed_keys ? fmt::format("{} well-mixed int64 key{}", k.mixed_keys, k.mixed_keys == 1 ? "" : "s")
                          : std::string("well-mixed int64 keys, one per distinct item");
      break;
    case KeyProfile::pow2: keys = fmt::format("512 int64 keys, multiples of 2^{}", k.shift); break;
    case KeyProfile::prefix: keys = "512 string keys with a common 24-byte prefix"; break;
    case KeyProfile::pairs: keys = "512 pair keys (a*31+b hash)"; break;
  }
  return keys + describe(k.pre);
}

template <class T>
i64 int_key(const KeySpec& k, const T& x) {
  if (k.profile == KeyProfile::mixed) return static_cast<i64>(k.mixed_keys ? weight(x) % k.mixed_keys : weight(x) >> 1);
  return static_cast<i64>(weight(x) % 512) << k.shift;
}
template <class T>
std::string string_key(const T& x) {
  return fmt::format("procflow/differential/key-{}", weight(x) % 512);
}
template <class T>
KeyPair pair_key(const T& x) {
  const auto w = static_cast<i64>(weight(x) % 512);
  return {w / 16, w % 16};
}

// What the reduce_by_key terminal's answer says, keyed by the key's text: the sequential answer
// and the pipeline's, made comparable across key types, plus the keys each replica held.
struct KeyedAnswer {
  std::map<std::string, std::pair<i64, std::uint64_t>> groups;
  std::map<i64, std::uint64_t> keys_per_pid;  // -1: keys folded in more than one replica
};

template <class K>
std::string key_text(const K& k) {
  if constexpr (std::is_same_v<K, KeyPair>) return fmt::format("({},{})", k.a, k.b);
  else return fmt::format("{}", k);
}

// (m: the pipeline's procflow::keyed_result or the sequential std::unordered_map.)
template <class Map>
KeyedAnswer keyed_answer(const Map& m) {
  KeyedAnswer a;
  for (const auto& [k, g] : m) {
    a.groups[key_text(k)] = {std::get<0>(g), std::get<1>(g)};
    ++a.keys_per_pid[std::get<2>(g)];
  }
  return a;
}

// ------------------------------------------------------------------ the sink's output file

// A file opened by the caller with O_APPEND; the sink writes one line per item with write(2)
// (atomic per line), wherever it runs. Read back, sorted.
class SinkFile {
 public:
  SinkFile() : path_(std::filesystem::temp_directory_path() / fmt::format("procflow_diff_sink_{}.txt", ::getpid())) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
    if (fd_ < 0) throw std::runtime_error("cannot open " + path_.string());
  }
  ~SinkFile() {
    if (fd_ >= 0) ::close(fd_);
    std::error_code ec;
    std::filesystem::remove(path_, ec);
  }
  SinkFile(const SinkFile&) = delete;
  SinkFile& operator=(const SinkFile&) = delete;
  int fd() const { return fd_; }
  const std::filesystem::path& path() const { return path_; }

  std::vector<std::uint64_t> read_back() const {
    std::ifstream in(path_);
    std::vector<std::uint64_t> got;
    for (std::uint64_t x = 0; in >> std::hex >> x;) got.push_back(x);
    std::sort(got.begin(), got.end());
    return got;
  }

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

inline void write_line(int fd, std::uint64_t w) {
  const std::string line = fmt::format("{:x}\n", w);
  if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) throw std::runtime_error("sink: short write");
}

// ------------------------------------------------------------------ one random pipeline

// What a test file lets the generator use.
struct Features {
  bool faults = true;    // one seed in ten injects a fault
  bool cout_sink = false;  // the sink writes with std::cout (env test: fd 1 is a file)
  void (*stage_probe)() = nullptr;  // run by every chain stage on every item (env test's checks)
  bool in_threads = false;  // run(pf::in_threads) instead of processes (thread mode)
  // Issue 17: where the source and terminal item types agree, the source is pf::input fed by the
  // test through start() / push() / wait() (run_case sets caller_items to the source's items).
  bool caller_source = false;
  const void* caller_items = nullptr;  // a std::vector<T> of run_terminal's T
  // Now and then pf::restart with a chain stage's process killed once, or pf::recycle on a chain
  // stage (not in thread mode, not with a caller-fed source).
  bool replacements = true;
  // Across the ranks of an MPI job (built with PROCFLOW_DIFFTEST_MPI): the report sums the ranks'
  // replicas and has no process groups, so only its item counts are checked; a sink (which runs
  // on every rank over that rank's items) becomes a collect. Rank 0 holds the value checked.
  bool on_ranks = false;
};

// run() in the mode the test asks for; a caller-fed source: start(), push every item, wait().
template <class T, class Runnable>
auto run_mode(const Runnable& r, const Features& features) {
#ifdef PROCFLOW_DIFFTEST_MPI
  (void)features;
  return pf::mpi::run(r);
#else
  if (features.caller_items) {
    auto job = r.start();
    for (const T& x : *static_cast<const std::vector<T>*>(features.caller_items)) job.push(x);
    return job.wait();
  }
  return features.in_threads ? r.run(pf::in_threads) : r.run();
#endif
}

struct Terminal_spec {
  Terminal terminal = Terminal::collect;
  bool generator_source = false;
  StageSpec spec;
  KeySpec keys;
  bool replaced = false;  // replicas may be replaced (restart, recycle): a key may meet two pids
};

// Runs the pipeline `f` ends with the terminal, compares its value with the sequential `seq`
// and returns the report. Lets run()'s exceptions through.
template <class T>
pf::run_report run_terminal(const pf::flow<T>& f, const Terminal_spec& term, bool ordered, const std::vector<T>& seq, const Features& features) {
  const StageSpec& spec = term.spec;
  switch (term.terminal) {
    case Terminal::collect: {
      auto r = run_mode<T>(with_stage_options(spec, [&](auto... o) { return f.collect(o...); }), features);
      std::vector<T> got = std::move(r.value);
      std::vector<T> want = seq;
      if (!ordered) {
        std::sort(got.begin(), got.end());
        std::sort(want.begin(), want.end());
      }
      CHECK(got.size() == want.size());
      CHECK(got == want);
      return r.report;
    }
    case Terminal::reduce: {
      if (ordered) {
        // Associative, not commutative: only source order gives the sequential answer.
        auto fold = [](std::vector<std::uint64_t>& acc, const T& x) { acc.push_back(weight(x)); };
        auto combine = [](std::vector<std::uint64_t>& acc, std::vector<std::uint64_t> other) {
          acc.insert(acc.end(), other.begin(), other.end());
        };
        auto r = run_mode<T>(with_stage_options(spec, [&](auto... o) { return f.reduce("total", std::vector<std::uint64_t>{}, fold, combine, o...); }), features);
        std::vector<std::uint64_t> want;
        for (const T& x : seq) want.push_back(weight(x));
        CHECK(r.value.size() == want.size());
        CHECK(r.value == want);
        return r.report;
      }
      auto fold = [](Sum acc, const T& x) { return acc + weight(x); };
      auto r = run_mode<T>(with_stage_options(spec, [&](auto... o) { return f.reduce("total", Sum{0}, fold, std::plus<>{}, o...); }), features);
      Sum want = 0;
      for (const T& x : seq) want += weight(x);
      CHECK(r.value == want);
      return r.report;
    }
    case Terminal::reduce_by_key: {
      const KeySpec keys = term.keys;
      auto by = [&](auto key) {
        using K = std::decay_t<decltype(key(std::declval<const T&>()))>;
        auto fold = [](Group g, const T& x) { return fold_group(g, weight(x)); };
        auto combine = [](Group a, Group b) { return combine_group(a, b); };
        auto r = run_mode<T>(with_stage_options(spec, [&](auto... o) { return f.reduce_by_key("groups", key, Group{0, 0, 0}, fold, combine, o..., keys.pre); }), features);
        std::unordered_map<K, Group> want;
        for (const T& x : seq) want[key(x)] = fold_group(want[key(x)], weight(x));
        return std::pair{keyed_answer(r.value), std::pair{keyed_answer(want), r.report}};
      };
      auto result = keys.profile == KeyProfile::prefix  ? by([](const T& x) { return string_key(x); })
                    : keys.profile == KeyProfile::pairs ? by([](const T& x) { return pair_key(x); })
                                                        : by([keys](const T& x) { return int_key(keys, x); });
      const KeyedAnswer& got = result.first;
      const KeyedAnswer& want = result.second.first;
      const pf::run_report& report = result.second.second;
      CHECK(got.groups == want.groups);
      // The per-replica load: keys held by each replica (by pid).
      std::string load;
      for (const auto& [pid, n] : got.keys_per_pid) load += fmt::format(" {}:{}", pid, n);
      INFO("keys per replica (pid:keys):", load);
      // Key-hash dispatch happens when the reduce runs in processes of its own, unordered, fed by
      // a group that encodes per item (not straight from a generator's process: lib/runtime/plan.cpp).
      const std::size_t last = report.stages.size() - 1;
      const bool keyed = !features.in_threads && !features.on_ranks && !ordered && last >= 2 && report.stages[last].process_group != report.stages[last - 1].process_group &&
                         !(term.generator_source && report.stages[last - 1].process_group == report.stages[1].process_group);
      if (keyed && !term.replaced) {
        // Key-hash dispatch: every key met exactly one accumulator ...
        CHECK(got.keys_per_pid.count(-1) == 0);
        // ... and the keys spread: with enough of them, no replica holds more than twice its share.
        const std::uint32_t lanes = report.stages.back().replicas;
        const std::size_t distinct = got.groups.size();
        if (lanes >= 2 && distinct >= 256) {
          for (const auto& [pid, n] : got.keys_per_pid) {
            CAPTURE(pid);
            CHECK(static_cast<double>(n) <= 2.0 * static_cast<double>(distinct) / lanes);
          }
        }
      }
      return report;
    }
    case Terminal::sink: {
      const SinkFile file;
      const int fd = file.fd();
      pf::run_report report;
      if (features.cout_sink) {
        // One replica: lines from several buffered writers sharing the file could interleave.
        report = run_mode<T>(f.sink("print", [](const T& x) { std::cout << fmt::format("{:x}\n", weight(x)); }, pf::replicas(1)), features).report;
        std::cout.flush();  // in case the sink ran in this process
      } else {
        auto write = [fd](const T& x) { write_line(fd, weight(x)); };
        report = run_mode<T>(with_stage_options(spec, [&](auto... o) { return f.sink("write", write, o...); }), features).report;
      }
      if (!features.cout_sink) {
        std::vector<std::uint64_t> want;
        for (const T& x : seq) want.push_back(weight(x));
        std::sort(want.begin(), want.end());
        const auto got = file.read_back();
        CHECK(got.size() == want.size());
        CHECK(got == want);
      }
      return report;
    }
  }
  throw std::logic_error("bad terminal");
}

// The expected weights written by a cout sink (env test), sorted.
inline std::vector<std::uint64_t>& cout_sink_expected() {
  static std::vector<std::uint64_t> want;
  return want;
}

template <class S>
pf::flow<S> make_source(const pf::pipeline_builder& builder, SourceKind kind, const StageSpec& spec, const std::vector<S>& items,
                        std::size_t n, std::uint64_t salt, i64 iota_first) {
  // delayed: pauses 200 us before one item in 128 (a generator slower than its consumers).
  auto generator = pf::generate([i = std::uint64_t{0}, n, salt, delayed = kind == SourceKind::delayed]() mutable -> std::optional<S> {
    if (i >= n) return std::nullopt;
    if (delayed && mix(i ^ salt) % 128 == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
    return make_item<S>(i++, salt);
  });
  return with_stage_options(spec, [&](auto... o) -> pf::flow<S> {
    switch (kind) {
      case SourceKind::iota:
        if constexpr (std::is_same_v<S, i64>) return builder.source("src", pf::iota<i64>(iota_first, iota_first + static_cast<i64>(n)), o...);
        break;
      case SourceKind::from: return builder.source("src", pf::from(items), o...);
      case SourceKind::caller: return builder.source("src", pf::input<S>(), o...);
      case SourceKind::generate:
      case SourceKind::delayed: return builder.source("src", generator, o...);
    }
    throw std::logic_error("bad source kind");
  });
}

template <class S, class T>
void run_case(Rng& rng, std::uint64_t seed, const Features& features) {
  // Source.
  SourceKind source_kind = SourceKind::generate;
  const int pick = std::uniform_int_distribution<int>(0, 3)(rng);
  if (pick == 0 && std::is_same_v<S, i64>) source_kind = SourceKind::iota;
  else if (pick <= 1) source_kind = SourceKind::from;
  else if (pick == 3) source_kind = SourceKind::delayed;
  if (std::is_same_v<S, T> && features.caller_source) source_kind = SourceKind::caller;  // no rng drawn: seeds keep their shape
  std::size_t n = 0;
  const double size_roll = std::uniform_real_distribution<double>(0, 1)(rng);
  if (size_roll < 0.05) n = 0;
  else if (size_roll < 0.1) n = 1;
  else n = static_cast<std::size_t>(std::pow(2.0, std::uniform_real_distribution<double>(1, 14.5)(rng)));
  const std::uint64_t salt = rng();
  const i64 iota_first = std::uniform_int_distribution<i64>(-1000, 1000)(rng);
  StageSpec source_spec;
  if (chance(rng, 0.3)) {
    source_spec.bytes = random_bytes(rng);
    source_spec.slots = random_slots(rng);
  }

  // Chain: 1-5 stages; with S != T one of them is the conversion; at most one heavy flat_map.
  const std::size_t length = std::uniform_int_distribution<std::size_t>(1, 5)(rng);
  const std::size_t convert_at = std::is_same_v<S, T> ? length : std::uniform_int_distribution<std::size_t>(0, length - 1)(rng);
  std::vector<Step> steps(length);
  bool heavy_used = false;
  for (std::size_t i = 0; i < length; ++i) {
    steps[i].op = random_op(rng);
    if (i == convert_at) steps[i].op.kind = OpKind::convert;
    steps[i].spec = random_stage_spec(rng);
    steps[i].op.probe = features.stage_probe;
    const bool fans_out = steps[i].op.kind == OpKind::flat_map || steps[i].op.kind == OpKind::flat_map_emit;
    if (fans_out && !heavy_used && chance(rng, 0.3)) steps[i].op.heavy = heavy_used = true;
  }

  PipeSpec pipe;
  if (chance(rng, 0.7)) pipe.bytes = random_bytes(rng);
  if (chance(rng, 0.7)) pipe.slots = random_slots(rng);
  pipe.no_fusion = chance(rng, 0.2);

  Terminal_spec term;
  term.generator_source = source_kind == SourceKind::generate || source_kind == SourceKind::delayed || source_kind == SourceKind::caller;
  term.terminal = features.cout_sink && chance(rng, 0.5) ? Terminal::sink : static_cast<Terminal>(std::uniform_int_distribution<int>(0, 3)(rng));
  if (features.on_ranks && term.terminal == Terminal::sink) term.terminal = Terminal::collect;
  if (term.terminal != Terminal::collect) term.spec = random_stage_spec(rng);
  if (term.terminal == Terminal::reduce_by_key) {
    term.keys.profile = static_cast<KeyProfile>(std::uniform_int_distribution<int>(0, 3)(rng));
    term.keys.shift = std::uniform_int_distribution<unsigned>(1, 20)(rng);
  }
  // Ordered: on the pipeline, on the terminal, or on the last chain stage (whose next consumer
  // is the terminal). Not with a sink (its replicas' output interleaves in the file anyway).
  bool ordered = false;
  switch (term.terminal == Terminal::sink ? 5 : std::uniform_int_distribution<int>(0, 5)(rng)) {
    case 0: pipe.ordered = ordered = true; break;
    case 1:
      make_ordered(term.spec);
      ordered = true;
      break;
    case 2:
      make_ordered(steps.back().spec);
      ordered = true;
      break;
    default: break;
  }
  // Across MPI ranks under pf::ordered the source runs fused into the first stage's replicas
  // (refused otherwise, with a stage_error saying so: README, "Across machines").
  if (features.on_ranks && ordered) {
    pipe.no_fusion = false;
    steps[0].spec.own = false;
  }

  // The sequential reference, with the item count after every stage.
  std::vector<S> source_items;
  for (std::size_t i = 0; i < n; ++i) {
    if (source_kind == SourceKind::iota) {
      if constexpr (std::is_same_v<S, i64>) source_items.push_back(iota_first + static_cast<i64>(i));
    } else {
      source_items.push_back(make_item<S>(i, salt));
    }
  }
  std::vector<std::uint64_t> counts{n};
  std::vector<S> seq_s = source_items;
  std::vector<T> seq_t;
  // A fault: one stage throws on one item of its input (drawn from the sequential run).
  std::optional<std::size_t> fault_stage;
  const bool inject = features.faults && chance(rng, 0.1);
  const std::uint64_t fault_pick = rng();
  auto maybe_inject = [&](std::size_t i, const auto& input) {
    if (inject && !fault_stage && !input.empty() && steps[i].op.kind != OpKind::convert && fault_pick % (length - i) == 0) {
      steps[i].op.fault = weight(input[mix(fault_pick) % input.size()]);
      fault_stage = i;
    }
  };
  // pf::restart and pf::recycle, drawn from a stream of their own so that the fixed seeds keep
  // the shapes they had before: one seed in six (without an injected throw or a sink, whose
  // effects would be at least once) runs under pf::restart(3) with one chain stage's process
  // killed on one item of its input; one in six recycles a chain stage's processes.
  Rng more(mix(seed ^ 0x7e57a47ULL));
  const bool may_replace = features.replacements && !features.in_threads && source_kind != SourceKind::caller;
  std::optional<std::size_t> crash_stage;
  if (may_replace && !inject && term.terminal != Terminal::sink && chance(more, 1.0 / 6)) {
    pipe.restarts = 3;
    const std::size_t i = std::uniform_int_distribution<std::size_t>(0, length - 1)(more);
    if (steps[i].op.kind != OpKind::convert) crash_stage = i;
  }
  const std::uint64_t crash_pick = more();
  const int crash_how = std::uniform_int_distribution<int>(0, 2)(more);
  auto maybe_crash = [&](std::size_t i, const auto& input) {
    if (crash_stage != i) return;
    for (std::size_t k = 0; k < input.size(); ++k) {
      const auto& x = input[(mix(crash_pick) + k) % input.size()];
      if (weight_size(x) > max_crash_item_bytes) continue;
      steps[i].op.crash = weight(x);
      steps[i].op.crash_how = crash_how;
      return;
    }
  };
  for (std::size_t i = 0; i < length; ++i) {
    if (i < convert_at) {
      maybe_inject(i, seq_s);
      maybe_crash(i, seq_s);
      seq_s = apply_step(steps[i], seq_s);
      counts.push_back(seq_s.size());
    } else if (i == convert_at) {
      if constexpr (!std::is_same_v<S, T>) {
        for (const S& x : seq_s) seq_t.push_back(convert<T>(x));
      }
      counts.push_back(seq_t.size());
    } else {
      maybe_inject(i, seq_t);
      maybe_crash(i, seq_t);
      seq_t = apply_step(steps[i], seq_t);
      counts.push_back(seq_t.size());
    }
  }
  if constexpr (std::is_same_v<S, T>) seq_t = seq_s;
  bool recycled = false;
  if (may_replace && chance(more, 1.0 / 6)) {
    // After a sixth to a half of the stage's input per process (at least 64 items): a few
    // replacements, not one fork per item.
    const std::size_t i = std::uniform_int_distribution<std::size_t>(0, length - 1)(more);
    const std::uint64_t input = counts[i];
    steps[i].spec.recycle_items = std::max<std::uint64_t>(64, input / std::uniform_int_distribution<std::uint64_t>(2, 6)(more));
    recycled = true;
  }
  term.replaced = pipe.restarts != 0 || recycled;
  // reduce_by_key's cardinality and pre_aggregate setting, from a third stream of the seed: well-mixed
  // keys are 7 (as before) three times in five, else 1 key or one per distinct item (more keys than
  // items' worth of repeats); the switch is the default one, always(), off() (every batch shuffled:
  // the caller's merge threads fold the pieces while the run goes on) or until_keys(1..64).
  if (term.terminal == Terminal::reduce_by_key) {
    Rng keyed(mix(seed ^ 0x6b657965ULL));
    const int cardinality = std::uniform_int_distribution<int>(0, 4)(keyed);
    term.keys.mixed_keys = cardinality == 0 ? 1 : cardinality == 1 ? 0 : 7;
    switch (std::uniform_int_distribution<int>(0, 3)(keyed)) {
      case 0: break;
      case 1: term.keys.pre = pf::pre_aggregate::always(); break;
      case 2: term.keys.pre = pf::pre_aggregate::off(); break;
      default: term.keys.pre = pf::pre_aggregate::until_keys(std::uniform_int_distribution<std::uint64_t>(1, 64)(keyed)); break;
    }
  }
  // The crash flag lives in memory the run's processes share (this seed's child unmaps it at exit).
  std::atomic<int>* crashed = nullptr;
  if (crash_stage && steps[*crash_stage].op.crash) {
    void* page = ::mmap(nullptr, sizeof(std::atomic<int>), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(page != MAP_FAILED);
    crashed = new (page) std::atomic<int>(0);
    steps[*crash_stage].op.crashed = crashed;
  }

  // Describe it, so a failure can be read without replaying.
  const char* source_name = source_kind == SourceKind::iota       ? "iota"
                            : source_kind == SourceKind::from     ? "from"
                            : source_kind == SourceKind::generate ? "generate"
                            : source_kind == SourceKind::caller   ? "input (pushed by the caller)"
                                                                  : "generate(delayed)";
  std::string desc = fmt::format("pipeline{}{}{}{}{}: source {} of {} {} items{}{}", pipe.bytes ? fmt::format(" batch_bytes({})", *pipe.bytes) : "",
                                 pipe.slots ? fmt::format(" ring_slots({})", *pipe.slots) : "", pipe.no_fusion ? " fusion(false)" : "",
                                 pipe.ordered ? " ordered" : "", pipe.restarts ? fmt::format(" restart({})", pipe.restarts) : "", source_name, n, type_name<S>(),
                                 source_kind == SourceKind::iota ? fmt::format(" from {}", iota_first) : "", describe(source_spec));
  for (std::size_t i = 0; i < length; ++i)
    desc += fmt::format("\n  s{}: {} v{}{}{}{}{}", i + 1,
                        steps[i].op.kind == OpKind::convert ? fmt::format("map(convert {} -> {})", type_name<S>(), type_name<T>()) : kind_name(steps[i].op.kind),
                        steps[i].op.variant, steps[i].op.heavy ? " heavy-tailed" : "", describe(steps[i].spec),
                        steps[i].op.fault ? " FAULT: " + fault_message(*steps[i].op.fault) : "",
                        steps[i].op.crash ? fmt::format(" CRASH ({}) at item of weight {:#x}", crash_name(steps[i].op.crash_how), *steps[i].op.crash) : "");
  const char* terminal_name = term.terminal == Terminal::collect  ? "collect"
                              : term.terminal == Terminal::reduce ? (ordered ? "reduce(concat)" : "reduce(sum)")
                              : term.terminal == Terminal::sink   ? (features.cout_sink ? "sink(std::cout)" : "sink(write)")
                                                                  : "reduce_by_key";
  desc += fmt::format("\n  terminal: {}{}{}", terminal_name, describe(term.spec),
                      term.terminal == Terminal::reduce_by_key ? " on " + describe(term.keys) : "");
  INFO("replay with PROCFLOW_SEED=", seed, "\n", desc);
  if (std::getenv("PROCFLOW_DIFF_VERBOSE")) fmt::print("seed {}: {}\n", seed, desc);

  if (term.terminal == Terminal::sink && features.cout_sink) {
    auto& want = cout_sink_expected();
    want.clear();
    for (const T& x : seq_t) want.push_back(weight(x));
    std::sort(want.begin(), want.end());
  }

  // Auto-scaled stages: the scheduler's test hook starts and retires replicas at the first ticks.
  bool any_auto = term.spec.automatic;
  for (std::size_t i = 0; i < length; ++i) any_auto = any_auto || steps[i].spec.automatic;
  if (any_auto) {
    std::vector<procflow::scheduler::ForcedStep> forced;
    for (int k = 0; k < 2; ++k)
      forced.push_back({0, std::uniform_int_distribution<std::uint64_t>(0, n / 2)(rng), std::uniform_int_distribution<std::size_t>(0, 3)(rng),
                        std::uniform_int_distribution<std::uint32_t>(1, 3)(rng)});
    for (const auto& f : forced) desc += fmt::format("\n  forced: group {} -> {} replicas at {} items", f.group, f.replicas, f.at_items);
    procflow::scheduler::force_next_run(forced);
  }

  // The same declaration for procflow.
  auto builder = with_pipeline_options(pipe, [&](auto... o) { return pf::pipeline("differential", o...); });
  pf::flow<S> fs = make_source<S>(builder, source_kind, source_spec, source_items, n, salt, iota_first);
  std::optional<pf::flow<T>> ft;
  for (std::size_t i = 0; i < length; ++i) {
    const std::string name = fmt::format("s{}", i + 1);
    if (i < convert_at) {
      fs = add_step(fs, steps[i], name);
    } else if (i == convert_at) {
      if constexpr (!std::is_same_v<S, T>) {
        auto to_t = [](const S& x) { return convert<T>(x); };
        ft = with_stage_options(steps[i].spec, [&](auto... o) { return fs.map(name, to_t, o...); });
      }
    } else {
      ft = add_step(*ft, steps[i], name);
    }
  }
  if constexpr (std::is_same_v<S, T>) ft = fs;
  const pf::flow<T>& f = *ft;

  Features run_features = features;
  if constexpr (std::is_same_v<S, T>)
    if (source_kind == SourceKind::caller) run_features.caller_items = &source_items;

  if (fault_stage) {
    // run() must throw stage_error naming the faulty stage and the item.
    const std::string stage = fmt::format("s{}", *fault_stage + 1);
    const std::string message = fault_message(*steps[*fault_stage].op.fault);
    try {
      run_terminal<T>(f, term, ordered, seq_t, run_features);
      FAIL_CHECK("run() returned instead of throwing stage_error for the fault in ", stage);
    } catch (const pf::stage_error& e) {
      INFO("what(): ", std::string(e.what()));
      CHECK(e.stage() == stage);
      CHECK(e.kind() == pf::stage_error::cause::exception);
      CHECK(e.message().ends_with(message));  // across MPI ranks after "on MPI rank R of N: "
      CHECK(std::string(e.what()).find(message) != std::string::npos);
    }
    return;
  }

  pf::run_report report;
  try {
    report = run_terminal<T>(f, term, ordered, seq_t, run_features);
  } catch (const pf::stage_error& e) {
    FAIL_CHECK("stage_error in stage '", e.stage(), "' replica ", e.replica(), ": ", std::string(e.what()), " (", e.exception_type(), ": ", e.message(), ")");
    return;
  } catch (const std::exception& e) {
    FAIL_CHECK("exception: ", std::string(e.what()));
    return;
  }

  // The report: one row per stage, items in and out as the sequential loop counted them.
  CHECK(report.stages.size() == length + 2);
  if (report.stages.size() != length + 2) return;
  CHECK(report.stages[0].items_out == n);
  for (std::size_t i = 1; i <= length; ++i) {
    CAPTURE(i);
    CHECK(report.stages[i].items_in == counts[i - 1]);
    CHECK(report.stages[i].items_out == counts[i]);
    // Thread mode: replicas(n) bounds the instances (one per worker thread that ran the stage).
    if (features.on_ranks) continue;
    if (steps[i - 1].spec.replicas && !features.in_threads) CHECK(report.stages[i].replicas == *steps[i - 1].spec.replicas);
    if (steps[i - 1].spec.replicas && features.in_threads) CHECK(report.stages[i].replicas <= std::max<std::uint32_t>(1, *steps[i - 1].spec.replicas));
    if (steps[i - 1].spec.own || pipe.no_fusion) CHECK(report.stages[i].process_group != report.stages[i - 1].process_group);
  }
  CHECK(report.stages.back().items_in == counts.back());
  if (crashed) {
    // The item was met, its process died once and was replaced.
    CHECK(crashed->load() == 1);
    CHECK(report.restarts.size() == 1);
  }
}

// ------------------------------------------------------------------ seeds

inline std::uint64_t env_number(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 0) : fallback;
}

// The seeds of one test: PROCFLOW_SEED alone if set; otherwise `fixed` regression seeds from
// `base` (PROCFLOW_DIFF_RUNS overrides the count) and `rotating` seeds derived from the clock
// (PROCFLOW_ROTATING_RUNS overrides), printed so that a failure can be replayed.
inline std::vector<std::uint64_t> seeds_for(const char* test, std::uint64_t base, std::uint64_t fixed, std::uint64_t rotating) {
  std::vector<std::uint64_t> seeds;
  if (std::getenv("PROCFLOW_SEED")) {
    seeds.push_back(env_number("PROCFLOW_SEED", 0));
    return seeds;
  }
  fixed = env_number("PROCFLOW_DIFF_RUNS", fixed);
  rotating = env_number("PROCFLOW_ROTATING_RUNS", rotating);
  for (std::uint64_t i = 0; i < fixed; ++i) seeds.push_back(base + i);
  const auto now = static_cast<std::uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
  const std::uint64_t first = mix(now ^ base) & 0xffff'ffff'ffffULL;
  if (rotating > 0)
    fmt::print("{}: {} fixed seeds from {:#x}; {} rotating seeds {}..{} (replay one with PROCFLOW_SEED=<seed>)\n", test, fixed, base, rotating, first,
               first + rotating - 1);
  std::fflush(stdout);
  for (std::uint64_t i = 0; i < rotating; ++i) seeds.push_back(first + i);
  return seeds;
}

// Runs `one(seed)` for every seed, each in a child process under a watchdog; checks that no
// child process and no /dev/shm entry is left.
inline void run_seeds(const std::vector<std::uint64_t>& seeds, const std::function<void(std::uint64_t)>& one,
                      std::chrono::milliseconds per_seed = std::chrono::seconds(120)) {
  const auto shm_before = pt::dev_shm_entries();
  const auto t0 = std::chrono::steady_clock::now();
  std::size_t failed = 0;
  for (const std::uint64_t seed : seeds) {
    if (!pt::run_isolated(fmt::format("seed {} (replay with PROCFLOW_SEED={})", seed, seed), per_seed, [&] { one(seed); })) ++failed;
    REQUIRE(pt::count_children() == 0);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE(fmt::format("{} random pipelines in {:.1f} s, {} failed", seeds.size(), s, failed));
  CHECK(pt::dev_shm_entries() == shm_before);
}

// Runs `one(seed)` for every seed in this process: for an MPI rank, whose children cannot call
// MPI (a hang is the test runner's timeout). Checks that no child process and no /dev/shm entry
// is left.
inline void run_seeds_here(const std::vector<std::uint64_t>& seeds, const std::function<void(std::uint64_t)>& one) {
  const auto shm_before = pt::dev_shm_entries();
  const auto t0 = std::chrono::steady_clock::now();
  for (const std::uint64_t seed : seeds) {
    INFO("seed ", seed, " (replay with PROCFLOW_SEED=", seed, ")");
    try {
      one(seed);
    } catch (const std::exception& e) {
      FAIL_CHECK("exception: ", std::string(e.what()));
    }
    CHECK(pt::count_children() == 0);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE(fmt::format("{} random pipelines in {:.1f} s", seeds.size(), s));
  CHECK(pt::dev_shm_entries() == shm_before);
}

// One random pipeline over the built-in item types (int64, string, vector<int>): half keep one
// type throughout, the others convert part way. The core, stress and thread-mode tests share it.
inline void run_builtin_seed(std::uint64_t seed, const Features& features) {
  using CaseFn = void (*)(Rng&, std::uint64_t, const Features&);
  static constexpr CaseFn case_table[3][3] = {
      {&run_case<i64, i64>, &run_case<i64, std::string>, &run_case<i64, vec>},
      {&run_case<std::string, i64>, &run_case<std::string, std::string>, &run_case<std::string, vec>},
      {&run_case<vec, i64>, &run_case<vec, std::string>, &run_case<vec, vec>},
  };
  Rng rng(seed);
  const auto s = std::uniform_int_distribution<std::size_t>(0, 2)(rng);
  const auto t = chance(rng, 0.5) ? s : std::uniform_int_distribution<std::size_t>(0, 2)(rng);
  case_table[s][t](rng, seed, features);
}

}  // namespace difftest
