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
// | submit_all(v) | if full| every item of v, published together: one job_future for the job        |
// | wait()        | yes    | no more requests: lets the pool finish, reaps it; returns the report   |
// | ~pool()       | yes    | wait(), dropping its error                                            |
//
// A map/filter that throws fails that request's future with a stage_error (stage, replica, pid,
// item_seq() = the request's number, exception type and message); the pool keeps serving. A
// replica that dies (a signal, exit(), the watchdog) fails exactly the requests of the batch it
// had in hand, with the stage_error naming it; the pool then starts its processes again and
// redelivers every other request not answered yet (In must be copyable; a redelivered request
// may have run once already, but its future is set once). restarts() counts these. A crash
// during wait() fails what is pending instead.
//
// A request is published at once while a replica is idle or about to be. While every replica has
// a slot queued behind the one it works on, requests wait in one open slot, clocked by the
// answers: the results thread publishes it when a result batch comes back (the latency bound is
// the backstop), so busy replicas take requests in batches instead of paying a wake-up each
// (started_run.cpp). Concurrent submitters share a slot (the last of a group publishes it).
// Threads and forks as for running.hpp: start() forks on the calling thread (no other thread may
// run then, unless pf::allow_threads); the pool's own threads run until it is destroyed. A
// restart forks from the pool's restart thread while the caller's threads run: the new replicas
// inherit only that thread, so stage code must not take locks the caller's threads hold.
#pragma once

#include <procflow/detail/request.hpp>
#include <procflow/detail/started_run.hpp>
#include <procflow/input.hpp>
#include <procflow/job_future.hpp>
#include <procflow/pipeline.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <future>
#include <shared_mutex>
#include <thread>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <map>
#include <utility>
#include <vector>

namespace procflow {

namespace detail {

// A request's number: the pipeline generation (restarts after a crash) and its position in that
// generation's input stream (what a replica's error range names).
inline constexpr int request_generation_shift = 40;

// The pool's side of its requests: promises by id, fulfilled from the results channel, and the
// restart after a replica crash (pool<...> below is its handle).
template <class In, class Out, bool MayDrop>
class pool_core final : public result_collector {
 public:
  using result_type = std::conditional_t<MayDrop, std::optional<Out>, Out>;

  pool_core(pipeline_def def, std::vector<std::string> stage_names)
      : def_(std::make_shared<const pipeline_def>(std::move(def))), stage_names_(std::move(stage_names)) {}

  // Forks the first generation (on the calling thread) and the restart thread.
  void start() {
    run_ = start_generation(def_);
    restarter_ = std::thread([this] { restart_loop(); });
  }

  ~pool_core() override {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    restart_cv_.notify_all();
    if (restarter_.joinable()) restarter_.join();
    std::unique_lock run_lock(run_mutex_);
    run_.reset();  // closes the input, waits for every answer, reaps
  }

  std::optional<std::future<result_type>> send(In& item, bool try_only) {
    for (;;) {
      std::shared_lock run_lock(run_mutex_);
      const std::uint64_t generation = generation_.load(std::memory_order_relaxed);  // under run_mutex_
      struct context {
        pool_core* self;
        In* item;
        std::uint64_t generation;
        std::future<result_type> future;
        bool added;
        bool dropped;
      } c{this, &item, generation, {}, false, false};
      try {
        const bool sent = run_->write([](void* ctx, output_port& port, std::uint64_t position) {
          auto& x = *static_cast<context*>(ctx);
          const std::uint64_t id = (x.generation << request_generation_shift) | position;
          x.future = x.self->add(id, *x.item);
          x.added = true;
          x.self->encode_request(id, id, *x.item, port, &x.dropped);
          return std::uint64_t{1};
        }, &c, publish_mode::group, try_only);
        if (!sent) return std::nullopt;
        return std::move(c.future);
      } catch (const stage_error&) {
        // The generation failed. A request already in the table is pending (the restart
        // redelivers it); one not yet in it is sent again.
        if (!retry_after(generation, run_lock)) throw;
        if (c.added && !c.dropped) return std::move(c.future);
      }
    }
  }

