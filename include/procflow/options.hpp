// Options for stages and pipelines: pf::replicas(n), pf::ordered, pf::batch_bytes(n), ...
// Pass any number of them after a stage's function, or to pf::pipeline().
#pragma once

#include <procflow/profile.hpp>
#include <procflow/cancel.hpp>
#include <procflow/policy.hpp>
#include <procflow/recycle.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace procflow {

// How a producer picks the consumer replica for its next batch.
enum class dispatch : std::uint8_t {
  least_loaded,  // the replica whose input ring is shortest (default for stateless stages)
  round_robin,   // each replica in turn
};

// Let the scheduler choose (and change while running) how many processes run a stage:
// `replicas(auto_scale)` on a stage, or `auto_scale` on the pipeline for every stage without an
// explicit count. The scheduler shares the core budget (see cores) by each stage's measured cost.
struct auto_scale_t {
  explicit constexpr auto_scale_t() = default;
};
inline constexpr auto_scale_t auto_scale{};

// Number of processes running a stage. A stage without it inherits the previous stage's count
// (the source counts as 1), so `.map(f, replicas(4)).filter(g)` runs both with 4 replicas; the
// stateless map/filter/flat_map stages before the first stage with a count take that count when
// they can all run in its processes (fusion on, none with own_process or key_by), so
// `.filter(g).map(f, replicas(4))` filters in the map's 4 processes rather than in one before them —
// except a stage whose callable holds state (it cannot be called as const: a `mutable` lambda, a
// functor with a non-const operator()): it runs in one process unless given replicas(n) or
// replicas(auto_scale) itself (the run report notes it). A pf::per_replica factory's callable is
// per replica by design and inherits as usual.
// An explicit count is fixed: the scheduler never changes it.
struct replicas {
  explicit replicas(std::uint32_t n) : count(n) {
    if (n == 0) throw std::invalid_argument("procflow::replicas: need at least 1 replica");
  }
  explicit replicas(auto_scale_t) : count(0), automatic(true) {}
  std::uint32_t count;
  bool automatic = false;
};

// Pipeline-wide: the core budget the scheduler shares out among auto-scaled stages. Default: the
// CPUs this process may run on (sched_getaffinity).
struct cores {
  explicit cores(std::uint32_t n) : count(n) {
    if (n == 0) throw std::invalid_argument("procflow::cores: need at least 1 core");
  }
  std::uint32_t count;
};

// Pipeline-wide: pin every replica process to one CPU (sched_setaffinity), the replicas spread
// round robin over the CPUs this process may run on (the first n of them under pf::cores(n)).
// The calling process and its threads keep their affinity; thread mode (execution.hpp) is not
// pinned. Default: off (README, "Scheduler": +3% on a quiet 2-core machine for 2 fused replicas,
// up to 40% slower for splits that oversubscribe the cores, and two pipelines in one program
// would pin to the same CPUs).
struct pinning {
  explicit pinning(bool on) : enabled(on) {}
  bool enabled;
};

// Restore source order at the next consumer. On a pipeline: everywhere.
struct ordered_t {
  explicit constexpr ordered_t() = default;
};
inline constexpr ordered_t ordered{};

// Bytes of encoded items per batch (one ring slot). Larger batches cost fewer wake-ups and
// index updates; smaller ones lower latency. Default: 64 KiB.
struct batch_bytes {
  explicit batch_bytes(std::uint32_t n) : bytes(n) {
    if (n < 64) throw std::invalid_argument("procflow::batch_bytes: a batch needs at least 64 bytes");
  }
  std::uint32_t bytes;
};

// Slots per ring (a power of two). Default: 16.
struct ring_slots {
  explicit ring_slots(std::uint32_t n) : slots(n) {
    if (n == 0 || (n & (n - 1)) != 0) throw std::invalid_argument("procflow::ring_slots: need a power of two >= 1");
  }
  std::uint32_t slots;
};

// Run a stage in processes of its own instead of fusing it into the previous stage's.
struct own_process_t {
  explicit constexpr own_process_t() = default;
};
inline constexpr own_process_t own_process{};

// Pipeline-wide: fuse adjacent stages with equal replica counts into one process (the
// default), or give every stage its own processes.
struct fusion {
  explicit fusion(bool on) : enabled(on) {}
  bool enabled;
};

