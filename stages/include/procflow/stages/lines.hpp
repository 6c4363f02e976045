// procflow::stages::lines — the lines of text files, as a pipeline source.
//
//   pf::pipeline("p").source("read", pf::stages::lines("input.txt")) ...
//
// Lines come without their '\n' and without one trailing '\r' (CRLF files read like LF files);
// a last line without a newline is a line; an empty file has no lines.
//
// `input` is a file, a directory, a glob or "-" (see input.hpp). Plain files are SPLITTABLE: no
// source process; the replicas of the next stage claim blocks of `block_bytes` (256 KiB) through
// a shared counter and each reads the lines that *start* in its block (reading past the block's
// end to finish the last one), so every line is read exactly once. With pf::ordered, lines
// arrive in file order (files in the resolved order). stdin and .gz files are read
// sequentially in a source process.
//
// A line longer than `max_line_bytes` (64 MiB) is a procflow::error naming file and line
// ("data.txt:1234: line longer than 67108864 bytes"), never an unbounded allocation. Under
// pf::skip (on the source or the pipeline) it is set aside instead: counted in the stage's
// counter "lines rejected" and, with `reject_file` set, appended to that CSV file as
// `file,line,error,text` (text cut at reject_text_bytes; one O_APPEND write each; each run
// creates the file with that header as it starts), and reading goes on at the next line.
#pragma once

#include <procflow/error.hpp>
#include <procflow/sources.hpp>
#include <procflow/stages/input.hpp>

#include <cerrno>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

namespace procflow::stages {

struct line_options {
  std::size_t max_line_bytes = std::size_t{64} << 20;
  std::uint64_t block_bytes = default_block_bytes;  // bytes per claimed chunk (splittable files)
  std::string reject_file;  // over-long lines set aside under pf::skip, as CSV (see above); "" = none
};

namespace detail {
class line_stream;  // sequential reading state (library)
}

// The source behind lines() (a procflow::custom_source).
class lines_source {
 public:
  using item_type = std::string;

  lines_source(std::string input, line_options options);

  bool splittable() const noexcept { return input_->splittable(); }
  std::uint64_t size() const noexcept { return input_->blocks(); }
  std::uint64_t preferred_chunk() const noexcept { return 1; }
  bool units_are_items() const noexcept { return false; }
  // The lines starting in blocks [first, last).
  std::size_t fill(std::uint64_t first, std::uint64_t last, procflow::detail::batch_buffer<std::string>& out) const;
  // The next line of a sequential read (stdin, gzip), nullopt at the end.
  std::optional<std::string> next();
  // At the start of each run (procflow::custom_source): makes this rank's reject file.
  void begin_run() const;

 private:
  std::shared_ptr<const detail::input_set> input_;
  line_options options_;
  std::shared_ptr<detail::line_stream> stream_;
};

inline lines_source lines(std::string input, line_options options = {}) {
  return lines_source(std::move(input), options);
}

// A sequential reader of one file's lines (a generator: call until nullopt). Opens the file on
// the first call. Same line rules as lines().
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
      if (line.size() == max_line_bytes_ + 1)  // + 1: room for a '\r' before the '\n'
        throw procflow::error("'" + path_ + "' line " + std::to_string(line_number_ + 1) + ": longer than " +
                              std::to_string(max_line_bytes_) + " bytes");
      line.push_back(static_cast<char>(c));
    }
    if (c == EOF) {
      if (std::ferror(file_.get())) throw procflow::system_error(errno, "cannot read '" + path_ + "'");
      if (line.empty()) return std::nullopt;  // no text after the last '\n'
    }
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.size() > max_line_bytes_)
      throw procflow::error("'" + path_ + "' line " + std::to_string(line_number_ + 1) + ": longer than " +
                            std::to_string(max_line_bytes_) + " bytes");
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

}  // namespace procflow::stages
