// Named counters a stage keeps itself ("malformed rows", "cache hits"), reported with the
// built-in ones: summed per stage over its replicas, per replica, sampled while the run goes on.
//
//   .map("parse", [](const std::string& line) {
//      auto row = try_parse(line);
//      if (!row) pf::counter("rows skipped").add();
//      ...
//   })
//
// A counter belongs to the stage whose code makes it (in a per_replica factory, a stage's callable
// or its finish()). Each replica process keeps its own counts in the run's shared memory; the
// report sums them by stage and name (run_report: stage_report::counters, replica_report::counters,
// run_sample::counters), and the table, JSON, HTML page and trace show them.
//
// Cost: counter(name) finds the name among this replica's counters (a short scan, no syscall, no
// lock); add() is one relaxed load and store to shared memory (a replica process is the only
// writer of its counts). In a hot loop, keep the handle: make it in a pf::per_replica factory.
//
// Limits: max_counters distinct (stage, name) pairs per replica process, names of at most
// max_counter_name bytes; past either, counter() throws (std::length_error,
// std::invalid_argument), which fails the stage like any exception it throws. Counters exist in
// both modes: in run(pf::in_threads) each stage instance (one per worker thread) keeps its own
// table in memory, summed the same way into stage_report::counters (thread mode has no replica
// rows). Outside a run, counter() throws std::logic_error.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace procflow {

class counter {
 public:
  static constexpr std::size_t max_counters = 32;      // per replica process (per stage instance in threads)
  static constexpr std::size_t max_counter_name = 47;  // bytes

  // This replica's counter `name` of the stage running now, made at 0 on first use.
  explicit counter(std::string_view name);

  // Adds n. Not for several threads at once: a replica's counts have one writer.
  void add(std::uint64_t n = 1) noexcept {
    // Relaxed: this process is the only writer; the supervisor only needs an untorn value.
    value_->store(value_->load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  counter& operator+=(std::uint64_t n) noexcept {
    add(n);
    return *this;
  }
  // This replica's count so far.
  std::uint64_t value() const noexcept { return value_->load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t>* value_;
};

}  // namespace procflow
