// PROCFLOW_CODEC on a struct with a pointer field: refused where the macro is, naming the remedy.
#include <procflow/procflow.hpp>

namespace compile_fail {
#ifdef PROCFLOW_COMPILE_FAIL
struct Label {
  const char* text;
  int size;
};
#else
struct Label {
  std::string text;
  int size;
};
#endif
PROCFLOW_CODEC(Label, text, size);
}  // namespace compile_fail

void pointer_field_record() {
  (void)procflow::encode_to_bytes(compile_fail::Label{});
}
