// Checks stages/include/procflow/stages/records.hpp (issue 9, records): Key: value records with
// continuation lines, blank-line separation, line numbers, errors naming file:line, and that
// split reading over replicas equals sequential reading.
#include "stage_test_support.hpp"
#include "support/child_process.hpp"

#include <procflow/procflow.hpp>
#include <procflow/stages/records.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
using pf::stages::record;

namespace {

std::vector<record> read_split(const pf::stages::records_source& src) {
  std::vector<record> out;
  pf::detail::batch_buffer<record> chunk;
  for (std::uint64_t b = 0; b < src.size(); ++b) {
    src.fill(b, b + 1, chunk);
    out.insert(out.end(), chunk.begin(), chunk.end());
  }
  return out;
}

std::vector<record> read_sequential(pf::stages::records_source src) {
  std::vector<record> out;
  while (auto r = src.next()) out.push_back(*r);
  return out;
}

}  // namespace

TEST_CASE("records: fields, continuation lines, blank lines with spaces, line numbers") {
  pt::temp_dir dir("records_basic");
  const std::string path = dir.write("Packages",
                                     "\n"
                                     "Package: bash\n"
                                     "Section: shells\n"
                                     "Description: GNU Bourne Again SHell\n"
                                     " Bash is an sh-compatible\n"
                                     " .\n"
                                     "\tinterpreter\n"
                                     "  \t\n"
                                     "\n"
                                     "Package: zsh\r\n"
                                     "Installed-Size:   2048  \r\n"
                                     "\r\n"
                                     "Package: last\n"
                                     "Section: misc");
  const std::vector<record> want{
      {{{"Package", "bash"}, {"Section", "shells"}, {"Description", "GNU Bourne Again SHell\nBash is an sh-compatible\n.\ninterpreter"}}, 2},
      {{{"Package", "zsh"}, {"Installed-Size", "2048"}}, 10},
      {{{"Package", "last"}, {"Section", "misc"}}, 13}};
  for (const std::uint64_t block : {std::uint64_t{1}, std::uint64_t{7}, std::uint64_t{64}, std::uint64_t{1} << 20}) {
    CAPTURE(block);
    pf::stages::record_options o;
    o.block_bytes = block;
    CHECK(read_split(pf::stages::records_source(path, o)) == want);
    CHECK(read_sequential(pf::stages::records_source(path, o)) == want);
  }
  CHECK(want[1].get("Installed-Size") == "2048");
  CHECK(want[1].get("Section", "unknown") == "unknown");
  CHECK(want[1].find("Package").has_value());
  CHECK(!want[1].find("package").has_value());  // exact keys
}

TEST_CASE("a line that is not Key: value names file and line") {
  pt::temp_dir dir("records_bad");
  const std::string path = dir.write("bad", "A: 1\n\nB: 2\nthis is not a field\n");
  pf::stages::record_options o;
  o.block_bytes = 5;
  for (const bool split : {true, false}) {
    CAPTURE(split);
    try {
      if (split) {
        read_split(pf::stages::records_source(path, o));
      } else {
        read_sequential(pf::stages::records_source(path, o));
      }
      FAIL("no error");
    } catch (const pf::error& e) {
      CHECK(std::string(e.what()) == path + ":4: expected 'Key: value'");
    }
  }
}

