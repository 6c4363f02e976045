// Per-replica identity, state and random streams (issue 15).
//
// Every replica of a stage is a fork()ed copy of the caller, captures included. That makes stages
// cheap to write, and it is the process-pool trap: an engine captured by value replays the same
// stream in every replica. This header gives a stage what belongs to its own replica:
//
//   pf::this_replica()      which replica runs this code: stage, index, replica count now, pid, seed
//   pf::per_replica(f)      a factory run once in each replica process (after fork, before the
//                           first item); its result is the stage's callable, destroyed at the
//                           replica's end before end of stream goes downstream
//   pf::replica_engine()    a std::mt19937_64 seeded by procflow per (run seed, stage, replica)
//   pf::item_rng(key)       a counter-based generator keyed by (run seed, stage, key): the same
//                           draws for an item whichever replica runs it
//   pf::seed(s)             pipeline option (options.hpp): the run seed (default: fresh entropy per run)
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string_view>
#include <type_traits>
#include <utility>

namespace procflow {

// Where the calling code runs. Inside a stage callable (or a per_replica factory, or finish()):
// that stage and its replica. Outside run(): stage is empty, in_run false.
struct replica_info {
  std::string_view stage;        // the stage's name (valid while run() runs)
  std::uint32_t stage_index = 0; // position in the pipeline (source = 0)
  // Replica index within the stage's processes (0-based). Under auto_scale a replica that joins
  // later gets a new index (indices of retired replicas are not reused).
  std::uint32_t index = 0;
  // Replicas of the stage running now. Under auto_scale, stages fed by a ring see the scheduler's
  // current count; the stage group that claims a splittable source's chunks sees its initial count.
  std::uint32_t replicas = 1;
  std::int32_t pid = 0;
  // Seed of this replica of this stage: a mix of the run seed, the stage and the replica index.
  // Distinct per replica; the same for the same run seed.
  std::uint64_t seed = 0;
  std::uint64_t run_seed = 0;    // pf::seed(s), or fresh entropy drawn when run() starts
  bool in_supervisor = false;    // a sink or collect running in the caller (under start(): on the driver thread)
  bool in_run = false;
};

// Which replica the calling code runs in (see replica_info).
replica_info this_replica() noexcept;

// A std::mt19937_64 of this replica and the stage running now, seeded with this_replica().seed
// on its first use in the replica. Independent streams per replica without thinking; for results
// that do not depend on the replica count, use item_rng(). Not thread-safe (one per replica).
std::mt19937_64& replica_engine();

// ------------------------------------------------------------------ counter-based generator

// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11; the
// generator of Random123, cuRAND and JAX): draw i of stream (key, counter) is a pure function of
// (key, counter, i), so streams need no state shared between processes and any item's draws can
// be recomputed anywhere. A UniformRandomBitGenerator of 64-bit values.
class counter_rng {
 public:
  using result_type = std::uint64_t;

  constexpr counter_rng(std::uint64_t key, std::uint64_t counter) noexcept : key_(key), counter_(counter) {}

  static constexpr result_type min() noexcept { return 0; }
  static constexpr result_type max() noexcept { return std::numeric_limits<result_type>::max(); }

  constexpr result_type operator()() noexcept {
    if (have_ == 0) {
      block_ = philox(key_, counter_, draws_++);
      have_ = 2;
    }
    const std::uint32_t* w = block_.data() + 2 * (2 - have_--);
    return (std::uint64_t{w[1]} << 32) | w[0];
  }
  // A double uniform in [0, 1) from the top 53 bits of the next draw.
  constexpr double uniform() noexcept { return static_cast<double>((*this)() >> 11) * 0x1.0p-53; }

  // One Philox4x32-10 block: counter words (c0, c1, c2, c3), key words (k0, k1).
  static constexpr std::array<std::uint32_t, 4> philox4x32_10(std::array<std::uint32_t, 4> c,
                                                              std::array<std::uint32_t, 2> k) noexcept {
    constexpr std::uint32_t m0 = 0xD2511F53u, m1 = 0xCD9E8D57u, w0 = 0x9E3779B9u, w1 = 0xBB67AE85u;
    for (int round = 0; round < 10; ++round) {
      if (round > 0) {
        k[0] += w0;
        k[1] += w1;
      }
      const std::uint64_t p0 = std::uint64_t{m0} * c[0];
      const std::uint64_t p1 = std::uint64_t{m1} * c[2];
      c = {static_cast<std::uint32_t>(p1 >> 32) ^ c[1] ^ k[0], static_cast<std::uint32_t>(p1),
           static_cast<std::uint32_t>(p0 >> 32) ^ c[3] ^ k[1], static_cast<std::uint32_t>(p0)};
    }
    return c;
  }

 private:
  static constexpr std::array<std::uint32_t, 4> philox(std::uint64_t key, std::uint64_t counter, std::uint64_t block) noexcept {
    return philox4x32_10({static_cast<std::uint32_t>(counter), static_cast<std::uint32_t>(counter >> 32),
                          static_cast<std::uint32_t>(block), static_cast<std::uint32_t>(block >> 32)},
                         {static_cast<std::uint32_t>(key), static_cast<std::uint32_t>(key >> 32)});
  }

  std::uint64_t key_;
  std::uint64_t counter_;
  std::uint64_t draws_ = 0;  // blocks generated so far
  std::array<std::uint32_t, 4> block_{};
  int have_ = 0;  // 64-bit draws left in block_
};

// The counter_rng key of stage `stage_index` (its position; source = 0) in a run seeded with
// `run_seed`: item_rng(i) in that stage is counter_rng(stream_key(run_seed, stage_index), i), so an
// item's draws can be recomputed outside the pipeline (a sequential reference, a replay).
std::uint64_t stream_key(std::uint64_t run_seed, std::uint32_t stage_index) noexcept;

// The key of the stage running now in this run (the same in every replica, whatever the replica
// count): stream_key(this_replica().run_seed, this_replica().stage_index).
std::uint64_t stage_stream_key() noexcept;

// A counter-based generator for one item: keyed by (run seed, stage, `item`). Pass something that
// identifies the item whatever replica gets it — its sequence number (an iota source's item is
// its own), an id field. With pf::seed(s) the draws of every item, hence a Monte Carlo result,
// are the same for any replica count and any scheduling.
inline counter_rng item_rng(std::uint64_t item) noexcept { return counter_rng(stage_stream_key(), item); }

// ------------------------------------------------------------------ per-replica factories

namespace detail {
template <class Factory>
struct per_replica_t {
  Factory factory;
};
}  // namespace detail

// A stage argument in place of a callable (map, filter, flat_map, sink): `factory()` runs once in
// each replica's process, after the fork and before its first item (replicas that join later run
// it too), and returns the stage's callable, which may hold anything (a connection, a model, an
// output file, a unique_ptr). The result is destroyed when the replica ends, before its end of
// stream goes downstream; a finish() member is called first, and a throw from it fails run().
// A throwing factory is a stage_error naming the stage, the replica and "setup".
template <class Factory>
detail::per_replica_t<Factory> per_replica(Factory factory) {
  static_assert(std::is_invocable_v<Factory&>, "procflow::per_replica: the factory must be callable with no arguments");
  static_assert(!std::is_void_v<std::invoke_result_t<Factory&>>,
                "procflow::per_replica: the factory must return the stage's callable");
  static_assert(std::is_move_constructible_v<std::decay_t<std::invoke_result_t<Factory&>>>,
                "procflow::per_replica: the factory's result must be move constructible");
  return {std::move(factory)};
}

}  // namespace procflow
