// Checks SPEC §1 (the typed builder: map / filter / flat_map, the terminals collect, reduce,
// reduce_by_key and sink, pf::ordered, dispatch, built-in codecs for int64, std::string and
// std::vector) and §2 (process groups, fusion, replicas, rings, dispatch) by a differential
// property test over int64, string (empty ones included) and vector<int> items, with items larger
// than a slot, structured keys, heavy-tailed fan-out, delayed generators, replicas above the core
// count and injected faults. See differential_support.hpp for what one seed builds.
//
// The ctest entry differential_stress (label stress) runs the same executable with
// PROCFLOW_DIFF_STRESS=1: PROCFLOW_STRESS_RUNS rotating seeds (default 1000) instead.
#include "runtime/differential_support.hpp"

using namespace difftest;

namespace {

void run_seed(std::uint64_t seed) { run_builtin_seed(seed, Features{}); }

}  // namespace

TEST_CASE("random pipelines agree with the same chain run as a sequential loop" * doctest::skip(std::getenv("PROCFLOW_DIFF_STRESS") != nullptr)) {
  run_seeds(seeds_for("differential_core", 0x5eed0000, 500, 100), run_seed);
}

TEST_CASE("stress: rotating random pipelines agree with the sequential loop" * doctest::skip(std::getenv("PROCFLOW_DIFF_STRESS") == nullptr)) {
  run_seeds(seeds_for("differential_core stress", 0x5eed0000, 0, env_number("PROCFLOW_STRESS_RUNS", 1000)), run_seed);
}
