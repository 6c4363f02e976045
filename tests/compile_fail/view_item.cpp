// std::string_view, std::optional<const char*> and std::span items point into the producing
// process: refused with a message naming the remedy (send std::string / std::vector).
#include <procflow/procflow.hpp>

#include <optional>
#include <span>
#include <string_view>

namespace pf = procflow;

void view_item() {
  auto numbers = pf::pipeline("p").source("n", pf::iota(0, 10));
#ifdef PROCFLOW_COMPILE_FAIL
#if PROCFLOW_COMPILE_FAIL == 1
  (void)numbers.map("view", [](int) { return std::string_view("x"); });
#elif PROCFLOW_COMPILE_FAIL == 2
  (void)numbers.map("maybe", [](int) { return std::optional<const char*>("x"); });
#else
  static const int data[2] = {1, 2};
  (void)numbers.map("span", [](int) { return std::span<const int>(data); });
#endif
#else
  (void)numbers.map("owned", [](int) { return std::string("x"); });
#endif
}
