// The dead letters of a run written to a file (pf::dead_letters_to, policy.hpp): JSON lines.
#pragma once

#include <procflow/report.hpp>

#include <string>
#include <vector>

namespace procflow::faults {

// Writes `letters` to `path` (through path + ".tmp" and a rename). Throws procflow::system_error
// naming the file.
void write_dead_letters(const std::string& path, const std::vector<dead_letter>& letters);

}  // namespace procflow::faults
