// Checks stages/include/procflow/stages/lines.hpp (SPEC §6 line reader, §4 bad input): every
// line arrives once, missing files and over-long lines are clear errors naming file and line.
#include "support/child_process.hpp"

#include <procflow/procflow.hpp>
#include <procflow/stages/lines.hpp>

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

namespace pf = procflow;

namespace {

std::string write_temp(const std::string& name, const std::string& text) {
  const auto path = std::filesystem::temp_directory_path() / (name + "." + std::to_string(::getpid()));
  std::ofstream(path, std::ios::binary) << text;
  return path.string();
}

std::vector<std::string> read_all(pf::stages::line_reader reader) {
  std::vector<std::string> out;
  while (auto line = reader()) out.push_back(*line);
  return out;
}

}  // namespace

TEST_CASE("line_reader splits on newlines, with or without a final one") {
  const auto a = write_temp("lines_a", "one\ntwo\n\nfour\n");
  const auto b = write_temp("lines_b", "one\ntwo");
  const auto empty = write_temp("lines_empty", "");
  CHECK(read_all(pf::stages::line_reader(a)) == std::vector<std::string>{"one", "two", "", "four"});
  CHECK(read_all(pf::stages::line_reader(b)) == std::vector<std::string>{"one", "two"});
  CHECK(read_all(pf::stages::line_reader(empty)).empty());
  for (const auto& p : {a, b, empty}) std::filesystem::remove(p);
}

TEST_CASE("line_reader strips one '\\r' before the newline: CRLF files read like LF files") {
  const auto crlf = write_temp("lines_crlf", "alpha\r\nbeta\r\n\r\nlast\r");
  const auto inner = write_temp("lines_inner_cr", "a\rb\r\r\nc\n");
  CHECK(read_all(pf::stages::line_reader(crlf)) == std::vector<std::string>{"alpha", "beta", "", "last"});
  // Only one '\r' at the end of a line goes; a '\r' inside a line is data.
  CHECK(read_all(pf::stages::line_reader(inner)) == std::vector<std::string>{"a\rb\r", "c"});
  for (const auto& p : {crlf, inner}) std::filesystem::remove(p);
}

TEST_CASE("a missing file names the file") {
  pf::stages::line_reader reader("/nonexistent/procflow-input.txt");
  CHECK_THROWS_WITH_AS(reader(), doctest::Contains("cannot open '/nonexistent/procflow-input.txt'"), pf::system_error);
}

TEST_CASE("an over-long line names file and line instead of allocating without bound") {
  const auto path = write_temp("lines_long", "short\n" + std::string(100, 'x') + "\n");
  pf::stages::line_reader reader(path, 64);
  CHECK(reader() == std::optional<std::string>("short"));
  CHECK_THROWS_WITH_AS(reader(), doctest::Contains("line 2: longer than 64 bytes"), pf::error);
  std::filesystem::remove(path);
}

TEST_CASE("lines() as a pipeline source: every line once; a missing file is a stage_error") {
  const auto before = procflow::test::dev_shm_entries();
  std::string text;
  for (int i = 0; i < 20000; ++i) text += "line " + std::to_string(i) + "\n";
  const auto path = write_temp("lines_pipeline", text);
  const auto r = pf::pipeline("lines")
                     .source("read", pf::stages::lines(path))
                     .map("length", [](const std::string& s) { return s.size(); }, pf::replicas(2))
                     .reduce("total", std::size_t{0}, std::plus<>{}, std::plus<>{})
                     .run();
  CHECK(r.value + 20000 == text.size());
  CHECK(r.report.stages[0].items_out == 20000);
  std::filesystem::remove(path);

  // The input is resolved when lines() is declared: a missing file is an error right there.
  CHECK_THROWS_WITH_AS(pf::stages::lines("/nonexistent/x.csv"), doctest::Contains("cannot open '/nonexistent/x.csv'"),
                       pf::system_error);
  CHECK(procflow::test::count_children() == 0);
  CHECK(procflow::test::dev_shm_entries() == before);
}

TEST_CASE("line_at counts each byte at most about twice when asked line after line, by two readers at once") {
  // A reader setting aside bad row after bad row asks for the line of each: two split blocks of
  // one file read in threads ask alternately. Each answer used to count newlines from the start
  // of its 1 MiB piece (half a MiB per bad row: hours for a file with a million bad rows).
  std::string text;
  std::vector<std::uint64_t> starts;  // starts[i]: offset of line i + 1
  while (text.size() < (std::size_t{3} << 20) + 12345) {
    starts.push_back(text.size());
    text.append(starts.size() % 97, 'x');
    text += '\n';
  }
  const std::string path = write_temp("lines_line_at", text);
  const std::uint32_t id = pf::stages::detail::register_file_name(path);
  const std::uint64_t counted_before = pf::stages::detail::line_at_bytes_counted();
  const std::size_t half = starts.size() / 2;
  std::size_t wrong = 0, asked = 0;
  for (std::size_t i = 0; i < half; i += 25) {
    for (const std::size_t line : {i, half + i}) {
      ++asked;
      if (pf::stages::detail::line_at(id, starts[line]) != line + 1) ++wrong;
    }
  }
  const std::uint64_t counted = pf::stages::detail::line_at_bytes_counted() - counted_before;
  std::filesystem::remove(path);
  CHECK(asked > 2000);
  CHECK(wrong == 0);
  // Each byte at most twice (for its piece's count of the prefix, and between two answers), plus
  // the first answer's way into its piece; counting from each piece's start: ~1.3 GB.
  INFO("bytes counted: " << counted << " for a file of " << text.size());
  CHECK(counted <= 3 * text.size());
}

TEST_CASE("line_at counts a file rewritten since its last answer again (a long-lived program reading it run after run)") {
  const std::string path = write_temp("lines_rewritten", "a\nb\nc\nd\n");
  const std::uint32_t id = pf::stages::detail::register_file_name(path);
  CHECK(pf::stages::detail::line_at(id, 6) == 4);  // "d"
  std::ofstream(path, std::ios::binary | std::ios::trunc) << "a\n\n\n\n\nb\nc\n";
  CHECK(pf::stages::detail::line_at(id, 6) == 6);  // "b"
  std::filesystem::remove(path);
}
