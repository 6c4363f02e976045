// The typed stages behind pipeline.hpp's builder: each wraps a user callable in the
// stage_base / stage_instance interfaces of detail/stage.hpp.
#pragma once

#include <procflow/codec.hpp>
#include <procflow/detail/callable.hpp>
#include <procflow/error.hpp>
#include <procflow/detail/flat_table.hpp>
#include <procflow/detail/keyed_partial.hpp>
#include <procflow/detail/prefault.hpp>
#include <procflow/detail/stage.hpp>
#include <procflow/keyed.hpp>
#include <procflow/hash.hpp>

#include <algorithm>
#include <array>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <utility>
#include <vector>

namespace procflow {

// Passed to a flat_map callable of the form (item, emit): emit(value) appends one output item.
// A full batch of outputs is handed on at once (through the following stages and to the next
// process, which may block on back-pressure), so one input may emit any number of items in
// bounded memory.
template <class T>
class emitter {
 public:
  using spill_fn = void (*)(void*);
  explicit emitter(detail::batch_buffer<T>& out, std::size_t limit = ~std::size_t{0}, spill_fn spill = nullptr,
                   void* context = nullptr) noexcept
      : out_(&out), limit_(limit), spill_(spill), context_(context) {}
  // The full-buffer test is push_back's own capacity test (the compiler merges them), so an
  // emit costs what a push_back does; the stage reserves `limit` items up front.
  void operator()(const T& value) {
    if (out_->size() == out_->capacity()) [[unlikely]] full();
    out_->push_back(value);
  }
  void operator()(T&& value) {
    if (out_->size() == out_->capacity()) [[unlikely]] full();
    out_->push_back(std::move(value));
  }

 private:
  void full() {
    if (spill_ && out_->size() >= limit_) spill_(context_);  // otherwise push_back grows it
  }

  detail::batch_buffer<T>* out_;
  std::size_t limit_;  // spill at this many items (never without a spill_)
  spill_fn spill_;
  void* context_;
};

namespace detail {

// Calls a stage function with an item, moving it in when the function accepts an rvalue.
template <class F, class T>
constexpr bool callable_with_item_v = std::is_invocable_v<F&, T&&> || std::is_invocable_v<F&, T&>;

template <class F, class T>
decltype(auto) call_with_item(F& fn, T& item) {
  if constexpr (std::is_invocable_v<F&, T&&>) {
    return std::invoke(fn, std::move(item));
  } else {
    return std::invoke(fn, item);
  }
}

// A stage callable that takes items and is not const-callable holds state (see holds_state_v).
template <class F, class T>
inline constexpr bool item_holds_state_v =
    !is_factory_v<F> && !(const_callable_v<callable_t<F>, T&&> || const_callable_v<callable_t<F>, T&>);

template <class F, class T>
using item_result_t = std::decay_t<decltype(call_with_item(std::declval<F&>(), std::declval<T&>()))>;

// acc = fold(std::move(acc), x), or fold(acc, x) for folds that update in place and return void.
template <class Acc, class Fold, class T>
void fold_into(Acc& acc, Fold& fold, T&& value) {
  if constexpr (std::is_invocable_v<Fold&, Acc&, T&&> && std::is_void_v<std::invoke_result_t<Fold&, Acc&, T&&>>) {
    std::invoke(fold, acc, std::forward<T>(value));
  } else {
    acc = std::invoke(fold, std::move(acc), std::forward<T>(value));
  }
}

template <class Acc, class Fold, class T>
constexpr bool fold_callable_v = std::is_invocable_v<Fold&, Acc&, T&&> || std::is_invocable_r_v<Acc, Fold&, Acc&&, T&&>;

// ------------------------------------------------------------------ common typed bases

// A stage whose input items are In: knows how to encode them for the port in front of it.
template <class In>
class input_stage : public stage_base {
 public:
  using stage_base::stage_base;
  void encode_input(void* vector, output_port& out, bool /*keyed*/) const override {
    encode_items(*static_cast<batch_buffer<In>*>(vector), out);
  }
  std::shared_ptr<void> new_input_buffer() const override { return std::make_shared<batch_buffer<In>>(); }
  std::size_t swap_input_buffers(void* from, void* into) const override {
    auto& to = *static_cast<batch_buffer<In>*>(into);
    std::swap(*static_cast<batch_buffer<In>*>(from), to);
    return to.size();
  }
  std::size_t input_buffer_size(const void* buffer) const override { return static_cast<const batch_buffer<In>*>(buffer)->size(); }
};

template <class In, class Out>
class instance_base : public stage_instance {
 public:
  std::size_t decode(const batch_view& batch) override { return decode_items(batch, in_); }
  void hand_over(stage_instance& next) override { std::swap(out_, *static_cast<batch_buffer<Out>*>(next.input_buffer())); }
  void* input_buffer() noexcept override { return &in_; }
  void* output_buffer() noexcept override { return &out_; }
  std::size_t output_size() const noexcept override { return out_.size(); }
  void clear_output() noexcept override { out_.clear(); }
  kept_item keep_input_item(std::size_t index, std::span<std::byte> room) const noexcept override {
    return index < in_.size() ? keep_item(in_[index], input_survives_failure(), room) : kept_item{};
  }

