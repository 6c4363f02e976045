// A dead letter as the report shows it (dead_letter.hpp), read from the replica's record and the
// room beside it in shared memory (runtime/run_state.hpp) after the replica was reaped.
#pragma once

#include "runtime/run_state.hpp"

#include <procflow/dead_letter.hpp>

#include <cstdint>

namespace procflow::faults {

// Dead letter `index` (< the record's count, <= dead_letters_per_replica) of global replica
// `global_replica`, replica `replica` of its stage. Checks what it reads (shared memory is not
// trusted): text is cut at its buffer's end, an item size beyond the room is not kept.
dead_letter read_dead_letter(const detail::pipeline_def& def, const runtime::RunState& state,
                             std::uint32_t global_replica, std::uint32_t replica, std::uint32_t index);

}  // namespace procflow::faults
