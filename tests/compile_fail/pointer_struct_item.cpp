// A struct holding a pointer, used as an item without opting in: no codec, and the message says
// how to give it one (PROCFLOW_CODEC) — which would then refuse the pointer field (see
// pointer_field_record.cpp).
#include <procflow/procflow.hpp>

namespace pf = procflow;

namespace compile_fail {
struct Name {
  const char* text;
};
}  // namespace compile_fail

void pointer_struct_item() {
  auto numbers = pf::pipeline("p").source("n", pf::iota(0, 10));
#ifdef PROCFLOW_COMPILE_FAIL
  (void)numbers.map("name", [](int) { return compile_fail::Name{"x"}; });
#else
  (void)numbers.map("name", [](int) { return std::string("x"); });
#endif
}
