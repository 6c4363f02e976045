// pf::pre_aggregate tunes one reduce_by_key. Given to the pipeline it would land in the stage
// defaults, and given to any other stage it would be kept, and in both places nothing reads it:
// refused at compile time with a message naming the option and where it belongs.
#include <procflow/procflow.hpp>

#include <cstdint>

namespace pf = procflow;

void misplaced_pre_aggregate() {
  auto count = [](std::int64_t n, int) { return n + 1; };
  auto add = [](std::int64_t a, std::int64_t b) { return a + b; };
  auto key = [](int x) { return x % 7; };
#ifdef PROCFLOW_COMPILE_FAIL
#if PROCFLOW_COMPILE_FAIL == 1
  (void)pf::pipeline("p", pf::pre_aggregate::off())
      .source("n", pf::iota(0, 10))
      .reduce_by_key("count", key, std::int64_t{0}, count, add);
#elif PROCFLOW_COMPILE_FAIL == 2
  (void)pf::pipeline("p")
      .source("n", pf::iota(0, 10))
      .map(
          "twice", [](int x) { return 2 * x; }, pf::pre_aggregate::always())
      .reduce_by_key("count", key, std::int64_t{0}, count, add);
#else
  (void)pf::pipeline("p")
      .source("n", pf::iota(0, 10))
      .reduce("sum", std::int64_t{0}, count, add, pf::pre_aggregate::off());
#endif
#else
  (void)pf::pipeline("p")
      .source("n", pf::iota(0, 10))
      .map(
          "twice", [](int x) { return 2 * x; }, pf::replicas(2))
      .reduce_by_key("count", key, std::int64_t{0}, count, add, pf::pre_aggregate::off());
#endif
}
