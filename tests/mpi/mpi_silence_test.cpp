// procflow::mpi silence: a rank that is stopped (SIGSTOP on its process: MPI sees nothing wrong)
// is found by its silence. Run as `mpi_silence_test STOPPED` under silence_check.sh: a replica on
// rank STOPPED stops its rank's process early in the run; every other rank must end its run with a
// stage_error (cause lost) naming rank STOPPED within the 2 s silence limit plus margin, a
// second run must be refused, and then the environment aborts the job, so that mpirun ends every
// rank, the stopped one included. Each rank prints what it saw; the script checks the lines, the
// exit and that no process is left.
#include <procflow/mpi.hpp>
#include <procflow/procflow.hpp>

#include <fmt/format.h>

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>

namespace pf = procflow;

int main(int argc, char** argv) {
  pf::mpi::environment mpi(argc, argv);
  const int stopped = argc > 1 ? std::atoi(argv[1]) : 1;
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  // Long enough (~10 s of items on 2 cores) that the run is still going when the limit passes.
  auto job = pf::pipeline("silent")
                 .source("n", pf::iota<std::int64_t>(0, 1'000'000))
                 .map("work", [stopped](std::int64_t x) {
                   static std::atomic<bool> once{false};
                   if (pf::mpi::rank() == stopped && !once.exchange(true)) ::kill(::getppid(), SIGSTOP);
                   std::this_thread::sleep_for(std::chrono::microseconds(20));
                   return x;
                 })
                 .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{});
  pf::mpi::run_options options;
  options.silence_limit = std::chrono::seconds(2);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    pf::mpi::run(job, options);
    std::printf("silence_test: rank %d: WRONG: the run ended without an error\n", rank);
  } catch (const pf::stage_error& e) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const std::string what = e.what();
    const bool named = what.find(fmt::format("on MPI rank {} of", stopped)) != std::string::npos &&
                       what.find("nothing from it") != std::string::npos && e.stage() == "silent";
    const bool right = e.kind() == pf::stage_error::cause::lost && named && s < 30;
    std::printf("silence_test: rank %d: %s after %.1f s: %s\n", rank, right ? "caught" : "WRONG", s, what.c_str());
  }
  try {
    pf::mpi::run(job, options);
    std::printf("silence_test: rank %d: WRONG: a second run was not refused\n", rank);
  } catch (const pf::error& e) {
    std::printf("silence_test: rank %d: second run refused: %s\n", rank, e.what());
  }
  std::fflush(stdout);
  // The first rank to abort has mpirun kill the others: each waits so that every report is out.
  std::this_thread::sleep_for(std::chrono::seconds(3));
  return 0;  // ~environment: MPI_Abort (a rank was lost)
}
