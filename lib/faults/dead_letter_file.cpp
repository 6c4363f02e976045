#include "faults/dead_letter_file.hpp"

#include <procflow/error.hpp>

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstdio>

namespace procflow::faults {

void write_dead_letters(const std::string& path, const std::vector<dead_letter>& letters) {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "w");
  if (!f) throw system_error(errno, "cannot open dead letter file '" + tmp + "'");
  bool ok = true;
  int e = 0;
  for (const auto& d : letters) {
    const nlohmann::json j = {{"stage", d.stage}, {"replica", d.replica}, {"item_seq", d.item_seq},
                              {"exception_type", d.exception_type}, {"message", d.message}};
    const std::string line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    if (std::fwrite(line.data(), 1, line.size(), f) != line.size()) {
      ok = false;
      e = errno;
      break;
    }
  }
  if (ok && std::fflush(f) != 0) {
    ok = false;
    e = errno;
  }
  if (std::fclose(f) != 0 && ok) {
    ok = false;
    e = errno;
  }
  if (!ok) {
    std::remove(tmp.c_str());
    throw system_error(e, "cannot write dead letter file '" + tmp + "'");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int rename_errno = errno;
    std::remove(tmp.c_str());
    throw system_error(rename_errno, "cannot rename '" + tmp + "' to dead letter file '" + path + "'");
  }
}

}  // namespace procflow::faults
