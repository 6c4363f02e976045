// Peer implementations for procflow's pipeline benchmarks: what the same jobs cost as a plain
// sequential loop, as a oneTBB parallel_pipeline inside one process, and as hand-written
// fork()-based static splitting. Every peer returns its computed result so the caller can check
// it against procflow's, plus the wall-clock seconds it took.
//
// The jobs:
//
//  * "trivial": for int64 x in [0, n): square, keep squares divisible by 3, sum. Exact semantics
//    (unsigned 64-bit wrap-around, so no signed overflow UB for any n):
//
//        uint64_t sum = 0;
//        for (int64_t x = 0; x < n; ++x) {
//          uint64_t v = uint64_t(x) * uint64_t(x);
//          if (v % 3 == 0) sum += v;
//        }
//
//    Addition modulo 2^64 is commutative and associative, so any partitioning/ordering of the
//    items yields the same sum.
//
//  * "cpu": sum over i in [0, n) of burn(i, iters) (mod 2^64), where burn() is deterministic
//    integer work whose cost is tuned by calibrate_burn() (typically ~20 us per item).
#pragma once

#include <cstddef>
#include <cstdint>

namespace bench::peers {

struct TrivialResult {
  uint64_t sum = 0;
  double seconds = 0;
};

struct CpuResult {
  uint64_t sum = 0;
  double seconds = 0;
};

// --- trivial job --------------------------------------------------------------------------

// Reference value of the trivial job, computed with the same loop as sequential_trivial but
// without timing. Handy for checking other implementations.
uint64_t trivial_expected(uint64_t n);

// Plain single-threaded loop.
TrivialResult sequential_trivial(uint64_t n);

// oneTBB parallel_pipeline with four stages: serial_in_order source producing chunks of
// `items_per_token` consecutive x values, parallel map (square), parallel filter (keep % 3 == 0),
// serial reduction (sum). Chunks live in a preallocated ring of 4 * threads buffers (no
// allocation per token; the reduce stage is serial_in_order so buffers are recycled safely).
// items_per_token == 1 is the one-item-per-token variant: the token is the value itself and
// the reduce stage is serial_out_of_order. At most `threads` threads (global_control plus a
// task_arena of that concurrency); 4 * threads tokens in flight.
TrivialResult tbb_trivial(uint64_t n, std::size_t items_per_token, std::size_t threads);

// --- CPU-bound job ------------------------------------------------------------------------

// Deterministic integer work: `iterations` rounds of a xorshift/multiply mix seeded from x.
// Each round depends on the previous one, so it cannot be vectorized or folded away.
uint64_t burn(uint64_t x, uint32_t iterations);

// Iteration count for which one burn() call costs about `target_us` microseconds on this
// machine (median of several timed batches). Always >= 1.
uint32_t calibrate_burn(double target_us);

// Plain loop: sum of burn(i, iters) for i in [0, n).
CpuResult sequential_cpu(uint64_t n, uint32_t iters);

// oneTBB parallel_pipeline: serial_in_order source of chunks of `items_per_token` indices,
// parallel burn stage producing per-chunk partial sums, serial reduction. At most `threads`
// threads; 4 * threads tokens in flight.
CpuResult tbb_cpu(uint64_t n, uint32_t iters, std::size_t threads, std::size_t items_per_token = 16);

// Hand-written multi-process peer: forks `processes` children; child k sums burn(i, iters) over
// its static contiguous share of [0, n) and writes its partial sum into an anonymous shared
// mapping; the parent reaps all children and adds the partial sums. The timing includes the
// forks and the reaping.
CpuResult fork_static_split(uint64_t n, uint32_t iters, std::size_t processes);

}  // namespace bench::peers
