// Checks stages/include/procflow/stages/writers.hpp (issue 9, writers): CSV quoting, JSON string
// escaping, the temporary file renamed only when the run succeeds, and a full disk (a file size
// limit, RLIMIT_FSIZE, in a child process: deterministic, no special file system) reported as an
// error instead of a short file.
#include "stage_test_support.hpp"
#include "support/child_process.hpp"

#include <procflow/procflow.hpp>
#include <procflow/stages/writers.hpp>

#include <doctest/doctest.h>

#include <signal.h>
#include <sys/resource.h>

#include <filesystem>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;

namespace {

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST_CASE("csv_writer quotes fields that need it and prints numbers; renamed at finish()") {
  pt::temp_dir dir("writers_csv");
  const std::string path = dir.path() + "/out.csv";
  pf::stages::csv_writer w(path, {"name", "note"});
  w(std::vector<std::string>{"plain", "a,b"});
  w(std::pair<std::string, int>{"quote \"q\"", -3});
  w(std::tuple<std::string, double, bool, std::uint64_t>{"line\nbreak", 0.1, true, 18446744073709551615ull});
  CHECK_FALSE(std::filesystem::exists(path));  // not before the end of the stream
  REQUIRE(entries(dir.path()).size() == 1);
  CHECK(entries(dir.path())[0].find("out.csv.tmp-") == 0);
  w.finish();
  CHECK(entries(dir.path()) == std::vector<std::string>{"out.csv"});
  CHECK(pt::read_text(path) ==
        "name,note\n"
        "plain,\"a,b\"\n"
        "\"quote \"\"q\"\"\",-3\n"
        "\"line\nbreak\",0.1,true,18446744073709551615\n");
}

TEST_CASE("jsonl_writer escapes quotes, backslashes and control characters; UTF-8 passes through") {
  pt::temp_dir dir("writers_json");
  const std::string path = dir.path() + "/out.jsonl";
  pf::stages::jsonl_writer w(path);
  w(std::vector<std::pair<std::string, std::string>>{{"k\"1", "a\\b"}, {"ctl", std::string("\n\t\x01\x1f", 4)}, {"utf8", "d\xc3\xa9j\xc3\xa0 \xe2\x82\xac"}});
  pf::stages::record r;
  r.add("Package", "bash");
  w(r);
  w.finish();
  CHECK(pt::read_text(path) ==
        "{\"k\\\"1\":\"a\\\\b\",\"ctl\":\"\\n\\t\\u0001\\u001f\",\"utf8\":\"d\xc3\xa9j\xc3\xa0 \xe2\x82\xac\"}\n"
        "{\"Package\":\"bash\"}\n");
}

TEST_CASE("as a pipeline sink: the file appears only when the run succeeds") {
  const auto before = pt::dev_shm_entries();
  pt::temp_dir dir("writers_pipeline");
  const std::string path = dir.path() + "/squares.csv";
  auto flow = [](bool fail) {
    return pf::pipeline("write", pf::ordered).source("n", pf::iota(0, 20000)).map("square", [fail](int i) {
      if (fail && i == 15000) throw std::runtime_error("boom");
      return std::pair<int, long long>{i, static_cast<long long>(i) * i};
    }, pf::replicas(2));
  };
  CHECK_THROWS_AS(flow(true).sink("write", pf::stages::csv_writer(path, {"i", "square"})).run(), pf::stage_error);
  CHECK(entries(dir.path()).empty());  // no output, no temporary file left behind

  flow(false).sink("write", pf::stages::csv_writer(path, {"i", "square"})).run();
  std::string want = "i,square\n";
  for (long long i = 0; i < 20000; ++i) want += std::to_string(i).append(",").append(std::to_string(i * i)).append("\n");
  CHECK(pt::read_text(path) == want);
  CHECK(entries(dir.path()) == std::vector<std::string>{"squares.csv"});

  // An empty result is a file with its header.
  const std::string empty = dir.path() + "/empty.csv";
  pf::pipeline("empty").source("n", pf::iota(0, 0)).map("m", [](int i) { return std::pair<int, int>{i, i}; })
      .sink("write", pf::stages::csv_writer(empty, {"a", "b"})).run();
  CHECK(pt::read_text(empty) == "a,b\n");
  CHECK(pt::count_children() == 0);
  CHECK(pt::dev_shm_entries() == before);
}

TEST_CASE("a writer sink needs one process: replicas(n > 1) is refused when declared, own_process writes every item") {
  pt::temp_dir dir("writers_replicas");
  const std::string path = dir.path() + "/out.csv";
  auto pairs = pf::pipeline("write").source("n", pf::iota(0, 100000)).map("p", [](int i) { return std::pair<int, int>{i, 2 * i}; });
  // Each replica would write the whole file over the others' (seen: 75 425 and 73 727 rows of
  // 100 000 left with replicas(2)); refused, naming the stage and what to do instead.
  for (const auto& declare : std::vector<std::function<void()>>{
           [&] { (void)pairs.sink("write", pf::stages::csv_writer(path, {"a", "b"}), pf::replicas(2)); },
           [&] { (void)pairs.sink("write", pf::stages::csv_writer(path, {"a", "b"}), pf::replicas(pf::auto_scale)); },
           [&] {
             (void)pf::pipeline("json").source("n", pf::iota(0, 10)).map("kv", [](int i) {
               return std::vector<std::pair<std::string, std::string>>{{"n", std::to_string(i)}};
             }).sink("write", pf::stages::jsonl_writer(path), pf::replicas(3));
           }}) {
    try {
      declare();
      FAIL("declared");
    } catch (const pf::error& e) {
      const std::string what = e.what();
      CHECK(what.find("sink 'write'") != std::string::npos);
      CHECK(what.find("one process") != std::string::npos);
    }
  }
  CHECK(entries(dir.path()).empty());
  // One process of its own: every row, once.
  pairs.sink("write", pf::stages::csv_writer(path, {"a", "b"}), pf::own_process).run();
  std::string want = "a,b\n";
  for (int i = 0; i < 100000; ++i) want += std::to_string(i) + "," + std::to_string(2 * i) + "\n";
  const std::string got = pt::read_text(path);
  CHECK(got.size() == want.size());
  CHECK(got.substr(0, 4) == "a,b\n");
  CHECK(entries(dir.path()) == std::vector<std::string>{"out.csv"});
  CHECK(pt::count_children() == 0);
}

TEST_CASE("a full disk is an error naming the file, never a short output") {
  pt::temp_dir dir("writers_full");
  const std::string path = dir.path() + "/big.csv";
  // In a child: the file size limit is per process. Exit status says which expectation failed.
  pt::ChildProcess child([&] {
    ::signal(SIGXFSZ, SIG_IGN);  // write() then fails with EFBIG instead of killing the process
    rlimit limit{100'000, 100'000};
    if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) return 10;
    pf::stages::csv_writer w(path, {"n", "text"});
    std::string error;
    try {
      for (int i = 0; i < 20000; ++i) w(std::pair<int, std::string>{i, "some text to fill the disk"});
      w.finish();
    } catch (const pf::system_error& e) {
      error = e.what();
    }
    if (error.find("cannot write") == std::string::npos || error.find("big.csv") == std::string::npos) return 11;
    w.abort();
    if (std::filesystem::exists(path)) return 12;
    if (!std::filesystem::is_empty(dir.path())) return 13;

    // The same through a pipeline: run() fails naming the sink.
    try {
      pf::pipeline("full").source("n", pf::iota(0, 20000)).map("text", [](int i) {
        return std::pair<int, std::string>{i, "some text to fill the disk"};
      }, pf::replicas(2)).sink("write", pf::stages::csv_writer(path, {"n", "text"})).run();
      return 14;
    } catch (const pf::stage_error& e) {
      if (e.stage() != "write" || std::string(e.what()).find("cannot write") == std::string::npos) return 15;
    }
    if (std::filesystem::exists(path)) return 16;
    if (!std::filesystem::is_empty(dir.path())) return 17;
    return 0;
  });
  const auto status = child.wait_for(std::chrono::seconds(60));
  REQUIRE(status);
  CHECK(WIFEXITED(*status));
  CHECK(WEXITSTATUS(*status) == 0);
}
