// The dead letters of a run written to a file (pf::dead_letters_to, policy.hpp) and read back
// (pf::read_dead_letters, dead_letter.hpp): JSON lines, one object per letter, the same object as
// in the JSON report's "dead_letters".
#pragma once

#include <procflow/dead_letter.hpp>

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace procflow::faults {

// {"stage", "replica", "item_seq", "exception_type", "message", "item_bytes", "item" (base64 of
// the encoded item, or null when not kept), "item_note" (why not kept, else "")}.
nlohmann::json dead_letter_json(const dead_letter& letter);

// Writes `letters` to `path` (through path + ".tmp" and a rename). Throws procflow::system_error
// naming the file.
void write_dead_letters(const std::string& path, const std::vector<dead_letter>& letters);

}  // namespace procflow::faults
