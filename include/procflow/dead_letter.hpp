// procflow::dead_letter: an item a stage set aside under pf::skip (policy.hpp), kept so that it can
// be looked at and replayed.
//
//   const auto r = pipeline.run();
//   for (const pf::dead_letter& d : r.report.dead_letters)
//     if (d.item_kept) retry_later(d.decode_item<Trip>());   // the input item of stage d.stage
//
// The item is kept encoded with the codec of the failing stage's input type (codec<In>, codec.hpp):
// the bytes that item would travel as between processes. What a stage function did to an item it
// took by non-const reference before throwing is in those bytes. Kept when the encoding fits in
// dead_letter_item_bytes and the item still exists after the stage function threw (a function
// that takes its item only as an rvalue, T&&, of a type that cannot be copied consumes it).
//
// A reader in stages/ (csv_rows, records, lines) under pf::skip keeps the input it sets aside the
// same way: exception_type "bad input", the message naming file, line (and column), item_seq the
// line, and the item the text of that line, a std::string (decode_item<std::string>()).
//
// In the JSON report (run_report::to_json) and in a pf::dead_letters_to file, `item` is the
// standard base64 (RFC 4648, with padding) of those bytes, or null when not kept; `item_bytes`
// is the size of the whole encoding either way. read_dead_letters() reads such a file back.
#pragma once

#include <procflow/codec.hpp>
#include <procflow/error.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace procflow {

// Dead letters kept per replica (the first ones it skipped).
inline constexpr std::uint32_t dead_letters_per_replica = 8;
// The largest encoded item a dead letter keeps (a larger one keeps only its size).
inline constexpr std::size_t dead_letter_item_bytes = 64 * 1024;

// An item a stage skipped (pf::skip): the stage, the replica, the item's sequence number (as
// stage_error::item_seq), what its function threw, and the item itself, encoded. The first
// dead_letters_per_replica per replica are kept.
struct dead_letter {
  std::string stage;
  std::uint32_t replica = 0;
  std::uint64_t item_seq = 0;
  std::string exception_type;
  std::string message;
  bool item_kept = false;        // `item` holds the whole encoded item
  std::uint64_t item_bytes = 0;  // the size of its encoding (also when not kept; 0 when unknown)
  std::string item_note;         // why it was not kept (empty when kept)
  std::vector<std::byte> item;   // codec<In>::encode of the failing item (In: the stage's input type)

  // The item, decoded with codec<T> (T: the stage's input type). Throws procflow::error naming
  // the stage and the item when it was not kept, codec_error when the bytes are not a T.
  template <encodable T>
  T decode_item() const {
    if (!item_kept)
      throw error("dead letter of stage '" + stage + "' item " + std::to_string(item_seq) +
                  ": the item was not kept (" + item_note + ")");
    return decode_from_bytes<T>(item);
  }
};

// Reads a file written by pf::dead_letters_to (one JSON object per line) back. Throws
// procflow::system_error naming the file when it cannot be read, procflow::error naming the file
// and the line when a line is not a dead letter.
std::vector<dead_letter> read_dead_letters(const std::string& path);

}  // namespace procflow