  // One table entry and one job_state for the whole job; the items are kept (not copied) for a
  // redelivery after a crash.
  job_future<result_type> send_all(std::vector<In>&& items) {
    auto job = std::make_shared<job_state<result_type>>(items.size());
    if (items.empty()) return job_future<result_type>(std::move(job));
    auto kept = std::make_shared<const std::vector<In>>(std::move(items));
    for (;;) {
      std::shared_lock run_lock(run_mutex_);
      const std::uint64_t generation = generation_.load(std::memory_order_relaxed);  // under run_mutex_
      struct context {
        pool_core* self;
        const std::shared_ptr<job_state<result_type>>* job;
        const std::shared_ptr<const std::vector<In>>* items;
        std::uint64_t generation;
        bool added;
      } c{this, &job, &kept, generation, false};
      try {
        run_->write([](void* ctx, output_port& port, std::uint64_t first) {
          auto& x = *static_cast<context*>(ctx);
          const std::vector<In>& v = **x.items;
          const std::uint64_t id = (x.generation << request_generation_shift) | first;
          pending_entry e;
          e.count = v.size();
          e.unanswered = v.size();
          e.job = *x.job;
          e.job_items = *x.items;
          x.self->add_entry(id, std::move(e));
          x.added = true;
          for (std::size_t k = 0; k < v.size(); ++k) x.self->encode_request(id, id + k, v[k], port);
          return static_cast<std::uint64_t>(v.size());
        }, &c, publish_mode::group, false);
        return job_future<result_type>(std::move(job));
      } catch (const stage_error&) {
        // The generation failed. A job already in the table is pending: the restart redelivers
        // every item of it not answered (written or not); one not yet in it is sent again.
        if (!retry_after(generation, run_lock)) throw;
        if (c.added) return job_future<result_type>(std::move(job));
      }
    }
  }

  run_report wait() {
    std::unique_lock lock(mutex_);
    finishing_ = true;  // a crash from now on fails what is pending instead of restarting
    lock.unlock();
    std::shared_lock run_lock(run_mutex_);
    return run_->wait();
  }

  std::size_t pending() const {
    std::lock_guard lock(mutex_);
    std::size_t n = 0;
    for (const auto& [id, e] : pending_) n += e.unanswered;
    return n;
  }
  std::uint64_t restarts() const { return generation_.load(std::memory_order_acquire); }

  // result_collector: requests are waiting for their answers (see result_collector::awaited).
  bool awaited() const noexcept override { return table_size_.load(std::memory_order_relaxed) != 0; }

  // result_collector: the results channel (driver thread of the current generation). A job's
  // answers of one batch are stored under one lock of its state, and its caller woken once. A
  // submit()'s promise leaves the table under the lock and is set after it: setting it wakes a
  // waiting caller (a futex syscall), which submitters must not queue behind.
  void consume(const batch_view& batch) override {
    decode_items(batch, items_);
    settled_.clear();  // after a throw below, this breaks the unset futures: no caller is left waiting
    {
      std::lock_guard lock(mutex_);
      take_answers();
    }
    // Last first (only bad_alloc can throw here): a caller waits on its earliest request, and
    // finds the later ones of this batch set when it wakes instead of sleeping again on each.
    for (auto it = settled_.rbegin(); it != settled_.rend(); ++it) answer(it->first, *it->second);
    settled_.clear();
  }

 private:
  // consume() under mutex_: the answered submit()s' promises into settled_, a job's answers into
  // its state.
  void take_answers() {
    auto it = pending_.end();
    std::shared_ptr<job_state<result_type>> job;  // the job whose lock is held (kept alive by this)
    std::unique_lock<std::mutex> job_lock;
    auto leave_job = [&] {
      if (!job) return;
      job_lock.unlock();
      job->notify();
      job.reset();
    };
    for (auto& r : items_) {
      const std::uint64_t id = std::get<0>(r);
      // A batch answers runs of consecutive ids of one entry: look up only when leaving it.
      if (it == pending_.end() || id < it->first || id - it->first >= it->second.count) it = find_entry(id);
      if (it == pending_.end()) continue;  // answered already (before a restart redelivered it)
      pending_entry& e = it->second;
      if (!e.job) {
        settled_.emplace_back(std::move(*e.promise), &r);
        pending_.erase(it);
        it = pending_.end();
        continue;
      }
      if (job != e.job) {
        leave_job();
        job = e.job;
        job_lock = job->lock();
      }
      if (answer(*job, e.job_item(id - it->first), r) && --e.unanswered == 0) {
        pending_.erase(it);
        it = pending_.end();
      }
    }
    counted();
    leave_job();
  }

