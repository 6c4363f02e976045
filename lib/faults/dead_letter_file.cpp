#include "faults/dead_letter_file.hpp"

#include "faults/base64.hpp"

#include <procflow/error.hpp>

#include <cerrno>
#include <cstdio>
#include <fstream>
#include <limits>

namespace procflow::faults {

nlohmann::json dead_letter_json(const dead_letter& d) {
  return {{"stage", d.stage},
          {"replica", d.replica},
          {"item_seq", d.item_seq},
          {"exception_type", d.exception_type},
          {"message", d.message},
          {"item_bytes", d.item_bytes},
          {"item", d.item_kept ? nlohmann::json(base64_encode(d.item)) : nlohmann::json(nullptr)},
          {"item_note", d.item_note}};
}

void write_dead_letters(const std::string& path, const std::vector<dead_letter>& letters) {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "w");
  if (!f) throw system_error(errno, "cannot open dead letter file '" + tmp + "'");
  bool ok = true;
  int e = 0;
  for (const auto& d : letters) {
    const std::string line = dead_letter_json(d).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
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

namespace procflow {

std::vector<dead_letter> read_dead_letters(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw system_error(errno, "cannot open dead letter file '" + path + "'");
  std::vector<dead_letter> letters;
  std::string line;
  for (std::size_t number = 1; std::getline(in, line); ++number) {
    if (line.empty()) continue;
    const auto bad = [&](const std::string& why) {
      return error("dead letter file '" + path + "' line " + std::to_string(number) + ": " + why);
    };
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) throw bad("not a JSON object");
    // A count is taken only as a non-negative JSON integer that fits its field: nlohmann's get<> would
    // truncate 1.5, wrap -1 and convert 4e68 with undefined behaviour (found by dead_letter_fuzz).
    const auto count = [&]<typename U>(const char* key, U fallback, bool required) -> U {
      const auto it = j.find(key);
      if (it == j.end()) {
        if (required) throw bad(std::string("no \"") + key + "\"");
        return fallback;
      }
      if (!it->is_number_unsigned() || it->get<std::uint64_t>() > std::numeric_limits<U>::max())
        throw bad(std::string("\"") + key + "\" is not an integer from 0 to " +
                  std::to_string(std::numeric_limits<U>::max()) + ": " + it->dump());
      return static_cast<U>(it->get<std::uint64_t>());
    };
    dead_letter d;
    try {
      d.stage = j.at("stage").get<std::string>();
      d.replica = count("replica", std::uint32_t{0}, true);
      d.item_seq = count("item_seq", std::uint64_t{0}, true);
      d.exception_type = j.at("exception_type").get<std::string>();
      d.message = j.at("message").get<std::string>();
      d.item_bytes = count("item_bytes", std::uint64_t{0}, false);
      d.item_note = j.value("item_note", std::string());
      const auto item = j.find("item");
      if (item != j.end() && !item->is_null()) {
        auto bytes = faults::base64_decode(item->get<std::string>());
        if (!bytes) throw bad("\"item\" is not base64");
        if (bytes->size() != d.item_bytes)
          throw bad("\"item\" holds " + std::to_string(bytes->size()) + " bytes, \"item_bytes\" says " +
                    std::to_string(d.item_bytes));
        d.item = std::move(*bytes);
        d.item_kept = true;
      } else if (d.item_note.empty()) {
        d.item_note = "not in the file";
      }
    } catch (const nlohmann::json::exception& e) {
      throw bad(e.what());
    }
    letters.push_back(std::move(d));
  }
  if (in.bad()) throw system_error(errno, "cannot read dead letter file '" + path + "'");
  return letters;
}

}  // namespace procflow
