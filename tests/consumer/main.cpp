// Proves a consumer project can build and run a pipeline against procflow::procflow and
// procflow::stages (a compiled library since the readers: its link dependencies must resolve).
#include <procflow/procflow.hpp>
#include <procflow/stages/lines.hpp>

#include <cstdio>
#include <functional>
#include <string>
#include <unistd.h>

int main() {
  namespace pf = procflow;
  const auto r = pf::pipeline("consumer")
                     .source("n", pf::iota(0, 1000))
                     .map("double", [](int x) { return 2 * x; }, pf::replicas(2))
                     .reduce("sum", 0, std::plus<>{}, std::plus<>{})
                     .run();
  std::printf("sum=%d\n", r.value);

  const std::string path = "/tmp/procflow_consumer_" + std::to_string(::getpid()) + ".txt";
  if (std::FILE* f = std::fopen(path.c_str(), "w")) {
    std::fputs("one\ntwo\nthree\n", f);
    std::fclose(f);
  }
  const auto lines = pf::pipeline("consumer_lines")
                         .source("read", pf::stages::lines(path))
                         .map("length", [](const std::string& s) { return s.size(); }, pf::replicas(2))
                         .reduce("total", std::size_t{0}, std::plus<>{}, std::plus<>{})
                         .run();
  std::remove(path.c_str());
  std::printf("line bytes=%zu\n", lines.value);
  return r.value == 999000 && lines.value == 11 ? 0 : 1;
}
