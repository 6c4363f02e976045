// pf::fn<&f>: a function given as a constant, for a stage as fast as one given a lambda.
//
//   .map("square", pf::fn<&square>)     // inlined into the stage's batch loop
//   .map("square", &square)             // works, but one indirect call per item
//
// A stage stores its callable by value. Given `&square`, that value is a function pointer: the
// stage's loop calls through it item by item and the compiler cannot inline `square` there,
// because which function the pointer holds is only known at run time (the stage object is built
// once and copied into every replica). A lambda, or pf::fn<&square>, has a type of its own that
// names the function, so the call is resolved at compile time and inlined like any other code.
// pipeline_bench's `procflow_function_pointer` and `procflow_fn_constant` rows measure the two.
#pragma once

#include <functional>
#include <type_traits>
#include <utility>

namespace procflow {

template <auto F>
struct fn_t {
  static_assert(std::is_pointer_v<decltype(F)> || std::is_member_pointer_v<decltype(F)>,
                "procflow: fn<F>: F is a function (or member) pointer constant, e.g. pf::fn<&square>");
  template <class... Args>
  constexpr decltype(auto) operator()(Args&&... args) const noexcept(std::is_nothrow_invocable_v<decltype(F), Args...>) {
    return std::invoke(F, std::forward<Args>(args)...);
  }
};

// The function F as a stateless callable (see above).
template <auto F>
inline constexpr fn_t<F> fn{};

}  // namespace procflow
