// A reader under pf::restart and pf::skip: the replica reading a block dies (kill -9) after its
// reader set rows of that block aside; its replacement reads the block again. Each bad row must
// be set aside once — one reject record, one count in "rows rejected", one dead letter — and each
// good row arrive once: the replacement does not set aside again what its predecessor had.
#include "stage_test_support.hpp"
#include "support/child_process.hpp"
#include "support/isolated.hpp"

#include <procflow/procflow.hpp>
#include <procflow/stages/csv.hpp>

#include <doctest/doctest.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <signal.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <cstdio>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
using namespace std::chrono_literals;

namespace {

// The rows of the test's CSV file: "%05d,v"-style rows, every `bad_every`th one a quote that
// does not close on its line. Fills `good` (their keys) and `bad` ({file, line, column, text}).
std::string make_rows(const std::string& path, int rows, int bad_every, std::vector<std::string>& good,
                      std::vector<std::vector<std::string>>& bad) {
  std::string text = "k,v\n";
  for (int i = 0; i < rows; ++i) {
    std::string line = fmt::format("{:07},v", i);
    if (i % bad_every == 0) {
      line = fmt::format("{:07},\"", i);
      bad.push_back({path, std::to_string(i + 2), "2", line});
    } else {
      good.push_back(fmt::format("{:07}", i));
    }
    text += line + "\n";
  }
  return text;
}

// The other children of this process's parent (the replicas and source process of the run this
// replica belongs to, but this one).
std::vector<pid_t> siblings() {
  std::vector<pid_t> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(e.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    const std::size_t close = line.rfind(')');  // the command may hold spaces and parentheses
    if (close == std::string::npos) continue;
    char state = 0;
    long ppid = 0;
    if (std::sscanf(line.c_str() + close + 1, " %c %ld", &state, &ppid) != 2) continue;
    const auto pid = static_cast<pid_t>(std::stol(name));
    if (ppid == ::getppid() && pid != ::getpid()) out.push_back(pid);
  }
  return out;
}

// What is wrong with the run's dead letters ("" when nothing): each bad row once, a reader's
// letter (stage_test_support.hpp) of stage "rows".
std::string letters_wrong(const pf::run_report& r, const std::vector<std::vector<std::string>>& bad) {
  std::vector<std::string> lines, bad_lines;
  for (const pf::dead_letter& d : r.dead_letters) lines.push_back(std::to_string(d.item_seq));
  std::vector<std::vector<std::string>> file_line_text;
  for (const auto& b : bad) {
    bad_lines.push_back(b[1]);
    file_line_text.push_back({b[0], b[1], b[3]});
  }
  if (pt::sorted(lines) != pt::sorted(bad_lines)) return fmt::format("letters of lines {}, not {}", fmt::join(pt::sorted(lines), " "), fmt::join(pt::sorted(bad_lines), " "));
  return pt::reader_letters_wrong(r, "rows", file_line_text);
}

// After one restart (of a replica that died in stage `died_in`): every good row once, every bad
// row set aside once (counter, reject file, dead letter).
void check_set_aside_once(const pf::result<std::vector<std::string>>& r, const std::string& died_in, const std::string& reject_file,
                          const std::vector<std::string>& good, const std::vector<std::vector<std::string>>& bad) {
  REQUIRE(r.report.restarts.size() == 1);
  CHECK(r.report.restarts[0].stage == died_in);
  CHECK(pt::sorted(r.value) == good);
  CHECK(pt::stage_counter(r.report, 0, "rows rejected") == bad.size());
  CHECK(pt::reject_records(reject_file, "file,line,column,error,text", 3) == pt::sorted(bad));
  CHECK(letters_wrong(r.report, bad) == "");
}

}  // namespace

TEST_CASE("a replica killed after its reader set rows aside: its replacement re-reads the block without setting them aside twice") {
  pt::run_isolated(120s, [] {
    const auto shm_before = pt::dev_shm_entries();
    pt::temp_dir dir("reader_restart");
    // Rows of 10 bytes after the 4-byte header: with 1000-byte blocks, block j holds rows
    // 100j .. 100j+99 (a row belongs to the block it starts in).
    static constexpr int kill_at = 405;  // in block 4, after bad row 400
    std::vector<std::string> good;
    std::vector<std::vector<std::string>> bad;  // file, line, column, text
    const std::string path = dir.path() + "/in.csv";
    dir.write("in.csv", make_rows(path, 3000, 400, good, bad));  // 8 bad rows: every one a dead letter
    const pt::shared_flag flag;
    std::atomic<int>* killed = flag.get();

    pf::stages::csv_options o;
    o.block_bytes = 1000;
    o.reject_file = dir.path() + "/rejects.csv";
    const auto r = pf::pipeline("reader restart", pf::restart(1), pf::skip)
                       .source("rows", pf::stages::csv_rows(path, o))
                       .map("k",
                            [killed](const pf::stages::csv_row& row) {
                              std::string k = row.get<std::string>("k");
                              if (k == fmt::format("{:07}", kill_at) && killed->exchange(1) == 0) ::raise(SIGKILL);
                              return k;
                            },
                            pf::replicas(2))
                       .collect()
                       .run();
    CHECK(killed->load() == 1);
    check_set_aside_once(r, "k", o.reject_file, good, bad);
    CHECK(pt::count_children() == 0);
    CHECK(pt::dev_shm_entries() == shm_before);
  });
}

TEST_CASE("a reader in a source process (gzip input) killed after it set rows aside: run again from its start, each row set aside once") {
  pt::run_isolated(120s, [] {
    const auto shm_before = pt::dev_shm_entries();
    pt::temp_dir dir("reader_restart_gz");
    std::vector<std::string> good;
    std::vector<std::vector<std::string>> bad;
    const std::string path = dir.path() + "/in.csv.gz";
    const std::string text = make_rows(path, 600'000, 75'000, good, bad);
    gzFile gz = ::gzopen(path.c_str(), "wb1");
    REQUIRE(gz != nullptr);
    REQUIRE(::gzwrite(gz, text.data(), static_cast<unsigned>(text.size())) == static_cast<int>(text.size()));
    REQUIRE(::gzclose(gz) == Z_OK);
    const pt::shared_flag flag;
    std::atomic<int>* killed = flag.get();

    pf::stages::csv_options o;
    o.reject_file = dir.path() + "/rejects.csv";
    // The map (one replica) kills the source process, its only sibling, once it has a row past
    // the second bad one: the source is then still reading (its ring holds far fewer rows than
    // the file), and has set two rows aside.
    const auto r = pf::pipeline("gz reader restart", pf::skip)
                       .source("rows", pf::stages::csv_rows(path, o), pf::restart(1))
                       .map("k",
                            [killed](const pf::stages::csv_row& row) {
                              std::string k = row.get<std::string>("k");
                              if (k == fmt::format("{:07}", 75'001) && killed->exchange(1) == 0) {
                                const std::vector<pid_t> source = siblings();
                                if (source.size() != 1) throw std::runtime_error(fmt::format("{} siblings", source.size()));
                                ::kill(source[0], SIGKILL);
                              }
                              return k;
                            })
                       .collect()
                       .run();
    CHECK(killed->load() == 1);
    check_set_aside_once(r, "rows", o.reject_file, good, bad);
    CHECK(pt::count_children() == 0);
    CHECK(pt::dev_shm_entries() == shm_before);
  });
}
