// StartedRun: a pipeline that stays up (detail::started_run, behind procflow::running and
// procflow::pool).
//
//   caller threads --write()--> [input lock] Outbox --ring--> replicas ... --results--> driver thread
//                                    ^ latency flusher thread                 (collector, on_end)
//
// The replicas are forked in the constructor, on the caller's thread (the fork rule of run()).
// Then a driver thread runs the supervisor loop (drain results into the collector, watch the
// children, schedule) until the run ends. A caller-fed source (pf::input) is no process: the
// caller's process holds producer 0 of the first channel, an Outbox used under one lock by
// whichever caller thread writes. Items wait in its open slot until it is full, until the
// latency bound passes (a small timer thread publishes it), or are published at once
// (publish_mode::now / group).
//
// publish_mode::group (pool submits) is clocked by the answers, as TCP by its acks: while every
// consumer still has a slot queued behind the one it works on, publishing at once would only make
// batches smaller (one wake-up of a replica, of the driver and of a caller per few requests), so
// the open slot stays open; the driver publishes it as soon as a result batch comes back (a
// replica finished one), and a writer publishes it when it finds a consumer running dry. The
// latency bound stays the backstop. With the bound off, group mode publishes at once as before.
#include "channel/event.hpp"
#include "channel/outbox.hpp"
#include "runtime/cancel_state.hpp"
#include "runtime/identity.hpp"
#include "runtime/run_state.hpp"
#include "runtime/supervisor.hpp"

#include <procflow/detail/started_run.hpp>
#include <procflow/error.hpp>
#include <procflow/pipeline.hpp>

#include <fmt/format.h>

#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>

namespace procflow::detail {

namespace {

using Clock = std::chrono::steady_clock;

class StartedRun final : public started_run {
 public:
  StartedRun(std::shared_ptr<const pipeline_def> def, std::shared_ptr<result_collector> collector,
             std::function<void(std::exception_ptr)> on_end)
      : def_(with_cancel(std::move(def))), collector_(std::move(collector)), on_end_(std::move(on_end)) {
    // Result batches reach the caller's collector through acks_, which also publishes requests
    // held for the answers' clock (publish_mode::group).
    if (collector_) acks_.emplace(*this, *collector_);
    supervised_ = runtime::start_supervised(*def_, acks_ ? &*acks_ : nullptr);  // forks, on this thread
    const runtime::Plan& plan = supervised_->plan();
    if (plan.caller_fed) {
      const runtime::Group& g = plan.groups.front();
      const runtime::RunState& state = supervised_->state();
      const channel::Channel& channel = g.output == runtime::GroupOutput::results ? state.results() : state.input_of(1);
      channel::OutboxOptions o;
      o.dispatch = g.dispatch;
      o.source = true;  // numbered, dense batches: ordering and error positions downstream key on them
      o.abandon = &abandoned_;
      o.on_publish = [](void* self) { static_cast<StartedRun*>(self)->mirror_counters(); };
      o.publish_context = this;
      o.publish_each_item = g.out_latency_ns == 0;
      o.spin = plan.spin;
      outbox_.emplace(channel, 0, o);
      space_event_ = &channel.space_event(0);
      latency_ = std::chrono::nanoseconds(std::max<std::int64_t>(g.out_latency_ns, 0));
    }
    driver_ = std::thread([this] { drive(); });
    if (outbox_ && latency_.count() > 0) flusher_ = std::thread([this] { flush_loop(); });
  }

  ~StartedRun() override {
    try {
      if (outbox_) close();
    } catch (...) {
      // The run failed: the driver ends on its own.
    }
    if (driver_.joinable()) driver_.join();
    {
      std::lock_guard lock(input_mutex_);
      stop_flusher_ = true;
    }
    flush_cv_.notify_all();
    if (flusher_.joinable()) flusher_.join();
    outbox_.reset();
    supervised_.reset();  // reaps every replica, frees the shared memory
  }

