// A map whose function takes std::string after a source of int: a readable compile error.
#include <procflow/procflow.hpp>

#include <string>

namespace pf = procflow;

void mismatched_stage() {
  auto numbers = pf::pipeline("p").source("n", pf::iota(0, 10));
#ifdef PROCFLOW_COMPILE_FAIL
  (void)numbers.map("length", [](const std::string& s) { return s.size(); });
#else
  (void)numbers.map("length", [](int x) { return std::to_string(x).size(); });
#endif
}
