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

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <memory>
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

// A source type of your own (the readers of procflow::stages are written this way): a class with
//   using item_type = T;
//   bool splittable() const;                 // decided when the source is declared
//   std::uint64_t size() const;              // splittable: units of work (items, byte blocks, ...)
//   std::uint64_t preferred_chunk() const;   // units per claim (0: the runtime decides)
//   bool units_are_items() const;            // unit i is item i (error positions are source positions)
//   std::size_t fill(std::uint64_t first, std::uint64_t last, detail::batch_buffer<T>& out) const;
//                                            // splittable: the items of units [first, last)
//   std::optional<T> next();                 // not splittable: pulled in the source's own process
//   void begin_run() const;                  // optional: called once per run in the calling process
//                                            // (on each MPI rank) before any replica starts (const:
//                                            // runs of one declaration may start from several threads)
template <class S>
concept custom_source = requires(S& s, const S& cs, detail::batch_buffer<typename S::item_type>& out) {
  typename S::item_type;
  { cs.splittable() } -> std::convertible_to<bool>;
  { cs.size() } -> std::convertible_to<std::uint64_t>;
  { cs.preferred_chunk() } -> std::convertible_to<std::uint64_t>;
  { cs.units_are_items() } -> std::convertible_to<bool>;
  { cs.fill(std::uint64_t{}, std::uint64_t{}, out) } -> std::convertible_to<std::size_t>;
  { s.next() };
};

