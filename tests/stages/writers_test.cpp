// Checks stages/include/procflow/stages/writers.hpp (issue 9, writers): CSV quoting, JSON string
// escaping, the temporary file renamed only when the run succeeds, one file from every replica of
// a sink (processes, auto_scale, threads, a replica killed under restart), and a full disk (a file
// size limit, RLIMIT_FSIZE, in a child process: deterministic, no special file system) reported
// as an error instead of a short file.
#include "stage_test_support.hpp"
#include "support/child_process.hpp"
#include "support/isolated.hpp"

#include <procflow/detail/job_place.hpp>
#include <procflow/procflow.hpp>
#include <procflow/stages/writers.hpp>

#include <doctest/doctest.h>

#include <signal.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <tuple>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
using namespace std::chrono_literals;

namespace {

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// The lines "i,2i" for i in [0, n), sorted as text, after the header "a,b".
std::vector<std::string> pair_lines(int n) {
  std::vector<std::string> lines{"a,b"};
  for (int i = 0; i < n; ++i) lines.push_back(std::to_string(i) + "," + std::to_string(2 * i));
  std::sort(lines.begin(), lines.end());
  return lines;
}

// A csv_writer that kills its process at row `at` (once in the whole run: the flag is shared by
// every process). It passes the whole writer protocol on, as a wrapper must.
struct dying_writer {
  pf::stages::csv_writer w;
  std::atomic<int>* killed;
  int at;
  void operator()(const std::pair<int, int>& p) {
    if (p.first == at && killed->exchange(1) == 0) ::raise(SIGKILL);
    w(p);
  }
  void finish() { w.finish(); }
  void flush() { w.flush(); }
  void abort() noexcept { w.abort(); }
  void commit() { w.commit(); }
  void rollback() noexcept { w.rollback(); }
};

}  // namespace

TEST_CASE("csv_writer quotes fields that need it and prints numbers; renamed at commit()") {
  pt::temp_dir dir("writers_csv");
  const std::string path = dir.path() + "/out.csv";
  pf::stages::csv_writer w(path, {"name", "note"});
  w(std::vector<std::string>{"plain", "a,b"});
  w(std::pair<std::string, int>{"quote \"q\"", -3});
  w(std::tuple<std::string, double, bool, std::uint64_t>{"line\nbreak", 0.1, true, 18446744073709551615ull});
  w.finish();  // the lines written and closed, under the temporary name
  REQUIRE(entries(dir.path()).size() == 1);
  CHECK(entries(dir.path())[0].find("out.csv.tmp-") == 0);
  w.commit();
  CHECK(entries(dir.path()) == std::vector<std::string>{"out.csv"});
  CHECK(pt::read_text(path) ==
        "name,note\n"
        "plain,\"a,b\"\n"
        "\"quote \"\"q\"\"\",-3\n"
        "\"line\nbreak\",0.1,true,18446744073709551615\n");
}