  // The table's entry for requests first .. first + count - 1 (first is the key): one submit()
  // (a promise) or consecutive requests of one submit_all() (a job).
  struct pending_entry {
    std::uint64_t count = 1;
    std::uint64_t unanswered = 1;
    // submit()
    std::optional<std::promise<result_type>> promise;
    std::optional<In> item;  // kept for a redelivery after a crash (copyable In only)
    // submit_all()
    std::shared_ptr<job_state<result_type>> job;
    std::shared_ptr<const std::vector<In>> job_items;  // the job's items, kept for a redelivery
    std::vector<std::size_t> job_index;  // the job item of each request; empty: the k-th is item k

    std::size_t job_item(std::uint64_t k) const { return job_index.empty() ? static_cast<std::size_t>(k) : job_index[k]; }
  };
  using table = std::map<std::uint64_t, pending_entry>;

  // Under mutex_: the entry holding request `id`, or end().
  typename table::iterator find_entry(std::uint64_t id) {
    auto it = pending_.upper_bound(id);
    if (it == pending_.begin()) return pending_.end();
    --it;
    return id - it->first < it->second.count ? it : pending_.end();
  }

  std::unique_ptr<started_run> start_generation(std::shared_ptr<const pipeline_def> def) {
    auto self = std::shared_ptr<result_collector>(std::shared_ptr<void>(), this);  // not owning
    return start_in_processes(std::move(def), std::move(self), [this](std::exception_ptr e) { on_end(std::move(e)); });
  }

  std::future<result_type> add(std::uint64_t id, const In& item) {
    pending_entry p;
    p.promise.emplace();
    if constexpr (std::is_copy_constructible_v<In>) p.item.emplace(item);
    auto future = p.promise->get_future();
    add_entry(id, std::move(p));
    return future;
  }

  void add_entry(std::uint64_t first, pending_entry e) {
    std::unique_lock lock(mutex_);
    // A writer that passed the run's stopped check just before its generation ended for good (no
    // restart) arrives after on_end settled the table: nobody would settle this entry (its future
    // would never be ready), so it fails now with the generation's failure. A generation ending
    // with a restart waits for its writers (run_mutex_), whose entries the restart takes over.
    if ((first >> request_generation_shift) < ended_generation_ && !restarting_) {
      const std::exception_ptr failure = ended_failure_;
      lock.unlock();
      fail_entry(e, failure);
      return;
    }
    pending_.emplace(first, std::move(e));
    counted();
  }

  // Under mutex_, after pending_ changed: its size for awaited(), which reads it without the lock
  // (a stale value costs at most one short spin, or one missed).
  void counted() noexcept { table_size_.store(pending_.size(), std::memory_order_relaxed); }

  // Writes request `id` (of the table entry `entry`); a codec error (or no room for a try_submit)
  // fails and drops the whole entry (a first send hands out no future or job then) and propagates.
  // Called inside run_->write (run_mutex_ held shared).
  void encode_request(std::uint64_t entry, std::uint64_t id, const In& item, output_port& port, bool* dropped = nullptr) {
    request<In> r;
    std::get<0>(r) = id;
    std::get<2>(r).emplace(item);
    try {
      encode_item(r, port);
    } catch (...) {
      // The generation ended while this waited for room (its writer gave up): the entry stays
      // in the table, where on_end and the restart settle it like any other pending request.
      // done() turns true before a waiting writer is told to give up (started_run.cpp).
      if (run_->done()) throw;
      std::lock_guard lock(mutex_);
      const auto it = pending_.find(entry);
      if (it != pending_.end()) {
        fail_entry(it->second, std::current_exception());  // a redelivered job's caller waits on it
        pending_.erase(it);
        counted();
      }
      if (dropped) *dropped = true;
      throw;
    }
  }

  // A write failed with the generation's error: true once a newer generation took over.
  bool retry_after(std::uint64_t generation, std::shared_lock<std::shared_mutex>& run_lock) {
    run_lock.unlock();
    std::unique_lock lock(mutex_);
    // Until on_end handled this generation and any restart it asked for is done.
    restart_cv_.wait(lock, [&] { return stopping_ || (ended_generation_ > generation && !restarting_); });
    return !stopping_ && generation_.load(std::memory_order_acquire) != generation;
  }