 protected:
  // Under a policy, whether a failing item is still whole in in_ (see call_keeping_item).
  virtual bool input_survives_failure() const noexcept { return true; }
  batch_buffer<In> in_;
  batch_buffer<Out> out_;
};

// Terminals have no output buffer.
template <class In>
class terminal_instance_base : public stage_instance {
 public:
  std::size_t decode(const batch_view& batch) override { return decode_items(batch, in_); }
  void hand_over(stage_instance&) override {}
  void* input_buffer() noexcept override { return &in_; }
  void* output_buffer() noexcept override { return nullptr; }
  kept_item keep_input_item(std::size_t index, std::span<std::byte> room) const noexcept override {
    return index < in_.size() ? keep_item(in_[index], input_survives_failure(), room) : kept_item{};
  }

 protected:
  // Under a policy, whether a failing item is still whole in in_ (see call_keeping_item).
  virtual bool input_survives_failure() const noexcept { return true; }
  batch_buffer<In> in_;
};

// Runs body(i) for every item index, recording the failing index if user code throws. Under a
// policy (cursor.guard), a failing item is retried or skipped as the guard says; on_skip(i) is
// then called so that the stage can drop what it wrote for item i.
template <class Body, class OnSkip>
void for_each_item(std::size_t n, item_cursor& cursor, Body&& body, OnSkip&& on_skip) {
  std::size_t i = 0;
  if (!cursor.guard) {
    try {
      for (; i < n; ++i) body(i);
    } catch (...) {
      cursor.index = i;
      throw;
    }
    return;
  }
  for (; i < n; ++i) {
    cursor.guard->on_item(i);
    for (std::uint32_t attempt = 0;; ++attempt) {
      try {
        body(i);
        break;
      } catch (...) {
        cursor.index = i;
        const item_verdict v = cursor.guard->on_failure(i, attempt);
        if (v == item_verdict::fail) throw;
        if (v == item_verdict::skip) {
          ++cursor.skipped;
          on_skip(i);
          break;
        }
      }
    }
  }
}

template <class Body>
void for_each_item(std::size_t n, item_cursor& cursor, Body&& body) {
  for_each_item(n, cursor, std::forward<Body>(body), [](std::size_t) {});
}

// A stage defined by one user callable (or a per_replica factory); Instance (which names its
// stage_kind) does the work. Every replica builds its own callable (detail/callable.hpp), so a
// stateful one keeps its state per process.
template <class In, class Instance, class F>
class callable_stage final : public input_stage<In> {
 public:
  callable_stage(std::string name, F fn, stage_options options)
      : input_stage<In>(std::move(name), Instance::kind, options), fn_(std::move(fn)) {}
  // Called once per stage in a replica process: a move-only callable moves out of this process's copy.
  std::unique_ptr<stage_instance> instantiate(bool) const override { return std::make_unique<Instance>(fn_); }
  bool holds_state() const noexcept override { return Instance::holds_state; }