TEST_CASE("a writer constructed before the MPI environment writes its rank's file: the rank applies when it writes") {
  // procflow::mpi::environment sets the job place; a writer may be constructed before it (a global,
  // or built before MPI_Init). Its lines and its commit must still go to "<path>.rank<R>".
  pt::temp_dir dir("writers_rank");
  const std::string path = dir.path() + "/out.csv";
  pf::stages::csv_writer w(path, {"k"});
  procflow::detail::set_job_place({1, 2});
  struct unset {
    ~unset() { procflow::detail::set_job_place({}); }
  } unset_place;
  w(std::vector<std::string>{"x"});
  w.finish();
  REQUIRE(entries(dir.path()).size() == 1);
  CHECK(entries(dir.path())[0].find("out.csv.rank1.tmp-") == 0);
  w.commit();
  CHECK(entries(dir.path()) == std::vector<std::string>{"out.csv.rank1"});
  CHECK(pt::read_text(path + ".rank1") == "k\nx\n");
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
  w.commit();
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

TEST_CASE("a writer sink with several replicas writes one file holding every row once") {
  pt::temp_dir dir("writers_replicas");
  const std::string path = dir.path() + "/out.csv";
  auto pairs = [](int n) {
    return pf::pipeline("write").source("n", pf::iota(0, n)).map("p", [](int i) { return std::pair<int, int>{i, 2 * i}; });
  };
  // Before, each replica renamed its own whole file onto the output: 75 425 and 73 727 rows of
  // 100 000 were left with replicas(2), silently.
  SUBCASE("replicas(2)") { pairs(100000).sink("write", pf::stages::csv_writer(path, {"a", "b"}), pf::replicas(2)).run(); }
  SUBCASE("replicas(auto_scale)") {
    pairs(100000).sink("write", pf::stages::csv_writer(path, {"a", "b"}), pf::replicas(pf::auto_scale)).run();
  }
  SUBCASE("own_process") { pairs(100000).sink("write", pf::stages::csv_writer(path, {"a", "b"}), pf::own_process).run(); }
  SUBCASE("threads") { pairs(100000).sink("write", pf::stages::csv_writer(path, {"a", "b"}), pf::replicas(2)).run(pf::in_threads); }
  CHECK(pt::sorted(pt::lines_of(pt::read_text(path))) == pair_lines(100000));
  CHECK(pt::read_text(path).substr(0, 4) == "a,b\n");  // the header first
  CHECK(entries(dir.path()) == std::vector<std::string>{"out.csv"});
  CHECK(pt::count_children() == 0);

  // A second run of the same pipeline writes the file anew; an empty result is the header alone.
  const auto twice = pairs(3).sink("write", pf::stages::csv_writer(path, {"a", "b"}), pf::replicas(2));
  twice.run();
  twice.run();
  CHECK(pt::sorted(pt::lines_of(pt::read_text(path))) == pair_lines(3));
  pairs(0).sink("write", pf::stages::csv_writer(path, {"a", "b"}), pf::replicas(2)).run();
  CHECK(pt::read_text(path) == "a,b\n");
  CHECK(entries(dir.path()) == std::vector<std::string>{"out.csv"});
}

TEST_CASE("a failed run with a replicated writer sink leaves neither the output nor a temporary file") {
  pt::temp_dir dir("writers_replicas_fail");
  const std::string path = dir.path() + "/out.csv";
  const auto failing = pf::pipeline("write").source("n", pf::iota(0, 100000)).map("p", [](int i) {
    if (i == 90000) throw std::runtime_error("boom");
    return std::pair<int, int>{i, 2 * i};
  }).sink("write", pf::stages::csv_writer(path, {"a", "b"}), pf::replicas(2));
  CHECK_THROWS_AS(failing.run(), pf::stage_error);
  CHECK(entries(dir.path()).empty());

  // A sink replica killed (no restart): the run fails and the caller removes the file its copies
  // wrote (before, the killed replica's own temporary file was left behind).
  const pt::shared_flag flag;
  std::atomic<int>* killed = flag.get();
  const auto dying = pf::pipeline("write").source("n", pf::iota(0, 100000)).map("p", [](int i) {
    return std::pair<int, int>{i, 2 * i};
  }).sink("write", dying_writer{pf::stages::csv_writer(path, {"a", "b"}), killed, 60000}, pf::replicas(2));
  CHECK_THROWS_AS(dying.run(), pf::stage_error);
  CHECK(killed->load() == 1);
  CHECK(entries(dir.path()).empty());
  CHECK(pt::count_children() == 0);
}

// One sink replica of `replicas` killed at row 60 000 under restart(1): every row at least once
// (restart redelivers the batch the dead replica had taken), in one file.
template <class Replicas>
void check_killed_sink_restarts(const Replicas& replicas) {
  pt::temp_dir dir("writers_restart");
  const std::string path = dir.path() + "/out.csv";
  const pt::shared_flag flag;
  std::atomic<int>* killed = flag.get();
  const auto report = pf::pipeline("write", pf::restart(1)).source("n", pf::iota(0, 100000)).map("p", [](int i) {
    return std::pair<int, int>{i, 2 * i};
  }, pf::replicas(2)).sink("write", dying_writer{pf::stages::csv_writer(path, {"a", "b"}), killed, 60000}, replicas).run().report;
  CHECK(killed->load() == 1);
  CHECK(report.restarts.size() == 1);
  std::vector<std::string> lines = pt::sorted(pt::lines_of(pt::read_text(path)));
  const std::size_t written = lines.size();
  lines.erase(std::unique(lines.begin(), lines.end()), lines.end());
  CHECK(lines == pair_lines(100000));
  CHECK(written - lines.size() < 10000);  // at most the redelivered batch twice
  CHECK(pt::read_text(path).substr(0, 4) == "a,b\n");
  CHECK(entries(dir.path()) == std::vector<std::string>{"out.csv"});
}

// Before, the replacement started a file of its own and the dead replica's rows were lost (its
// temporary file left behind); and rows of batches it had finished but not yet written out were
// lost with it (now written before each batch is released: without that, this test loses rows).
TEST_CASE("a writer sink replica killed under restart: its replacement appends to the same file, no row lost") {
  pt::run_isolated(120s, [] {
    const auto before = pt::dev_shm_entries();
    check_killed_sink_restarts(pf::own_process);
    check_killed_sink_restarts(pf::replicas(2));
    CHECK(pt::count_children() == 0);
    CHECK(pt::dev_shm_entries() == before);
  });
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
      w.commit();
    } catch (const pf::system_error& e) {
      error = e.what();
    }
    if (error.find("cannot write") == std::string::npos || error.find("big.csv") == std::string::npos) return 11;
    w.abort();
    w.rollback();
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