  // The current generation ended (its driver thread). A replica that died holding a batch fails
  // exactly that batch's requests; the others are redelivered on a new generation (unless the
  // pool is ending). Any other failure fails every pending request.
  void on_end(std::exception_ptr failure) {
    std::lock_guard lock(mutex_);
    const stage_error* crash = nullptr;
    try {
      if (failure) std::rethrow_exception(failure);
    } catch (const stage_error& e) {
      if (e.kind() != stage_error::cause::exception && e.has_item_range()) crash = &e;
    } catch (...) {
    }
    const bool restart = crash && !finishing_ && !stopping_ && std::is_copy_constructible_v<In>;
    if (!failure) failure = std::make_exception_ptr(procflow::error("procflow: the pool ended before answering this request"));
    // Fails request `id` unless it is redelivered.
    auto fails = [&](std::uint64_t id) {
      const std::uint64_t position = id & ((std::uint64_t{1} << request_generation_shift) - 1);
      const bool current = (id >> request_generation_shift) == ended_generation_;
      const bool held = crash && current && position >= crash->item_range_first() && position < crash->item_range_last();
      return !restart || held;
    };
    for (auto it = pending_.begin(); it != pending_.end();) {
      pending_entry& e = it->second;
      if (!e.job) {
        if (!fails(it->first)) {
          ++it;
          continue;
        }
        e.promise->set_exception(failure);
        it = pending_.erase(it);
        continue;
      }
      {
        auto job_lock = e.job->lock();
        for (std::uint64_t k = 0; k < e.count; ++k)
          if (fails(it->first + k) && e.job->set_error(e.job_item(k), failure)) --e.unanswered;
      }
      e.job->notify();
      it = e.unanswered == 0 ? pending_.erase(it) : std::next(it);
    }
    counted();
    ++ended_generation_;
    ended_failure_ = failure;
    restarting_ = restart;
    restart_cv_.notify_all();
  }

  // Starts the next generation and redelivers what the crashed one did not answer.
  void restart_loop() {
    std::unique_lock lock(mutex_);
    for (;;) {
      restart_cv_.wait(lock, [&] { return restarting_ || stopping_; });
      if (stopping_) {
        restarting_ = false;
        restart_cv_.notify_all();
        return;
      }
      lock.unlock();
      std::unique_ptr<started_run> old;
      std::exception_ptr failed;
      {
        // Exclusive: every writer of the dead generation has left (its entries are in the table).
        std::unique_lock run_lock(run_mutex_);
        old = std::move(run_);
        old.reset();  // its driver has ended: reaps the dead generation, frees its memory
        try {
          // Forks from this thread while the caller's threads run (see the note at pool).
          auto def = std::make_shared<pipeline_def>(*def_);
          def->options.allow_threads = true;
          run_ = start_generation(std::move(def));
          // Release: pairs with retry_after's acquire (a writer that sees it retries on run_).
          generation_.fetch_add(1, std::memory_order_release);
        } catch (...) {
          failed = std::current_exception();
        }
      }
      lock.lock();
      std::vector<std::pair<std::uint64_t, pending_entry>> orphans;
      for (auto& [id, p] : pending_) orphans.emplace_back(id, std::move(p));  // in id order (a std::map)
      pending_.clear();
      counted();
      restarting_ = false;
      restart_cv_.notify_all();
      lock.unlock();
      for (auto& [id, p] : orphans) {
        try {
          if (failed) std::rethrow_exception(failed);
          redeliver(std::move(p));
        } catch (...) {
          fail_entry(p, std::current_exception());
        }
      }
      lock.lock();
    }
  }

  // Fails every request of `e` not answered yet (an entry out of the table).
  static void fail_entry(pending_entry& e, std::exception_ptr failure) {
    if (!e.job) {
      if (e.promise) e.promise->set_exception(std::move(failure));
      return;
    }
    {
      auto job_lock = e.job->lock();
      for (std::uint64_t k = 0; k < e.count; ++k) e.job->set_error(e.job_item(k), failure);
    }
    e.job->notify();
  }

