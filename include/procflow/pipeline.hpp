// The typed pipeline builder:
//
//   auto r = pf::pipeline("name")
//       .source("numbers", pf::iota<std::int64_t>(0, n))
//       .map("square", [](std::int64_t x) { return x * x; }, pf::replicas(2))
//       .filter("div3", [](std::int64_t x) { return x % 3 == 0; })
//       .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{})
//       .run();            // r.value, r.report
//
// Every builder call returns a new immutable value (stages are shared, never copied), so a
// partial pipeline can be extended in several ways. Nothing runs until run(): then the calling
// process becomes the supervisor and forks the replicas. Stage callables therefore need no
// registration: they exist in every child as they were at run().
//
// Fork rule: call run() while no other thread of your program is running (threads do not
// survive fork(), and a lock held by one would stay locked in every child).
#pragma once

#include <procflow/codec.hpp>
#include <procflow/detail/keyed_stage.hpp>
#include <procflow/detail/stages.hpp>
#include <procflow/detail/stored_key.hpp>
#include <procflow/error.hpp>
#include <procflow/execution.hpp>
#include <procflow/hash.hpp>
#include <procflow/input.hpp>
#include <procflow/options.hpp>
#include <procflow/report.hpp>
#include <procflow/sources.hpp>

#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace procflow {

template <class R>
struct result {
  R value;
  run_report report;
};

template <>
struct result<void> {
  run_report report;
};

namespace detail {

struct pipeline_def {
  std::string name;
  pipeline_options options;
  std::vector<std::shared_ptr<const stage_base>> stages;  // source first, terminal last
};

// How many items reach the terminal, when that is known before the run: a splittable source
// whose units are items (pf::iota, pf::from) followed by maps only (one item out per item in),
// none of them allowed to skip a failing item. 0 when not known.
inline std::uint64_t known_item_count(const pipeline_def& def) noexcept {
  const source_base* source = def.stages.front()->source();
  if (!source || !source->splittable() || !source->units_are_items()) return 0;
  auto may_skip = [](const stage_options& o) { return o.on_error && o.on_error->then_skip; };
  if (may_skip(def.options.defaults)) return 0;
  for (std::size_t i = 0; i + 1 < def.stages.size(); ++i)
    if ((i > 0 && !def.stages[i]->one_to_one()) || may_skip(def.stages[i]->options())) return 0;
  return source->size();
}

// Runs a complete pipeline in processes (lib/runtime/supervisor.cpp). `collector` receives what
// the terminal sends back (null for sink). Throws stage_error if a stage fails.
run_report run_in_processes(const pipeline_def& def, result_collector* collector);
// The same in threads of the calling process, on oneTBB (lib/threads/thread_runner.cpp).
run_report run_in_threads(const pipeline_def& def, result_collector* collector);

}  // namespace detail

template <class R>
class running;

template <class R>
class runnable {
 public:
  explicit runnable(detail::pipeline_def def) : def_(std::move(def)) {}

  // Runs the pipeline to completion: blocks, returns the terminal's value and the report.
  // Throws stage_error naming stage, replica, pid and item when any stage fails; every process
  // is stopped and reaped and all shared memory released before it does.
  // Errors raised here, in the calling process (decoding a collected item or a partial result,
  // a combine merging the replicas' partials), follow one rule: a stage_error naming the
  // terminal stage with in_supervisor() true, replica() == stage_error::no_replica, the result
  // batch when known, and the original exception's type and message; the original is nested
  // (std::rethrow_if_nested(e) rethrows it).
  result<R> run() const { return run_with(&detail::run_in_processes); }

  // Starts the pipeline and returns at once with a handle on it (running.hpp): push to a
  // pf::input source, take results as they come, wait() for what run() returns.
  running<R> start() const;

  // The same pipeline in threads of this process (see execution.hpp): same result, same
  // stage_error for a throwing stage (with the original exception nested), same report counters.
  result<R> run(in_threads_t) const { return run_with(&detail::run_in_threads); }

