// Property test for stages/include/procflow/stages/lines.hpp (issue 9, splittable reader): random
// files (random line lengths, empty lines, CRLF, with and without a final newline) read through
// byte blocks by 1..4 replicas, ordered and unordered, give exactly the lines of a plain
// sequential split; the same for several files in a directory and for gzip input.
#include "stage_test_support.hpp"
#include "support/child_process.hpp"

#include <procflow/procflow.hpp>
#include <procflow/stages/csv.hpp>
#include <procflow/stages/lines.hpp>

#include <doctest/doctest.h>

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;

namespace {

// The reference: split on '\n', drop one '\r' before it, no line after a final '\n'.
std::vector<std::string> sequential_lines(const std::string& text) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t nl = text.find('\n', pos);
    const bool last = nl == std::string::npos;
    if (last) nl = text.size();
    std::string line = text.substr(pos, nl - pos);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    out.push_back(std::move(line));
    pos = nl + 1;
  }
  return out;
}

std::string random_text(std::mt19937_64& rng) {
  std::string text;
  const int lines = std::uniform_int_distribution<int>(0, 400)(rng);
  for (int i = 0; i < lines; ++i) {
    const int kind = std::uniform_int_distribution<int>(0, 9)(rng);
    std::size_t len = kind == 0 ? 0 : kind == 1 ? std::uniform_int_distribution<std::size_t>(50, 300)(rng)
                                               : std::uniform_int_distribution<std::size_t>(1, 20)(rng);
    for (std::size_t k = 0; k < len; ++k) text.push_back(static_cast<char>('a' + static_cast<int>(rng() % 26)));
    if (std::uniform_int_distribution<int>(0, 4)(rng) == 0) text.push_back('\r');
    text.push_back('\n');
  }
  if (!text.empty() && rng() % 2) text.pop_back();  // no final newline
  return text;
}

std::vector<std::string> read_blocks(const pf::stages::lines_source& src) {
  std::vector<std::string> all;
  pf::detail::batch_buffer<std::string> chunk;
  for (std::uint64_t b = 0; b < src.size(); ++b) {
    src.fill(b, b + 1, chunk);
    all.insert(all.end(), chunk.begin(), chunk.end());
  }
  return all;
}

}  // namespace

TEST_CASE("block reading equals a sequential split for random files and block sizes") {
  std::mt19937_64 rng(12345);
  pt::temp_dir dir("lines_split");
  for (int round = 0; round < 300; ++round) {
    const std::string text = random_text(rng);
    const std::string path = dir.write(std::to_string(round % 5).append(".txt"), text);
    pf::stages::line_options o;
    o.block_bytes = std::uniform_int_distribution<std::uint64_t>(1, 512)(rng);
    const pf::stages::lines_source src(path, o);
    CAPTURE(round);
    CAPTURE(o.block_bytes);
    REQUIRE(src.splittable());
    REQUIRE(read_blocks(src) == sequential_lines(text));
  }
}

TEST_CASE("lines() through 1..4 replicas, ordered and unordered, equals a sequential split") {
  const auto before = pt::dev_shm_entries();
  std::mt19937_64 rng(777);
  pt::temp_dir dir("lines_pipeline");
  std::string text;
  while (text.size() < 300'000) text += random_text(rng) + "\n";
  text += "last line without newline\r";
  const std::string path = dir.write("big.txt", text);
  const auto want = sequential_lines(text);
  for (std::uint32_t replicas = 1; replicas <= 4; ++replicas) {
    for (const bool ordered : {true, false}) {
      CAPTURE(replicas);
      CAPTURE(ordered);
      pf::stages::line_options o;
      o.block_bytes = 4096 + replicas * 1000;
      auto flow = pf::pipeline("lines").source("read", pf::stages::lines(path, o)).map("id", [](std::string s) { return s; },
                                                                                            pf::replicas(replicas));
      auto got = ordered ? flow.collect(pf::ordered).run().value : flow.collect().run().value;
      if (!ordered) {
        auto sorted_want = want;
        std::sort(sorted_want.begin(), sorted_want.end());
        std::sort(got.begin(), got.end());
        REQUIRE(got == sorted_want);
      } else {
        REQUIRE(got == want);
      }
    }
  }
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == before);
}

TEST_CASE("a directory is read recursively in path order; gzip files are decompressed") {
  pt::temp_dir dir("lines_dir");
  dir.write("b/2.txt", "b2-1\nb2-2\n");
  dir.write("a.txt", "a-1\r\na-2");
  dir.write("b/1.txt", "b1-1\n");
  dir.write("c/empty.txt", "");
  const std::vector<std::string> want{"a-1", "a-2", "b1-1", "b2-1", "b2-2"};
  {
    pf::stages::line_options o;
    o.block_bytes = 3;
    pf::stages::lines_source src(dir.path(), o);
    CHECK(src.splittable());
    CHECK(read_blocks(src) == want);
    CHECK(pf::pipeline("dir").source("read", pf::stages::lines(dir.path(), o)).map("id", [](std::string s) { return s; }, pf::replicas(2))
              .collect(pf::ordered).run().value == want);
  }
  // A glob.
  CHECK(read_blocks(pf::stages::lines_source(dir.path() + "/b/*.txt", {})) == std::vector<std::string>{"b1-1", "b2-1", "b2-2"});
  CHECK_THROWS_WITH_AS(pf::stages::lines(dir.path() + "/nothing*.txt"), doctest::Contains("no file matches"), pf::error);

  // gzip: read in a source process.
  const std::string gz = dir.path() + "/z.txt.gz";
  gzFile f = gzopen(gz.c_str(), "wb");
  REQUIRE(f);
  std::string text;
  for (int i = 0; i < 50000; ++i) {
    text += "gz line ";
    text += std::to_string(i);
    text += i % 3 ? "\n" : "\r\n";
  }
  REQUIRE(gzwrite(f, text.data(), static_cast<unsigned>(text.size())) == static_cast<int>(text.size()));
  gzclose(f);
  pf::stages::lines_source src(gz, {});
  CHECK_FALSE(src.splittable());
  const auto got = pf::pipeline("gz").source("read", src).map("id", [](std::string s) { return s; }, pf::replicas(2)).collect(pf::ordered).run();
  CHECK(got.value == sequential_lines(text));
  CHECK(got.report.stages[0].items_out == 50000);
}

