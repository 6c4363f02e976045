// Where a pipeline runs: in processes (run(), the default) or in threads of the calling process
// (run(pf::in_threads)), on oneTBB's parallel_pipeline. The declaration is the same.
//
//   processes: each replica is a forked process; items cross shared-memory rings encoded. A
//              crash, a leak or a wild pointer in a stage stays in its replica; the caller needs
//              no thread safety from the stage code.
//   threads:   no fork and no encoding between stages (items move by value in batches);
//              replicas(n > 1) makes a stage parallel (one stage instance per worker thread,
//              at most as many threads as the largest replica count), replicas(1) serial;
//              ordered, batch sizes by chunk, the same result, stage_error and report counters.
//              For debugging under a debugger or a sanitizer, for stages sharing a large
//              read-only structure, and for the lowest overhead. Item types still need a codec
//              (checked at compile time): the same declaration must also run in processes, and
//              reduce's partial results are merged through it.
#pragma once

namespace procflow {

struct in_threads_t {
  explicit constexpr in_threads_t() = default;
};
inline constexpr in_threads_t in_threads{};

}  // namespace procflow