  const detail::pipeline_def& definition() const noexcept { return def_; }

 private:
  using runner = run_report (*)(const detail::pipeline_def&, detail::result_collector*);
  result<R> run_with(runner run_pipeline) const {
    if (dynamic_cast<const detail::caller_source_base*>(def_.stages.front().get()))
      throw procflow::error("procflow: pipeline '" + def_.name + "': its source '" + def_.stages.front()->name() +
                            "' is fed by the caller (pf::input): start() it and push(), rather than run()");
    const bool is_ordered = def_.options.defaults.ordered ||
                         std::any_of(def_.stages.begin(), def_.stages.end(), [](const auto& s) { return s->options().ordered; });
    auto collector = def_.stages.back()->make_collector(is_ordered);
    if (collector)
      if (const std::uint64_t items = detail::known_item_count(def_)) collector->expect_items(items);
    if constexpr (std::is_void_v<R>) {
      // A sink running in this process (see stage_base::runs_in_supervisor) has a collector.
      return {run_pipeline(def_, collector.get())};
    } else {
      auto* typed = static_cast<detail::typed_collector<R>*>(collector.get());
      run_report report = run_pipeline(def_, typed);
      return {typed->take(), std::move(report)};
    }
  }

  detail::pipeline_def def_;
};

template <class T>
class flow {
  static_assert(detail::checked_encodable_v<T>, "procflow: items crossing a process boundary need procflow::codec<T>; "
                                                "add PROCFLOW_CODEC(YourType, fields...) or specialize procflow::codec<YourType> (see codec.hpp)");

 public:
  using item_type = T;

  explicit flow(detail::pipeline_def def) : def_(std::move(def)) {}

  // item -> fn(item)
  template <class F, class... Opts>
  auto map(std::string name, F fn, const Opts&... opts) const {
    static_assert(detail::callable_with_item_v<detail::callable_t<F>, T>,
                  "procflow: map(): the function cannot be called with the previous stage's item type");
    using U = detail::item_result_t<detail::callable_t<F>, T>;
    static_assert(!std::is_void_v<U>, "procflow: map(): the function must return the new item (use sink() to consume)");
    static_assert(detail::checked_encodable_v<U>, "procflow: map(): its result type cannot cross a process boundary (see above)");
    static_assert(!(detail::is_pre_aggregate_v<Opts> || ...),
                  "procflow: map(): pre_aggregate::... is an option of reduce_by_key only");
    return then<flow<U>>(detail::with_key_by<T>(std::make_shared<detail::map_stage<T, U, F>>(std::move(name), std::move(fn), detail::make_stage_options(opts...)), opts...));
  }

  // keeps the items for which pred(item) is true
  template <class F, class... Opts>
  flow<T> filter(std::string name, F pred, const Opts&... opts) const {
    static_assert(std::is_invocable_r_v<bool, detail::callable_t<F>&, const T&>,
                  "procflow: filter(): the predicate must take the previous stage's item (const T&) and return bool");
    static_assert(!(detail::is_pre_aggregate_v<Opts> || ...),
                  "procflow: filter(): pre_aggregate::... is an option of reduce_by_key only");
    return then<flow<T>>(detail::with_key_by<T>(std::make_shared<detail::filter_stage<T, F>>(std::move(name), std::move(pred), detail::make_stage_options(opts...)), opts...));
  }

