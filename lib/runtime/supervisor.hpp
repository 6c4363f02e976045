// The supervisor's two phases, for a started pipeline (runtime/started_run.cpp): start() lays out
// the shared memory and forks the replicas on the calling thread; drive() then runs the loop that
// drains results, watches the children and schedules, until the run ends. run() is both at once.
#pragma once

#include "runtime/plan.hpp"
#include "runtime/run_state.hpp"

#include <procflow/pipeline.hpp>

#include <memory>

namespace procflow::runtime {

class SupervisedRun {
 public:
  virtual ~SupervisedRun() = default;  // kills and reaps every replica still running
  // Runs the supervisor loop to the end of the run (on any one thread); throws as run() does.
  virtual run_report drive() = 0;
  virtual const RunState& state() const noexcept = 0;
  virtual const Plan& plan() const noexcept = 0;
};

// Forks every replica of `def` (a caller-fed source's group excepted: the caller writes its
// port). The fork rule of run() applies. `def` and `collector` must outlive the result.
std::unique_ptr<SupervisedRun> start_supervised(const detail::pipeline_def& def, detail::result_collector* collector);

}  // namespace procflow::runtime
