// The runtime's handle on a started pipeline (implemented in lib/runtime/started_run.cpp), behind
// procflow::running<R> and procflow::pool. Templates see only this interface.
#pragma once

#include <procflow/detail/stage.hpp>
#include <procflow/report.hpp>

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>

namespace procflow::detail {

struct pipeline_def;

// When a write publishes the slot it went into.
enum class publish_mode : std::uint8_t {
  latency,  // when the slot is full, or once it is older than the latency bound (a timer thread)
  now,      // at once (the item is visible to the first stage when write() returns)
  group,    // at once unless another thread is about to write too; the last of them publishes
};

class started_run {
 public:
  // Writes items through `encode(context, port, position)`, called under the input's lock with
  // the first item's position in the input stream (0, 1, 2, ...); it returns how many items it
  // wrote. Blocks while the first rings are full unless `try_only` (then returns false, nothing
  // written; a try writes one item). Throws the pipeline's failure if it failed,
  // procflow::error if the input was closed. Safe from any thread.
  using encoder = std::uint64_t (*)(void* context, output_port& port, std::uint64_t position);
  virtual bool write(encoder encode, void* context, publish_mode mode, bool try_only) = 0;
  // Publishes what the input holds (publish_mode::latency writes).
  virtual void flush() = 0;
  // Ends the input stream (idempotent). The pipeline then finishes what it holds.
  virtual void close() = 0;
  // Waits until every process ended; returns the report or throws the failure (stage_error,
  // interrupted). Once only; later calls throw procflow::error.
  virtual run_report wait() = 0;
  // Stops now: every replica is killed, what is in flight is lost; wait() then throws
  // procflow::interrupted. Safe from any thread.
  virtual void cancel() noexcept = 0;
  // True once the pipeline ended (all results delivered, or failed).
  virtual bool done() const noexcept = 0;
  // Closes the input, lets the pipeline finish what it holds and reaps every process (an error
  // is dropped: call wait() to see it).
  virtual ~started_run() = default;
};

// Forks every replica of `def` on the calling thread, then drives the run from a background
// thread. `collector` receives the results on that thread (null for a sink in its own
// processes); `on_end` is called there once the run ended, with its failure or null.
// The returned object keeps `def` and `collector` alive.
std::unique_ptr<started_run> start_in_processes(std::shared_ptr<const pipeline_def> def,
                                                std::shared_ptr<result_collector> collector,
                                                std::function<void(std::exception_ptr)> on_end);

}  // namespace procflow::detail