  bool write(encoder encode, void* context, publish_mode mode, bool try_only) override {
    if (!outbox_)
      throw procflow::error(fmt::format("procflow: pipeline '{}': push/submit need a source fed by the caller (pf::input<T>())", def_->name));
    // Counted before the lock: a writer holding it sees whether others wait (publish_mode::group).
    writers_.fetch_add(1, std::memory_order_relaxed);
    struct leave_once {
      std::atomic<int>& writers;
      bool left = false;
      int leave() {
        left = true;
        return writers.fetch_sub(1, std::memory_order_acq_rel) - 1;
      }
      ~leave_once() {
        if (!left) writers.fetch_sub(1, std::memory_order_relaxed);
      }
    } writer{writers_};
    std::unique_lock lock(input_mutex_, std::defer_lock);
    if (try_only) {
      if (!lock.try_lock()) return false;
    } else {
      lock.lock();
    }
    throw_if_stopped();
    outbox_->set_wait_deadline(try_only ? Clock::time_point::min() : Clock::time_point::max());
    std::uint64_t written = 0;
    try {
      written = encode(context, *outbox_, position_);
    } catch (const channel::would_block&) {
      throw_if_stopped();
      return false;
    }
    position_ += written;
    const int others = writer.leave();
    if (mode == publish_mode::group && others == 0 && latency_.count() > 0 && outbox_->min_queued_slots() >= 2) {
      hold_for_answers();
      lock.unlock();
      // A consumer may have run dry while this thread held the lock (the driver's try failed).
      publish_held(/*only_if_dry=*/true);
    } else if (mode == publish_mode::now || (mode == publish_mode::group && others == 0) || outbox_->publish_each_item()) {
      publish_open_slot();
    } else if (mode == publish_mode::latency && !pending_) {
      start_pending();
    }
    return true;
  }

  void flush() override {
    if (!outbox_) return;
    std::lock_guard lock(input_mutex_);
    if (closed_) return;
    publish_open_slot();
  }

  void close() override {
    if (!outbox_) return;
    std::lock_guard lock(input_mutex_);
    if (closed_) return;
    closed_ = true;
    if (!abandoned_.load(std::memory_order_relaxed)) outbox_->close();
  }

  run_report wait() override {
    if (waited_.exchange(true)) throw procflow::error(fmt::format("procflow: pipeline '{}': wait() was called already", def_->name));
    close();
    if (driver_.joinable()) driver_.join();
    if (failure_) std::rethrow_exception(failure_);
    return std::move(report_);
  }

  void cancel() noexcept override {
    // As cancel_source::request_stop(): the supervisor loop polls the eventfd with the pidfds.
    def_->options.cancel->requested.store(1, std::memory_order_relaxed);
    const std::uint64_t one = 1;
    (void)!::write(def_->options.cancel->wake_fd, &one, sizeof one);
  }

  bool done() const noexcept override { return ended_.load(std::memory_order_acquire); }

 private:
  // A copy of the declaration with a cancel_source of its own when it has none (cancel()).
  static std::shared_ptr<const pipeline_def> with_cancel(std::shared_ptr<const pipeline_def> def) {
    if (def->options.cancel) return def;
    auto copy = std::make_shared<pipeline_def>(*def);
    copy->options.cancel = cancel_source().state();
    return copy;
  }

  void drive() {
    // pf::this_replica() and pf::counter() in a sink or collect running here (this thread only:
    // the caller's own threads keep their identity), as run() answers on the caller's thread.
    runtime::ThreadIdentity caller_side;
    caller_side.id.def = def_.get();
    caller_side.id.stage = def_->stages.size() - 1;
    caller_side.id.run_seed = supervised_->plan().seed;
    caller_side.id.in_supervisor = true;
    caller_side.counters = &supervised_->state().caller_counters();
    const runtime::ThreadIdentityScope wear(caller_side);
    std::exception_ptr error;
    try {
      report_ = supervised_->drive();
    } catch (...) {
      error = std::current_exception();
    }
    failure_ = error;
    // SYNC POINT (release): failure_ and report_ are written before done() or a writer that
    // sees abandoned_ reads them.
    ended_.store(true, std::memory_order_release);
    // Every replica is gone: a writer waiting for room gives up (and throws the failure).
    abandoned_.store(true, std::memory_order_release);
    if (space_event_) channel::notify(*space_event_);
    if (on_end_) on_end_(error);
  }

  // The collector the supervisor feeds: the caller's, then the answers' clock (see the top).
  struct AckingCollector final : forwarding_collector {
    AckingCollector(StartedRun& owner, result_collector& collector) : forwarding_collector(collector), run(owner) {}
    void consume(const batch_view& batch) override {
      inner().consume(batch);
      run.publish_held();
    }
    StartedRun& run;
  };

  // Under input_mutex_: the open slot waits for an answer (or the latency bound).
  void hold_for_answers() {
    if (!pending_) start_pending();
    held_.store(true, std::memory_order_relaxed);
  }

  // Under input_mutex_: the open slot starts its wait for the latency bound. The flusher is
  // woken only when parked; while it ticks, it finds the slot itself (flush_loop).
  void start_pending() {
    pending_ = true;
    pending_since_ = Clock::now();
    if (flusher_parked_) {
      flusher_parked_ = false;
      flush_cv_.notify_one();
    }
  }

