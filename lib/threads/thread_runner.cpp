// Thread mode: the same pipeline declaration run in threads of the calling process on oneTBB's
// parallel_pipeline. The process plan (lib/runtime/plan) decides the groups exactly as for
// processes; each group becomes one filter of the TBB pipeline:
//
//   [source: claim a chunk / pull a generator batch]  serial, in order
//   [group 0: stages fused as in process mode]       parallel if replicas > 1, else serial
//   [group 1 ...]
//   [caller: collect / sink in the caller / ordered partials]  serial (in order when ordered)
//
// A token is one batch of items (a chunk of the source) moving through the filters by value:
// each group's stage instances swap the token's typed buffer in and out (no encoding). Stage
// instances are per worker thread (enumerable_thread_specific), like a replica's per process,
// so a stateful stage keeps its state per instance, never shared between threads. Only the
// partial results of a reduce are encoded, to be merged by the same collector as in process mode.
#include "metrics/user_counter_table.hpp"
#include "process/child.hpp"
#include "runtime/cancel_state.hpp"
#include "runtime/exception_info.hpp"
#include "runtime/identity.hpp"
#include "runtime/plan.hpp"

#include <procflow/pipeline.hpp>

#include <oneapi/tbb/enumerable_thread_specific.h>
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/info.h>
#include <oneapi/tbb/parallel_pipeline.h>
#include <oneapi/tbb/task_arena.h>

#include <fmt/format.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <thread>
#include <cstring>
#include <mutex>
#include <new>
#include <optional>
#include <stdexcept>
#include <exception>
#include <memory>
#include <string>
#include <vector>

