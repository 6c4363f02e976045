// A sink callable with commit() (the file writers) writes, with all its copies, one output that the
// calling process commits on the declared callable. Made by a per_replica factory, each replica's
// callable would be its own and nothing the caller holds could commit them: refused at compile time.
#include <procflow/procflow.hpp>

namespace pf = procflow;

namespace {
struct committing {
  void operator()(int) {}
  void commit() {}
  void rollback() noexcept {}
};
}  // namespace

void committing_sink_factory() {
#ifdef PROCFLOW_COMPILE_FAIL
  (void)pf::pipeline("p").source("n", pf::iota(0, 10)).sink("write", pf::per_replica([] { return committing{}; }), pf::replicas(2));
#else
  (void)pf::pipeline("p").source("n", pf::iota(0, 10)).sink("write", committing{}, pf::replicas(2));
#endif
}
