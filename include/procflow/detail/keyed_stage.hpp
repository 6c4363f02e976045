// keyed_input_stage: a map, filter, flat_map or sink declared with pf::key_by(fn). It is the
// stage as declared, except that its producers encode every item to the replica owning
// key(item) (mix_hash(procflow::hash(key)) % replicas), so all items of a key meet one replica.
#pragma once

#include <procflow/detail/forwarding_stage.hpp>
#include <procflow/hash.hpp>
#include <procflow/options.hpp>

#include <functional>
#include <memory>
#include <type_traits>
#include <utility>

namespace procflow::detail {

template <class T, class KeyFn>
class keyed_input_stage final : public forwarding_stage {
 public:
  using key_type = std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>;
  static_assert(hashable_v<key_type>, "procflow: key_by(): the key type needs std::hash (or is a std::pair / std::tuple of such)");

  keyed_input_stage(std::shared_ptr<const stage_base> inner, KeyFn key) : forwarding_stage(std::move(inner)), key_(std::move(key)) {}

  // Everything but the encoding is the inner stage's (forwarding_stage).
  void encode_input(void* vector, output_port& out, bool keyed) const override {
    if (!keyed) return forwarding_stage::encode_input(vector, out, false);
    const auto& items = *static_cast<const batch_buffer<T>*>(vector);
    const std::size_t lanes = out.lane_count();
    for (const T& item : items)
      encode_item(item, out, static_cast<std::size_t>(mix_hash(hash<key_type>{}(std::invoke(key_, item))) % lanes));
  }

 private:
  KeyFn key_;
};

template <class T>
inline constexpr bool is_key_by_v = false;
template <class F>
inline constexpr bool is_key_by_v<key_by_t<F>> = true;

// The stage, wrapped in a keyed_input_stage<T> if one of opts is key_by(fn).
template <class T, class... Opts>
std::shared_ptr<const stage_base> with_key_by(std::shared_ptr<const stage_base> stage, const Opts&... opts) {
  static_assert((std::size_t{0} + ... + std::size_t{is_key_by_v<Opts>}) <= 1, "procflow: key_by() given twice");
  std::shared_ptr<const stage_base> result = std::move(stage);
  [[maybe_unused]] auto wrap = [&](const auto& opt) {
    if constexpr (is_key_by_v<std::decay_t<decltype(opt)>>)
      result = std::make_shared<keyed_input_stage<T, decltype(opt.fn)>>(std::move(result), opt.fn);
  };
  (wrap(opts), ...);
  return result;
}

}  // namespace procflow::detail
