// Checks thread mode (run(pf::in_threads), issue 10) by the same differential property test as
// differential_core_test: random pipelines over int64, string and vector<int> items, every stage
// kind and terminal, ordered and not, fused and not, with injected faults, run in threads of one
// process on oneTBB and compared with the sequential loop (and so with process mode, which
// differential_core_test compares with the same loop).
#include "runtime/differential_support.hpp"

namespace {

using namespace difftest;

using CaseFn = void (*)(Rng&, std::uint64_t, const Features&);
constexpr CaseFn case_table[3][3] = {
    {&run_case<i64, i64>, &run_case<i64, std::string>, &run_case<i64, vec>},
    {&run_case<std::string, i64>, &run_case<std::string, std::string>, &run_case<std::string, vec>},
    {&run_case<vec, i64>, &run_case<vec, std::string>, &run_case<vec, vec>},
};

void run_seed(std::uint64_t seed) {
  Rng rng(seed);
  const auto s = std::uniform_int_distribution<std::size_t>(0, 2)(rng);
  const auto t = chance(rng, 0.5) ? s : std::uniform_int_distribution<std::size_t>(0, 2)(rng);
  Features features;
  features.in_threads = true;
  case_table[s][t](rng, seed, features);
}

}  // namespace

TEST_CASE("random pipelines in threads agree with the same chain run as a sequential loop") {
  // The core test's fixed seeds (so each pipeline shape is checked in both modes) plus rotating ones.
  run_seeds(seeds_for("differential_threads", 0x5eed0000, 300, 100), run_seed);
}
