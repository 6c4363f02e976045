// The body of one replica process: runs its process group's fused stages over batches from
// its inbox (or chunks of a splittable source, or a generator) and writes the results on.
#pragma once

#include "runtime/plan.hpp"
#include "runtime/run_state.hpp"

namespace procflow::runtime {

// Exit statuses of a replica process.
inline constexpr int exit_completed = 0;
inline constexpr int exit_failed = 70;  // a failure record was written

// Runs replica `replica` (0-based within its group) of group `group`. Returns the exit status;
// never throws (a failure is written to the replica's record).
int run_replica(const detail::pipeline_def& def, const Plan& plan, const RunState& state, std::size_t group,
                std::uint32_t replica) noexcept;

}  // namespace procflow::runtime
