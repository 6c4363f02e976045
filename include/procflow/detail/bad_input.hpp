// For readers (stages/): what to do with input they cannot parse. A reader's malformed row is
// no item yet, so the item policies (policy.hpp) cannot set it aside; the reader asks instead
// whether the stage it reads for would skip a failing item, and if so sets the row aside itself.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace procflow::detail {

// True when the code runs in a stage (a replica, a source process) whose error policy — its
// own, else the pipeline's — ends in pf::skip. False outside a run and in thread mode (which
// refuses error policies).
bool running_stage_skips() noexcept;

// A row, record or line a reader could not parse.
struct bad_input {
  std::string_view file;
  std::uint64_t line = 0;            // 0: unknown
  std::optional<std::size_t> column;  // 1-based; a reader without columns leaves it out
  std::string_view error;             // what is wrong
  std::string_view text;              // the input itself (its first line)
};

// Keeps input a reader set aside as a dead letter of the running stage (dead_letter.hpp), among
// the first dead_letters_per_replica of its replica: exception type "bad input", the message
// "file:line[:column]: error" (as the error would read without pf::skip; "file: column N: error"
// when the line is unknown), item_seq the line (0: unknown), and the text as its item, a
// std::string. Once the replica's letters are full it formats and copies nothing. Outside a
// replica process it keeps nothing and returns true.
// Returns false when this input was set aside already, by this replica's dead predecessor under
// pf::restart (its replacement reads the predecessor's block again): the reader then does
// nothing more with it. Otherwise the reader counts it and writes it out, then calls
// input_set_aside(), so that a replacement does not do so again. (A replica killed between the
// write and that call leaves the input to its replacement: one record written twice, never one
// lost.)
bool set_aside_input(const bad_input& input) noexcept;
void input_set_aside() noexcept;

}  // namespace procflow::detail