TEST_CASE("bad records under pf::skip: counted, written to the reject file with file:line and text, the rest read") {
  using fields = std::vector<std::string>;
  for (const bool split : {true, false}) {  // blocks over replicas; one source process (comment lines)
    CAPTURE(split);
    pt::temp_dir dir("records_reject");
    const std::string path = dir.path() + "/Packages";
    std::string text;
    std::uint64_t line = 1;
    std::vector<std::string> want;  // the good records' Package
    std::vector<fields> rejects;    // file,line,text
    for (int i = 0; i < 2000; ++i) {
      const std::string k = std::to_string(i);
      std::vector<std::string> lines = {"Package: p" + k, "Section: s", "Description: d", " more"};
      if (!split && i % 7 == 0) lines.insert(lines.begin() + 1, "# a comment");
      switch (i % 71 == 0 ? (i / 71) % 3 : 3) {
        case 0:  // a line that is not Key: value, inside the record
          lines.insert(lines.begin() + 2, "not a field " + k);
          rejects.push_back({path, std::to_string(line + 2), lines[2]});
          break;
        case 1:  // a record that starts with a continuation line
          lines.insert(lines.begin(), " continued " + k);
          rejects.push_back({path, std::to_string(line), lines[0]});
          break;
        case 2:  // a line longer than max_record_bytes, then more lines of the record
          lines[1] = "Section: " + std::string(300, 'x');
          rejects.push_back({path, std::to_string(line + 1), lines[1]});
          break;
        default:
          want.push_back("p" + k);
      }
      for (const std::string& l : lines) text += l + "\n", ++line;
      text += i % 2 ? "\n" : " \t\n";  // blank lines, some with spaces
      ++line;
    }
    dir.write("Packages", text);
    pf::stages::record_options o;
    o.block_bytes = 600;
    o.max_record_bytes = 200;
    if (!split) o.comment = '#';
    o.reject_file = dir.path() + "/rejects.csv";
    pf::stages::records_source src = pf::stages::records(path, o);
    CHECK(src.splittable() == split);
    const auto r = pf::pipeline("rejects")
                       .source("records", src, pf::skip)
                       .map("package", [](const record& rec) { return std::string(rec.find("Package").value_or("?")); }, pf::replicas(2))
                       .collect()
                       .run();
    CHECK(pt::sorted(r.value) == pt::sorted(want));
    CHECK(pt::stage_counter(r.report, 0, "records rejected") == rejects.size());
    CHECK(pt::reject_records(o.reject_file, "file,line,error,text", 2) == pt::sorted(rejects));
    CHECK(pt::reader_letters_wrong(r.report, "records", rejects) == "");  // the first ones, as dead letters
  }
  CHECK(pt::count_children() == 0);
}

TEST_CASE("split records over 1..3 replicas equal sequential reading (random file)") {
  std::mt19937_64 rng(4242);
  pt::temp_dir dir("records_random");
  std::string text;
  for (int i = 0; i < 2000; ++i) {
    const int fields = 1 + static_cast<int>(rng() % 6);
    for (int f = 0; f < fields; ++f) {
      text += "Key";
      text += std::to_string(f);
      text += ": value ";
      text += std::to_string(rng() % 100000);
      text += '\n';
      for (std::uint64_t c = rng() % 3; c > 0; --c) {  // a continuation line has text (a blank one separates records)
        text += rng() % 2 ? ' ' : '\t';
        text.append(1 + rng() % 30, 'c');
        text += '\n';
      }
    }
    for (std::uint64_t b = 1 + rng() % 3; b > 0; --b) text += rng() % 4 ? "\n" : "   \n";
  }
  const std::string path = dir.write("random", text);
  pf::stages::record_options o;
  o.block_bytes = 501;
  const auto want = read_sequential(pf::stages::records_source(path, o));
  REQUIRE(want.size() == 2000);
  CHECK(read_split(pf::stages::records_source(path, o)) == want);
  for (std::uint32_t replicas = 1; replicas <= 3; ++replicas) {
    CAPTURE(replicas);
    const auto got = pf::pipeline("records").source("read", pf::stages::records(path, o))
                         .map("id", [](record r) { return r; }, pf::replicas(replicas))
                         .collect(pf::ordered).run();
    CHECK(got.value == want);
  }
  CHECK(pt::count_children() == 0);
}

TEST_CASE("record_options::fields keeps only the named fields; every line is still checked") {
  pt::temp_dir dir("records_fields");
  const std::string path = dir.write("Packages",
                                     "Package: a\n"
                                     "Depends: x,\n"
                                     " y\n"
                                     "Section: admin\n"
                                     "Description: one\n"
                                     " more\n"
                                     "\n"
                                     "Version: 1\n"
                                     "\n"
                                     "Package: c\n"
                                     "Installed-Size: 7\n");
  pf::stages::record_options o;
  o.fields = {"Package", "Section", "Description"};
  // The record without any named field is still a record (a job counts it), with its line.
  const std::vector<record> want{{{{"Package", "a"}, {"Section", "admin"}, {"Description", "one\nmore"}}, 1},
                                 {{}, 8},
                                 {{{"Package", "c"}}, 10}};
  for (const std::uint64_t block : {std::uint64_t{3}, std::uint64_t{16}, std::uint64_t{1} << 20}) {
    CAPTURE(block);
    o.block_bytes = block;
    CHECK(read_split(pf::stages::records_source(path, o)) == want);
    CHECK(read_sequential(pf::stages::records_source(path, o)) == want);
  }
  const std::string bad = dir.write("bad", "Package: a\nnot a field\n");
  CHECK_THROWS_WITH(read_sequential(pf::stages::records_source(bad, o)), (bad + ":2: expected 'Key: value'").c_str());
}

