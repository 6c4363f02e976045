#include "faults/dead_letter_record.hpp"

#include <fmt/format.h>

#include <cstring>

namespace procflow::faults {

namespace {

std::string bounded_text(const char* text, std::size_t capacity) {
  return std::string(text, ::strnlen(text, capacity));
}

}  // namespace

dead_letter read_dead_letter(const detail::pipeline_def& def, const runtime::RunState& state,
                             std::uint32_t global_replica, std::uint32_t replica, std::uint32_t index) {
  const runtime::DeadLetter& d = state.record(global_replica).dead_letters[index];
  dead_letter out;
  out.stage = d.stage < def.stages.size() ? def.stages[d.stage]->name() : std::string("?");
  out.replica = replica;
  out.item_seq = d.item_seq;
  out.exception_type = bounded_text(d.exception_type, sizeof d.exception_type);
  out.message = bounded_text(d.message, sizeof d.message);
  out.item_bytes = d.item_bytes;
  switch (static_cast<runtime::DeadItemState>(d.item_state)) {
    case runtime::DeadItemState::kept: {
      const std::span<std::byte> room = state.dead_letter_item(global_replica, index);
      if (d.item_bytes > room.size()) {
        out.item_note = fmt::format("a corrupt record: {} bytes in a room of {}", d.item_bytes, room.size());
        break;
      }
      out.item.assign(room.begin(), room.begin() + static_cast<std::ptrdiff_t>(d.item_bytes));
      out.item_kept = true;
      break;
    }
    case runtime::DeadItemState::too_large:
      out.item_note = fmt::format("its encoding, {} bytes, is larger than dead_letter_item_bytes ({})", d.item_bytes,
                                  dead_letter_item_bytes);
      break;
    case runtime::DeadItemState::consumed:
      out.item_note = "the stage function took it as an rvalue and its type cannot be copied";
      break;
    default:
      out.item_note = "this stage does not keep its items";
      break;
  }
  return out;
}

}  // namespace procflow::faults
