// Checks issue 17's caller-fed source by the differential property test: the random pipelines of
// differential_core_test whose source and terminal item types agree, with the source replaced by
// pf::input<T>() that the test feeds through start() / push() / wait() (every stage kind and
// terminal, ordered and not, fused and not, injected faults included), compared with the sequential
// loop. Pipelines converting their item type keep their own source.
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
  features.caller_source = true;
  case_table[s][t](rng, seed, features);
}

}  // namespace

TEST_CASE("random pipelines fed by the caller agree with the same chain run as a sequential loop") {
  // The core test's first fixed seeds (the same pipeline shapes with a caller-fed source) plus rotating ones.
  run_seeds(seeds_for("differential_caller", 0x5eed0000, 150, 50), run_seed);
}
