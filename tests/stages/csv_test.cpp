// Checks stages/include/procflow/stages/csv.hpp (issue 9, csv_rows): RFC 4180 quoting, header
// names, typed access, errors naming file:line:column, the quoted-newline rule of the split
// reader, and that split reading over replicas equals sequential reading.
#include "stage_test_support.hpp"
#include "support/child_process.hpp"

#include <procflow/procflow.hpp>
#include <procflow/detail/job_place.hpp>
#include <procflow/stages/csv.hpp>
#include <procflow/stages/lines.hpp>
#include <procflow/stages/records.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
using fields = std::vector<std::string>;

namespace {

fields to_fields(const pf::stages::csv_row& r) {
  fields f;
  for (std::size_t i = 0; i < r.size(); ++i) f.emplace_back(r[i]);
  return f;
}

// Every row, read block by block in this process.
std::vector<fields> read_split(const pf::stages::csv_source& src) {
  std::vector<fields> out;
  pf::detail::batch_buffer<pf::stages::csv_row> rows;
  for (std::uint64_t b = 0; b < src.size(); ++b) {
    src.fill(b, b + 1, rows);
    for (const auto& r : rows) out.push_back(to_fields(r));
  }
  return out;
}

// Every row, read sequentially (the source-process path).
std::vector<fields> read_sequential(pf::stages::csv_source src) {
  std::vector<fields> out;
  while (auto r = src.next()) out.push_back(to_fields(*r));
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

pf::stages::csv_options multiline() {
  pf::stages::csv_options o;
  o.multiline = true;
  return o;
}

}  // namespace

TEST_CASE("RFC 4180: quotes, embedded delimiters and quotes, CRLF, empty fields, no final newline") {
  pt::temp_dir dir("csv_rfc");
  const std::string path = dir.write("a.csv",
                                     "name,comment,n\r\n"
                                     "plain,\"a, b\",1\r\n"
                                     "\"quoted \"\"word\"\"\",,2\n"
                                     "\n"
                                     "empty last,\"\",\n"
                                     "x,y,3");
  const std::vector<fields> want{{"plain", "a, b", "1"}, {"quoted \"word\"", "", "2"}, {"empty last", "", ""}, {"x", "y", "3"}};
  pf::stages::csv_options o;
  for (const std::uint64_t block : {std::uint64_t{1}, std::uint64_t{5}, std::uint64_t{17}, std::uint64_t{1} << 20}) {
    o.block_bytes = block;
    CAPTURE(block);
    pf::stages::csv_source src(path, o);
    CHECK(src.columns() == fields{"name", "comment", "n"});
    CHECK(read_split(src) == want);
    CHECK(read_sequential(src) == want);
  }
}

TEST_CASE("typed access by name and index; errors name file:line:column and the text") {
  pt::temp_dir dir("csv_typed");
  const std::string path = dir.write("t.csv", "id,delay,origin\n1,2.5,JFK\n2,abc,LAX\n3,99999999999,SFO\n");
  pf::stages::csv_source src(path, {});
  auto rows = src.next();
  REQUIRE(rows);
  CHECK(rows->get<int>("id") == 1);
  CHECK(rows->get<double>(1) == doctest::Approx(2.5));
  CHECK(rows->get<std::string>("origin") == "JFK");
  CHECK(rows->get<std::string_view>(2) == "JFK");
  CHECK(rows->line() == 2);
  auto bad = src.next();
  REQUIRE(bad);
  CHECK(error_of([&] { bad->get<double>("delay"); }) == path + ":3:2 (delay): cannot read \"abc\" as a number");
  CHECK(error_of([&] { bad->get<int>("nope"); }).find("no column named 'nope'") != std::string::npos);
  CHECK(error_of([&] { bad->get<int>(7); }) == path + ":3:8: the row has only 3 fields");
  auto big = src.next();
  REQUIRE(big);
  CHECK(error_of([&] { big->get<std::int32_t>("delay"); }).find(path + ":4:2 (delay): cannot read \"99999999999\" as an integer") == 0);
  CHECK(big->get<std::int64_t>("delay") == 99999999999);

  // In a split file the line is counted on demand, and rows keep their names across processes.
  pf::stages::csv_options o;
  o.block_bytes = 8;
  try {
    pf::pipeline("typed")
        .source("rows", pf::stages::csv_rows(path, o))
        .map("delay", [](const pf::stages::csv_row& r) { return r.get<double>("delay"); }, pf::replicas(2))
        .collect()
        .run();
    FAIL("no error");
  } catch (const pf::stage_error& e) {
    CHECK(e.stage() == "delay");
    CHECK(std::string(e.what()).find(path + ":3:2 (delay): cannot read \"abc\" as a number") != std::string::npos);
  }
  CHECK(pt::count_children() == 0);
}

TEST_CASE("malformed CSV is an error with file:line:column, never a crash") {
  pt::temp_dir dir("csv_bad");
  const std::string unterminated = dir.write("u.csv", "a,b\n1,2\n3,\"never closed\n");
  CHECK(error_of([&] { read_sequential(pf::stages::csv_source(unterminated, multiline())); }) ==
        unterminated + ":3:2: unterminated quoted field");
  CHECK(error_of([&] { read_split(pf::stages::csv_source(unterminated, {})); }).find(unterminated + ":3:2:") == 0);
  const std::string after_quote = dir.write("q.csv", "a,b\n\"x\"y,2\n");
  CHECK(error_of([&] { read_split(pf::stages::csv_source(after_quote, {})); }) ==
        after_quote + ":2:1: unexpected character after a closing quote");
  const std::string empty = dir.write("e.csv", "");
  pf::stages::csv_source e(empty, {});
  CHECK(e.columns().empty());
  CHECK(read_split(e).empty());
  CHECK(read_sequential(e).empty());
}

TEST_CASE("bad rows under pf::skip: counted, written to the reject file with file:line:column and text, the rest read") {
  for (const bool multiline : {false, true}) {  // split blocks over replicas; one source process
    CAPTURE(multiline);
    pt::temp_dir dir("csv_reject");
    std::string text = "k,v\n";
    std::vector<std::string> want;  // the good rows' keys
    std::vector<fields> rejects;    // file,line,column,text (the error text is checked apart)
    const std::string path = dir.path() + "/in.csv";
    for (int i = 0; i < 3000; ++i) {
      const std::string k = std::to_string(i), line_no = std::to_string(i + 2);
      std::string line;
      switch (i % 89 == 0 ? (i / 89) % 3 : 3) {
        case 0:  // text after a closing quote
          line = k + ",\"x\"y";
          rejects.push_back({path, line_no, "2", line});
          break;
        case 1:  // longer than max_row_bytes, with a '\r' before the '\n' (not part of the text)
          line = k + "," + std::string(150, 'z') + "\"q,\"\r";
          rejects.push_back({path, line_no, "1", line.substr(0, line.size() - 1)});
          break;
        case 2:  // a quote that does not close on its line: an error when splitting, data with multiline
          if (multiline) {
            line = k + ",\"v,\"\"q\"";  // quoted, with an escaped quote: a good row
            want.push_back(k);
          } else {
            line = k + ",\"open";
            rejects.push_back({path, line_no, "2", line});
          }
          break;
        default:
          line = k + ",v";
          want.push_back(k);
      }
      text += line + "\n";
    }
    dir.write("in.csv", text);
    pf::stages::csv_options o;
    o.block_bytes = 700;
    o.max_row_bytes = 100;
    o.multiline = multiline;
    o.reject_file = dir.path() + "/rejects.csv";
    const auto r = pf::pipeline("rejects")
                       .source("rows", pf::stages::csv_rows(path, o), pf::skip)
                       .map("k", [](const pf::stages::csv_row& row) { return row.get<std::string>("k"); }, pf::replicas(2))
                       .collect()
                       .run();
    CHECK(pt::sorted(r.value) == pt::sorted(want));
    CHECK(pt::stage_counter(r.report, 0, "rows rejected") == rejects.size());
    CHECK(pt::reject_records(o.reject_file, "file,line,column,error,text", 3) == pt::sorted(rejects));
  }

  // A bad row whose quoted field spans lines is set aside whole: its later lines are not read as
  // rows of their own, and the rows after it keep their line numbers.
  {
    pt::temp_dir dir("csv_reject_multiline");
    const std::string path = dir.write("in.csv",
                                       "k,v\n1,v\n2,\"a\nb\"x\n3,\"c\nd\"\n4,v\n5,\"e\n\nf\" \n6,v\n7,\"g\"z\n8,v\n");
    pf::stages::csv_options o = multiline();
    o.reject_file = dir.path() + "/rejects.csv";
    const auto r = pf::pipeline("multiline rejects")
                       .source("rows", pf::stages::csv_rows(path, o), pf::skip)
                       .map("k", [](const pf::stages::csv_row& row) { return row.get<std::string>("k") + "=" + row.get<std::string>("v"); })
                       .collect(pf::ordered)
                       .run();
    CHECK(r.value == std::vector<std::string>{"1=v", "3=c\nd", "4=v", "6=v", "8=v"});
    CHECK(pt::stage_counter(r.report, 0, "rows rejected") == 3);
    CHECK(pt::reject_records(o.reject_file, "file,line,column,error,text", 3) ==
          std::vector<fields>{{path, "12", "2", "7,\"g\"z"}, {path, "3", "2", "2,\"a"}, {path, "8", "2", "5,\"e"}});
    // They are the run's dead letters as well: the message as the error would read, the text as the item.
    std::vector<fields> letters;
    for (const pf::dead_letter& d : r.report.dead_letters)
      letters.push_back({d.stage, std::to_string(d.item_seq), d.exception_type, d.message, d.decode_item<std::string>()});
    CHECK(pt::sorted(letters) ==
          std::vector<fields>{{"rows", "12", "bad input", path + ":12:2: unexpected character after a closing quote", "7,\"g\"z"},
                              {"rows", "3", "bad input", path + ":3:2: unexpected character after a closing quote", "2,\"a"},
                              {"rows", "8", "bad input", path + ":8:2: unexpected character after a closing quote", "5,\"e"}});
  }

  // The reader follows its own stage's policy: pf::skip on a later stage does not make it skip.
  pt::temp_dir dir("csv_reject_fail");
  const std::string path = dir.write("in.csv", "k,v\n1,v\n2,\"x\"y\n3,v\n");
  try {
    pf::pipeline("no skip")
        .source("rows", pf::stages::csv_rows(path))
        .map("k", [](const pf::stages::csv_row& row) { return row.get<std::string>("k"); }, pf::skip)
        .collect()
        .run();
    FAIL("no error");
  } catch (const pf::stage_error& e) {
    CHECK(std::string(e.what()).find(path + ":3:2: unexpected character after a closing quote") != std::string::npos);
  }
  // The pipeline's pf::skip reaches the reader.
  const auto r = pf::pipeline("skip all", pf::skip)
                     .source("rows", pf::stages::csv_rows(path))
                     .map("k", [](const pf::stages::csv_row& row) { return row.get<std::string>("k"); })
                     .collect(pf::ordered)
                     .run();
  CHECK(r.value == std::vector<std::string>{"1", "3"});
  // A reject file that cannot be made fails the run before it starts, naming it.
  pf::stages::csv_options nowhere;
  nowhere.reject_file = dir.path() + "/no/such/dir/rejects.csv";
  const std::string err = error_of([&] {
    pf::pipeline("nowhere", pf::skip).source("rows", pf::stages::csv_rows(path, nowhere)).collect().run();
  });
  CHECK(err.find("cannot open reject file '" + nowhere.reject_file + "'") != std::string::npos);
  CHECK(pt::count_children() == 0);
}

TEST_CASE("a reader declared before the MPI environment sets aside into its rank's file, made when the run starts") {
  // procflow::mpi::environment sets the job place; a reader may be declared before it (a global,
  // or built before MPI_Init). Its reject file must still be "<path>.rank<R>", made with its
  // header by the run on the rank: made at declaration, it was "<path>" on every rank, each rank
  // truncating and appending to the one file the others wrote.
  pt::temp_dir dir("reject_rank");
  const std::string csv = dir.write("in.csv", "k,v\n1,a\n2,\"b\"x\n3,c\n");
  const std::string txt = dir.write("in.txt", "1\n" + std::string(300, 'x') + "\n3\n");
  const std::string deb = dir.write("Packages", "Package: 1\n\nPackage: 2\nnot a field\n\nPackage: 3\n");
  pf::stages::csv_options co;
  co.reject_file = dir.path() + "/csv.rejects";
  pf::stages::line_options lo;
  lo.max_line_bytes = 100;
  lo.reject_file = dir.path() + "/lines.rejects";
  pf::stages::record_options ro;
  ro.reject_file = dir.path() + "/records.rejects";
  const auto rows = pf::stages::csv_rows(csv, co);
  const auto lines = pf::stages::lines(txt, lo);
  const auto records = pf::stages::records(deb, ro);
  CHECK_FALSE(std::filesystem::exists(co.reject_file));  // nothing made before a run
  pf::detail::set_job_place({1, 2});
  struct unset {
    ~unset() { pf::detail::set_job_place({}); }
  } unset_place;
  const auto ones_and_threes = [](auto source, auto key) {
    return pt::sorted(pf::pipeline("rank", pf::skip).source("read", source).map("key", key).collect().run().value);
  };
  CHECK(ones_and_threes(rows, [](const pf::stages::csv_row& r) { return r.get<std::string>("k"); }) == fields{"1", "3"});
  CHECK(ones_and_threes(lines, [](const std::string& l) { return l; }) == fields{"1", "3"});
  CHECK(ones_and_threes(records, [](const pf::stages::record& r) { return std::string(r.find("Package").value_or("?")); }) ==
        fields{"1", "3"});
  CHECK(pt::reject_records(co.reject_file + ".rank1", "file,line,column,error,text", 3) == std::vector<fields>{{csv, "3", "2", "2,\"b\"x"}});
  CHECK(pt::reject_records(lo.reject_file + ".rank1", "file,line,error,text", 2) == std::vector<fields>{{txt, "2", std::string(300, 'x')}});
  CHECK(pt::reject_records(ro.reject_file + ".rank1", "file,line,error,text", 2) == std::vector<fields>{{deb, "4", "not a field"}});
  for (const std::string& p : {co.reject_file, lo.reject_file, ro.reject_file}) CHECK_FALSE(std::filesystem::exists(p));
}

TEST_CASE("a quoted line break: an error when splitting, data with multiline") {
  pt::temp_dir dir("csv_multiline");
  const std::string path = dir.write("m.csv", "k,text\n1,\"two\nlines\"\n2,plain\n");
  pf::stages::csv_options o;
  o.block_bytes = 4;
  const std::string err = error_of([&] { read_split(pf::stages::csv_source(path, o)); });
  CHECK(err.find(path + ":2:2: quoted field spans lines") == 0);
  CHECK(err.find("csv_options::multiline") != std::string::npos);
  o.multiline = true;
  pf::stages::csv_source src(path, o);
  CHECK_FALSE(src.splittable());
  const auto r = pf::pipeline("ml").source("rows", src).map("f", [](const pf::stages::csv_row& row) {
    return row.get<std::string>("text") + "@" + std::to_string(row.line());
  }, pf::replicas(2)).collect(pf::ordered).run();
  CHECK(r.value == fields{"two\nlines@2", "plain@4"});
}

TEST_CASE("delimiter, comment lines, no header with given column names") {
  pt::temp_dir dir("csv_options");
  const std::string path = dir.write("g.txt", "# tor geoip\n16777216;16777471;AU\n# more\n16777472;16778239;CN\n");
  pf::stages::csv_options o;
  o.delimiter = ';';
  o.comment = '#';
  o.header = false;
  o.columns = {"start", "end", "country"};
  pf::stages::csv_source src(path, o);
  CHECK(read_split(src) == std::vector<fields>{{"16777216", "16777471", "AU"}, {"16777472", "16778239", "CN"}});
  auto first = pf::stages::csv_source(path, o).next();
  REQUIRE(first);
  CHECK(first->get<std::uint64_t>("end") - first->get<std::uint64_t>("start") + 1 == 256);
  CHECK(first->line() == 2);
}

TEST_CASE("split reading over 1..3 replicas equals sequential reading (random quoted CSV)") {
  std::mt19937_64 rng(99);
  pt::temp_dir dir("csv_random");
  std::string text = "a,b,c\n";
  for (int i = 0; i < 4000; ++i) {
    for (int c = 0; c < 3; ++c) {
      if (c) text += ',';
      switch (rng() % 5) {
        case 0: text += "\"q,\"\"" + std::to_string(rng() % 1000) + "\""; break;
        case 1: break;
        case 2: text += std::string(rng() % 40, 'x'); break;
        default: text += std::to_string(rng() % 100000); break;
      }
    }
    text += rng() % 4 ? "\n" : "\r\n";
  }
  const std::string path = dir.write("r.csv", text);
  pf::stages::csv_options o;
  o.block_bytes = 777;
  const auto want = read_sequential(pf::stages::csv_source(path, multiline()));
  REQUIRE(want.size() == 4000);
  CHECK(read_split(pf::stages::csv_source(path, o)) == want);
  for (std::uint32_t replicas = 1; replicas <= 3; ++replicas) {
    CAPTURE(replicas);
    const auto got = pf::pipeline("csv").source("rows", pf::stages::csv_rows(path, o))
                         .map("fields", [](const pf::stages::csv_row& r) { return to_fields(r); }, pf::replicas(replicas))
                         .collect(pf::ordered).run();
    CHECK(got.value == want);
    CHECK(got.report.stages[0].items_out == 4000);
  }
  CHECK(pt::count_children() == 0);
}

TEST_CASE("the one-pass row splitter: delimiters at every offset, CRLF, empty fields, comments, no final newline") {
  // Rows without quotes take the 8-bytes-at-a-time path; fields of 0..19 bytes put delimiters and
  // line ends at every position of an 8-byte word. The expected fields are split here, byte by byte.
  std::mt19937_64 rng(7);
  for (const char delimiter : {',', ';', '\t'}) {
    CAPTURE(delimiter);
    pt::temp_dir dir("csv_plain");
    std::string text;
    std::vector<fields> want;
    for (int i = 0; i < 3000; ++i) {
      if (rng() % 50 == 0) text += "# a comment, with \"quotes\"\n";
      if (rng() % 50 == 0) text += rng() % 2 ? "\n" : "\r\n";
      fields row(1 + rng() % 6);
      for (std::size_t c = 0; c < row.size(); ++c) {
        for (std::uint64_t k = rng() % 20; k > 0; --k) row[c] += static_cast<char>('a' + rng() % 26);
        if (c) text += delimiter;
        text += row[c];
      }
      if (row.size() == 1 && row[0].empty()) {  // an empty line is no row
        row[0].push_back('x');
        text.push_back('x');
      }
      want.push_back(row);
      if (i + 1 < 3000 || delimiter != ',') text += rng() % 3 ? "\n" : "\r\n";  // ',': the last row has no newline
    }
    const std::string path = dir.write("p.csv", text);
    pf::stages::csv_options o;
    o.header = false;
    o.comment = '#';
    o.delimiter = delimiter;
    for (const std::uint64_t block : {std::uint64_t{97}, std::uint64_t{4096}, std::uint64_t{1} << 20}) {
      CAPTURE(block);
      o.block_bytes = block;
      CHECK(read_split(pf::stages::csv_source(path, o)) == want);
      CHECK(read_sequential(pf::stages::csv_source(path, o)) == want);
    }
  }
}

TEST_CASE(
    "the one-pass splitter's quoted fields: whole fields, \"\" escapes, quotes in plain fields, CRLF, long lines") {
  // Rows whose quotes enclose whole fields take the one-pass path; "" inside a field, a quote
  // inside an unquoted field, more than 64 quoted fields on a line and quoted fields longer than
  // a read take the general path. Every row is written here from its fields, so the expected
  // fields are known without a second parser; each file is read split at three block sizes and
  // sequentially.
  std::mt19937_64 rng(11);
  auto letters = [&](std::uint64_t n) {
    std::string s;
    for (; n > 0; --n) s += static_cast<char>('a' + rng() % 26);
    return s;
  };
  for (const char delimiter : {',', ';', '\t'}) {
    CAPTURE(delimiter);
    pt::temp_dir dir("csv_quoted");
    std::string text;
    std::vector<fields> want;
    const int rows = 3000;
    for (int i = 0; i < rows; ++i) {
      const bool wide = rng() % 200 == 0;  // more quoted fields than the one-pass path keeps
      fields row(wide ? 70 : 1 + rng() % 7);
      std::string line;
      for (std::size_t c = 0; c < row.size(); ++c) {
        if (c) line += delimiter;
        std::string& f = row[c];
        switch (wide ? 0 : rng() % 8) {
          case 0:  // quoted, maybe holding delimiters, '\r' and spaces; 0..19 bytes puts it at every word offset
            for (std::uint64_t k = rng() % 20; k > 0; --k) {
              const char pick[] = {'a', 'b', ' ', '\r', delimiter};
              f += pick[rng() % 5];
            }
            line += '"' + f + '"';
            break;
          case 1:  // quoted with "" escapes
            f = letters(rng() % 5) + '"' + letters(rng() % 5);
            line += "\"" + f.substr(0, f.find('"')) + "\"\"" + f.substr(f.find('"') + 1) + "\"";
            break;
          case 2:  // a quote inside an unquoted field is data
            f = letters(1 + rng() % 5) + '"' + letters(rng() % 5);
            line += f;
            break;
          case 3:  // quoted and long: past the byte loop, a delimiter inside
            f = letters(30 + rng() % 100) + delimiter + letters(rng() % 10);
            line += '"' + f + '"';
            break;
          case 4:  // empty, quoted or not
            if (rng() % 2) line += "\"\"";
            break;
          default:
            f = letters(rng() % 12);
            line += f;
            break;
        }
      }
      if (line.empty()) {  // an empty line is no row
        row = fields{"x"};
        line = "x";
      }
      if (rng() % 500 == 0) {  // a row longer than a 64 KiB read, with quoted fields
        row.push_back(std::string(70000, 'L') + delimiter);
        row.push_back("tail");
        line += delimiter + ('"' + row[row.size() - 2] + '"') + delimiter + "\"tail\"";
      }
      want.push_back(row);
      text += line;
      if (i + 1 < rows || delimiter != ',') text += rng() % 3 ? "\n" : "\r\n";  // ',': the last row has no newline
    }
    const std::string path = dir.write("q.csv", text);
    pf::stages::csv_options o;
    o.header = false;
    o.delimiter = delimiter;
    for (const std::uint64_t block : {std::uint64_t{97}, std::uint64_t{4096}, std::uint64_t{1} << 20}) {
      CAPTURE(block);
      o.block_bytes = block;
      CHECK(read_split(pf::stages::csv_source(path, o)) == want);
      CHECK(read_sequential(pf::stages::csv_source(path, o)) == want);
    }
  }
  // Text after a closing quote, an unterminated quote: the general path's errors, with the column.
  pt::temp_dir dir("csv_quoted_bad");
  pf::stages::csv_options o;
  o.header = false;
  const std::string after = dir.write("a.csv", "1,\"x\"y,2\n");
  CHECK(error_of([&] { read_split(pf::stages::csv_source(after, o)); }) ==
        after + ":1:2: unexpected character after a closing quote");
  const std::string cr = dir.write("b.csv", "1,2\n3,\"x\"\ry\n");
  CHECK(error_of([&] { read_split(pf::stages::csv_source(cr, o)); }) ==
        cr + ":2:2: unexpected character after a closing quote");
  const std::string open = dir.write("c.csv", "1,\"x,2");
  CHECK(error_of([&] { read_split(pf::stages::csv_source(open, o)); }).find(open + ":1:2: unterminated quoted field") ==
        0);
}

TEST_CASE("a csv_row crosses processes whole, and a corrupt one is rejected") {
  pf::stages::csv_row row;
  row.assign_fields("a,,bc,", ',');
  CHECK(to_fields(row) == fields{"a", "", "bc", ""});
  pf::stages::csv_row built;
  for (const char* f : {"a", "", "bc", ""}) built.add_field(f);
  CHECK(built == row);
  std::vector<std::byte> bytes(pf::codec<pf::stages::csv_row>::encoded_size(row));
  CHECK(pf::codec<pf::stages::csv_row>::encode(row, bytes.data()) == bytes.data() + bytes.size());
  pf::decoder in(bytes);
  CHECK(to_fields(pf::codec<pf::stages::csv_row>::decode(in)) == fields{"a", "", "bc", ""});
  // Field ends that leave no separator between two fields are out of bounds.
  pf::stages::csv_row bad;
  bad.assign_fields("ab", 'b');  // fields "a", "": ends 1, 2
  std::vector<std::byte> b2(pf::codec<pf::stages::csv_row>::encoded_size(bad));
  pf::codec<pf::stages::csv_row>::encode(bad, b2.data());
  pf::decoder good(b2);
  CHECK(to_fields(pf::codec<pf::stages::csv_row>::decode(good)) == fields{"a", ""});
  // Bytes: varint 2, "ab", varint 2, then the ends 1 and 2 as 4-byte words. A second end of 1
  // would make field 2 start past its end.
  std::vector<std::byte> b3 = b2;
  REQUIRE(b3.size() > 12);
  REQUIRE(static_cast<int>(b3[8]) == 2);
  b3[8] = std::byte{1};
  pf::decoder corrupt(b3);
  CHECK_THROWS_AS(pf::codec<pf::stages::csv_row>::decode(corrupt), pf::codec_error);
}

TEST_CASE("a reject file removed or renamed between runs of one declaration is made again and gets each run's rows") {
  // A reader keeps its reject file open between bad rows; each run must write the file its start
  // made, never one an earlier run opened (removed: its rows would be lost; renamed: they would
  // land in the renamed file).
  pt::temp_dir dir("csv_reject_threads");
  std::string text = "k,v\n";
  std::vector<fields> rejects;
  const std::string path = dir.path() + "/in.csv";
  for (int i = 0; i < 2000; ++i) {
    const bool bad = i % 7 == 0;
    text += std::to_string(i) + (bad ? ",\"x\"y\n" : ",v\n");
    if (bad) rejects.push_back({path, std::to_string(i + 2), "2", std::to_string(i) + ",\"x\"y"});
  }
  dir.write("in.csv", text);
  pf::stages::csv_options o;
  o.block_bytes = 512;
  o.reject_file = dir.path() + "/rejects.csv";
  const auto job = pf::pipeline("reject twice")
                       .source("rows", pf::stages::csv_rows(path, o), pf::skip)
                       .map("k", [](const pf::stages::csv_row& row) { return row.get<std::string>("k"); }, pf::replicas(2))
                       .collect();
  for (int run = 0; run < 3; ++run) {
    CAPTURE(run);
    const auto r = job.run();
    CHECK(r.value.size() == 2000 - rejects.size());
    CHECK(pt::reject_records(o.reject_file, "file,line,column,error,text", 3) == pt::sorted(rejects));
    if (run == 0) std::filesystem::remove(o.reject_file);
    if (run == 1) std::filesystem::rename(o.reject_file, dir.path() + "/kept.csv");
  }
  CHECK(pt::reject_records(dir.path() + "/kept.csv", "file,line,column,error,text", 3) == pt::sorted(rejects));
}
