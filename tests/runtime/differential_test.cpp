// Checks SPEC §1 (the typed builder: map / filter / flat_map, the terminals collect, reduce and
// reduce_by_key, pf::ordered, built-in codecs for int64, std::string and std::vector) and §2
// (process groups, fusion, replicas, rings, dispatch) by a differential property test.
//
// Every seed builds one random pipeline: a source (iota, from(vector) or a generator) of item type
// S, a chain of 1-5 stages drawn from a menu of typed operations (the chain may convert S into a
// second item type T part way), random replica counts 1-4, random batch_bytes (64 B .. 64 KiB,
// so items larger than a slot occur) and ring_slots (1..32), random own_process / fusion(false),
// and a terminal: collect (compared as a sorted multiset, or as the exact sequence under
// pf::ordered), reduce (a sum; under pf::ordered the exact sequence, kept by an associative but
// non-commutative concatenation) or reduce_by_key. The same chain then runs as a plain sequential
// loop over the same operations, and both answers must agree, as must the per-stage item counts of
// the run's report.
//
// A failure prints its seed; PROCFLOW_SEED=<seed> replays that one pipeline, and
// PROCFLOW_DIFF_RUNS=<n> changes how many seeds run (default 500).
#include "support/child_process.hpp"

#include <procflow/procflow.hpp>

#include "scheduler/elastic.hpp"

#include <doctest/doctest.h>
#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <random>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;