 private:
  mutable F fn_;  // mutable: see instantiate()
};

// ------------------------------------------------------------------ map / filter / flat_map / sink

template <class In, class Out, class F>
class map_instance final : public instance_base<In, Out> {
 public:
  static constexpr stage_kind kind = stage_kind::map;
  static constexpr bool holds_state = item_holds_state_v<F, In>;
  explicit map_instance(F& declared) : fn_(declared) {}
  void end_of_stream() override { fn_.finish(); }
  std::size_t decode(const batch_view& batch) override {
    indexed_ = false;
    return instance_base<In, Out>::decode(batch);
  }
  void* input_buffer() noexcept override {
    indexed_ = false;  // whoever writes the input buffer replaces a taken index range
    return instance_base<In, Out>::input_buffer();
  }
  // An arithmetic iota's chunk: items first + i, computed in apply()'s loop (no filled buffer).
  bool take_index_range(const std::type_info& item, const void* first, std::size_t n) noexcept override {
    if constexpr (std::is_arithmetic_v<In>) {
      if (item != typeid(In)) return false;
      index_first_ = *static_cast<const In*>(first);
      index_n_ = n;
      indexed_ = true;
      return true;
    } else {
      return false;
    }
  }
  std::size_t apply(item_cursor& cursor) override {
    if constexpr (std::is_arithmetic_v<In>) {
      if (indexed_) {
        indexed_ = false;
        const In first = index_first_;
        // The same item as the source's fill (sources.hpp, iota), made where it is used.
        const auto item = [first](std::size_t i) { return static_cast<In>(first + static_cast<In>(i)); };
        if (!cursor.guard) return map_computed(index_n_, cursor, item);
        // Under an error policy (or a redelivered batch's tracking) the items are made in the input
        // buffer first: a retry, a skip's dead letter (keep_input_item) and the item numbers then
        // come from the very path an unfused fill takes, item for item.
        auto& in = this->in_;
        in.resize(index_n_);
        for (std::size_t i = 0; i < index_n_; ++i) in[i] = item(i);
      }
    }
    auto& in = this->in_;
    auto& out = this->out_;
    if constexpr (std::is_trivially_copyable_v<Out> && std::is_default_constructible_v<Out>) {
      // Plain stores into a sized buffer: no capacity check per item, so simple maps vectorize.
      out.resize(in.size());
      Out* dst = out.data();
      if (!cursor.guard) {
        for_each_item(in.size(), cursor, [&](std::size_t i) { dst[i] = call_with_item(*fn_, in[i]); });
      } else {
        std::size_t kept = 0;  // under a policy: compact past skipped items
        for_each_item(in.size(), cursor, [&](std::size_t i) {
          dst[kept] = call_keeping_item(*fn_, in[i]);
          ++kept;
        });
        out.resize(kept);
      }
    } else {
      out.clear();
      out.reserve(in.size());
      if (!cursor.guard) {
        for_each_item(in.size(), cursor, [&](std::size_t i) { out.push_back(call_with_item(*fn_, in[i])); });
      } else {
        for_each_item(in.size(), cursor, [&](std::size_t i) { out.push_back(call_keeping_item(*fn_, in[i])); });
      }
    }
    return out.size();
  }

 private:
  // The fused fill without a policy guard: maps the computed items item(0..n) (the plain loop, a
  // failing item's index in cursor.index) with no input buffer.
  template <class Item>
  std::size_t map_computed(std::size_t n, item_cursor& cursor, const Item& item) {
    auto& out = this->out_;
    if constexpr (std::is_trivially_copyable_v<Out> && std::is_default_constructible_v<Out>) {
      out.resize(n);
      Out* dst = out.data();
      for_each_item(n, cursor, [&](std::size_t i) {
        In x = item(i);
        dst[i] = call_with_item(*fn_, x);
      });
    } else {
      out.clear();
      out.reserve(n);
      for_each_item(n, cursor, [&](std::size_t i) {
        In x = item(i);
        out.push_back(call_with_item(*fn_, x));
      });
    }
    return out.size();
  }

  bool input_survives_failure() const noexcept override { return call_keeps_item_v<callable_t<F>, In>; }
  replica_callable<F> fn_;
  // A taken index range (take_index_range), for the next apply().
  std::conditional_t<std::is_arithmetic_v<In>, In, char> index_first_{};
  std::size_t index_n_ = 0;
  bool indexed_ = false;
};

template <class T, class F>
class filter_instance final : public instance_base<T, T> {
 public:
  static constexpr stage_kind kind = stage_kind::filter;
  static constexpr bool holds_state = !is_factory_v<F> && !const_callable_v<callable_t<F>, const T&>;
  explicit filter_instance(F& declared) : pred_(declared) {}
  void end_of_stream() override { pred_.finish(); }
  std::size_t apply(item_cursor& cursor) override {
    auto& in = this->in_;
    auto& out = this->out_;
    if constexpr (std::is_trivially_copyable_v<T> && std::is_default_constructible_v<T>) {
      // Branch-free compaction: copy every item, advance only past the kept ones.
      out.resize(in.size());
      T* dst = out.data();
      std::size_t kept = 0;
      for_each_item(in.size(), cursor, [&](std::size_t i) {
        dst[kept] = in[i];
        kept += std::invoke(*pred_, std::as_const(in[i])) ? std::size_t{1} : std::size_t{0};
      });
      out.resize(kept);
    } else if constexpr (std::is_default_constructible_v<T> && std::is_swappable_v<T>) {
      // A kept item trades places with an element of out left from an earlier batch instead of
      // being moved out: the input buffer keeps strings/vectors with their capacity, so the
      // source's next fill (lines(), records()) assigns into them without allocating.
      std::size_t kept = 0;
      try {
        for_each_item(in.size(), cursor, [&](std::size_t i) {
          if (!std::invoke(*pred_, std::as_const(in[i]))) return;
          if (kept == out.size()) {
            // No spare element to trade: move it out. (Not a swap with a new element: out's
            // allocator default-initializes, and swapping would read a fresh element's
            // indeterminate members, e.g. a bool: UBSan, seen in thread_mode_test.)
            out.push_back(std::move(in[i]));
          } else {
            using std::swap;
            swap(out[kept], in[i]);
          }
          ++kept;
        });
      } catch (...) {
        out.erase(out.begin() + static_cast<std::ptrdiff_t>(kept), out.end());
        throw;
      }
      out.erase(out.begin() + static_cast<std::ptrdiff_t>(kept), out.end());
    } else {
      out.clear();
      for_each_item(in.size(), cursor, [&](std::size_t i) {
        if (std::invoke(*pred_, std::as_const(in[i]))) out.push_back(std::move(in[i]));
      });
    }
    return out.size();
  }