namespace detail {

template <class T>
struct source_item;
template <custom_source S>
struct source_item<S> {
  using type = typename S::item_type;
};
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
    if constexpr (is_custom) {
      if (src_.splittable()) {
        produce_units(out, 0, src_.size());  // not fused (e.g. fusion(false)): every unit in order
      } else {
        while (auto item = src_.next()) encode_item(*item, out);
      }
    } else if constexpr (splittable_v) {
      produce_units(out, 0, size());
    } else {
      // Runs in the source's own process (a forked copy of this object), so advancing the
      // generator in place touches no other process's state.
      // While the generator runs (it may sleep: a tailed log, a socket), the flusher beside
      // this process may publish the items written so far (latency bound, see output_port).
      auto& next = src_.next;
      const user_code_gate gate(out);
      const auto call = [&] {
        user_code_scope user(gate);
        return next();
      };
      // Asked per item: a restarted generator's replay publishes item by item until it has
      // dropped what its dead predecessor sent (then back to the latency bound's setting).
      while (auto item = call()) {
        encode_item(*item, out);
        if (out.publish_each_item()) out.flush();
      }
    }
  }

  // Thread mode pulls from a copy, so that the declaration's generator stays as declared (a
  // second run starts from the beginning, as in process mode where the source is a forked copy).
  std::shared_ptr<const source_base> fresh_copy() const override {
    if constexpr (std::is_copy_constructible_v<Src>) {
      return std::make_shared<source_stage>(*this);
    } else {
      return nullptr;
    }
  }

  std::size_t pull(void* vector, std::size_t max, std::int64_t deadline_ns) const override {
    auto& out = *static_cast<batch_buffer<item_type>*>(vector);
    out.clear();
    if constexpr (is_custom || !splittable_v) {
      // A custom source's next() or a generator's callable: both spelled src_.next(). The clock
      // is the coarse one (an atomic load): read after every item, since a generator may turn
      // slow at any moment (a tailed log going quiet).
      while (!pulled_all_ && out.size() < max) {
        auto item = src_.next();
        if (!item) {
          pulled_all_ = true;  // never call a finished generator again
          break;
        }
        out.push_back(std::move(*item));
        if (coarse_clock_ns() >= deadline_ns) break;
      }
      return out.size();
    } else {
      // Splittable but read in order by one puller (fusion(false)): the next `max` items.
      const std::uint64_t n = size();
      const std::uint64_t len = std::min<std::uint64_t>(max, n - pulled_);
      if (len > 0) fill(pulled_, pulled_ + len, vector);
      pulled_ += len;
      return static_cast<std::size_t>(len);
    }
  }

  std::size_t decode_batch(const batch_view& batch, void* vector) const override {
    return decode_items(batch, *static_cast<batch_buffer<item_type>*>(vector));
  }
  void produce_batches(output_port& out, const std::function<bool(batch_view&)>& next) const override {
    batch_buffer<item_type> items;
    for (batch_view batch; next(batch);) {
      decode_items(batch, items);  // replaces the buffer's items (reusing their memory)
      encode_items(items, out);
    }
  }
  void produce_units(output_port& out, std::uint64_t first, std::uint64_t last) const override {
    if constexpr (is_custom || splittable_v) {
      if (!splittable()) throw std::logic_error("procflow: this source cannot produce a range of its units");
      batch_buffer<item_type> chunk;
      std::uint64_t step = 4096;
      if constexpr (is_custom) step = std::max<std::uint64_t>(1, src_.preferred_chunk());
      // Advances by what is left, never past `last`: `i + step` would wrap near 2^64.
      for (std::uint64_t i = first; i < last;) {
        const std::uint64_t len = std::min(step, last - i);
        fill_items(i, i + len, &chunk);
        encode_items(chunk, out);
        i += len;
      }
    } else {
      source_base::produce_units(out, first, last);  // a generator: refused
    }
  }

  bool splittable() const noexcept override {
    if constexpr (is_custom) {
      return src_.splittable();
    } else {
      return splittable_v;
    }
  }
  void begin_run() const override {
    if constexpr (requires { src_.begin_run(); }) src_.begin_run();
  }
  std::uint64_t preferred_chunk_units() const noexcept override {
    if constexpr (is_custom) {
      return src_.preferred_chunk();
    } else {
      return 0;
    }
  }
  bool units_are_items() const noexcept override {
    if constexpr (is_custom) {
      return src_.units_are_items();
    } else {
      return true;
    }
  }
  std::size_t fill_items(std::uint64_t first, std::uint64_t last, void* vector) const override {
    if constexpr (is_custom) {
      return src_.fill(first, last, *static_cast<batch_buffer<item_type>*>(vector));
    } else {
      fill(first, last, vector);
      return static_cast<std::size_t>(last - first);
    }
  }
  // An arithmetic iota's items are computed by a first map that can (the source fill fused into
  // its loop); otherwise filled.
  std::size_t fill_into(std::uint64_t first, std::uint64_t last, stage_instance& stage) const override {
    if constexpr (is_iota && std::is_arithmetic_v<item_type>) {
      const auto base = static_cast<item_type>(static_cast<std::uint64_t>(src_.first) + first);
      const auto n = static_cast<std::size_t>(last - first);
      if (stage.take_index_range(typeid(item_type), &base, n)) return n;
    }
    return fill_items(first, last, stage.input_buffer());
  }
  std::uint64_t size() const noexcept override {
    if constexpr (is_custom) {
      return src_.size();
    } else if constexpr (is_iota) {
      return static_cast<std::uint64_t>(src_.last) - static_cast<std::uint64_t>(src_.first);
    } else if constexpr (splittable_v) {
      return src_.items.size();
    } else {
      return 0;
    }
  }
  void fill(std::uint64_t first, std::uint64_t last, void* vector) const override {
    auto& out = *static_cast<batch_buffer<item_type>*>(vector);
    if constexpr (is_custom) {
      src_.fill(first, last, out);
    } else if constexpr (is_iota) {
      out.resize(static_cast<std::size_t>(last - first));
      const auto base = static_cast<item_type>(static_cast<std::uint64_t>(src_.first) + first);
      for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<item_type>(base + static_cast<item_type>(i));
    } else if constexpr (splittable_v) {
      out.assign(src_.items.begin() + static_cast<std::ptrdiff_t>(first), src_.items.begin() + static_cast<std::ptrdiff_t>(last));
    }
  }

 private:
  static constexpr bool is_custom = custom_source<Src>;
  static constexpr bool is_iota = !is_custom && requires(const Src& s) { s.first; s.last; };
  static constexpr bool splittable_v = is_iota || (!is_custom && requires(const Src& s) { s.items; });
  mutable Src src_;  // mutable: a generator advances (only ever in the source's own process,
                    // or, in thread mode, in the one serial filter that pulls it)
  mutable bool pulled_all_ = false;  // thread mode: the generator returned nullopt
  mutable std::uint64_t pulled_ = 0;  // thread mode: items pulled from a splittable source
};

}  // namespace detail
}  // namespace procflow
