// For readers (stages/): what to do with input they cannot parse. A reader's malformed row is
// no item yet, so the item policies (policy.hpp) cannot set it aside; the reader asks instead
// whether the stage it reads for would skip a failing item, and if so sets the row aside itself.
#pragma once

namespace procflow::detail {

// True when the code runs in a stage (a replica, a source process) whose error policy — its
// own, else the pipeline's — ends in pf::skip. False outside a run and in thread mode (which
// refuses error policies).
bool running_stage_skips() noexcept;

}  // namespace procflow::detail