TEST_CASE("an over-long line in a split file names file and line") {
  pt::temp_dir dir("lines_long");
  const std::string path = dir.write("long.txt", "a\nb\nc\n" + std::string(5000, 'x') + "\nd\n");
  pf::stages::line_options o;
  o.max_line_bytes = 1000;
  o.block_bytes = 256;
  pf::stages::lines_source src(path, o);
  pf::detail::batch_buffer<std::string> out;
  CHECK_THROWS_WITH_AS(src.fill(0, src.size(), out), doctest::Contains((path + ":4: line longer than 1000 bytes").c_str()), pf::error);
  try {
    pf::pipeline("long").source("read", pf::stages::lines(path, o)).map("id", [](std::string s) { return s; }, pf::replicas(2)).collect().run();
    FAIL("no error");
  } catch (const pf::stage_error& e) {
    CHECK(e.stage() == "read");
    CHECK(std::string(e.what()).find(path + ":4: line longer than 1000 bytes") != std::string::npos);
  }
  CHECK(pt::count_children() == 0);
}

TEST_CASE("over-long lines under pf::skip: counted, written to the reject file with file:line, the rest read") {
  using fields = std::vector<std::string>;
  for (const bool split : {true, false}) {  // blocks over replicas; one source process (gzip)
    CAPTURE(split);
    pt::temp_dir dir("lines_reject");
    std::string text;
    std::vector<std::string> want;
    std::vector<fields> rejects;  // file,line,text
    const std::string path = dir.path() + (split ? "/in.txt" : "/in.txt.gz");
    for (int i = 0; i < 3000; ++i) {
      std::string line = "line " + std::to_string(i);
      if (i % 97 == 5) {
        line += std::string(300 + static_cast<std::size_t>(i), 'x');  // past max_line_bytes, some past a block
        rejects.push_back({path, std::to_string(i + 1), line});
      } else {
        want.push_back(line);
      }
      text += line + (i % 2 ? "\n" : "\r\n");
    }
    if (split) {
      dir.write("in.txt", text);
    } else {
      gzFile f = gzopen(path.c_str(), "wb");
      REQUIRE(f);
      REQUIRE(gzwrite(f, text.data(), static_cast<unsigned>(text.size())) == static_cast<int>(text.size()));
      gzclose(f);
    }
    pf::stages::line_options o;
    o.max_line_bytes = 200;
    o.block_bytes = 1000;
    o.reject_file = dir.path() + "/rejects.csv";
    pf::stages::lines_source src(path, o);
    CHECK(src.splittable() == split);
    const auto r = pf::pipeline("rejects").source("read", src, pf::skip).map("id", [](std::string s) { return s; }, pf::replicas(2)).collect().run();
    CHECK(pt::sorted(r.value) == pt::sorted(want));
    CHECK(pt::stage_counter(r.report, 0, "lines rejected") == rejects.size());
    CHECK(pt::reject_records(o.reject_file, "file,line,error,text", 2) == pt::sorted(rejects));
    CHECK(pt::reader_letters_wrong(r.report, "read", rejects) == "");  // the first ones, as dead letters
  }
  CHECK(pt::count_children() == 0);
}

TEST_CASE("\"-\" reads standard input in a source process (and csv_rows takes its header from it)") {
  pt::temp_dir dir("lines_stdin");
  const std::string path = dir.write("in.txt", "h1,h2\nx,1\r\ny,2\nz,3");
  pt::ChildProcess child([&] {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0 || ::dup2(fd, STDIN_FILENO) < 0) return 10;
    pf::stages::lines_source src("-", {});
    if (src.splittable()) return 11;
    const auto got = pf::pipeline("stdin").source("read", src).map("id", [](std::string s) { return s; }, pf::replicas(2))
                         .collect(pf::ordered).run().value;
    if (got != std::vector<std::string>{"h1,h2", "x,1", "y,2", "z,3"}) return 12;
    if (::lseek(STDIN_FILENO, 0, SEEK_SET) != 0) return 13;
    auto rows = pf::stages::csv_rows("-");
    if (rows.columns() != std::vector<std::string>{"h1", "h2"}) return 14;
    const auto sums = pf::pipeline("stdin_csv").source("rows", rows)
                          .map("n", [](const pf::stages::csv_row& r) { return r.get<int>("h2"); }, pf::replicas(2))
                          .reduce("sum", 0, std::plus<>{}, std::plus<>{}).run().value;
    return sums == 6 ? 0 : 15;
  });
  const auto status = child.wait_for(std::chrono::seconds(60));
  REQUIRE(status);
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 0);
}