  // Sends an entry of the dead generation again: a request, or a job's unanswered items as one
  // entry of the new generation.
  void redeliver(pending_entry&& p) {
    std::vector<std::size_t> items;  // the job items still unanswered
    if (p.job) {
      {
        auto job_lock = p.job->lock();
        for (std::uint64_t k = 0; k < p.count; ++k)
          if (!p.job->answered(p.job_item(k))) items.push_back(p.job_item(k));
      }
      if (items.empty()) return;
    }
    std::shared_lock run_lock(run_mutex_);
    struct context {
      pool_core* self;
      pending_entry* p;
      std::vector<std::size_t>* items;
      std::uint64_t generation;
      bool added;
    } c{this, &p, &items, generation_.load(std::memory_order_relaxed), false};
    try {
      run_->write([](void* ctx, output_port& port, std::uint64_t position) {
        auto& x = *static_cast<context*>(ctx);
        const std::uint64_t id = (x.generation << request_generation_shift) | position;
        if (!x.p->job) {
          In item = *x.p->item;
          x.self->add_entry(id, std::move(*x.p));
          x.added = true;
          x.self->encode_request(id, id, item, port);
          return std::uint64_t{1};
        }
        pending_entry e;
        e.count = x.items->size();
        e.unanswered = x.items->size();
        e.job = x.p->job;
        e.job_items = x.p->job_items;
        e.job_index = *x.items;
        const auto job_items = e.job_items;
        x.self->add_entry(id, std::move(e));
        x.added = true;
        for (std::size_t k = 0; k < x.items->size(); ++k) x.self->encode_request(id, id + k, (*job_items)[(*x.items)[k]], port);
        return static_cast<std::uint64_t>(x.items->size());
      }, &c, publish_mode::group, false);
    } catch (...) {
      // Once in the table, the entry is settled there (by the next on_end, or the codec error).
      if (!c.added) fail_entry(p, std::current_exception());
    }
  }

  // Settles one answer: a request's promise, or item i of a job (under its lock; false when it
  // was answered before).
  void answer(std::promise<result_type>& promise, request<Out>& r) {
    std::optional<result_type> value;
    if (std::exception_ptr error = outcome(r, value))
      promise.set_exception(std::move(error));
    else
      promise.set_value(std::move(*value));
  }
  bool answer(job_state<result_type>& job, std::size_t i, request<Out>& r) {
    if (job.answered(i)) return false;
    std::optional<result_type> value;
    if (std::exception_ptr error = outcome(r, value)) return job.set_error(i, std::move(error));
    return job.set_value(i, std::move(*value));
  }

  // A result's value (into `value`), or its error.
  std::exception_ptr outcome(request<Out>& r, std::optional<result_type>& value) {
    switch (static_cast<request_status>(std::get<1>(r))) {
      case request_status::value:
        if (std::get<2>(r)) {
          value.emplace(std::move(*std::get<2>(r)));
          return nullptr;
        }
        break;
      case request_status::dropped:
        if constexpr (MayDrop) {
          value.emplace(std::nullopt);
          return nullptr;
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
        d.item_seq = std::get<0>(r) & ((std::uint64_t{1} << request_generation_shift) - 1);
        d.exception_type = std::move(std::get<6>(r));
        d.message = std::move(std::get<7>(r));
        return std::make_exception_ptr(stage_error(std::move(d)));
      }
    }
    return std::make_exception_ptr(procflow::codec_error("procflow: pool: a result arrived in an unknown state"));
  }

  std::shared_ptr<const pipeline_def> def_;
  std::vector<std::string> stage_names_;

  // run_ and generation_: replaced by the restart thread under an exclusive lock; writers hold
  // it shared while they write.
  mutable std::shared_mutex run_mutex_;
  std::unique_ptr<started_run> run_;
  std::atomic<std::uint64_t> generation_{0};  // written under run_mutex_ (exclusive)

  mutable std::mutex mutex_;  // pending_ and the restart state
  table pending_;
  std::atomic<std::size_t> table_size_{0};  // pending_.size(), for awaited()
  std::uint64_t ended_generation_ = 0;  // generation whose end on_end handles next
  std::exception_ptr ended_failure_;    // the failure on_end settled the last ended generation with
  bool restarting_ = false;
  bool finishing_ = false;
  bool stopping_ = false;
  std::condition_variable restart_cv_;
  std::thread restarter_;

  batch_buffer<request<Out>> items_;  // driver thread only
  std::vector<std::pair<std::promise<result_type>, request<Out>*>> settled_;  // consume(): promises to set
};

}  // namespace detail

template <class In, class Out, bool MayDrop>
class pool {
 public:
  using result_type = std::conditional_t<MayDrop, std::optional<Out>, Out>;

  pool(detail::pipeline_def def, std::vector<std::string> stage_names)
      : core_(std::make_unique<detail::pool_core<In, Out, MayDrop>>(std::move(def), std::move(stage_names))) {
    core_->start();
  }
  pool(pool&&) noexcept = default;
  pool& operator=(pool&&) noexcept = default;
  ~pool() = default;  // closes the input, waits for every answer, reaps

