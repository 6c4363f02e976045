// Peer implementations for procflow's pipeline benchmarks; see pipeline_peers.hpp.
#include "pipeline_peers.hpp"

#include "bench_support.hpp"

#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/parallel_pipeline.h>
#include <oneapi/tbb/task_arena.h>

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <vector>

namespace bench::peers {
namespace {

using clock_type = std::chrono::steady_clock;

// Hides a value from the optimizer: after this, the compiler must assume `v` could be anything,
// so a loop bounded by it cannot be constant-folded even if the caller passed a literal.
template <class T>
inline void opaque(T& v) {
  asm volatile("" : "+r"(v));
}

// The per-item work of the trivial job, split into its map and filter steps.
inline uint64_t square(uint64_t x) { return x * x; }
inline bool keep(uint64_t v) { return v % 3 == 0; }

// Limits oneTBB to `threads` threads for the lifetime of the object: a global_control caps the
// process-wide parallelism (and allows more threads than cores when asked), and the arena in
// which the pipeline runs has exactly that many slots (the calling thread takes one of them).
class LimitedArena {
 public:
  explicit LimitedArena(std::size_t threads)
      : threads_(std::max<std::size_t>(1, threads)),
        control_(tbb::global_control::max_allowed_parallelism, threads_),
        arena_(static_cast<int>(threads_)) {
    arena_.initialize();
  }
  std::size_t threads() const { return threads_; }
  std::size_t tokens() const { return 4 * threads_; }
  template <class F>
  void execute(F&& f) {
    arena_.execute(std::forward<F>(f));
  }