  // item -> any number of items. Either fn(item) returns a range (e.g. std::vector<U>), or,
  // with the output type given explicitly, flat_map<U>(name, fn) where fn(const T&, emit)
  // calls emit(u) for each output.
  template <class U = void, class F, class... Opts>
  auto flat_map(std::string name, F fn, const Opts&... opts) const {
    static_assert(!(detail::is_pre_aggregate_v<Opts> || ...),
                  "procflow: flat_map(): pre_aggregate::... is an option of reduce_by_key only");
    if constexpr (std::is_void_v<U>) {
      static_assert(detail::callable_with_item_v<detail::callable_t<F>, T>,
                    "procflow: flat_map(): the function cannot be called with the previous stage's item type "
                    "(for the fn(item, emit) form, name the output type: flat_map<U>(...))");
      using range = detail::item_result_t<detail::callable_t<F>, T>;
      using V = std::decay_t<decltype(*std::begin(std::declval<range&>()))>;
      static_assert(detail::checked_encodable_v<V>, "procflow: flat_map(): its output item type cannot cross a process boundary (see above)");
      return then<flow<V>>(detail::with_key_by<T>(std::make_shared<detail::flat_map_stage<T, V, F>>(std::move(name), std::move(fn), detail::make_stage_options(opts...)), opts...));
    } else {
      static_assert(std::is_invocable_v<detail::callable_t<F>&, const T&, emitter<U>&>,
                    "procflow: flat_map<U>(): the function must take (const T& item, procflow::emitter<U>& emit)");
      static_assert(detail::checked_encodable_v<U>, "procflow: flat_map<U>(): U cannot cross a process boundary (see above)");
      return then<flow<U>>(detail::with_key_by<T>(std::make_shared<detail::flat_map_stage<T, U, F>>(std::move(name), std::move(fn), detail::make_stage_options(opts...)), opts...));
    }
  }

  // Terminal: folds every item into an Acc. fold is acc = fold(acc, item) (or void fold(acc&,
  // item)); combine merges the partial results of replicas (acc = combine(acc, other)). `init`
  // must be an identity of combine. With pf::ordered, partials combine in source order, so an
  // associative but non-commutative combine is correct.
  template <class Acc, class Fold, class Combine, class... Opts>
  runnable<Acc> reduce(std::string name, Acc init, Fold fold, Combine combine, const Opts&... opts) const {
    static_assert(detail::fold_callable_v<Acc, Fold, T>,
                  "procflow: reduce(): fold must be Acc fold(Acc, T) or void fold(Acc&, T)");
    static_assert(detail::fold_callable_v<Acc, Combine, Acc>,
                  "procflow: reduce(): combine must be Acc combine(Acc, Acc) or void combine(Acc&, Acc)");
    static_assert(detail::checked_encodable_v<Acc>, "procflow: reduce(): the accumulator type cannot cross a process boundary (see above)");
    static_assert(!(detail::is_key_by_v<Opts> || ...), "procflow: reduce(): key_by() is for map, filter, flat_map and sink (reduce_by_key is keyed already)");
    static_assert(!(detail::is_pre_aggregate_v<Opts> || ...),
                  "procflow: reduce(): pre_aggregate::... is an option of reduce_by_key only");
    return then<runnable<Acc>>(std::make_shared<detail::reduce_stage<T, Acc, Fold, Combine>>(
        std::move(name), std::move(init), std::move(fold), std::move(combine), detail::make_stage_options(opts...)));
  }

  // Terminal: groups items by key(item) (a callable or a pointer to member) and folds each
  // group; returns a procflow::keyed_result<K, Acc, Hash> (keyed.hpp): the groups in disjoint
  // hash partitions, iterable as {key, acc}, with size(), find(), at() and to_unordered_map()
  // (it also converts implicitly to std::unordered_map<K, Acc, Hash>). Every replica
  // pre-aggregates into radix-partitioned flat tables; the caller merges them partition by
  // partition in parallel. In processes of its own, items are sent to the replica owning their
  // key's partition (the hash is mixed first, so keys 0, 4, 8, ... spread over 4 replicas) and
  // no merge is needed. The key is hashed with std::hash<K> where one exists; std::pair and
  // std::tuple keys use procflow::hash<K> (hash.hpp). An optional hasher may follow combine:
  // reduce_by_key(name, key, init, fold, combine, hasher, opts...). A key function may return a
  // std::string_view into its item: the groups are keyed by std::string, built only for a new key
  // (detail/stored_key.hpp).
  template <class KeyFn, class Acc, class Fold, class Combine, class... Opts>
    requires(detail::stage_option<Opts> && ...)
  auto reduce_by_key(std::string name, KeyFn key, Acc init, Fold fold, Combine combine, const Opts&... opts) const {
    static_assert(std::is_invocable_v<const KeyFn&, const T&>,
                  "procflow: reduce_by_key(): key must be callable with (const T&) or be a pointer to a member of T");
    using K = detail::stored_key_t<std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>>;
    static_assert(hashable_v<K>,
                  "procflow: reduce_by_key(): the key type needs std::hash (or is a std::pair / std::tuple of such); "
                  "otherwise pass a hasher after combine");
    return reduce_by_key(std::move(name), std::move(key), std::move(init), std::move(fold), std::move(combine),
                         default_hash_t<K>{}, opts...);
  }