// How long an item may wait in a partly filled batch before it is handed on. A slow stream (a
// tailed log, a socket) flows with it; at full rate batches fill long before the bound and it
// costs nothing. `max_latency(0ms)` hands on every item at once; `max_latency(latency_off)` waits
// for full batches (and for the producer to go idle). Default: 5 ms. Applies to the port a stage
// writes (on a pipeline: to every stage).
struct latency_off_t {
  explicit constexpr latency_off_t() = default;
};
inline constexpr latency_off_t latency_off{};

struct max_latency {
  template <class Rep, class Period>
  explicit max_latency(std::chrono::duration<Rep, Period> d)
      : ns(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()) {
    if (ns < 0) throw std::invalid_argument("procflow::max_latency: the bound cannot be negative");
  }
  explicit max_latency(latency_off_t) : ns(-1) {}
  std::int64_t ns;  // -1: off
};

// Pipeline-wide: the run seed behind this_replica().seed, replica_engine() and item_rng()
// (replica.hpp). Without it every run draws a fresh one (std::random_device).
struct seed {
  explicit constexpr seed(std::uint64_t s) noexcept : value(s) {}
  std::uint64_t value;
};

// Watchdog: a replica of the stage that spends longer than `d` on one batch (its stage function,
// or waiting for room downstream) or on its end-of-stream work is killed, and run() throws a
// stage_error with kind() timeout naming the batch's item range. Waiting for input never counts.
// A generator source is not watched. Stages fused into one process share the shortest bound. On
// a pipeline: every stage without its own. Default: none.
struct watchdog {
  template <class Rep, class Period>
  explicit watchdog(std::chrono::duration<Rep, Period> d)
      : ns(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()) {
    if (ns <= 0) throw std::invalid_argument("procflow::watchdog: the bound must be positive");
  }
  std::int64_t ns;
};

// key_by(fn) on a map, filter, flat_map or sink: every item with the same key(item) goes to the same
// replica (the key's hash, mixed, picks one; procflow::hash handles pairs and tuples), so a stage
// with per-replica state (a dedup table, a sessionizer, a running per-key total) can be
// replicated: Flink's keyBy. The stage runs in processes of its own; not with pf::ordered, and
// not straight after a generate() source in its own process (run() refuses both).
template <class KeyFn>
struct key_by_t {
  KeyFn fn;
};
template <class KeyFn>
key_by_t<KeyFn> key_by(KeyFn fn) {
  return key_by_t<KeyFn>{std::move(fn)};
}

// pre_aggregate on a reduce_by_key: when a replica stops pre-aggregating its keys and sends its
// partitions on as they fill (the partitioned shuffle: the caller owns each key once, so memory
// does not grow with the replica count). Default, adaptive: a replica whose partial holds
// default_switch_keys distinct keys or more while it folded fewer than 2 items a key switches
// (pre-aggregation is not paying). until_keys(n): the same test at n keys. always: never switch.
// off: shuffle from the first batch. The report's note on the stage says which ran and why.
struct pre_aggregate {
  static constexpr std::uint64_t default_switch_keys = std::uint64_t{1} << 20;
  static constexpr std::uint64_t never = ~std::uint64_t{0};
  static pre_aggregate until_keys(std::uint64_t n) { return pre_aggregate{n}; }
  static pre_aggregate always() { return pre_aggregate{never}; }
  static pre_aggregate off() { return pre_aggregate{0}; }
  std::uint64_t switch_keys;  // 0: off; never: always
};

struct stage_options {
  std::optional<std::uint32_t> replicas;
  bool keyed = false;  // key_by(fn): items reach the replica owning their key (implies own_process)
  std::optional<std::int64_t> max_latency_ns;  // -1: off
  std::optional<std::uint32_t> batch_bytes;
  std::optional<std::uint32_t> ring_slots;
  std::optional<procflow::dispatch> dispatch;
  bool ordered = false;
  bool own_process = false;
  bool auto_scale = false;  // replicas(auto_scale); on the pipeline: stages without a count
  std::optional<std::int64_t> watchdog_ns;  // watchdog(d)
  std::optional<error_policy> on_error;      // skip, retry(n, backoff[, skip]); default: fail
  std::optional<std::uint32_t> restarts;     // restart(n) (policy.hpp); default: a death fails run()
  std::uint64_t recycle_items = 0;           // recycle::after_items(n) (recycle.hpp); 0: never
  std::uint64_t recycle_rss_bytes = 0;       // recycle::above_rss(bytes); 0: never
  std::uint64_t pre_aggregate_keys = pre_aggregate::default_switch_keys;  // reduce_by_key (pre_aggregate)
};