 private:
  std::size_t threads_;
  tbb::global_control control_;
  tbb::task_arena arena_;
};

// Half-open index range [begin, end) handed out by a chunking source stage.
struct Range {
  uint64_t begin = 0;
  uint64_t end = 0;
};

// A chunk of the trivial job in flight: items begin, begin+1, ... whose values live in
// data[0, count) of a buffer owned by the pipeline's ring of buffers.
struct Chunk {
  uint64_t begin = 0;
  uint64_t* data = nullptr;
  std::size_t count = 0;
};

}  // namespace

// --- trivial job --------------------------------------------------------------------------

uint64_t trivial_expected(uint64_t n) { return sequential_trivial(n).sum; }

TrivialResult sequential_trivial(uint64_t n) {
  const auto t0 = clock_type::now();
  opaque(n);
  uint64_t sum = 0;
  for (uint64_t x = 0; x < n; ++x) {
    const uint64_t v = square(x);
    if (keep(v)) sum += v;
  }
  opaque(sum);
  return {sum, seconds_since(t0)};
}

TrivialResult tbb_trivial(uint64_t n, std::size_t items_per_token, std::size_t threads) {
  items_per_token = std::max<std::size_t>(1, items_per_token);
  LimitedArena arena(threads);
  uint64_t sum = 0;   // only touched by the serial reduce stage
  uint64_t next = 0;  // only touched by the serial source stage
  // Buffers of the chunked variant (see below), allocated before the clock starts.
  std::vector<uint64_t> storage(items_per_token > 1 ? arena.tokens() * items_per_token : 0);
  std::size_t ring_slot = 0;  // only touched by the serial source stage
  const auto t0 = clock_type::now();

  if (items_per_token == 1) {
    // One item per token: the token is the value itself, so the measurement is pure
    // per-token pipeline overhead. TBB middle stages cannot drop tokens, so the filter stage
    // maps each value to "present or not" and the reduce stage skips the empty ones.
    arena.execute([&] {
      tbb::parallel_pipeline(
          arena.tokens(),
          tbb::make_filter<void, uint64_t>(tbb::filter_mode::serial_in_order,
                                           [&](tbb::flow_control& fc) -> uint64_t {
                                             if (next >= n) {
                                               fc.stop();
                                               return 0;
                                             }
                                             return next++;
                                           }) &
              tbb::make_filter<uint64_t, uint64_t>(tbb::filter_mode::parallel,
                                                   [](uint64_t x) { return square(x); }) &
              tbb::make_filter<uint64_t, std::optional<uint64_t>>(
                  tbb::filter_mode::parallel,
                  [](uint64_t v) { return keep(v) ? std::optional<uint64_t>(v) : std::nullopt; }) &
              tbb::make_filter<std::optional<uint64_t>, void>(tbb::filter_mode::serial_out_of_order,
                                                              [&](std::optional<uint64_t> v) {
                                                                if (v) sum += *v;
                                                              }));
    });
  } else {
    // Chunked tokens, without per-chunk allocation: a ring of tokens() buffers of
    // items_per_token values each (the classic TBB idiom). The source stage claims the next
    // buffer of the ring and fills in an index range, the map stage writes the squares of that
    // range into the buffer, the filter stage compacts the buffer in place, and the reduce
    // stage adds up what is left. Reusing buffer k % tokens for token k is safe because at most
    // tokens() tokens are in flight and the reduce stage is serial_in_order: when token
    // k + tokens() is created, some token has left the pipeline, and the first to leave is k.
    arena.execute([&] {
      tbb::parallel_pipeline(
          arena.tokens(),
          tbb::make_filter<void, Chunk>(tbb::filter_mode::serial_in_order,
                                        [&](tbb::flow_control& fc) -> Chunk {
                                          if (next >= n) {
                                            fc.stop();
                                            return {};
                                          }
                                          Chunk c;
                                          c.data = storage.data() + ring_slot * items_per_token;
                                          ring_slot = (ring_slot + 1) % arena.tokens();
                                          c.begin = next;
                                          c.count = static_cast<std::size_t>(
                                              std::min<uint64_t>(items_per_token, n - next));
                                          next += c.count;
                                          return c;
                                        }) &
              tbb::make_filter<Chunk, Chunk>(tbb::filter_mode::parallel,
                                             [](Chunk c) {
                                               for (std::size_t i = 0; i < c.count; ++i)
                                                 c.data[i] = square(c.begin + i);
                                               return c;
                                             }) &
              tbb::make_filter<Chunk, Chunk>(tbb::filter_mode::parallel,
                                             [](Chunk c) {
                                               c.count = static_cast<std::size_t>(
                                                   std::remove_if(c.data, c.data + c.count,
                                                                  [](uint64_t v) { return !keep(v); }) -
                                                   c.data);
                                               return c;
                                             }) &
              tbb::make_filter<Chunk, void>(tbb::filter_mode::serial_in_order, [&](Chunk c) {
                for (std::size_t i = 0; i < c.count; ++i) sum += c.data[i];
              }));
    });
  }
  return {sum, seconds_since(t0)};
}

// --- CPU-bound job ------------------------------------------------------------------------

uint64_t burn(uint64_t x, uint32_t iterations) {
  // Seed from x with a multiplicative hash, then iterate a xorshift-multiply mixer. Every round
  // depends on the previous one (a serial multiply chain), so the loop can be neither
  // vectorized nor reduced to a closed form; the caller uses the result.
  uint64_t h = x * 0x9E3779B97F4A7C15ull + 0xD1B54A32D192ED03ull;
  for (uint32_t i = 0; i < iterations; ++i) {
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h << 11;
    h += i;
  }
  return h;
}

namespace {

// Median wall-clock microseconds per burn() call at `iters`, over `batches` timed batches of
// `calls` calls each.
double burn_us_per_call(uint32_t iters, int batches, int calls) {
  std::vector<double> samples;
  uint64_t sink = 0;
  for (int b = 0; b < batches; ++b) {
    const auto t0 = clock_type::now();
    for (int c = 0; c < calls; ++c) {
      uint64_t x = static_cast<uint64_t>(b * calls + c);
      opaque(x);
      sink += burn(x, iters);
    }
    samples.push_back(seconds_since(t0) * 1e6 / calls);
  }
  opaque(sink);
  return median(samples);
}

}  // namespace

uint32_t calibrate_burn(double target_us) {
  if (!(target_us > 0)) return 1;
  // Rough estimate of the per-iteration cost first, then two rounds of proportional
  // correction at the candidate count (the per-call overhead makes the cost slightly
  // non-linear for tiny counts).
  constexpr uint32_t probe = 10000;
  const double us_per_iter = burn_us_per_call(probe, 5, 20) / probe;
  double iters = target_us / std::max(us_per_iter, 1e-6);
  for (int round = 0; round < 2; ++round) {
    const auto candidate = static_cast<uint32_t>(std::clamp(iters, 1.0, 4e9));
    // Batches of ~2 ms each.
    const int calls = static_cast<int>(std::clamp(2000.0 / target_us, 1.0, 10000.0));
    const double measured = burn_us_per_call(candidate, 7, calls);
    if (measured <= 0) break;
    iters = candidate * (target_us / measured);
  }
  return static_cast<uint32_t>(std::clamp(iters, 1.0, 4e9));
}

CpuResult sequential_cpu(uint64_t n, uint32_t iters) {
  const auto t0 = clock_type::now();
  uint64_t sum = 0;
  for (uint64_t i = 0; i < n; ++i) sum += burn(i, iters);
  return {sum, seconds_since(t0)};
}

CpuResult tbb_cpu(uint64_t n, uint32_t iters, std::size_t threads, std::size_t items_per_token) {
  items_per_token = std::max<std::size_t>(1, items_per_token);
  LimitedArena arena(threads);
  uint64_t sum = 0;   // only touched by the serial reduce stage
  uint64_t next = 0;  // only touched by the serial source stage
  const auto t0 = clock_type::now();
  arena.execute([&] {
    tbb::parallel_pipeline(
        arena.tokens(),
        tbb::make_filter<void, Range>(tbb::filter_mode::serial_in_order,
                                      [&](tbb::flow_control& fc) -> Range {
                                        if (next >= n) {
                                          fc.stop();
                                          return {};
                                        }
                                        const uint64_t begin = next;
                                        next += std::min<uint64_t>(items_per_token, n - begin);
                                        return {begin, next};
                                      }) &
            tbb::make_filter<Range, uint64_t>(tbb::filter_mode::parallel,
                                              [iters](Range r) {
                                                uint64_t partial = 0;
                                                for (uint64_t i = r.begin; i < r.end; ++i) partial += burn(i, iters);
                                                return partial;
                                              }) &
            tbb::make_filter<uint64_t, void>(tbb::filter_mode::serial_out_of_order,
                                             [&](uint64_t partial) { sum += partial; }));
  });
  return {sum, seconds_since(t0)};
}

CpuResult fork_static_split(uint64_t n, uint32_t iters, std::size_t processes) {
  processes = std::max<std::size_t>(1, processes);
  const auto t0 = clock_type::now();

  // One result slot per child in a shared anonymous mapping; each child writes only its own
  // slot, and the parent reads them after wait4() (which orders the child's writes before the
  // parent's reads).
  const std::size_t bytes = processes * sizeof(uint64_t);
  void* mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    std::perror("mmap");
    std::exit(1);
  }
  auto* slots = static_cast<uint64_t*>(mem);

  // Static contiguous split: the first n % processes children get one extra item.
  const uint64_t base = n / processes;
  const uint64_t extra = n % processes;
  std::vector<pid_t> children;
  children.reserve(processes);
  uint64_t begin = 0;
  for (std::size_t k = 0; k < processes; ++k) {
    const uint64_t end = begin + base + (k < extra ? 1 : 0);
    children.push_back(fork_child([=] {
      uint64_t partial = 0;
      for (uint64_t i = begin; i < end; ++i) partial += burn(i, iters);
      slots[k] = partial;
      return 0;
    }));
    begin = end;
  }
  for (pid_t pid : children) wait_child(pid);  // exits the benchmark if a child failed

  uint64_t sum = 0;
  for (std::size_t k = 0; k < processes; ++k) sum += slots[k];
  ::munmap(mem, bytes);
  return {sum, seconds_since(t0)};
}

}  // namespace bench::peers
