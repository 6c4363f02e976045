// Proves a consumer project can build and run an MPI job against procflow::mpi (the component
// installed beside the core package): every rank gets the reduce's value.
#include <procflow/mpi.hpp>
#include <procflow/procflow.hpp>

#include <cstdint>
#include <cstdio>
#include <functional>

int main(int argc, char** argv) {
  namespace pf = procflow;
  pf::mpi::environment mpi(argc, argv);
  const auto job = pf::pipeline("consumer_mpi")
                       .source("n", pf::iota<std::int64_t>(0, 100'000))
                       .map("double", [](std::int64_t x) { return 2 * x; })
                       .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{});
  const auto r = pf::mpi::run(job);
  std::printf("rank %d: sum=%lld\n", r.rank, static_cast<long long>(r.value));
  return r.value == std::int64_t{99'999} * 100'000 ? 0 : 1;
}