 private:
  replica_callable<F> pred_;
};

template <class In, class Out, class F>
class flat_map_instance final : public instance_base<In, Out> {
 public:
  static constexpr stage_kind kind = stage_kind::flat_map;
  static constexpr bool holds_state =
      !is_factory_v<F> && !const_callable_v<callable_t<F>, const In&, emitter<Out>&> && item_holds_state_v<F, In>;
  explicit flat_map_instance(F& declared) : fn_(declared) {}
  void end_of_stream() override { fn_.finish(); }
  std::size_t apply(item_cursor& cursor) override {
    auto& in = this->in_;
    auto& out = this->out_;
    out.clear();
    const std::size_t limit = this->downstream_ ? spill_items_v<Out> : ~std::size_t{0};
    if (this->downstream_) out.reserve(limit);
    emitter<Out> emit(out, limit, &spill, this);
    std::size_t item_start = 0;  // out.size() when the current item began (a skip drops the rest)
    std::size_t spills_at_start = 0;
    const auto run = [&]<bool keep>(std::bool_constant<keep>) {
      for_each_item(
          in.size(), cursor,
          [&](std::size_t i) {
            item_start = out.size();
            spills_at_start = spills_;
            if constexpr (std::is_invocable_v<callable_t<F>&, const In&, emitter<Out>&>) {
              std::invoke(*fn_, std::as_const(in[i]), emit);
            } else {
              // A range is consumed lazily: a view is never materialized beyond one spill.
              auto&& produced = [&]() -> decltype(auto) {
                if constexpr (keep) {
                  return call_keeping_item(*fn_, in[i]);
                } else {
                  return call_with_item(*fn_, in[i]);
                }
              }();
              for (auto&& value : produced) emit(static_cast<Out>(std::forward<decltype(value)>(value)));
            }
          },
          [&](std::size_t) {
            if (spills_ == spills_at_start) out.resize(item_start);  // what was spilled already went on
          });
    };
    if (cursor.guard) {
      run(std::true_type{});
    } else {
      run(std::false_type{});
    }
    return out.size();
  }

 private:
  bool input_survives_failure() const noexcept override {
    if constexpr (std::is_invocable_v<callable_t<F>&, const In&, emitter<Out>&>) {
      return true;
    } else {
      return call_keeps_item_v<callable_t<F>, In>;
    }
  }
  static void spill(void* self) {
    auto* me = static_cast<flat_map_instance*>(self);
    ++me->spills_;
    me->downstream_->spill(me->position_);
  }
  replica_callable<F> fn_;
  std::size_t spills_ = 0;
};

template <class T, class F>
class sink_instance final : public terminal_instance_base<T> {
 public:
  static constexpr stage_kind kind = stage_kind::sink;
  explicit sink_instance(F& declared) : fn_(declared) {}
  std::size_t apply(item_cursor& cursor) override {
    auto& in = this->in_;
    if (!cursor.guard) {
      for_each_item(in.size(), cursor, [&](std::size_t i) { call_with_item(*fn_, in[i]); });
    } else {
      for_each_item(in.size(), cursor, [&](std::size_t i) { call_keeping_item(*fn_, in[i]); });
    }
    return 0;
  }
  void settle() override { fn_.flush(); }
  // The callable's finish() (the built-in file writers write their last lines and close there),
  // then its destruction: before the replica's end of stream.
  void end_of_stream() override { fn_.finish(); }

 private:
  bool input_survives_failure() const noexcept override { return call_keeps_item_v<callable_t<F>, T>; }
  replica_callable<F> fn_;
};

// A sink: in its own processes (replicas(n > 1), own_process), or, by default, in the process
// that called run(), where the collector below feeds it from the results channel.
template <class T, class F>
class sink_stage final : public input_stage<T> {
 public:
  sink_stage(std::string name, F fn, stage_options options)
      : input_stage<T>(std::move(name), stage_kind::sink, options), fn_(std::move(fn)) {}
  std::unique_ptr<stage_instance> instantiate(bool) const override { return std::make_unique<sink_instance<T, F>>(fn_); }
  std::unique_ptr<result_collector> make_collector(bool) const override {
    if (this->runs_in_supervisor()) return std::make_unique<collector>(fn_);
    if constexpr (commits_output_v<F>) return std::make_unique<committer>(fn_);
    return nullptr;
  }
  bool holds_state() const noexcept override { return item_holds_state_v<F, T>; }

