// Sources: where a pipeline's items come from.
//
//   pf::iota(first, last)   the integers [first, last)              splittable
//   pf::from(vector)        the elements of a vector (copied)       splittable
//   pf::generate(fn)        fn() -> std::optional<T> until nullopt  one process, pulled lazily
//
// A splittable source needs no process of its own: the replicas of the first stage claim chunks
// of it directly (dynamic dispatch through a shared counter), so no ring sits between them.
// A generator runs in its own process and blocks when the rings in front of it are full, so it
// never reads ahead more than they hold.
#pragma once

#include <procflow/detail/stage.hpp>

#include <concepts>
#include <optional>
#include <type_traits>
#include <vector>

namespace procflow {

template <std::integral T>
struct iota_source {
  T first;
  T last;
};

template <std::integral T>
iota_source<T> iota(T first, T last) {
  if (last < first) last = first;
  return {first, last};
}

template <class T>
struct vector_source {
  std::vector<T> items;
};

template <class T>
vector_source<T> from(std::vector<T> items) {
  return {std::move(items)};
}

template <class F>
struct generator_source {
  F next;
};

template <class F>
  requires requires(F& f) { { f() }; }
generator_source<F> generate(F next) {
  return {std::move(next)};
}

namespace detail {

template <class T>
struct source_item;
template <class T>
struct source_item<iota_source<T>> {
  using type = T;
};
template <class T>
struct source_item<vector_source<T>> {
  using type = T;
};
template <class F>
struct source_item<generator_source<F>> {
  using result = std::invoke_result_t<F&>;
  static_assert(requires(result r) { { r.has_value() } -> std::convertible_to<bool>; *r; },
                "procflow: a generator source must return std::optional<T> (std::nullopt ends the stream)");
  using type = std::decay_t<decltype(*std::declval<result>())>;
};

template <class Src>
using source_item_t = typename source_item<Src>::type;

template <class Src>
class source_stage final : public stage_base, public source_base {
 public:
  using item_type = source_item_t<Src>;

  source_stage(std::string name, Src src, stage_options options)
      : stage_base(std::move(name), stage_kind::source, options), src_(std::move(src)) {}

  const source_base* source() const noexcept override { return this; }

  void produce(output_port& out) const override {
    if constexpr (splittable_v) {
      batch_buffer<item_type> chunk;
      const std::uint64_t n = size();
      constexpr std::uint64_t step = 4096;
      // Advances by what is left, never past n: `i + step` would wrap for n near 2^64.
      for (std::uint64_t i = 0; i < n;) {
        const std::uint64_t len = std::min(step, n - i);
        fill(i, i + len, &chunk);
        encode_items(chunk, out);
        i += len;
      }
    } else {
      // Runs in the source's own process (a forked copy of this object), so advancing the
      // generator in place touches no other process's state.
      auto& next = src_.next;
      while (auto item = next()) encode_item(*item, out);
    }
  }

  bool splittable() const noexcept override { return splittable_v; }
  std::uint64_t size() const noexcept override {
    if constexpr (is_iota) {
      return static_cast<std::uint64_t>(src_.last) - static_cast<std::uint64_t>(src_.first);
    } else if constexpr (splittable_v) {
      return src_.items.size();
    } else {
      return 0;
    }
  }
  void fill(std::uint64_t first, std::uint64_t last, void* vector) const override {
    auto& out = *static_cast<batch_buffer<item_type>*>(vector);
    if constexpr (is_iota) {
      out.resize(static_cast<std::size_t>(last - first));
      const auto base = static_cast<item_type>(static_cast<std::uint64_t>(src_.first) + first);
      for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<item_type>(base + static_cast<item_type>(i));
    } else if constexpr (splittable_v) {
      out.assign(src_.items.begin() + static_cast<std::ptrdiff_t>(first), src_.items.begin() + static_cast<std::ptrdiff_t>(last));
    }
  }

 private:
  static constexpr bool is_iota = requires(const Src& s) { s.first; s.last; };
  static constexpr bool splittable_v = is_iota || requires(const Src& s) { s.items; };
  mutable Src src_;  // mutable: a generator advances (only ever in the source's own process)
};

}  // namespace detail
}  // namespace procflow