namespace procflow::detail {

namespace {

using runtime::Group;
using runtime::GroupInput;
using runtime::GroupOutput;
using runtime::Plan;
using Clock = std::chrono::steady_clock;

std::int64_t steady_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

}  // namespace

// What coarse_clock_ns() reads: steady_clock in ns, stored by the Ticker of every run in threads
// pulling a generator. Relaxed: a time stamp, nothing else is published through it (two runs'
// tickers may store out of order by a tick, which only moves a batch boundary).
std::atomic<std::int64_t> ticker_now_ns{0};

namespace {

// Keeps ticker_now_ns current while a generator is pulled, so that checking the latency bound
// after every item costs a load, not a clock read.
class Ticker {
 public:
  explicit Ticker(std::chrono::nanoseconds period) : period_(period) {
    ticker_now_ns.store(steady_ns(), std::memory_order_relaxed);
    thread_ = std::thread([this] { tick(); });
  }
  ~Ticker() {
    {
      const std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_one();
    thread_.join();
  }
  Ticker(const Ticker&) = delete;
  Ticker& operator=(const Ticker&) = delete;

 private:
  void tick() {
    std::unique_lock lock(mutex_);
    while (!wake_.wait_for(lock, period_, [this] { return stop_; })) ticker_now_ns.store(steady_ns(), std::memory_order_relaxed);
  }
  std::chrono::nanoseconds period_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

std::uint64_t ns_since(Clock::time_point t0) noexcept {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
}

// An output_port into memory: what a reduce's partial encodes to, handed to the collector as one
// batch. Grows as needed, so every item fits one "slot".
class MemoryPort final : public output_port {
 public:
  MemoryPort() {
    cursors_ = &cursor_;
    current_ = &cursor_;
    lane_count_ = 1;
    max_item_bytes_ = std::size_t{1} << 40;
    gate_ = &gate_storage_;
  }
  batch_view view(std::uint64_t seq) const {
    batch_view v;
    // Nothing written (an ordered reduce_by_key batch without groups sends no piece): no slot is
    // open and cursor_.pos is null, so the view is empty rather than pos - data().
    v.bytes = {bytes_.data(), cursor_.pos ? static_cast<std::size_t>(cursor_.pos - bytes_.data()) : 0};
    v.items = cursor_.items;
    v.meta.seq = seq;
    v.batch_end = true;
    return v;
  }
  void reset() {
    bytes_.clear();
    cursor_ = {};
  }
  void write_large_parts(std::size_t lane, std::span<const std::span<const std::byte>> parts) override {
    std::size_t n = 0;
    for (const auto& part : parts) n += part.size();
    std::byte* out = reserve_slow(lane, n);
    for (const auto& part : parts) {
      if (!part.empty()) std::memcpy(out, part.data(), part.size());
      out += part.size();
    }
    commit(n);
  }
  void begin_batch(const batch_meta&) override {}
  void end_batch() override {}
  void flush() override {}
  void close() override {}

 protected:
  std::byte* reserve_slow(std::size_t, std::size_t n) override {
    const std::size_t used = cursor_.pos ? static_cast<std::size_t>(cursor_.pos - bytes_.data()) : 0;
    const std::size_t zero_items = cursor_.pos ? static_cast<std::size_t>((bytes_.data() + bytes_.size()) - cursor_.end) : 0;
    bytes_.resize(std::max(bytes_.size() * 2, used + zero_items + n + 1 + 4096));
    cursor_.pos = bytes_.data() + used;
    cursor_.end = bytes_.data() + bytes_.size() - zero_items;
    return cursor_.pos;
  }

 private:
  std::vector<std::byte> bytes_;
  write_cursor cursor_;
  flush_gate gate_storage_;
};

struct Tally {
  std::uint64_t items_in = 0;
  std::uint64_t items_out = 0;
  std::uint64_t batches_in = 0;
  std::uint64_t busy_ns = 0;
};

// One batch on its way through the filters.
struct Token {
  std::uint64_t seq = 0;
  std::uint64_t first = 0;  // chunked source: units [first, last)
  std::uint64_t last = 0;
  std::uint64_t first_item = 0;  // source position of the first item
  bool dense = false;            // items are consecutive source items from first_item
  // buffers[g]: the input of group g (a batch_buffer of its first worker stage's input type);
  // buffers[groups]: the caller's terminal (collect / sink in the caller).
  std::vector<std::shared_ptr<void>> buffers;
  MemoryPort partial;  // ordered reduce: this batch's partial result
};

// The stage instances of one group in one worker thread, with their counters.
struct Chain {
  std::uint32_t index = 0;  // "replica" in reports and errors
  runtime::ThreadIdentity identity;  // what pf::this_replica() answers in code of this chain
  std::unique_ptr<metrics::UserCounterTable> counters = std::make_unique<metrics::UserCounterTable>();  // pf::counter()
  std::vector<std::unique_ptr<stage_instance>> instances;
  std::vector<Tally> tallies;  // per stage of the pipeline
};

const source_base& source_of(const pipeline_def& def) {
  const source_base* s = def.stages.empty() ? nullptr : def.stages[0]->source();
  if (!s) throw std::invalid_argument("procflow: a pipeline starts with a source");
  return *s;
}

class ThreadRun {
 public:
  ThreadRun(const pipeline_def& def, result_collector* collector)
      : def_(def), collector_(collector), plan_(runtime::make_plan(def)),
        source_owner_(source_of(def).fresh_copy()),
        source_(source_owner_ ? source_owner_.get() : &source_of(def)) {
    refuse_process_only_options();
    source_->begin_run();
    make_side_identities();
    for (const Group& g : plan_.groups) {
      chains_.push_back(std::make_unique<ChainSet>());
      chains_.back()->serial = !parallel_group(g);
    }
    const auto& first = plan_.groups[0];
    if (first.input == GroupInput::generator) {
      const std::size_t bytes = def.options.defaults.batch_bytes.value_or(64 * 1024);
      pull_items_ = std::clamp<std::size_t>(bytes / 16, 64, 8192);
      const std::int64_t latency = def.stages[0]->options().max_latency_ns.value_or(def.options.defaults.max_latency_ns.value_or(5'000'000));
      pull_latency_ = latency < 0 ? std::chrono::nanoseconds(std::chrono::hours(24 * 365)) : std::chrono::nanoseconds(latency);
    }
    for (const auto& g : plan_.groups) concurrency_ = std::max<std::size_t>(concurrency_, g.auto_scale ? plan_.cores : g.replicas);
    // No more threads than oneTBB has (asking for more makes it print a warning on stderr).
    concurrency_ = std::min<std::size_t>(concurrency_, static_cast<std::size_t>(std::max(1, tbb::info::default_concurrency())));
  }

  run_report run() {
    const auto t0 = Clock::now();
    // Relaxed: see cancel_state::requested (a stop asked for before the run, as in process mode).
    if (def_.options.cancel && def_.options.cancel->requested.load(std::memory_order_relaxed) != 0) throw interrupted(0);
    // Tokens in flight: enough to keep every thread busy with some slack for in-order stages.
    const std::size_t tokens = 2 * concurrency_ + 2;
    std::optional<Ticker> ticker;
    if (plan_.groups[0].input == GroupInput::generator && pull_latency_ < std::chrono::hours(24))
      ticker.emplace(std::clamp<std::chrono::nanoseconds>(pull_latency_ / 4, std::chrono::microseconds(50), std::chrono::milliseconds(1)));
    {
      // oneTBB's worker threads end with the run (see WorkerLifetime): afterwards the program is
      // single-threaded again, as the fork rule of run() wants.
      const WorkerLifetime workers;
      tbb::task_arena arena(static_cast<int>(concurrency_));
      try {
        arena.execute([&] { tbb::parallel_pipeline(tokens, make_filters()); });
      } catch (...) {
        handoffs_.load(std::memory_order_acquire);  // SYNC POINT: see Handoff (before tokens die)
        throw;
      }
      handoffs_.load(std::memory_order_acquire);  // SYNC POINT: see Handoff
    }
    finish_terminals();
    if (collector_) on_caller_side([&] { collector_->finish(); });
    return make_report(std::chrono::duration<double>(Clock::now() - t0).count());
  }

 private:
  // SYNC POINT: every filter call begins and ends with an acq_rel increment of one counter. The
  // increments form one release sequence, so whatever a filter call wrote (a serial filter's
  // state, a token's buffers, a serial group's instances, a thread's tallies) happens before every
  // later filter call and before run() reads the results. oneTBB orders the calls the same way,
  // but in its own (uninstrumented) library: this makes the order explicit in our code, where
  // ThreadSanitizer sees it. Two uncontended-in-practice RMWs per filter per chunk.
  class Handoff {
   public:
    explicit Handoff(std::atomic<std::uint64_t>& counter) noexcept : counter_(counter) {
      counter_.fetch_add(1, std::memory_order_acq_rel);
    }
    ~Handoff() { counter_.fetch_add(1, std::memory_order_acq_rel); }
    Handoff(const Handoff&) = delete;
    Handoff& operator=(const Handoff&) = delete;

   private:
    std::atomic<std::uint64_t>& counter_;
  };

  // Holds oneTBB's scheduler for one run and then waits for its worker threads to end, unless the
  // program uses oneTBB itself elsewhere (then they stay, as they would without procflow). finalize
  // joins them, but a joined thread stays listed in /proc/self/task until the kernel has torn it
  // down, and run()'s fork rule counts that list: wait (briefly) until it is short again, so a
  // process-mode run right after this one is not refused (CI saw one extra thread once).
  class WorkerLifetime {
   public:
    WorkerLifetime() : threads_before_(process::thread_count()), handle_(tbb::attach{}) {}
    ~WorkerLifetime() {
      if (tbb::finalize(handle_, std::nothrow)) (void)process::await_thread_count(threads_before_, std::chrono::seconds(2));
    }
    WorkerLifetime(const WorkerLifetime&) = delete;
    WorkerLifetime& operator=(const WorkerLifetime&) = delete;

   private:
    std::size_t threads_before_;
    tbb::task_scheduler_handle handle_;
  };

  // A group's instances: one per worker thread when the group is parallel; exactly one when
  // it is serial (replicas(1): a stateful stage keeps one state, whichever thread runs it).
  struct ChainSet {
    bool serial = false;
    std::atomic<std::uint32_t> next_index{0};
    tbb::enumerable_thread_specific<Chain> local;
    std::optional<Chain> single;
    template <class Fn>
    void for_each(Fn&& fn) {
      if (serial) {
        if (single) fn(*single);
      } else {
        for (Chain& c : local) fn(c);
      }
    }
  };

  // A key_by group runs serially in threads: its one instance owns every key (what keyed
  // dispatch guarantees per replica in process mode), so a per-key state stays whole.
  bool parallel_group(const Group& g) const {
    for (std::size_t i = g.first_stage; i < g.end_stage; ++i)
      if (def_.stages[i]->options().keyed) return false;
    return g.auto_scale || g.replicas > 1;
  }

  // What only process mode does is refused by name rather than ignored: error policies and the
  // watchdog act on replica processes (a dead letter in the replica record, a SIGKILL).
  void refuse_process_only_options() const {
    const auto refuse = [&](const std::string& what, const std::string& where) {
      throw std::invalid_argument(fmt::format("procflow: pipeline '{}': {} {} is not supported by run(pf::in_threads); use run()",
                                              def_.name, where, what));
    };
    if (def_.options.defaults.on_error) refuse("an error policy (pf::skip / pf::retry)", "the pipeline's");
    if (def_.options.defaults.watchdog_ns) refuse("pf::watchdog", "the pipeline's");
    if (def_.options.defaults.restarts) refuse("pf::restart", "the pipeline's");
    for (const auto& stage : def_.stages) {
      if (stage->options().on_error) refuse("an error policy (pf::skip / pf::retry)", fmt::format("stage '{}':", stage->name()));
      if (stage->options().watchdog_ns) refuse("pf::watchdog", fmt::format("stage '{}':", stage->name()));
      if (stage->options().restarts) refuse("pf::restart", fmt::format("stage '{}':", stage->name()));
      if (stage->options().recycle_items || stage->options().recycle_rss_bytes) refuse("pf::recycle", fmt::format("stage '{}':", stage->name()));
    }
  }

  tbb::filter<void, void> make_filters() {
    tbb::filter<void, Token*> chain = tbb::make_filter<void, Token*>(
        tbb::filter_mode::serial_in_order, [this](tbb::flow_control& fc) -> Token* {
          const Handoff h(handoffs_);
          return next_token(fc);
        });
    const tbb::filter_mode serial = plan_.ordered ? tbb::filter_mode::serial_in_order : tbb::filter_mode::serial_out_of_order;
    for (std::size_t g = 0; g < plan_.groups.size(); ++g) {
      const Group& group = plan_.groups[g];
      if (group.input == GroupInput::generator) continue;  // the source filter pulled it
      chain = chain & tbb::make_filter<Token*, Token*>(parallel_group(group) ? tbb::filter_mode::parallel : serial,
                                                        [this, g](Token* t) {
                                                          const Handoff h(handoffs_);
                                                          return run_group(g, t);
                                                        });
    }
    return chain & tbb::make_filter<Token*, void>(serial, [this](Token* t) {
      const Handoff h(handoffs_);
      to_caller(t);
    });
  }

  // The source filter: the next chunk's range, or the next batch pulled from a generator.
  Token* next_token(tbb::flow_control& fc) {
    // pf::cancel_with: checked per chunk; the tokens in flight finish, then run() throws.
    // Relaxed: see cancel_state::requested.
    if (def_.options.cancel && def_.options.cancel->requested.load(std::memory_order_relaxed) != 0) throw interrupted(0);
    Token* t = take_token();
    t->seq = next_seq_;
    if (plan_.groups[0].input == GroupInput::chunks) {
      if (next_seq_ >= plan_.chunks) return stop(fc, t);
      const auto [first, last] = runtime::chunk_range(plan_, next_seq_, source_->size());
      t->first = first;
      t->last = last;
      t->first_item = first;
      t->dense = source_->units_are_items();
    } else {
      const auto t0 = Clock::now();
      std::size_t n = 0;
      try {
        const runtime::ThreadIdentityScope scope(source_identity_);
        n = source_->pull(t->buffers[1].get(), pull_items_, coarse_clock_ns() + pull_latency_.count());
      } catch (...) {
        fail(0, 0, false, 0);
      }
      source_tally_.busy_ns += ns_since(t0);
      if (n == 0) return stop(fc, t);
      t->first_item = source_tally_.items_out;
      t->dense = true;
      source_tally_.items_out += n;
    }
    ++next_seq_;
    return t;
  }

  Token* stop(tbb::flow_control& fc, Token* t) {
    fc.stop();
    give_back(t);
    return nullptr;
  }

  // The stage reading buffer `b` (group b's first worker stage; b == groups: the caller's terminal).
  const stage_base& boundary_stage(std::size_t b) const {
    if (b == plan_.groups.size()) return *def_.stages.back();
    const Group& g = plan_.groups[b];
    return *def_.stages[g.input == GroupInput::channel ? g.first_stage : g.first_stage + 1];
  }

  Chain& chain_of(std::size_t g) {
    ChainSet& set = *chains_[g];
    bool existed = false;
    if (set.serial) {
      existed = set.single.has_value();
      if (!existed) set.single.emplace();
    }
    Chain& c = set.serial ? *set.single : set.local.local(existed);
    if (!existed) {
      const Group& group = plan_.groups[g];
      c.index = set.next_index.fetch_add(1, std::memory_order_relaxed);  // relaxed: a unique number, nothing to order
      c.tallies.resize(def_.stages.size());
      const std::size_t first_worker = group.input == GroupInput::channel ? group.first_stage : group.first_stage + 1;
      runtime::Identity& id = c.identity.id;
      id.def = &def_;
      id.index = c.index;
      id.replicas = set.serial ? 1u : static_cast<std::uint32_t>(concurrency_);  // instances that may run at once
      id.run_seed = plan_.seed;
      c.identity.counters = c.counters.get();
      const runtime::ThreadIdentityScope scope(c.identity);  // a per_replica factory sees its instance
      for (std::size_t i = first_worker; i < group.end_stage; ++i) {
        id.stage = i;
        try {
          c.instances.push_back(def_.stages[i]->instantiate(plan_.ordered));
        } catch (...) {
          fail(i, c.index, false, 0);
        }
      }
    }
    return c;
  }

  // One group's stages over one token, in a worker thread.
  Token* run_group(std::size_t g, Token* t) {
    const Group& group = plan_.groups[g];
    Chain& c = chain_of(g);
    const runtime::ThreadIdentityScope scope(c.identity);
    const std::size_t first_worker = group.input == GroupInput::channel ? group.first_stage : group.first_stage + 1;
    std::size_t n = 0;
    auto t0 = Clock::now();
    if (group.input == GroupInput::chunks) {
      try {
        n = source_->fill_into(t->first, t->last, *c.instances.front());
      } catch (...) {
        fail(0, c.index, false, 0);
      }
      c.tallies[0].items_out += n;
      c.tallies[0].busy_ns += ns_since(t0);
      t0 = Clock::now();
    } else {
      n = def_.stages[first_worker]->swap_input_buffers(t->buffers[g].get(), c.instances.front()->input_buffer());
    }
    const bool terminal = def_.stages[group.end_stage - 1]->is_terminal();
    const bool ordered_terminal = terminal && plan_.ordered;
    if (ordered_terminal) c.instances.back()->begin_batch();
    bool dense = t->dense;
    for (std::size_t k = 0; k < c.instances.size(); ++k) {
      const std::size_t stage = first_worker + k;
      Tally& tally = c.tallies[stage];
      c.identity.id.stage = stage;
      tally.items_in += n;
      tally.batches_in += 1;
      item_cursor cursor;
      try {
        n = c.instances[k]->apply(cursor);
      } catch (...) {
        fail(stage, c.index, true, dense ? t->first_item + cursor.index : tally.items_in - (n - cursor.index));
      }
      if (k + 1 < c.instances.size()) c.instances[k]->hand_over(*c.instances[k + 1]);
      tally.items_out += n;
      const auto t1 = Clock::now();
      tally.busy_ns += static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
      t0 = t1;
      dense = dense && def_.stages[stage]->one_to_one();
    }
    t->dense = dense;
    if (ordered_terminal) {
      t->partial.reset();
      try {
        c.instances.back()->end_batch(t->partial);
      } catch (...) {
        fail(group.end_stage - 1, c.index, false, 0);
      }
    } else if (!terminal) {
      // Hand the output to the next reader: the next group, or the caller's terminal.
      const std::size_t b = g + 1;
      boundary_stage(b).swap_input_buffers(c.instances.back()->output_buffer(), t->buffers[b].get());
    }
    return t;
  }

  // The last filter: the caller's terminal takes the items (collect, a sink in the caller), or an
  // ordered reduce's per-batch partial, in order when the pipeline is ordered.
  void to_caller(Token* t) {
    const std::size_t b = plan_.groups.size();
    if (collector_) {
      const stage_base& last = *def_.stages.back();
      if (last.runs_in_supervisor()) {
        caller_items_ += last.input_buffer_size(t->buffers[b].get());
        on_caller_side([&] { collector_->consume_items(t->buffers[b].get()); });
      } else if (plan_.ordered && last.is_terminal()) {
        on_caller_side([&] { collector_->consume(t->partial.view(t->seq)); });
      }
    }
    give_back(t);
  }

  // After the stream: every instance's teardown (its callable's finish() and destruction, stage
  // by stage in pipeline order, as a replica does before its end of stream goes on), then the
  // unordered partials (one per instance, merged in instance order, as in process mode in
  // replica order).
  void finish_terminals() {
    for (std::size_t g = 0; g < plan_.groups.size(); ++g) {
      const Group& group = plan_.groups[g];
      const std::size_t first_worker = group.input == GroupInput::channel ? group.first_stage : group.first_stage + 1;
      for (Chain* c : chains_in_order(g)) {
        const runtime::ThreadIdentityScope scope(c->identity);
        for (std::size_t k = 0; k < c->instances.size(); ++k) {
          c->identity.id.stage = first_worker + k;
          try {
            c->instances[k]->end_of_stream();
          } catch (...) {
            fail(first_worker + k, c->index, false, 0);
          }
        }
      }
    }
    const Group& last = plan_.groups.back();
    const stage_base& terminal = *def_.stages[last.end_stage - 1];
    if (!terminal.is_terminal() || terminal.kind() == stage_kind::sink || plan_.ordered || !collector_) return;
    for (Chain* c : chains_in_order(plan_.groups.size() - 1)) {
      MemoryPort port;
      {
        const runtime::ThreadIdentityScope scope(c->identity);
        c->identity.id.stage = last.end_stage - 1;
        try {
          c->instances.back()->finish(port);
        } catch (...) {
          fail(last.end_stage - 1, c->index, false, 0);
        }
      }
      on_caller_side([&] { collector_->consume(port.view(c->index)); });
    }
  }

  std::vector<Chain*> chains_in_order(std::size_t g) {
    std::vector<Chain*> chains;
    chains_[g]->for_each([&](Chain& c) { chains.push_back(&c); });
    std::sort(chains.begin(), chains.end(), [](const Chain* a, const Chain* b) { return a->index < b->index; });
    return chains;
  }

  Token* take_token() {
    {
      const std::lock_guard lock(free_mutex_);
      if (!free_.empty()) {
        Token* t = free_.back();
        free_.pop_back();
        return t;
      }
    }
    auto t = std::make_unique<Token>();
    t->buffers.resize(plan_.groups.size() + 1);
    for (std::size_t b = 1; b <= plan_.groups.size(); ++b) {
      t->buffers[b] = boundary_stage(b).new_input_buffer();
      // A stage type that cannot hold items by value would lose them here: refuse it loudly.
      if (!t->buffers[b]) throw std::logic_error("procflow: stage '" + boundary_stage(b).name() + "' has no item buffer for thread mode");
    }
    tokens_.push_back(std::move(t));
    return tokens_.back().get();
  }

  // Called from the last (serial) filter and the first; take_token from the first: free_ is
  // shared between two filters that may run at the same time, so it is guarded.
  void give_back(Token* t) {
    const std::lock_guard lock(free_mutex_);
    free_.push_back(t);
  }

  // Turns the exception being handled into the stage_error process mode would raise, with the
  // original nested.
  [[noreturn]] void fail(std::size_t stage, std::uint32_t replica, bool has_item, std::uint64_t item) {
    stage_error::details d;
    d.stage = def_.stages[stage]->name();
    d.replica = replica;
    d.pid = static_cast<std::int32_t>(::getpid());
    d.kind = stage_error::cause::exception;
    d.has_item = has_item;
    d.item_seq = item;
    d.exception_type = runtime::current_exception_type();
    d.message = runtime::current_exception_message();
    std::throw_with_nested(stage_error(std::move(d)));
  }

  // The caller's side of the terminal, under the same rule as in process mode (see stage_error).
  template <class Work>
  void on_caller_side(Work&& work) {
    try {
      const runtime::ThreadIdentityScope scope(caller_identity_);
      work();
    } catch (const stage_error&) {
      throw;
    } catch (...) {
      runtime::throw_caller_side_error(def_.stages.back()->name(), "");
    }
  }

  run_report make_report(double wall) {
    run_report r;
    r.pipeline = def_.name;
    r.wall_s = wall;
    r.processes = 0;
    r.cores = static_cast<std::uint32_t>(concurrency_);
    for (std::size_t i = 0; i < def_.stages.size(); ++i) {
      stage_report s;
      s.name = def_.stages[i]->name();
      s.kind = kind_name(def_.stages[i]->kind());
      const std::uint32_t g = plan_.stage_group[i];
      s.process_group = g;
      if (g < plan_.groups.size()) {
        chains_[g]->for_each([&](const Chain& c) {
          const Tally& t = c.tallies[i];
          s.items_in += t.items_in;
          s.items_out += t.items_out;
          s.batches_in += t.batches_in;
          s.busy_s += static_cast<double>(t.busy_ns) * 1e-9;
          s.replica_items_in.push_back(t.items_in);
          ++s.replicas;
        });
        if (i == 0 && plan_.groups[0].input == GroupInput::generator) {
          s.items_out = source_tally_.items_out;
          s.busy_s = static_cast<double>(source_tally_.busy_ns) * 1e-9;
          s.replicas = 1;
        }
      } else {
        s.items_in = s.items_out = caller_items_;  // collect, a sink in the caller (as in process mode)
      }
      if (i == 0 && s.items_in == 0) s.items_in = s.items_out;  // as in process mode's report
      s.peak_replicas = s.replicas;
      r.stages.push_back(std::move(s));
    }
    std::vector<const metrics::UserCounterTable*> tables{&source_counters_, &caller_counters_};
    for (const auto& set : chains_) set->for_each([&](const Chain& c) { tables.push_back(c.counters.get()); });
    metrics::add_stage_counters(r, def_, tables);
    return r;
  }

  // The generator source's and the caller side's identities (this_replica(), pf::counter()), as
  // process mode gives them: the source is replica 0 of stage 0; a collect or a sink in the caller
  // answers in_supervisor.
  void make_side_identities() {
    runtime::Identity& s = source_identity_.id;
    s.def = &def_;
    s.stage = 0;
    s.run_seed = plan_.seed;
    source_identity_.counters = &source_counters_;
    runtime::Identity& c = caller_identity_.id;
    c.def = &def_;
    c.stage = def_.stages.size() - 1;
    c.run_seed = plan_.seed;
    c.in_supervisor = true;
    caller_identity_.counters = &caller_counters_;
  }

  const pipeline_def& def_;
  result_collector* collector_;
  Plan plan_;
  std::shared_ptr<const source_base> source_owner_;
  const source_base* source_;
  std::vector<std::unique_ptr<ChainSet>> chains_;  // per group
  std::size_t concurrency_ = 1;
  std::size_t pull_items_ = 4096;
  std::chrono::nanoseconds pull_latency_{5'000'000};
  std::uint64_t next_seq_ = 0;  // source filter only (serial)
  Tally source_tally_;          // a generator's, source filter only
  runtime::ThreadIdentity source_identity_;
  runtime::ThreadIdentity caller_identity_;
  metrics::UserCounterTable source_counters_{};
  metrics::UserCounterTable caller_counters_{};
  std::uint64_t caller_items_ = 0;
  std::vector<std::unique_ptr<Token>> tokens_;  // source filter only (owns every token)
  std::atomic<std::uint64_t> handoffs_{0};  // see Handoff
  std::mutex free_mutex_;
  std::vector<Token*> free_;
};

}  // namespace

std::int64_t coarse_clock_ns() noexcept { return ticker_now_ns.load(std::memory_order_relaxed); }

run_report run_in_threads(const pipeline_def& def, result_collector* collector) {
  return ThreadRun(def, collector).run();
}

}  // namespace procflow::detail