 private:
  // The sink in the process that called run(). A copyable callable is copied per run; a factory
  // runs at the first item (or at the end of an empty stream): after the replicas were forked, so
  // they inherit nothing it made. A move-only callable is used in place (a second run() of the
  // same pipeline continues with its state).
  class collector final : public result_collector {
   public:
    explicit collector(F& declared) : declared_(declared), output_(declared) {
      if constexpr (!is_factory_v<F> && std::is_copy_constructible_v<F>) own_.emplace(declared);
    }
    // A failed run: the callable's abort(), if any, then its rollback() (output_: a file writer
    // removes its temporary file; own_ then drops its unwritten lines).
    ~collector() override {
      if constexpr (!is_factory_v<F> && !std::is_copy_constructible_v<F>) {
        if constexpr (requires(F& f) { f.abort(); }) {
          if (!finished_) declared_.abort();
        }
      }
    }
    void consume(const batch_view& batch) override {
      decode_items(batch, items_);
      auto& fn = callable();
      for (auto& item : items_) call_with_item(fn, item);
    }
    void consume_items(void* vector) override {
      auto& items = *static_cast<batch_buffer<T>*>(vector);
      auto& fn = callable();
      for (auto& item : items) call_with_item(fn, item);
      items.clear();
    }
    void finish() override {
      finished_ = true;
      if constexpr (!is_factory_v<F> && !std::is_copy_constructible_v<F>) {
        if constexpr (requires(F& f) { f.finish(); }) {
          try {
            declared_.finish();
          } catch (const std::exception& e) {
            throw procflow::error(std::string("teardown (finish()): ") + e.what());
          }
        }
      } else {
        callable();
        own_.finish();
      }
      output_.commit();
    }

   private:
    callable_t<F>& callable() {
      if constexpr (!is_factory_v<F> && !std::is_copy_constructible_v<F>) {
        return declared_;
      } else {
        if (!own_.has_value()) own_.emplace(declared_);
        return *own_;
      }
    }

    F& declared_;
    replica_callable<F> own_;
    output_commit<F> output_;
    batch_buffer<T> items_;
    bool finished_ = false;
  };

  // A sink in processes (or threads) of its own whose callable commits its output: nothing comes
  // back through the results channel; at the end of a run in which every replica ended well, the
  // declared callable's commit(), in the calling process; its rollback() when the run failed.
  class committer final : public result_collector {
   public:
    explicit committer(F& declared) : output_(declared) {}
    void consume(const batch_view&) override { throw std::logic_error("procflow: a sink in its own processes sends nothing back"); }
    void finish() override { output_.commit(); }

   private:
    output_commit<F> output_;
  };

  mutable F fn_;  // mutable: a replica moves a move-only callable out of its copy (instantiate)
};

template <class In, class Out, class F>
using map_stage = callable_stage<In, map_instance<In, Out, F>, F>;
template <class T, class F>
using filter_stage = callable_stage<T, filter_instance<T, F>, F>;
template <class In, class Out, class F>
using flat_map_stage = callable_stage<In, flat_map_instance<In, Out, F>, F>;

// ------------------------------------------------------------------ terminals

// Shared by reduce and reduce_by_key: a Partial per replica (or per batch when ordered) that the
// supervisor merges in order.
template <class Partial, class Merge>
class partial_collector final : public typed_collector<Partial> {
 public:
  partial_collector(Partial init, Merge merge, bool ordered)
      : total_(std::move(init)), merge_(std::move(merge)), ordered_(ordered) {}

  void consume(const batch_view& batch) override {
    std::vector<Partial> partials;
    decode_items(batch, partials);
    for (auto& p : partials) {
      if (ordered_) {
        merge_(total_, std::move(p));  // batches arrive in source order
      } else {
        pending_.emplace(batch.meta.seq, std::move(p));  // seq = replica index
      }
    }
  }
  void finish() override {
    for (auto& [replica, p] : pending_) merge_(total_, std::move(p));
    pending_.clear();
  }
  Partial take() override { return std::move(total_); }

 private:
  Partial total_;
  Merge merge_;
  bool ordered_;
  std::multimap<std::uint64_t, Partial> pending_;
};

template <class T, class Acc, class Fold, class Combine>
class reduce_stage final : public input_stage<T> {
 public:
  reduce_stage(std::string name, Acc init, Fold fold, Combine combine, stage_options options)
      : input_stage<T>(std::move(name), stage_kind::reduce, options),
        init_(std::move(init)), fold_(std::move(fold)), combine_(std::move(combine)) {}

