// A pool of processes kept warm between requests: submit(x) returns a std::future of x's result,
// like Python's ProcessPoolExecutor.submit, from any number of caller threads.
//
//   auto pool = pf::serve<Request>("api")
//                   .map("parse", parse, pf::replicas(2))     // Request -> Query
//                   .filter("allowed", allowed)              // may drop: futures of optional
//                   .map("answer", answer)                   // Query -> Reply
//                   .start();
//   std::future<std::optional<Reply>> f = pool.submit(req);  // nullopt: a filter dropped it
//
// | call          | blocks | what it does                                                          |
// |---------------|--------|-----------------------------------------------------------------------|
// | submit(x)     | if full| sends x; the future gets its result, or its stage_error                |
// | try_submit(x) | no     | the same, or nullopt when the rings are full / another thread writes   |
// | submit_all(v) | if full| submit() of every item of v, published together (one hand-off)        |
// | wait()        | yes    | no more requests: lets the pool finish, reaps it; returns the report   |
// | ~pool()       | yes    | wait(), dropping its error                                            |
//
// A map/filter that throws fails that request's future with a stage_error (stage, replica, pid,
// item_seq() = the request's number, exception type and message); the pool keeps serving. A
// replica that dies (a signal, exit(), the watchdog) ends the pool: the requests it had in hand
// (its batch) fail with the stage_error naming it, every other request still pending fails with
// the same error (nothing is answered twice), and later submits throw it.
//
// Requests are published at once, except that concurrent submitters share a slot (the last of a
// group publishes it), so many client threads fill slots instead of paying one wake-up per item.
// Threads and forks as for running.hpp: start() forks on the calling thread (no other thread may
// run then, unless pf::allow_threads); the pool's own threads run until wait().
#pragma once

#include <procflow/detail/request.hpp>
#include <procflow/detail/started_run.hpp>
#include <procflow/input.hpp>
#include <procflow/pipeline.hpp>

#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace procflow {

namespace detail {

// The pool's side of its requests: promises by id, fulfilled from the results channel.
template <class Out, bool MayDrop>
class pool_state final : public result_collector {
 public:
  using result_type = std::conditional_t<MayDrop, std::optional<Out>, Out>;

  explicit pool_state(std::vector<std::string> stage_names) : stage_names_(std::move(stage_names)) {}

  // Under the pool's input lock (started_run::write): registers the request about to be sent.
  void add(std::uint64_t id, std::promise<result_type> promise) {
    std::lock_guard lock(mutex_);
    pending_.emplace(id, std::move(promise));
  }
  void forget(std::uint64_t id) {
    std::lock_guard lock(mutex_);
    pending_.erase(id);
  }

  void consume(const batch_view& batch) override {
    decode_items(batch, items_);
    std::lock_guard lock(mutex_);
    for (auto& r : items_) {
      const auto it = pending_.find(std::get<0>(r));
      if (it == pending_.end()) continue;  // never: every request is registered before it is sent
      answer(it->second, r);
      pending_.erase(it);
    }
  }

  // The run ended (driver thread): every request still pending fails with its error.
  void end(std::exception_ptr failure) {
    std::lock_guard lock(mutex_);
    if (!failure)
      failure = std::make_exception_ptr(procflow::error("procflow: the pool ended before answering this request"));
    for (auto& [id, promise] : pending_) promise.set_exception(failure);
    pending_.clear();
  }

  std::size_t pending() const {
    std::lock_guard lock(mutex_);
    return pending_.size();
  }

 private:
  void answer(std::promise<result_type>& promise, request<Out>& r) {
    switch (static_cast<request_status>(std::get<1>(r))) {
      case request_status::value:
        if (std::get<2>(r)) {
          promise.set_value(std::move(*std::get<2>(r)));
          return;
        }
        break;
      case request_status::dropped:
        if constexpr (MayDrop) {
          promise.set_value(std::nullopt);
          return;
        }
        break;
      case request_status::failed: {
        stage_error::details d;
        const std::uint32_t stage = std::get<3>(r);
        d.stage = stage < stage_names_.size() ? stage_names_[stage] : std::string("?");
        d.replica = std::get<4>(r);
        d.pid = std::get<5>(r);
        d.kind = stage_error::cause::exception;
        d.has_item = true;
        d.item_seq = std::get<0>(r);
        d.exception_type = std::move(std::get<6>(r));
        d.message = std::move(std::get<7>(r));
        promise.set_exception(std::make_exception_ptr(stage_error(std::move(d))));
        return;
      }
    }
    promise.set_exception(std::make_exception_ptr(procflow::codec_error("procflow: pool: a result arrived in an unknown state")));
  }

  std::vector<std::string> stage_names_;
  mutable std::mutex mutex_;
  std::unordered_map<std::uint64_t, std::promise<result_type>> pending_;
  batch_buffer<request<Out>> items_;  // driver thread only
};

}  // namespace detail

template <class In, class Out, bool MayDrop>
class pool {
 public:
  using result_type = std::conditional_t<MayDrop, std::optional<Out>, Out>;

  pool(detail::pipeline_def def, std::vector<std::string> stage_names)
      : state_(std::make_shared<detail::pool_state<Out, MayDrop>>(std::move(stage_names))) {
    auto shared = std::make_shared<const detail::pipeline_def>(std::move(def));
    run_ = detail::start_in_processes(std::move(shared), state_, [state = state_](std::exception_ptr e) { state->end(std::move(e)); });
  }
  pool(pool&&) noexcept = default;
  pool& operator=(pool&&) noexcept = default;
  ~pool() = default;  // run_ first: closes the input, waits for every answer, reaps