  // Sends `item`; blocks while the pool's input rings are full. Safe from any thread. Throws the
  // pool's failure if it ended.
  std::future<result_type> submit(In item) { return std::move(*core_->send(item, false)); }
  // The same, or nullopt instead of waiting.
  std::optional<std::future<result_type>> try_submit(In item) { return core_->send(item, true); }
  // Sends every item of `items` in one go (one lock, one publish, one table entry: a job of many
  // small requests pays one hand-off, not one per item); its answers through one job_future
  // (job_future.hpp): get(i) per item in the same order, or get() for all.
  job_future<result_type> submit_all(std::vector<In> items) { return core_->send_all(std::move(items)); }

  // No more requests: waits for every answer and the end of every process; the report.
  run_report wait() { return core_->wait(); }
  // Requests not answered yet.
  std::size_t pending() const { return core_->pending(); }
  // Times the pool restarted after a replica died.
  std::uint64_t restarts() const { return core_->restarts(); }

 private:
  std::unique_ptr<detail::pool_core<In, Out, MayDrop>> core_;
};

// The builder of a pool: a chain of map and filter over requests of type In.
template <class In, class Cur, bool MayDrop>
class service {
 public:
  service(flow<detail::request<Cur>> chain, std::vector<std::string> names) : chain_(std::move(chain)), names_(std::move(names)) {}

  // fn may be a pf::per_replica factory: each replica builds its own callable (a connection, a
  // model) once, and its finish() runs when the pool ends.
  template <class F, class... Opts>
  auto map(std::string name, F fn, const Opts&... opts) const {
    static_assert(detail::callable_with_item_v<detail::callable_t<F>, Cur>,
                  "procflow: serve().map(): the function cannot be called with the previous stage's item type");
    using U = detail::item_result_t<detail::callable_t<F>, Cur>;
    static_assert(!std::is_void_v<U>, "procflow: serve().map(): the function must return the result");
    auto names = names_;
    names.push_back(name);
    const auto stage = static_cast<std::uint32_t>(names_.size());
    return service<In, U, MayDrop>(chain_.map(std::move(name), wrap<false, U>(std::move(fn), stage), opts...),
                                   std::move(names));
  }

  template <class F, class... Opts>
  auto filter(std::string name, F pred, const Opts&... opts) const {
    static_assert(std::is_invocable_r_v<bool, detail::callable_t<F>&, const Cur&>,
                  "procflow: serve().filter(): the predicate must take the previous stage's item (const T&) and return bool");
    auto names = names_;
    names.push_back(name);
    const auto stage = static_cast<std::uint32_t>(names_.size());
    return service<In, Cur, true>(chain_.map(std::move(name), wrap<true, Cur>(std::move(pred), stage), opts...),
                                  std::move(names));
  }

  // Forks the pool's processes (see the fork rule above) and returns it, ready for submit().
  pool<In, Cur, MayDrop> start() const {
    auto names = names_;
    names.push_back("collect");
    return pool<In, Cur, MayDrop>(chain_.collect().definition(), std::move(names));
  }

 private:
  // The user's callable wrapped to pass request ids on (request_filter for a filter, else
  // request_map to U); a per_replica factory becomes a factory of wrapped callables.
  template <bool Filter, class U, class F>
  static auto wrap(F fn, std::uint32_t stage) {
    if constexpr (detail::is_factory_v<F>) {
      using Made = detail::callable_t<F>;
      return per_replica([make = std::move(fn.factory), stage]() mutable { return wrap<Filter, U, Made>(make(), stage); });
    } else if constexpr (Filter) {
      return detail::request_filter<Cur, F>{std::move(fn), stage};
    } else {
      return detail::request_map<Cur, U, F>{std::move(fn), stage};
    }
  }

  flow<detail::request<Cur>> chain_;
  std::vector<std::string> names_;
};

// Starts declaring a pool whose requests are In (see above). Pipeline options apply to every
// stage (pf::allow_threads, pf::cores(n), ...).
template <class In, class... Opts>
service<In, In, false> serve(std::string name, const Opts&... opts) {
  // Slots of 2 KiB (a few dozen small requests): a replica that dies fails the batch it held,
  // so batches stay small; concurrent submitters still share them. Every stage hands on each
  // batch's answers at once (max_latency(0), unless the options say otherwise): the answers are
  // what clocks the requests held back while the replicas are busy (started_run.cpp), and a
  // caller waits for them. The requests themselves keep the default bound as a backstop.
  auto chain = pipeline(std::move(name), max_latency(std::chrono::nanoseconds(0)), opts...)
                   .source("requests", input<detail::request<In>>(), batch_bytes(2048), max_latency(std::chrono::milliseconds(5)));
  return service<In, In, false>(std::move(chain), {"requests"});
}

}  // namespace procflow
