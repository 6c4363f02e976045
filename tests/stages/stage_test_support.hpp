// Test support for tests/stages: temporary files and directories removed at the end of a test.
#pragma once

#include <procflow/dead_letter.hpp>
#include <procflow/report.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <new>
#include <sstream>
#include <algorithm>
#include <string>
#include <system_error>
#include <vector>

namespace procflow::test {

// A fresh directory under /tmp, removed with everything in it when the object goes.
class temp_dir {
 public:
  explicit temp_dir(const std::string& name) {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            (name + "." + std::to_string(::getpid()) + "." + std::to_string(counter.fetch_add(1)));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  std::string path() const { return path_.string(); }
  // Writes `text` to `name` inside the directory; returns the file's path.
  std::string write(const std::string& name, const std::string& text) const {
    const auto p = path_ / name;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << text;
    return p.string();
  }

 private:
  std::filesystem::path path_;
};

// An int shared by every process forked while it lives (an anonymous shared page): a flag that
// one replica of a whole run sets once (e.g. to kill itself only once).
class shared_flag {
 public:
  shared_flag() {
    void* p = ::mmap(nullptr, sizeof(std::atomic<int>), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "mmap");
    flag_ = new (p) std::atomic<int>(0);
  }
  ~shared_flag() { ::munmap(flag_, sizeof(std::atomic<int>)); }
  shared_flag(const shared_flag&) = delete;
  shared_flag& operator=(const shared_flag&) = delete;
  std::atomic<int>* get() const noexcept { return flag_; }

 private:
  std::atomic<int>* flag_;
};

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The lines of `text`, without their '\n'.
inline std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

template <class T>
std::vector<T> sorted(std::vector<T> v) {
  std::sort(v.begin(), v.end());
  return v;
}

// pf::counter `name` of the run's stage `stage`, summed over its replicas (0 when it has none).
inline std::uint64_t stage_counter(const procflow::run_report& r, std::size_t stage, const std::string& name) {
  std::uint64_t n = 0;
  for (const auto& c : r.stages.at(stage).counters)
    if (c.name == name) n += c.value;
  return n;
}

// Splits one line of the reject file (RFC 4180, no line breaks inside: the readers keep one line).
inline std::vector<std::string> reject_fields(const std::string& line) {
  std::vector<std::string> f(1);
  bool quoted = false;
  for (std::size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted && c == '"' && i + 1 < line.size() && line[i + 1] == '"') f.back() += '"', ++i;
    else if (c == '"') quoted = !quoted;
    else if (c == ',' && !quoted) f.emplace_back();
    else f.back() += c;
  }
  return f;
}

// The records of a reject file after its header line, each without its error field (`error_at`),
// sorted (replicas append in no particular order); the header and the error texts are checked.
inline std::vector<std::vector<std::string>> reject_records(const std::string& path, const std::string& header, std::size_t error_at) {
  std::istringstream file(read_text(path));
  std::string line;
  std::vector<std::vector<std::string>> out;
  if (!std::getline(file, line) || line != header) return {{"bad header: " + line}};
  while (std::getline(file, line)) {
    std::vector<std::string> f = reject_fields(line);
    if (f.size() <= error_at || f[error_at].empty()) return {{"bad record: " + line}};
    f.erase(f.begin() + static_cast<std::ptrdiff_t>(error_at));
    out.push_back(std::move(f));
  }
  std::sort(out.begin(), out.end());
  return out;
}

// What is wrong with the dead letters a reader left in `stage` under pf::skip ("" when nothing):
// there must be some, each one of `rejects` ({file, line, text}, as the reject file has them),
// typed "bad input", its message naming file and line, its item the text.
inline std::string reader_letters_wrong(const run_report& r, const std::string& stage,
                                        const std::vector<std::vector<std::string>>& rejects) {
  std::size_t n = 0;
  for (const dead_letter& d : r.dead_letters) {
    if (d.stage != stage) continue;
    ++n;
    const std::vector<std::string> seen{rejects.empty() ? "" : rejects[0][0], std::to_string(d.item_seq),
                                        d.item_kept ? d.decode_item<std::string>() : "(not kept)"};
    if (std::find(rejects.begin(), rejects.end(), seen) == rejects.end()) return "not a reject: line " + seen[1] + " " + seen[2];
    if (d.exception_type != "bad input") return "type " + d.exception_type;
    if (d.message.rfind(seen[0] + ":" + seen[1] + ":", 0) != 0) return "message " + d.message;
  }
  return n == 0 ? "no dead letters" : "";
}

}  // namespace procflow::test