  std::unique_ptr<stage_instance> instantiate(bool ordered) const override {
    return std::make_unique<instance>(*this, ordered);
  }
  std::unique_ptr<result_collector> make_collector(bool ordered) const override {
    auto merge = [combine = combine_](Acc& total, Acc&& partial) mutable { fold_into(total, combine, std::move(partial)); };
    return std::make_unique<partial_collector<Acc, decltype(merge)>>(init_, std::move(merge), ordered);
  }

 private:
  class instance final : public terminal_instance_base<T> {
   public:
    instance(const reduce_stage& s, bool ordered) : fold_(s.fold_), init_(s.init_), acc_(s.init_), ordered_(ordered) {}
    std::size_t apply(item_cursor& cursor) override {
      auto& in = this->in_;
      if (!cursor.guard || !std::is_copy_constructible_v<T>) {
        for_each_item(in.size(), cursor, [&](std::size_t i) { fold_into(acc_, fold_, std::move(in[i])); });
      } else if constexpr (std::is_copy_constructible_v<T>) {
        // Under a policy the fold gets a copy: the original stays for a retry.
        for_each_item(in.size(), cursor, [&](std::size_t i) { fold_into(acc_, fold_, T(in[i])); });
      }
      return 0;
    }
    void begin_batch() override { acc_ = init_; }
    // Under a policy the fold gets a copy (see apply()).
    bool input_survives_failure() const noexcept override { return std::is_copy_constructible_v<T>; }
    void end_batch(output_port& results) override { encode_item(acc_, results); }
    void finish(output_port& results) override {
      if (!ordered_) encode_item(acc_, results);
    }

   private:
    Fold fold_;
    const Acc& init_;
    Acc acc_;
    bool ordered_;
  };

  Acc init_;
  Fold fold_;
  Combine combine_;
};

// Every replica pre-aggregates into a keyed_partial: flat tables radix-partitioned by the top bits
// of the mixed key hash (keyed.hpp), sent one partition (keyed_piece) at a time. The caller merges
// partition by partition in parallel and keeps the partitions as the keyed_result.
template <class T, class KeyFn, class Acc, class Fold, class Combine, class Hash>
class reduce_by_key_stage final : public input_stage<T> {
 public:
  // What the key function returns (lookup_type) and what the groups keep (key_type): they differ
  // for a std::string_view key, stored as a std::string built only for a new key (stored_key.hpp).
  using lookup_type = std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>;
  using key_type = stored_key_t<lookup_type>;
  using result_type = keyed_result<key_type, Acc, Hash>;
  using partial_type = keyed_partial<key_type, Acc, Hash>;
  using table_type = flat_table<key_type, Acc, Hash>;

  reduce_by_key_stage(std::string name, KeyFn key, Acc init, Fold fold, Combine combine, stage_options options)
      : input_stage<T>(std::move(name), stage_kind::reduce_by_key, options),
        key_(std::move(key)), init_(std::move(init)), fold_(std::move(fold)), combine_(std::move(combine)) {}

  // In processes of its own, items travel to the replica that owns their key's partition
  // (keyed_partition_of the mixed hash, modulo the lanes): each partition of the result then
  // comes from one replica, and the caller adopts it without merging.
  void encode_input(void* vector, output_port& out, bool keyed) const override {
    auto& items = *static_cast<batch_buffer<T>*>(vector);
    if (!keyed) return encode_items(items, out);
    const std::size_t lanes = out.lane_count();
    for (const T& item : items)
      encode_item(item, out, keyed_partition_of(table_type::hash_of(std::invoke(key_, item))) % lanes);
  }

  std::unique_ptr<stage_instance> instantiate(bool ordered) const override {
    return std::make_unique<instance>(*this, ordered);
  }
  std::unique_ptr<result_collector> make_collector(bool ordered) const override {
    auto merge = [combine = combine_](Acc& total, Acc&& partial) mutable { fold_into(total, combine, std::move(partial)); };
    return std::make_unique<keyed_collector<key_type, Acc, Hash, decltype(merge)>>(std::move(merge), ordered,
                                                                                  this->options().pre_aggregate_keys);
  }

