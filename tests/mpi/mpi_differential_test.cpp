// Issue 11's differential property test across ranks: the random pipelines of the core
// differential test (tests/runtime/differential_support.hpp: sources split across ranks or a
// generator feeding the other ranks over the stage boundary, chains of map/filter/flat_map with
// random replicas, batch sizes, fusion and ordering, collect / reduce / reduce_by_key terminals,
// one seed in ten with an injected fault) run through pf::mpi::run on every rank and must give
// the answer of the same chain run as a sequential loop, with the same per-stage item counts.
//
// Rank 0 holds collect's and reduce_by_key's value and the merged report, so rank 0's checks are
// the test; the other ranks take part in every run (pf::mpi::run is collective) and their checks,
// made against their empty values, are not counted. Fixed seeds only (every rank must build the
// same pipelines); PROCFLOW_SEED=<seed> replays one, PROCFLOW_DIFF_RUNS=<n> sets how many.
#define PROCFLOW_DIFFTEST_MPI 1
#include "runtime/differential_support.hpp"

#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <fstream>

using namespace difftest;

TEST_CASE("random pipelines across MPI ranks agree with the same chain run as a sequential loop") {
  Features features;
  features.on_ranks = true;
  features.replacements = false;  // a killed-once process is per machine: each rank would kill one
  run_seeds_here(seeds_for("mpi_differential", 0x3a1d0000, 40, 0), [&](std::uint64_t seed) { run_builtin_seed(seed, features); });
}

int main(int argc, char** argv) {
  procflow::mpi::environment mpi(argc, argv);
  doctest::Context context(argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::ofstream discard;
  if (rank != 0) {
    discard.open("/dev/null");
    context.setCout(&discard);
  }
  const int result = context.run();
  return rank == 0 ? result : 0;
}
