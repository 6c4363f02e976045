// procflow::stages::lines — the lines of a text file, as a pipeline source.
//
//   pf::pipeline("p").source("read", pf::stages::lines("input.txt")) ...
//
// The file is opened on the first item, in the source's own process, and read with one buffered
// stream. Lines come without their '\n', and without one '\r' before it (or at the end of the
// file): CRLF files read like LF files, as with Python's universal newlines. A '\r' elsewhere in
// a line is kept (unlike Python, a lone '\r' does not end a line). A file that cannot be opened is a procflow::system_error
// naming it; a line longer than `max_line_bytes` (default 64 MiB) is a procflow::error naming the
// file and line, instead of an unbounded allocation.
#pragma once

#include <procflow/error.hpp>
#include <procflow/sources.hpp>

#include <cerrno>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

namespace procflow::stages {

class line_reader {
 public:
  explicit line_reader(std::string path, std::size_t max_line_bytes = std::size_t{64} << 20)
      : path_(std::move(path)), max_line_bytes_(max_line_bytes) {}

  std::optional<std::string> operator()() {
    if (!file_) {
      std::FILE* f = std::fopen(path_.c_str(), "rb");
      if (!f) throw procflow::system_error(errno, "cannot open '" + path_ + "'");
      file_ = std::shared_ptr<std::FILE>(f, &std::fclose);
    }
    std::string line;
    int c;
    while ((c = std::getc(file_.get())) != EOF && c != '\n') {
      if (line.size() == max_line_bytes_)
        throw procflow::error("'" + path_ + "' line " + std::to_string(line_number_ + 1) + ": longer than " +
                              std::to_string(max_line_bytes_) + " bytes");
      line.push_back(static_cast<char>(c));
    }
    if (c == EOF) {
      if (std::ferror(file_.get())) throw procflow::system_error(errno, "cannot read '" + path_ + "'");
      if (line.empty()) return std::nullopt;  // no text after the last '\n'
    }
    if (!line.empty() && line.back() == '\r') line.pop_back();  // CRLF (see above)
    ++line_number_;
    return line;
  }

  std::uint64_t line_number() const noexcept { return line_number_; }

 private:
  std::string path_;
  std::size_t max_line_bytes_;
  std::shared_ptr<std::FILE> file_;
  std::uint64_t line_number_ = 0;
};

// A source of the lines of `path` (see line_reader).
inline auto lines(std::string path, std::size_t max_line_bytes = std::size_t{64} << 20) {
  return procflow::generate(line_reader(std::move(path), max_line_bytes));
}

}  // namespace procflow::stages