 private:
  class instance final : public terminal_instance_base<T> {
   public:
    instance(const reduce_by_key_stage& s, bool ordered)
        : stage_(s), fold_(s.fold_), ordered_(ordered), switch_(s.options().pre_aggregate_keys) {}
    std::size_t apply(item_cursor& cursor) override {
      auto& in = this->in_;
      switch_.folded(in.size());
      if constexpr (windowed) {
        if (!cursor.guard && groups_.size() >= windowed_from_keys) return apply_windowed(cursor);
      }
      if (!cursor.guard || !std::is_copy_constructible_v<T>) {
        for_each_item(in.size(), cursor, [&](std::size_t i) {
          lookup_type key = std::invoke(stage_.key_, std::as_const(in[i]));
          const std::uint64_t h = table_type::hash_of(key);
          Acc& acc = groups_.part_of(h).find_or_insert(std::move(key), h, stage_.init_);
          fold_into(acc, fold_, std::move(in[i]));
        });
      } else if constexpr (std::is_copy_constructible_v<T>) {
        // Under a policy the fold gets a copy: the original stays for a retry.
        for_each_item(in.size(), cursor, [&](std::size_t i) {
          lookup_type key = std::invoke(stage_.key_, std::as_const(in[i]));
          const std::uint64_t h = table_type::hash_of(key);
          Acc& acc = groups_.part_of(h).find_or_insert(std::move(key), h, stage_.init_);
          fold_into(acc, fold_, T(in[i]));
        });
      }
      return 0;
    }
    void begin_batch() override { groups_.clear(); }
    // Under a policy the fold gets a copy (see apply()).
    bool input_survives_failure() const noexcept override { return std::is_copy_constructible_v<T>; }
    void end_batch(output_port& results) override { send_pieces(groups_, results); }
    // Unordered, in processes: pre-aggregate while it pays, then send the partitions on as they
    // fill (aggregation_switch.hpp). A replica fed by key owns its keys: it keeps them.
    void after_batch(output_port& results, bool key_partitioned) override {
      if (key_partitioned) {
        mode_ = aggregation_mode::key_partitioned;
        return;
      }
      const bool first = !switch_.switched();
      if (!switch_.send_now(groups_.size())) return;
      mode_ = aggregation_mode::shuffled;
      // The first send gives the pre-aggregated table's memory back; later ones keep the small
      // tables' capacity for the next fill.
      send_pieces(groups_, results, mode_, !first, first ? switch_.keys_at_switch() : 0, first ? switch_.items_at_switch() : 0);
      switch_.sent();
    }

   private:
    // The fast path (no error policy): keys and hashes of a window of items first, each table slot
    // they will probe prefetched, then the probes and folds. A table larger than the cache then
    // costs one overlapped miss per window rather than one full miss per item. A throw names its
    // item as for_each_item does. 64 items a window: enough misses in flight to cover DRAM latency
    // (groupby_bench at 1e6 keys, medians of 5 alternated runs: 0.50 s with 16, 0.41 s with 64;
    // 1e5 and 5e6 keys unchanged within noise).
    static constexpr std::size_t window = 64;
    // The m items of a window: every item's index slot prefetched, then the entry each names,
    // then fold(table, j) for each. hash(j) is item j's hash, table_of(hash) its table.
    template <class TableOf, class HashOf, class Probe>
    static void fold_window(std::size_t m, TableOf table_of, HashOf hash, Probe fold) {
      for (std::size_t j = 0; j < m; ++j) table_of(hash(j)).prefetch(hash(j));
      for (std::size_t j = 0; j < m; ++j) table_of(hash(j)).prefetch_entry(hash(j));
      for (std::size_t j = 0; j < m; ++j) fold(table_of(hash(j)), j);
    }
    static constexpr std::size_t windowed_from_keys = std::size_t{1} << 14;
    static constexpr bool windowed = std::is_default_constructible_v<lookup_type> && std::is_move_assignable_v<lookup_type>;
    using window_key_type = std::conditional_t<windowed, lookup_type, char>;
    std::size_t apply_windowed(item_cursor& cursor) {
      auto& in = this->in_;
      const std::size_t n = in.size();
      if (groups_.size() >= by_partition_from_keys && n <= std::numeric_limits<std::uint32_t>::max()) return apply_by_partition(cursor);
      std::size_t i = 0;
      try {
        for (std::size_t base = 0; base < n; base += window) {
          const std::size_t m = std::min(window, n - base);
          for (std::size_t j = 0; j < m; ++j) {
            i = base + j;
            window_keys_[j] = std::invoke(stage_.key_, std::as_const(in[i]));
            window_hashes_[j] = table_type::hash_of(window_keys_[j]);
          }
          fold_window(
              m, [&](std::uint64_t h) -> table_type& { return groups_.part_of(h); }, [&](std::size_t j) { return window_hashes_[j]; },
              [&](table_type& table, std::size_t j) {
                i = base + j;
                Acc& acc = table.find_or_insert(std::move(window_keys_[j]), window_hashes_[j], stage_.init_);
                fold_into(acc, fold_, std::move(in[i]));
              });
        }
      } catch (...) {
        cursor.index = i;
        throw;
      }
      return 0;
    }