  // Sends `item`; blocks while the pool's input rings are full. Safe from any thread. Throws the
  // pool's failure if it ended (a replica died).
  std::future<result_type> submit(In item) {
    auto f = send(item, false);
    return std::move(*f);
  }
  // The same, or nullopt instead of waiting.
  std::optional<std::future<result_type>> try_submit(In item) { return send(item, true); }

  // Sends every item of `items` in one go (one lock, one publish: a job of many small requests
  // pays one hand-off, not one per item); the futures in the same order.
  std::vector<std::future<result_type>> submit_all(std::vector<In> items) {
    struct context {
      detail::pool_state<Out, MayDrop>* state;
      std::vector<In>* items;
      std::vector<std::future<result_type>> futures;
    } c{state_.get(), &items, {}};
    c.futures.reserve(items.size());
    run_->write([](void* ctx, detail::output_port& port, std::uint64_t first) {
      auto& x = *static_cast<context*>(ctx);
      detail::request<In> r;
      for (std::size_t k = 0; k < x.items->size(); ++k) {
        std::promise<result_type> promise;
        x.futures.push_back(promise.get_future());
        std::get<0>(r) = first + k;
        std::get<2>(r).emplace(std::move((*x.items)[k]));
        x.state->add(first + k, std::move(promise));
        try {
          detail::encode_item(r, port);
        } catch (...) {
          // Items already encoded may have been published: keep their promises (the pool's end
          // fails them); only this one never left.
          x.state->forget(first + k);
          throw;
        }
      }
      return static_cast<std::uint64_t>(x.items->size());
    }, &c, detail::publish_mode::group, false);
    return std::move(c.futures);
  }

  // No more requests: waits for every answer and the end of every process; the report.
  run_report wait() { return run_->wait(); }
  std::size_t pending() const { return state_->pending(); }

 private:
  std::optional<std::future<result_type>> send(In& item, bool try_only) {
    struct context {
      detail::pool_state<Out, MayDrop>* state;
      In* item;
      std::promise<result_type> promise;
      std::future<result_type> future;
    } c{state_.get(), &item, {}, {}};
    c.future = c.promise.get_future();
    const bool sent = run_->write([](void* ctx, detail::output_port& port, std::uint64_t id) {
      auto& x = *static_cast<context*>(ctx);
      detail::request<In> r;
      std::get<0>(r) = id;
      std::get<2>(r).emplace(std::move(*x.item));
      x.state->add(id, std::move(x.promise));
      try {
        detail::encode_item(r, port);
      } catch (...) {
        *x.item = std::move(*std::get<2>(r));  // a try that found no room keeps the caller's item
        x.state->forget(id);
        throw;
      }
      return std::uint64_t{1};
    }, &c, detail::publish_mode::group, try_only);
    if (!sent) return std::nullopt;
    return std::move(c.future);
  }

  std::shared_ptr<detail::pool_state<Out, MayDrop>> state_;
  std::unique_ptr<detail::started_run> run_;  // last: destroyed first
};

// The builder of a pool: a chain of map and filter over requests of type In.
template <class In, class Cur, bool MayDrop>
class service {
 public:
  service(flow<detail::request<Cur>> chain, std::vector<std::string> names) : chain_(std::move(chain)), names_(std::move(names)) {}

  template <class F, class... Opts>
  auto map(std::string name, F fn, const Opts&... opts) const {
    static_assert(!detail::is_factory_v<F>, "procflow: serve(): per_replica factories are not supported in a pool's stages yet");
    static_assert(detail::callable_with_item_v<detail::callable_t<F>, Cur>,
                  "procflow: serve().map(): the function cannot be called with the previous stage's item type");
    using U = detail::item_result_t<detail::callable_t<F>, Cur>;
    static_assert(!std::is_void_v<U>, "procflow: serve().map(): the function must return the result");
    auto names = names_;
    names.push_back(name);
    const auto stage = static_cast<std::uint32_t>(names_.size());
    return service<In, U, MayDrop>(chain_.map(std::move(name), detail::request_map<Cur, U, F>{std::move(fn), stage}, opts...),
                                   std::move(names));
  }

  template <class F, class... Opts>
  auto filter(std::string name, F pred, const Opts&... opts) const {
    static_assert(!detail::is_factory_v<F>, "procflow: serve(): per_replica factories are not supported in a pool's stages yet");
    static_assert(std::is_invocable_r_v<bool, detail::callable_t<F>&, const Cur&>,
                  "procflow: serve().filter(): the predicate must take the previous stage's item (const T&) and return bool");
    auto names = names_;
    names.push_back(name);
    const auto stage = static_cast<std::uint32_t>(names_.size());
    return service<In, Cur, true>(chain_.map(std::move(name), detail::request_filter<Cur, F>{std::move(pred), stage}, opts...),
                                  std::move(names));
  }

  // Forks the pool's processes (see the fork rule above) and returns it, ready for submit().
  pool<In, Cur, MayDrop> start() const {
    auto names = names_;
    names.push_back("collect");
    return pool<In, Cur, MayDrop>(chain_.collect().definition(), std::move(names));
  }

 private:
  flow<detail::request<Cur>> chain_;
  std::vector<std::string> names_;
};

// Starts declaring a pool whose requests are In (see above). Pipeline options apply to every
// stage (pf::allow_threads, pf::cores(n), ...).
template <class In, class... Opts>
service<In, In, false> serve(std::string name, const Opts&... opts) {
  auto chain = pipeline(std::move(name), opts...).source("requests", input<detail::request<In>>());
  return service<In, In, false>(std::move(chain), {"requests"});
}

}  // namespace procflow
