// For readers (stages/): what to do with input they cannot parse. A reader's malformed row is
// no item yet, so the item policies (policy.hpp) cannot set it aside; the reader asks instead
// whether the stage it reads for would skip a failing item, and if so sets the row aside itself.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>

namespace procflow::detail {

// True when the code runs in a stage (a replica, a source process) whose error policy — its
// own, else the pipeline's — ends in pf::skip. False outside a run and in thread mode (which
// refuses error policies).
bool running_stage_skips() noexcept;

// A row, record or line a reader could not parse.
struct bad_input;
// set_aside_input's two halves (lib/runtime/replica.cpp): keeps the letter (false: set aside
// already by a dead predecessor), and notes the input done after the reader wrote it.
bool keep_bad_input(const bad_input& input) noexcept;
void bad_input_written() noexcept;

struct bad_input {
  std::string_view file;
  std::uint64_t line = 0;            // 0: unknown
  std::optional<std::size_t> column;  // 1-based; a reader without columns leaves it out
  std::string_view error;             // what is wrong
  std::string_view text;              // the input itself (its first line)
};

// Sets aside input a reader found bad: keeps it as a dead letter of the running stage
// (dead_letter.hpp), among the first dead_letters_per_replica of its replica — exception type
// "bad input", the message "file:line[:column]: error" (as the error would read without pf::skip;
// "file: column N: error" when the line is unknown), item_seq the line (0: unknown), and the text
// as its item, a std::string; once the replica's letters are full it formats and copies nothing —
// then calls `write()` (the reader counts the input and writes it to its reject file; a throw
// goes on to the caller). Under pf::restart, input its replica's dead predecessor set aside
// already (a replacement reads the predecessor's block again) is not set aside again: nothing is
// kept and `write` is not called. (A replica killed inside `write` leaves the input to its
// replacement: one record written twice, never one lost.) Outside a replica process it only
// calls `write`.
template <class Write>
void set_aside_input(const bad_input& input, Write&& write) {
  if (!keep_bad_input(input)) return;
  std::forward<Write>(write)();
  bad_input_written();
}

}  // namespace procflow::detail
