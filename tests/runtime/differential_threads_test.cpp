// Checks thread mode (run(pf::in_threads), issue 10) by the same differential property test as
// differential_core_test: random pipelines over int64, string and vector<int> items, every stage
// kind and terminal, ordered and not, fused and not, with injected faults, run in threads of one
// process on oneTBB and compared with the sequential loop (and so with process mode, which
// differential_core_test compares with the same loop).
#include "runtime/differential_support.hpp"

using namespace difftest;

namespace {

void run_seed(std::uint64_t seed) {
  Features features;
  features.in_threads = true;
  run_builtin_seed(seed, features);
}

}  // namespace

TEST_CASE("random pipelines in threads agree with the same chain run as a sequential loop") {
  // The core test's fixed seeds (so each pipeline shape is checked in both modes) plus rotating ones.
  run_seeds(seeds_for("differential_threads", 0x5eed0000, 300, 100), run_seed);
}