namespace {

using i64 = std::int64_t;
using vec = std::vector<int>;
using Rng = std::mt19937_64;

// ------------------------------------------------------------------ deterministic item digests

std::uint64_t mix(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

std::uint64_t weight(i64 x) { return mix(static_cast<std::uint64_t>(x)); }
std::uint64_t weight(const std::string& s) {
  std::uint64_t h = 1469598103934665603ULL;
  for (const char c : s) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
  return mix(h ^ s.size());
}
std::uint64_t weight(const vec& v) {
  std::uint64_t h = v.size();
  for (const int e : v) h = mix(h ^ static_cast<std::uint32_t>(e));
  return mix(h);
}

template <class T>
const char* type_name() {
  if constexpr (std::is_same_v<T, i64>) return "int64";
  else if constexpr (std::is_same_v<T, std::string>) return "string";
  else return "vector<int>";
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
};

i64 op_map(const Op& op, i64 x) {
  switch (op.variant % 3) {
    case 0: return (x * 3 + static_cast<i64>(op.salt % 97)) % 1000003;
    case 1: return x ^ static_cast<i64>(op.salt & 0xff);
    default: return x / 2 - 5;
  }
}
std::string op_map(const Op& op, const std::string& s) {
  switch (op.variant % 3) {
    case 0: return s + static_cast<char>('a' + op.salt % 26);
    case 1: return std::string(s.rbegin(), s.rend());
    default: return s.substr(0, (s.size() + 1) / 2);
  }
}
vec op_map(const Op& op, const vec& v) {
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

template <class T>
bool op_keep(const Op& op, const T& x) {
  const std::uint64_t h = mix(weight(x) ^ op.salt);
  if (op.variant % 4 == 0) return h % 8 == 0;  // drops most
  return h % (2 + op.variant % 4) != 0;
}

template <class T>
std::vector<T> op_expand(const Op& op, const T& x) {
  const std::uint64_t k = mix(weight(x) ^ op.salt) % 3;  // 0, 1 or 2 outputs: the size stays put
  std::vector<T> out;
  for (std::uint64_t j = 0; j < k; ++j) {
    if constexpr (std::is_same_v<T, i64>) {
      out.push_back(x + static_cast<i64>(j));
    } else if constexpr (std::is_same_v<T, std::string>) {
      out.push_back(x + static_cast<char>('0' + j));
    } else {
      vec v = x;
      v.push_back(static_cast<int>(j));
      out.push_back(std::move(v));
    }
  }
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
  } else {
    static_assert(std::is_same_v<S, vec> && std::is_same_v<T, std::string>);
    std::string s;
    for (const int e : x) s += std::to_string(e) + ",";
    return s;
  }
}

// Source item i. Now and then a string or vector of a few KiB: larger than small ring slots.
template <class T>
T make_item(std::uint64_t i, std::uint64_t salt) {
  const std::uint64_t r = mix(i ^ salt);
  if constexpr (std::is_same_v<T, i64>) {
    return static_cast<i64>(r % 2000001) - 1000000;
  } else if constexpr (std::is_same_v<T, std::string>) {
    const std::uint64_t len = r % 97 == 0 ? 1000 + r % 4000 : r % 20;
    std::string s(len, 'a');
    for (std::uint64_t j = 0; j < len; ++j) s[j] = static_cast<char>('a' + mix(r + j) % 26);
    return s;
  } else {
    const std::uint64_t len = r % 97 == 0 ? 500 + r % 2500 : r % 8;
    vec v(len);
    for (std::uint64_t j = 0; j < len; ++j) v[j] = static_cast<int>(mix(r + j) % 2001) - 1000;
    return v;
  }
}

// ------------------------------------------------------------------ random declarations

struct StageSpec {
  std::optional<std::uint32_t> replicas;
  std::optional<std::uint32_t> bytes;
  std::optional<std::uint32_t> slots;
  bool own = false;
  bool ordered = false;
  bool automatic = false;  // replicas(auto_scale)
};

struct PipeSpec {
  std::optional<std::uint32_t> bytes;
  std::optional<std::uint32_t> slots;
  bool no_fusion = false;
  bool ordered = false;
};

struct Step {
  Op op;
  StageSpec spec;
};

enum class SourceKind { iota, from, generate };
enum class Terminal { collect, reduce, reduce_by_key };

std::uint32_t random_bytes(Rng& rng) {  // log-uniform 64 B .. 64 KiB
  const double e = std::uniform_real_distribution<double>(6.0, 16.0)(rng);
  return static_cast<std::uint32_t>(std::pow(2.0, e));
}
std::uint32_t random_slots(Rng& rng) { return 1u << std::uniform_int_distribution<unsigned>(0, 5)(rng); }
bool chance(Rng& rng, double p) { return std::bernoulli_distribution(p)(rng); }

StageSpec random_stage_spec(Rng& rng) {
  StageSpec s;
  if (chance(rng, 0.5)) s.replicas = std::uniform_int_distribution<std::uint32_t>(1, 4)(rng);
  const bool automatic = chance(rng, 0.15);
  const double roll = std::uniform_real_distribution<double>(0, 1)(rng);
  if (roll < 0.2) {
    s.own = true;
  } else if (roll < 0.45) {
    s.bytes = random_bytes(rng);
    s.slots = random_slots(rng);
  }
  if (automatic) {  // its own option profile (see with_stage_options)
    s = StageSpec{};
    s.automatic = true;
  }
  return s;
}

// Ordered, possibly with replicas: the only profile with pf::ordered (see with_stage_options).
void make_ordered(StageSpec& s) {
  s.ordered = true;
  s.automatic = false;
  s.own = false;
  s.bytes.reset();
  s.slots.reset();
}

std::string describe(const StageSpec& s) {
  std::string d;
  if (s.replicas) d += fmt::format(" replicas({})", *s.replicas);
  if (s.automatic) d += " replicas(auto_scale)";
  if (s.bytes) d += fmt::format(" batch_bytes({})", *s.bytes);
  if (s.slots) d += fmt::format(" ring_slots({})", *s.slots);
  if (s.own) d += " own_process";
  if (s.ordered) d += " ordered";
  return d;
}

const char* kind_name(OpKind k) {
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
auto with_stage_options(const StageSpec& s, K&& k) {
  // A few option profiles rather than every combination: each combination of option types is a
  // separate instantiation of the whole builder call, and compile time matters.
  if (s.ordered) return s.replicas ? k(pf::replicas(*s.replicas), pf::ordered) : k(pf::ordered);
  if (s.automatic) return k(pf::replicas(pf::auto_scale));
  if (s.bytes) {
    const pf::batch_bytes bytes(*s.bytes);
    const pf::ring_slots slots(s.slots.value_or(16));
    return s.replicas ? k(pf::replicas(*s.replicas), bytes, slots) : k(bytes, slots);
  }
  if (s.own) return s.replicas ? k(pf::replicas(*s.replicas), pf::own_process) : k(pf::own_process);
  return s.replicas ? k(pf::replicas(*s.replicas)) : k();
}

template <class K>
auto with_pipeline_options(const PipeSpec& p, K&& k) {
  auto with_ordered = [&](auto... o) { return p.ordered ? k(o..., pf::ordered) : k(o...); };
  auto with_fusion = [&](auto... o) { return p.no_fusion ? with_ordered(o..., pf::fusion(false)) : with_ordered(o...); };
  auto with_slots = [&](auto... o) { return p.slots ? with_fusion(o..., pf::ring_slots(*p.slots)) : with_fusion(o...); };
  return p.bytes ? with_slots(pf::batch_bytes(*p.bytes)) : with_slots();
}

template <class T>
pf::flow<T> add_step(const pf::flow<T>& f, const Step& st, const std::string& name) {
  const Op op = st.op;
  return with_stage_options(st.spec, [&](auto... o) -> pf::flow<T> {
    switch (op.kind) {
      case OpKind::map: return f.map(name, [op](const T& x) { return op_map(op, x); }, o...);
      case OpKind::map_by_value: return f.map(name, [op](T x) { return op_map(op, x); }, o...);
      case OpKind::filter: return f.filter(name, [op](const T& x) { return op_keep(op, x); }, o...);
      case OpKind::flat_map: return f.flat_map(name, [op](const T& x) { return op_expand(op, x); }, o...);
      case OpKind::flat_map_emit:
        return f.template flat_map<T>(name, [op](const T& x, pf::emitter<T>& emit) {
          for (auto& y : op_expand(op, x)) emit(std::move(y));
        }, o...);
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

Op random_op(Rng& rng) {
  static constexpr OpKind kinds[] = {OpKind::map, OpKind::map_by_value, OpKind::filter, OpKind::flat_map, OpKind::flat_map_emit};
  Op op;
  op.kind = kinds[std::uniform_int_distribution<std::size_t>(0, std::size(kinds) - 1)(rng)];
  op.variant = std::uniform_int_distribution<unsigned>(0, 11)(rng);
  op.salt = rng();
  return op;
}

using Sum = std::uint64_t;
using Group = std::pair<i64, std::uint64_t>;  // count, sum of weights

template <class T>
i64 key_of(const T& x) {
  return static_cast<i64>(weight(x) % 7);
}

// The source, as declared for procflow (a function of S only: fewer instantiations).
template <class S>
pf::flow<S> make_source(const pf::pipeline_builder& builder, SourceKind kind, const StageSpec& spec, const std::vector<S>& items,
                        std::size_t n, std::uint64_t salt, i64 iota_first) {
  return with_stage_options(spec, [&](auto... o) -> pf::flow<S> {
    switch (kind) {
      case SourceKind::iota:
        if constexpr (std::is_same_v<S, i64>) return builder.source("src", pf::iota<i64>(iota_first, iota_first + static_cast<i64>(n)), o...);
        break;
      case SourceKind::from: return builder.source("src", pf::from(items), o...);
      case SourceKind::generate:
        return builder.source("src", pf::generate([i = std::uint64_t{0}, n, salt]() mutable -> std::optional<S> {
                                if (i >= n) return std::nullopt;
                                return make_item<S>(i++, salt);
                              }), o...);
    }
    throw std::logic_error("bad source kind");
  });
}

// Runs the pipeline `f` ends with the terminal, compares its value with the sequential `seq`
// and returns the report (nullopt if run() threw, which is a failure).
template <class T>
std::optional<pf::run_report> run_terminal(const pf::flow<T>& f, Terminal terminal, const StageSpec& spec, bool ordered,
                                           const std::vector<T>& seq) {
  try {
    switch (terminal) {
      case Terminal::collect: {
        auto r = with_stage_options(spec, [&](auto... o) { return f.collect(o...); }).run();
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
          auto r = with_stage_options(spec, [&](auto... o) {
                     return f.reduce("total", std::vector<std::uint64_t>{},
                                     [](std::vector<std::uint64_t>& acc, const T& x) { acc.push_back(weight(x)); },
                                     [](std::vector<std::uint64_t>& acc, std::vector<std::uint64_t> other) {
                                       acc.insert(acc.end(), other.begin(), other.end());
                                     }, o...);
                   }).run();
          std::vector<std::uint64_t> want;
          for (const T& x : seq) want.push_back(weight(x));
          CHECK(r.value.size() == want.size());
          CHECK(r.value == want);
          return r.report;
        }
        auto r = with_stage_options(spec, [&](auto... o) {
                   return f.reduce("total", Sum{0}, [](Sum acc, const T& x) { return acc + weight(x); }, std::plus<>{}, o...);
                 }).run();
        Sum want = 0;
        for (const T& x : seq) want += weight(x);
        CHECK(r.value == want);
        return r.report;
      }
      case Terminal::reduce_by_key: {
        auto r = with_stage_options(spec, [&](auto... o) {
                   return f.reduce_by_key("groups", [](const T& x) { return key_of(x); }, Group{0, 0},
                                          [](Group g, const T& x) { return Group{g.first + 1, g.second + weight(x)}; },
                                          [](Group a, Group b) { return Group{a.first + b.first, a.second + b.second}; }, o...);
                 }).run();
        std::unordered_map<i64, Group> want;
        for (const T& x : seq) {
          Group& g = want[key_of(x)];
          g.first += 1;
          g.second += weight(x);
        }
        CHECK(r.value == want);
        return r.report;
      }
    }
  } catch (const pf::stage_error& e) {
    FAIL_CHECK("stage_error in stage '", e.stage(), "' replica ", e.replica(), ": ", e.what(), " (", e.exception_type(), ": ", e.message(), ")");
  } catch (const std::exception& e) {
    FAIL_CHECK("exception: ", e.what());
  }
  return std::nullopt;
}

// ------------------------------------------------------------------ one random pipeline

template <class S, class T>
void run_case(Rng& rng, std::uint64_t seed) {
  // Source.
  SourceKind source_kind = SourceKind::generate;
  const int pick = std::uniform_int_distribution<int>(0, 2)(rng);
  if (pick == 0 && std::is_same_v<S, i64>) source_kind = SourceKind::iota;
  else if (pick <= 1) source_kind = SourceKind::from;
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

  // Chain: 1-5 stages; with S != T one of them is the conversion.
  const std::size_t length = std::uniform_int_distribution<std::size_t>(1, 5)(rng);
  const std::size_t convert_at = std::is_same_v<S, T> ? length : std::uniform_int_distribution<std::size_t>(0, length - 1)(rng);
  std::vector<Step> steps(length);
  for (std::size_t i = 0; i < length; ++i) {
    steps[i].op = random_op(rng);
    if (i == convert_at) steps[i].op.kind = OpKind::convert;
    steps[i].spec = random_stage_spec(rng);
  }

  PipeSpec pipe;
  if (chance(rng, 0.7)) pipe.bytes = random_bytes(rng);
  if (chance(rng, 0.7)) pipe.slots = random_slots(rng);
  pipe.no_fusion = chance(rng, 0.2);

  const Terminal terminal = static_cast<Terminal>(std::uniform_int_distribution<int>(0, 2)(rng));
  StageSpec terminal_spec;
  if (terminal != Terminal::collect) terminal_spec = random_stage_spec(rng);
  // Ordered: on the pipeline, on the terminal, or on the last chain stage (whose next consumer
  // is the terminal).
  bool ordered = false;
  switch (std::uniform_int_distribution<int>(0, 5)(rng)) {
    case 0: pipe.ordered = ordered = true; break;
    case 1:
      make_ordered(terminal_spec);
      ordered = true;
      break;
    case 2:
      make_ordered(steps.back().spec);
      ordered = true;
      break;
    default: break;
  }

  // Describe it, so a failure can be read without replaying.
  std::string desc = fmt::format("pipeline{}{}{}{}: source {} of {} {} items{}{}", pipe.bytes ? fmt::format(" batch_bytes({})", *pipe.bytes) : "",
                                 pipe.slots ? fmt::format(" ring_slots({})", *pipe.slots) : "", pipe.no_fusion ? " fusion(false)" : "",
                                 pipe.ordered ? " ordered" : "",
                                 source_kind == SourceKind::iota ? "iota" : source_kind == SourceKind::from ? "from" : "generate", n,
                                 type_name<S>(), source_kind == SourceKind::iota ? fmt::format(" from {}", iota_first) : "",
                                 describe(source_spec));
  for (std::size_t i = 0; i < length; ++i)
    desc += fmt::format("\n  s{}: {} v{}{}", i + 1, steps[i].op.kind == OpKind::convert ? fmt::format("map(convert {} -> {})", type_name<S>(), type_name<T>()) : kind_name(steps[i].op.kind),
                        steps[i].op.variant, describe(steps[i].spec));
  desc += fmt::format("\n  terminal: {}{}", terminal == Terminal::collect ? "collect" : terminal == Terminal::reduce ? (ordered ? "reduce(concat)" : "reduce(sum)") : "reduce_by_key",
                      describe(terminal_spec));
  INFO("replay with PROCFLOW_SEED=", seed, "\n", desc);
  if (std::getenv("PROCFLOW_DIFF_VERBOSE")) fmt::print("seed {}: {}\n", seed, desc);

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
  for (std::size_t i = 0; i < length; ++i) {
    if (i < convert_at) {
      seq_s = apply_step(steps[i], seq_s);
      counts.push_back(seq_s.size());
    } else if (i == convert_at) {
      if constexpr (!std::is_same_v<S, T>) {
        for (const S& x : seq_s) seq_t.push_back(convert<T>(x));
      }
      counts.push_back(seq_t.size());
    } else {
      seq_t = apply_step(steps[i], seq_t);
      counts.push_back(seq_t.size());
    }
  }
  if constexpr (std::is_same_v<S, T>) seq_t = seq_s;

  // Auto-scaled stages: the scheduler's test hook starts and retires replicas at the first ticks.
  bool any_auto = terminal_spec.automatic;
  for (const auto& st : steps) any_auto = any_auto || st.spec.automatic;
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
        ft = with_stage_options(steps[i].spec, [&](auto... o) { return fs.map(name, [](const S& x) { return convert<T>(x); }, o...); });
      }
    } else {
      ft = add_step(*ft, steps[i], name);
    }
  }
  if constexpr (std::is_same_v<S, T>) ft = fs;
  const pf::flow<T>& f = *ft;

  const std::optional<pf::run_report> run = run_terminal<T>(f, terminal, terminal_spec, ordered, seq_t);
  if (!run) return;
  const pf::run_report& report = *run;

  // The report: one row per stage, items in and out as the sequential loop counted them.
  CHECK(report.stages.size() == length + 2);
  if (report.stages.size() != length + 2) return;
  CHECK(report.stages[0].items_out == n);
  for (std::size_t i = 1; i <= length; ++i) {
    CAPTURE(i);
    CHECK(report.stages[i].items_in == counts[i - 1]);
    CHECK(report.stages[i].items_out == counts[i]);
    if (steps[i - 1].spec.replicas) CHECK(report.stages[i].replicas == *steps[i - 1].spec.replicas);
    if (steps[i - 1].spec.own || pipe.no_fusion) CHECK(report.stages[i].process_group != report.stages[i - 1].process_group);
  }
  CHECK(report.stages.back().items_in == counts.back());
}

using CaseFn = void (*)(Rng&, std::uint64_t);
constexpr CaseFn case_table[3][3] = {
    {&run_case<i64, i64>, &run_case<i64, std::string>, &run_case<i64, vec>},
    {&run_case<std::string, i64>, &run_case<std::string, std::string>, &run_case<std::string, vec>},
    {&run_case<vec, i64>, &run_case<vec, std::string>, &run_case<vec, vec>},
};

void run_seed(std::uint64_t seed) {
  Rng rng(seed);
  const auto s = std::uniform_int_distribution<std::size_t>(0, 2)(rng);
  // Half the pipelines keep one item type throughout; the others convert part way.
  const auto t = chance(rng, 0.5) ? s : std::uniform_int_distribution<std::size_t>(0, 2)(rng);
  case_table[s][t](rng, seed);
}

std::uint64_t env_number(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 0) : fallback;
}

}  // namespace

TEST_CASE("random pipelines agree with the same chain run as a sequential loop") {
  const auto shm_before = pt::dev_shm_entries();
  std::vector<std::uint64_t> seeds;
  if (std::getenv("PROCFLOW_SEED")) {
    seeds.push_back(env_number("PROCFLOW_SEED", 0));
  } else {
    const std::uint64_t runs = env_number("PROCFLOW_DIFF_RUNS", 500);
    for (std::uint64_t i = 0; i < runs; ++i) seeds.push_back(0x5eed0000 + i);
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (const std::uint64_t seed : seeds) {
    CAPTURE(seed);
    try {
      run_seed(seed);
    } catch (const pf::stage_error& e) {
      FAIL_CHECK("seed ", seed, ": stage_error in stage '", e.stage(), "' replica ", e.replica(), ": ", e.what());
    } catch (const std::exception& e) {
      FAIL_CHECK("seed ", seed, ": exception: ", e.what());
    }
    REQUIRE(pt::count_children() == 0);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE(fmt::format("{} random pipelines in {:.1f} s", seeds.size(), s));
  CHECK(pt::dev_shm_entries() == shm_before);
}