  // Publishes a slot held for the answers' clock. Never waits for the input lock: a writer that
  // holds it publishes or holds by the same rule and checks the consumers again after unlocking
  // (the driver must not wait behind a writer blocked on a full ring: that writer waits for
  // the very replicas whose answers this thread reads).
  void publish_held(bool only_if_dry = false) {
    if (!held_.load(std::memory_order_relaxed)) return;
    std::unique_lock lock(input_mutex_, std::try_to_lock);
    if (!lock.owns_lock() || !held_.load(std::memory_order_relaxed)) return;
    if (only_if_dry && outbox_->min_queued_slots() >= 2) return;
    if (closed_) {
      held_.store(false, std::memory_order_relaxed);
      return;
    }
    publish_open_slot();
  }

  // Publishes the slot writers have filled so far (input_mutex_ held): it is neither pending for
  // the latency bound nor held for the answers any more. After an abandon nothing is published.
  void publish_open_slot() {
    if (!abandoned_.load(std::memory_order_relaxed)) outbox_->flush();
    pending_ = false;
    held_.store(false, std::memory_order_relaxed);
  }

  // The caller's share of the report: the source's items, as a generator replica would count them.
  void mirror_counters() noexcept {
    // Relaxed: a counter, as every replica's (run_state.hpp).
    supervised_->state().counters(0, 0).items_out.store(outbox_->stats().items, std::memory_order_relaxed);
  }

  void throw_if_stopped() const {
    if (abandoned_.load(std::memory_order_acquire)) {
      // SYNC POINT (acquire): pairs with the driver's release of abandoned_ (failure_ was written
      // before it). The waiter's own loads of it are relaxed; this one orders failure_.
      if (failure_) std::rethrow_exception(failure_);
      throw procflow::error(fmt::format("procflow: pipeline '{}' has ended; nothing more can be pushed", def_->name));
    }
    if (closed_) throw procflow::error(fmt::format("procflow: pipeline '{}': push/submit after close()", def_->name));
  }

  // Publishes the open slot once it is older than the latency bound. While slots keep opening
  // (a busy pool opens and publishes thousands a second) it ticks once per bound instead of
  // being woken for each: a wake-up per slot cost its writer a futex call and this thread a
  // context switch. After idle_ticks_to_park ticks with nothing open it parks until a writer
  // wakes it (start_pending). Either way a slot opened at t is published by t + bound.
  void flush_loop() {
    constexpr int idle_ticks_to_park = 4;
    int idle_ticks = 0;
    std::unique_lock lock(input_mutex_);
    while (!stop_flusher_) {
      if (pending_ && !closed_) {
        idle_ticks = 0;
        const auto due = pending_since_ + latency_;
        if (Clock::now() < due) {
          flush_cv_.wait_until(lock, due);
          continue;
        }
        publish_open_slot();
        continue;
      }
      if (closed_ || ++idle_ticks > idle_ticks_to_park) {
        flusher_parked_ = true;
        flush_cv_.wait(lock, [&] { return !flusher_parked_ || stop_flusher_; });
        idle_ticks = 0;
        continue;
      }
      flush_cv_.wait_for(lock, latency_);  // a tick: a slot opened meanwhile is due after it
    }
  }

  std::shared_ptr<const pipeline_def> def_;
  std::shared_ptr<result_collector> collector_;
  std::function<void(std::exception_ptr)> on_end_;
  std::unique_ptr<runtime::SupervisedRun> supervised_;

  // The input (caller-fed source). Guarded by input_mutex_: outbox_ use, position_, closed_, pending_.
  std::mutex input_mutex_;
  std::optional<channel::Outbox> outbox_;
  channel::EventShared* space_event_ = nullptr;
  std::uint64_t position_ = 0;
  bool closed_ = false;
  bool pending_ = false;  // some write since the last publish (publish_mode::latency)
  Clock::time_point pending_since_;
  std::chrono::nanoseconds latency_{0};
  std::condition_variable flush_cv_;
  bool stop_flusher_ = false;
  bool flusher_parked_ = false;  // in its untimed wait: a new pending slot must wake it
  // Writers between their arrival and the end of their write (publish_mode::group).
  std::atomic<int> writers_{0};
  // The open slot waits for an answer to come back (publish_mode::group). Written under
  // input_mutex_; read without it as a hint (publish_held() checks again under the lock).
  std::atomic<bool> held_{false};
  std::optional<AckingCollector> acks_;

  // Set by the driver thread when the run ended (abandoned_ also makes a waiting writer give up).
  std::atomic<bool> abandoned_{false};
  std::atomic<bool> ended_{false};
  std::exception_ptr failure_;
  run_report report_;
  std::atomic<bool> waited_{false};

  std::thread driver_;
  std::thread flusher_;
};

}  // namespace

std::unique_ptr<started_run> start_in_processes(std::shared_ptr<const pipeline_def> def, std::shared_ptr<result_collector> collector,
                                                std::function<void(std::exception_ptr)> on_end) {
  return std::make_unique<StartedRun>(std::move(def), std::move(collector), std::move(on_end));
}

}  // namespace procflow::detail
