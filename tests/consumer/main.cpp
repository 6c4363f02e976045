// Proves a consumer project can build and run a pipeline against procflow::procflow.
#include <procflow/procflow.hpp>
#include <procflow/stages/lines.hpp>  // procflow::stages is installed too

#include <cstdio>
#include <functional>

int main() {
  namespace pf = procflow;
  const auto r = pf::pipeline("consumer")
                     .source("n", pf::iota(0, 1000))
                     .map("double", [](int x) { return 2 * x; }, pf::replicas(2))
                     .reduce("sum", 0, std::plus<>{}, std::plus<>{})
                     .run();
  std::printf("sum=%d\n", r.value);
  return r.value == 999000 ? 0 : 1;
}