  // The same with an explicit hasher: hash(const K&) -> std::size_t, default constructible (the
  // partial maps are decoded with a default-constructed one).
  template <class KeyFn, class Acc, class Fold, class Combine, class Hash, class... Opts>
    requires(!detail::stage_option<Hash> && (detail::stage_option<Opts> && ...))
  auto reduce_by_key(std::string name, KeyFn key, Acc init, Fold fold, Combine combine, Hash hash, const Opts&... opts) const {
    static_assert(std::is_invocable_v<const KeyFn&, const T&>,
                  "procflow: reduce_by_key(): key must be callable with (const T&) or be a pointer to a member of T");
    using K = detail::stored_key_t<std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>>;
    static_assert(std::is_invocable_r_v<std::size_t, const Hash&, const K&>,
                  "procflow: reduce_by_key(): the hasher must be callable as hash(const K&) -> std::size_t");
    static_assert(std::is_default_constructible_v<Hash>, "procflow: reduce_by_key(): the hasher must be default constructible");
    static_assert(detail::fold_callable_v<Acc, Fold, T>, "procflow: reduce_by_key(): fold must be Acc fold(Acc, T) or void fold(Acc&, T)");
    static_assert(detail::fold_callable_v<Acc, Combine, Acc>, "procflow: reduce_by_key(): combine must be Acc combine(Acc, Acc) or void combine(Acc&, Acc)");
    static_assert(detail::checked_encodable_v<K> && detail::checked_encodable_v<Acc>, "procflow: reduce_by_key(): key and accumulator types need procflow::codec<> (see above)");
    static_assert(!(detail::is_key_by_v<Opts> || ...), "procflow: reduce_by_key(): it is keyed already; key_by() is for map, filter, flat_map and sink");
    using stage = detail::reduce_by_key_stage<T, KeyFn, Acc, Fold, Combine, Hash>;
    (void)hash;  // partitions hash with a default-constructed Hash (the same in every process)
    return then<runnable<typename stage::result_type>>(std::make_shared<stage>(
        std::move(name), std::move(key), std::move(init), std::move(fold), std::move(combine),
        detail::make_stage_options(opts...)));
  }

  // Terminal: every item, in a vector (in source order with pf::ordered).
  template <class... Opts>
  runnable<std::vector<T>> collect(const Opts&... opts) const {
    static_assert(!(detail::is_key_by_v<Opts> || ...), "procflow: collect(): key_by() is for map, filter, flat_map and sink");
    static_assert(!(detail::is_pre_aggregate_v<Opts> || ...),
                  "procflow: collect(): pre_aggregate::... is an option of reduce_by_key only");
    return then<runnable<std::vector<T>>>(std::make_shared<detail::collect_stage<T>>("collect", detail::make_stage_options(opts...)));
  }

