// For readers (stages/): what to do with input they cannot parse. A reader's malformed row is
// no item yet, so the item policies (policy.hpp) cannot set it aside; the reader asks instead
// whether the stage it reads for would skip a failing item, and if so sets the row aside itself.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace procflow::detail {

// True when the code runs in a stage (a replica, a source process) whose error policy — its
// own, else the pipeline's — ends in pf::skip. False outside a run and in thread mode (which
// refuses error policies).
bool running_stage_skips() noexcept;

// Keeps input a reader set aside as a dead letter of the running stage (dead_letter.hpp), among
// the first dead_letters_per_replica of its replica: `message` (file, line, what is wrong) as its
// message, exception type "bad input", item_seq `line` (0: unknown), and `text` as its item, a
// std::string. Does nothing outside a replica process.
void set_aside_input(const std::string& message, std::string_view text, std::uint64_t line) noexcept;

}  // namespace procflow::detail