TEST_CASE("the key's colon is found at every position: keys of 1..40 bytes, colons in values, short last lines") {
  // Keys 1..40 bytes long put the first ':' at every position of the reader's 16-byte compare and
  // past it; values hold colons of their own (the first ':' ends the key); the file's last lines
  // are shorter than 16 bytes with nothing after them. The expected fields are the ones written.
  std::mt19937_64 rng(77);
  pt::temp_dir dir("records_colon");
  std::string text;
  std::vector<std::vector<std::pair<std::string, std::string>>> want;
  auto letters = [&](std::uint64_t n) {
    std::string s;
    for (; n > 0; --n) s += static_cast<char>('A' + rng() % 26);
    return s;
  };
  for (int i = 0; i < 1500; ++i) {
    std::vector<std::pair<std::string, std::string>> fields(1 + rng() % 5);
    for (auto& [key, value] : fields) {
      key = letters(1 + rng() % 40);
      value = rng() % 3 ? letters(rng() % 8) + (rng() % 2 ? ":x:" : "") + letters(rng() % 20) : "";
      text += key + ":" + (rng() % 2 ? " " : "") + value + "\n";
    }
    want.push_back(fields);
    text += "\n";
  }
  text += "K:v\nL: w";  // a last record of short lines, the last one without a newline
  want.push_back({{"K", "v"}, {"L", "w"}});
  const std::string path = dir.write("colons", text);
  auto check = [&](const std::vector<record>& got) {
    REQUIRE(got.size() == want.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      CAPTURE(i);
      REQUIRE(got[i].size() == want[i].size());
      for (std::size_t f = 0; f < want[i].size(); ++f) {
        CHECK(got[i].key(f) == want[i][f].first);
        CHECK(got[i].value(f) == want[i][f].second);
      }
    }
  };
  for (const std::uint64_t block : {std::uint64_t{61}, std::uint64_t{4096}, std::uint64_t{1} << 20}) {
    CAPTURE(block);
    pf::stages::record_options o;
    o.block_bytes = block;
    check(read_split(pf::stages::records_source(path, o)));
    check(read_sequential(pf::stages::records_source(path, o)));
  }
  // A line without a colon whose next line has one within 16 bytes of its start is still an error.
  const std::string bad = dir.write("bad", "A: 1\nnocolon\nB: 2\nC: a value long enough to read 16 bytes past\n");
  CHECK_THROWS_WITH_AS(read_split(pf::stages::records_source(bad, {})), (bad + ":2: expected 'Key: value'").c_str(),
                       pf::error);
}

TEST_CASE("record::find: the first field named exactly the key, among keys of equal length, prefixes and the empty key") {
  const pf::stages::record r{{"Section", "net"},     {"Package", "curl"}, {"Pack", "p"},      {"Packagf", "x"},
                             {"Section", "second"},  {"P", ""},           {"Installed-Size", "42"}};
  CHECK(r.find("Section") == std::optional<std::string_view>("net"));  // the first of two
  CHECK(r.find("Package") == std::optional<std::string_view>("curl"));
  CHECK(r.find("Packagf") == std::optional<std::string_view>("x"));  // same length and first byte
  CHECK(r.find("Pack") == std::optional<std::string_view>("p"));
  CHECK(r.find("P") == std::optional<std::string_view>(""));  // a present key with an empty value
  CHECK(r.find("Installed-Size") == std::optional<std::string_view>("42"));
  CHECK_FALSE(r.find("Packag").has_value());
  CHECK_FALSE(r.find("Packages").has_value());
  CHECK_FALSE(r.find("section").has_value());
  CHECK_FALSE(r.find("").has_value());
  CHECK(r.get("Missing", "fallback") == "fallback");
  CHECK_FALSE(pf::stages::record{}.find("Package").has_value());
  const pf::stages::record empty_key{{"", "v"}, {"K", "w"}};
  CHECK(empty_key.find("") == std::optional<std::string_view>("v"));
  CHECK(empty_key.find("K") == std::optional<std::string_view>("w"));
}
