// An enum without a fixed underlying type is refused as an item and as a PROCFLOW_CODEC field:
// a value outside its enumerators' range is undefined behaviour once loaded, so it cannot be
// decoded from another process's bytes. The remedy the message names compiles (control).
#include <procflow/procflow.hpp>

namespace pf = procflow;

#ifdef PROCFLOW_COMPILE_FAIL
enum Shade { light, dark };
#else
enum Shade : int { light, dark };
#endif

struct Pixel {
  int x = 0;
  Shade shade = light;
};
PROCFLOW_CODEC(Pixel, x, shade);

void unfixed_enum() {
  auto numbers = pf::pipeline("p").source("n", pf::iota(0, 10));
  (void)numbers.map("shade", [](int i) { return i % 2 ? dark : light; });
}