  // Terminal: fn(item) for every item (e.g. writing a file). By default the sink runs in the
  // process that called run(), fed through the results channel like collect, so whatever fn
  // captured by reference (a std::ofstream, a vector) is the caller's. With pf::replicas(n > 1)
  // it runs in the processes of the stages before it when they have the same count (fused), else
  // in processes of its own; with pf::own_process in one of its own. Those end with _exit(): a
  // stream of the caller captured by reference is a copy that is never flushed, so let fn own what
  // it writes through (pf::stages::csv_writer / jsonl_writer, or open it on the first item). If fn has a
  // finish() member, it is called once at the end of a successful stream (in each sink replica,
  // before its end of stream); a throw from it fails run() with a stage_error saying "teardown".
  // If fn has commit() (and rollback()), the calling process calls it once after every replica
  // of the run ended well (rollback() when the run failed): pf::stages::csv_writer and
  // jsonl_writer are written by all their copies into one temporary file and renamed there, so
  // a writer sink may have any number of replicas. Such a callable is declared as it is, not
  // made by per_replica (a compile error). Under pf::restart its flush(), if any, runs after
  // each batch, before the batch is released.
  template <class F, class... Opts>
  runnable<void> sink(std::string name, F fn, const Opts&... opts) const {
    static_assert(detail::callable_with_item_v<detail::callable_t<F>, T>,
                  "procflow: sink(): the function cannot be called with the previous stage's item type");
    static_assert(!(detail::is_pre_aggregate_v<Opts> || ...),
                  "procflow: sink(): pre_aggregate::... is an option of reduce_by_key only");
    stage_options options = detail::make_stage_options(opts...);
    static_assert(!detail::is_factory_v<F> || !detail::commits_output_v<detail::callable_t<F>>,
                  "procflow: sink(): a callable with commit() (csv_writer, jsonl_writer) is declared as it is, not "
                  "made by per_replica: its copies append to the one output the calling process commits");
    return then<runnable<void>>(detail::with_key_by<T>(std::make_shared<detail::sink_stage<T, F>>(std::move(name), std::move(fn), std::move(options)), opts...));
  }

 private:
  template <class Next>
  Next then(std::shared_ptr<const detail::stage_base> stage) const {
    detail::pipeline_def def = def_;
    def.stages.push_back(std::move(stage));
    return Next(std::move(def));
  }

  detail::pipeline_def def_;
};

class pipeline_builder {
 public:
  explicit pipeline_builder(detail::pipeline_def def) : def_(std::move(def)) {}

  // The first stage. `src` is pf::iota(a, b), pf::from(vector), pf::generate(fn), or a callable
  // returning std::optional<T> (same as pf::generate).
  template <class Src, class... Opts>
  auto source(std::string name, Src src, const Opts&... opts) const {
    static_assert(!(detail::is_pre_aggregate_v<Opts> || ...),
                  "procflow: source(): pre_aggregate::... is an option of reduce_by_key only");
    if constexpr (requires(Src& s) { s(); }) {
      return source(std::move(name), generate(std::move(src)), opts...);
    } else if constexpr (detail::is_input_source_v<Src>) {
      using T = typename Src::item_type;
      detail::pipeline_def def = def_;
      def.stages.push_back(std::make_shared<detail::caller_source_stage<T>>(std::move(name), detail::make_stage_options(opts...)));
      return flow<T>(std::move(def));
    } else {
      using stage = detail::source_stage<Src>;
      detail::pipeline_def def = def_;
      def.stages.push_back(std::make_shared<stage>(std::move(name), std::move(src), detail::make_stage_options(opts...)));
      return flow<typename stage::item_type>(std::move(def));
    }
  }

 private:
  detail::pipeline_def def_;
};

// Starts declaring a pipeline. Options given here (ordered, batch_bytes, ring_slots,
// fusion(false)) apply to every stage.
template <class... Opts>
pipeline_builder pipeline(std::string name, const Opts&... opts) {
  static_assert(
      !(detail::is_pre_aggregate_v<Opts> || ...),
      "procflow: pipeline(): pre_aggregate::... is not a pipeline-wide option; give it to the reduce_by_key it is for");
  detail::pipeline_def def;
  def.name = std::move(name);
  (detail::apply_pipeline_option(def.options, opts), ...);
  return pipeline_builder(std::move(def));
}

}  // namespace procflow

#include <procflow/running.hpp>  // runnable<R>::start()
