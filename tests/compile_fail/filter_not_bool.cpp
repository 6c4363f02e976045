// A filter whose predicate does not return something testable as bool.
#include <procflow/procflow.hpp>

#include <string>

namespace pf = procflow;

void filter_not_bool() {
  auto numbers = pf::pipeline("p").source("n", pf::iota(0, 10));
#ifdef PROCFLOW_COMPILE_FAIL
  (void)numbers.filter("name", [](int x) { return std::to_string(x); });
#else
  (void)numbers.filter("even", [](int x) { return x % 2 == 0; });
#endif
}
