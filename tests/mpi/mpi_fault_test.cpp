// procflow::mpi failures: a replica that dies (SIGKILL) or throws on one rank ends the job on
// every rank with the same stage_error naming the rank, the stage and the cause; afterwards the
// ranks run the next job normally (no message of the failed job is left over). ctest's TIMEOUT
// catches a rank that hangs.
#include "mpi/mpi_main.hpp"

#include <procflow/procflow.hpp>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>

namespace pf = procflow;

namespace {

// A pipeline whose "boom" stage misbehaves on rank `bad` only; elsewhere it is slow (1 ms per
// item), so that rank `bad` surely claims chunks before the others finish them.
template <class Misbehave>
auto job_failing_on(int bad, Misbehave misbehave) {
  return pf::pipeline("faulty")
      .source("n", pf::iota<std::int64_t>(0, 4000))
      .map("boom", [bad, misbehave](std::int64_t x) {
        if (pf::mpi::rank() == bad) misbehave(x);
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        return x;
      })
      .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{});
}

std::int64_t healthy_run() {
  auto job = pf::pipeline("after")
                 .source("n", pf::iota<std::int64_t>(0, 100'000))
                 .map("id", [](std::int64_t x) { return x; })
                 .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{});
  return pf::mpi::run(job).value;
}

}  // namespace

TEST_CASE("a replica killed on the last rank ends the job on every rank with a stage_error naming rank, stage and signal") {
  const int last = world_size() - 1;
  const auto t0 = std::chrono::steady_clock::now();
  bool thrown = false;
  try {
    pf::mpi::run(job_failing_on(world_size() - 1, [](std::int64_t) { ::raise(SIGKILL); }));
  } catch (const pf::stage_error& e) {
    thrown = true;
    CHECK(e.stage() == "boom");
    CHECK(e.kind() == pf::stage_error::cause::signal);
    CHECK(e.signal_number() == SIGKILL);
    CHECK(e.message().find("on MPI rank " + std::to_string(last) + " of " + std::to_string(world_size())) != std::string::npos);
    CHECK(std::string(e.what()).find("boom") != std::string::npos);
  }
  CHECK(thrown);
  MESSAGE("every rank stopped after " << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s");
  CHECK(healthy_run() == std::int64_t{100'000} * 99'999 / 2);
}

TEST_CASE("an exception in a stage on rank 0: the same stage_error (type, message, item) on every rank") {
  bool thrown = false;
  try {
    // Rank 0 decides the outcome; here every other rank must be told to stop its own run.
    pf::mpi::run(job_failing_on(0, [](std::int64_t x) { throw std::runtime_error("bad item " + std::to_string(x)); }));
  } catch (const pf::stage_error& e) {
    thrown = true;
    CHECK(e.stage() == "boom");
    CHECK(e.kind() == pf::stage_error::cause::exception);
    CHECK(e.exception_type() == "std::runtime_error");
    CHECK(e.message().find("bad item ") != std::string::npos);
    CHECK(e.message().find("on MPI rank 0 of " + std::to_string(world_size())) != std::string::npos);
    CHECK(e.has_item());
  }
  CHECK(thrown);
  CHECK(healthy_run() == std::int64_t{100'000} * 99'999 / 2);
}

TEST_CASE("under pf::restart, a failure on the last rank after its restarts keeps its restart history on every rank") {
  const int last = world_size() - 1;
  bool thrown = false;
  try {
    // Every replica on the last rank dies at its first item: restart(2) replaces it twice, the
    // third death ends the job. The history travels from that rank to every other in its status.
    auto job = pf::pipeline("faulty", pf::restart(2))
                   .source("n", pf::iota<std::int64_t>(0, 4000))
                   .map("boom", [last](std::int64_t x) {
                     if (pf::mpi::rank() == last) ::raise(SIGKILL);
                     std::this_thread::sleep_for(std::chrono::milliseconds(1));
                     return x;
                   })
                   .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{});
    pf::mpi::run(job);
  } catch (const pf::stage_error& e) {
    thrown = true;
    CHECK(e.stage() == "boom");
    CHECK(e.signal_number() == SIGKILL);
    CHECK(e.message().find("on MPI rank " + std::to_string(last)) != std::string::npos);
    CAPTURE(e.history());
    CHECK(e.history().find("stage 'boom' replica") != std::string::npos);
    CHECK(std::string(e.what()).find("under pf::restart") != std::string::npos);
  }
  CHECK(thrown);
  CHECK(healthy_run() == std::int64_t{100'000} * 99'999 / 2);
}

TEST_CASE("no replica outlives a failed job") {
  try {
    pf::mpi::run(job_failing_on(world_size() - 1, [](std::int64_t) { ::raise(SIGKILL); }));
  } catch (const pf::stage_error&) {
  }
  // Every child of this rank was reaped: /proc lists none with this process as parent.
  const std::string self = std::to_string(::getpid());
  int children = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string line;
    std::getline(stat, line);
    const auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    std::string state;
    std::string ppid;
    rest >> state >> ppid;
    if (ppid == self) ++children;
  }
  CHECK(children == 0);
}