    // Once the tables outgrow the caches, a batch is folded one partition at a time: a stable
    // counting sort of its items by partition first (keys and hashes computed once, in input
    // order), then each partition's items in windows as above. Consecutive probes then stay in one
    // table (its pages and TLB entries) instead of scattering over all 64. A key's items keep their
    // order (same key, same partition; the sort is stable), so a non-commutative fold sees them as
    // before. Measured (two processes at once, 10 M items, key (i * 2654435761) % K, 8192-item
    // batches, per item): K = 1e5 11.3 -> 12.0 ns (so not below by_partition_from_keys), 1e6 28 ->
    // 18 ns, 5e6 71 -> 29 ns.
    static constexpr std::size_t by_partition_from_keys = std::size_t{1} << 17;
    std::size_t apply_by_partition(item_cursor& cursor) {
      auto& in = this->in_;
      const std::size_t n = in.size();
      batch_keys_.resize(n);
      batch_hashes_.resize(n);
      order_.resize(n);
      std::array<std::uint32_t, keyed_partition_count + 1> start{};
      std::size_t i = 0;
      try {
        for (; i < n; ++i) {
          batch_keys_[i] = std::invoke(stage_.key_, std::as_const(in[i]));
          batch_hashes_[i] = table_type::hash_of(batch_keys_[i]);
          ++start[keyed_partition_of(batch_hashes_[i]) + 1];
        }
        for (std::size_t p = 0; p < keyed_partition_count; ++p) start[p + 1] += start[p];
        auto next = start;
        for (std::size_t j = 0; j < n; ++j) order_[next[keyed_partition_of(batch_hashes_[j])]++] = static_cast<std::uint32_t>(j);
        for (std::size_t p = 0; p < keyed_partition_count; ++p) {
          table_type& table = groups_.parts[p];
          for (std::size_t base = start[p], end = start[p + 1]; base < end; base += window) {
            const std::uint32_t* items = order_.data() + base;
            fold_window(
                std::min(window, end - base), [&](std::uint64_t) -> table_type& { return table; },
                [&](std::size_t j) { return batch_hashes_[items[j]]; },
                [&](table_type& into, std::size_t j) {
                  i = items[j];
                  Acc& acc = into.find_or_insert(std::move(batch_keys_[i]), batch_hashes_[i], stage_.init_);
                  fold_into(acc, fold_, std::move(in[i]));
                });
          }
        }
      } catch (...) {
        cursor.index = i;
        throw;
      }
      return 0;
    }

   public:
    void finish(output_port& results) override {
      if (!ordered_) send_pieces(groups_, results, mode_);
    }

   private:
    const reduce_by_key_stage& stage_;
    Fold fold_;
    partial_type groups_;
    bool ordered_;
    aggregation_switch switch_;
    aggregation_mode mode_ = aggregation_mode::pre_aggregated;
    std::array<window_key_type, window> window_keys_{};
    std::array<std::uint64_t, window> window_hashes_{};
    std::vector<window_key_type> batch_keys_;  // apply_by_partition: the batch's keys, hashes, and
    std::vector<std::uint64_t> batch_hashes_;  // its item indices in partition order
    std::vector<std::uint32_t> order_;
  };

  KeyFn key_;
  Acc init_;
  Fold fold_;
  Combine combine_;
};

template <class T>
class collect_stage final : public input_stage<T> {
 public:
  explicit collect_stage(std::string name, stage_options options)
      : input_stage<T>(std::move(name), stage_kind::collect, options) {}

  std::unique_ptr<result_collector> make_collector(bool) const override { return std::make_unique<collector>(); }

 private:
  class collector final : public typed_collector<std::vector<T>> {
   public:
    void expect_items(std::uint64_t items) override { expected_ = items; }
    void consume(const batch_view& batch) override {
      size_once();
      decode_items(batch, scratch_);
      if (items_.empty() && items_.capacity() < scratch_.size()) {
        std::swap(items_, scratch_);
      } else {
        items_.insert(items_.end(), std::make_move_iterator(scratch_.begin()), std::make_move_iterator(scratch_.end()));
      }
    }
    void consume_items(void* vector) override {
      size_once();
      auto& items = *static_cast<batch_buffer<T>*>(vector);
      items_.insert(items_.end(), std::make_move_iterator(items.begin()), std::make_move_iterator(items.end()));
      items.clear();
    }
    std::vector<T> take() override { return std::move(items_); }

   private:
    // With the count known (expect_items), the whole result is reserved and its pages mapped in
    // one call (prefault.hpp) instead of doubling: iota(0, 5e7) -> map x2 -> collect() took
    // 2.7-3.1 s, now 0.73-0.9 s. At the first batch, not before: run() forks its replicas after
    // expect_items(), and pages mapped before a fork are shared copy-on-write with the children,
    // so every write here would copy its page (2.2-2.6 s). Not past half the machine's memory
    // (the vector then grows as before, and fails where it did).
    void size_once() {
      const std::uint64_t n = std::exchange(expected_, 0);
      if (n && n <= physical_memory_bytes() / 2 / sizeof(T)) reserve_mapped(items_, static_cast<std::size_t>(n));
    }

    std::vector<T> items_;
    std::vector<T> scratch_;
    std::uint64_t expected_ = 0;
  };
};

}  // namespace detail
}  // namespace procflow