struct pipeline_options {
  stage_options defaults;  // batch_bytes, ring_slots, ordered apply to every stage
  bool fusion = true;
  std::optional<std::uint32_t> cores;  // core budget; default: sched_getaffinity
  bool pinning = false;                // pinning(true): one CPU per replica process
  profile_options profile;             // sampling, progress, trace (profile.hpp)
  std::optional<std::uint64_t> seed;   // run seed; default: fresh entropy per run
  std::shared_ptr<detail::cancel_state> cancel;  // cancel_with(source); null: none
  bool allow_threads = false;                     // allow_threads: skip the single-thread check
  std::string dead_letter_path;                   // dead_letters_to(path) (policy.hpp); empty: none
};

namespace detail {

inline void apply_option(stage_options& o, const replicas& r) {
  if (r.automatic) {
    o.auto_scale = true;
    o.replicas.reset();
  } else {
    o.replicas = r.count;
    o.auto_scale = false;
  }
}
inline void apply_option(stage_options& o, auto_scale_t) {
  o.auto_scale = true;
  o.replicas.reset();
}
inline void apply_option(stage_options& o, const batch_bytes& b) { o.batch_bytes = b.bytes; }
inline void apply_option(stage_options& o, const ring_slots& s) { o.ring_slots = s.slots; }
inline void apply_option(stage_options& o, dispatch d) { o.dispatch = d; }
inline void apply_option(stage_options& o, ordered_t) { o.ordered = true; }
inline void apply_option(stage_options& o, own_process_t) { o.own_process = true; }
inline void apply_option(stage_options& o, const max_latency& l) { o.max_latency_ns = l.ns; }
inline void apply_option(stage_options& o, const watchdog& w) { o.watchdog_ns = w.ns; }
inline void apply_option(stage_options& o, skip_t) { o.on_error = error_policy{0, 0, true}; }
inline void apply_option(stage_options& o, const retry& r) { o.on_error = r.policy; }
inline void apply_option(stage_options& o, const restart& r) { o.restarts = r.times; }
inline void apply_option(stage_options& o, const recycle& r) {
  if (r.items) o.recycle_items = r.items;
  if (r.rss_bytes) o.recycle_rss_bytes = r.rss_bytes;
}
inline void apply_option(stage_options& o, const pre_aggregate& p) { o.pre_aggregate_keys = p.switch_keys; }
// pre_aggregate is refused at compile time everywhere but reduce_by_key (pipeline.hpp): on another
// stage, or as a pipeline default, nothing would read it.
template <class T>
inline constexpr bool is_pre_aggregate_v = std::is_same_v<T, pre_aggregate>;
template <class KeyFn>
void apply_option(stage_options& o, const key_by_t<KeyFn>&) {
  o.keyed = true;
  o.own_process = true;
}

template <class T>
concept stage_option = requires(stage_options& o, const T& t) { apply_option(o, t); };

template <class... Opts>
stage_options make_stage_options(const Opts&... opts) {
  static_assert((stage_option<Opts> && ...),
                "procflow: a stage option must be one of replicas(n), ordered, batch_bytes(n), ring_slots(n), "
                "dispatch::..., own_process, auto_scale, max_latency(d), watchdog(d), skip, retry(n, backoff), restart(n), recycle::..., key_by(fn), pre_aggregate::...");
  stage_options o;
  (apply_option(o, opts), ...);
  return o;
}

inline void apply_pipeline_option(pipeline_options& o, const fusion& f) { o.fusion = f.enabled; }
inline void apply_pipeline_option(pipeline_options& o, const cores& c) { o.cores = c.count; }
inline void apply_pipeline_option(pipeline_options& o, const pinning& p) { o.pinning = p.enabled; }
inline void apply_pipeline_option(pipeline_options& o, const seed& s) { o.seed = s.value; }
inline void apply_pipeline_option(pipeline_options& o, const cancel_with& c) { o.cancel = c.source.state(); }
inline void apply_pipeline_option(pipeline_options& o, allow_threads_t) { o.allow_threads = true; }
inline void apply_pipeline_option(pipeline_options& o, const dead_letters_to& d) { o.dead_letter_path = d.path; }
template <stage_option T>
void apply_pipeline_option(pipeline_options& o, const T& t) { apply_option(o.defaults, t); }
template <profile_option T>
void apply_pipeline_option(pipeline_options& o, const T& t) { apply_profile_option(o.profile, t); }

}  // namespace detail
}  // namespace procflow
