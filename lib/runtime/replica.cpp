#include "runtime/replica.hpp"

#include "channel/flusher.hpp"
#include "channel/inbox.hpp"
#include "channel/outbox.hpp"
#include "runtime/exception_info.hpp"
#include "runtime/identity.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <typeinfo>

namespace procflow::runtime {

namespace {

using Clock = std::chrono::steady_clock;

std::uint64_t ns_since(Clock::time_point t0) noexcept {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
}

// Copies `text` into a fixed-size record field, always NUL-terminated.
template <std::size_t N>
void put_text(char (&field)[N], const std::string& text) noexcept {
  const std::size_t n = std::min(text.size(), N - 1);
  std::memcpy(field, text.data(), n);
  field[n] = '\0';
}

// Local tallies of one stage in this replica, mirrored to shared memory after every batch.
struct Tally {
  std::uint64_t items_skipped = 0;
  std::uint64_t retries = 0;
  std::uint64_t items_in = 0;
  std::uint64_t items_out = 0;
  std::uint64_t batches_in = 0;
  std::uint64_t bytes_in = 0;
  std::uint64_t busy_ns = 0;
};

// Applies a stage's error_policy to an item whose stage function threw (see policy.hpp):
// retries with a doubling backoff, then skips (counted, the first few recorded as dead letters)
// or fails. Set up by the replica before each stage's apply().
class PolicyGuard final : public detail::item_guard {
 public:
  detail::item_verdict on_failure(std::size_t index, std::uint32_t attempt) noexcept override {
    if (attempt < policy.retries) {
      ++tally->retries;
      if (policy.backoff_ns > 0) {
        const int shift = static_cast<int>(std::min<std::uint32_t>(attempt, 20));
        std::this_thread::sleep_for(std::chrono::nanoseconds(policy.backoff_ns) * (std::int64_t{1} << shift));
      }
      return detail::item_verdict::retry;
    }
    if (!policy.then_skip) return detail::item_verdict::fail;
    ++tally->items_skipped;
    if (record->dead_letter_count < dead_letters_per_replica) {
      DeadLetter& d = record->dead_letters[record->dead_letter_count];
      d.stage = stage;
      d.item_seq = dense ? first_item + index : stream_first + index;
      try {
        put_text(d.exception_type, current_exception_type());
        put_text(d.message, current_exception_message());
      } catch (...) {
        put_text(d.exception_type, "std::bad_alloc");
        put_text(d.message, "out of memory while recording a dead letter");
      }
      ++record->dead_letter_count;
    }
    return detail::item_verdict::skip;
  }

  error_policy policy;
  std::uint32_t stage = 0;
  bool dense = false;              // item numbers are source positions (first_item + index)
  std::uint64_t first_item = 0;
  std::uint64_t stream_first = 0;  // else: position in this replica's input of the batch's first item
  Tally* tally = nullptr;
  ReplicaRecord* record = nullptr;
};

class Replica final : public detail::downstream {
 public:
  Replica(const detail::pipeline_def& def, const Plan& plan, const RunState& state, std::size_t group, std::uint32_t replica)
      : def_(def), plan_(plan), state_(state), group_(plan.groups[group]), group_index_(group), replica_(replica),
        tallies_(def.stages.size()), record_(&state.record(state.first_replica(group) + replica)) {
    if (metrics::SpanRing* ring = state.spans(state.first_replica(group) + replica)) spans_.emplace(*ring, metrics::steady_now_ns());
  }

  void run() {
    const auto& stages = def_.stages;
    const std::size_t first_worker = group_.input == GroupInput::channel ? group_.first_stage : group_.first_stage + 1;
    set_identity();
    // Setup: copies of the callables, or their per_replica factories (after the fork, before
    // the first item).
    for (std::size_t i = first_worker; i < group_.end_stage; ++i) {
      set_stage(i);
      instances_.push_back(stages[i]->instantiate(plan_.ordered));
    }
    if (group_.input == GroupInput::channel) {
      channel::InboxOptions o;
      o.ordered = plan_.ordered;
      o.first_seq = replica_;
      o.seq_stride = group_.replicas;
      inbox_.emplace(state_.input_of(group_index_), replica_, o);
    }
    if (group_.output != GroupOutput::none) {
      channel::OutboxOptions o;
      o.dispatch = group_.dispatch;
      o.source = group_.input == GroupInput::generator && group_.end_stage == 1;
      if (o.source) {
        // A generator only returns at the end: mirror its counters after every slot so the
        // scheduler sees its rate while it runs.
        o.on_publish = [](void* self) { static_cast<Replica*>(self)->generator_progress(); };
        o.publish_context = this;
      }
      o.publish_each_item = group_.out_latency_ns == 0;
      outbox_.emplace(group_.output == GroupOutput::results ? state_.results() : state_.input_of(group_index_ + 1), replica_, o);
      // A group ending in its terminal only sends partials at the end (or per ordered batch).
      if (group_.out_latency_ns > 0 && !ends_in_terminal())
        flusher_.emplace(*outbox_, std::chrono::nanoseconds(group_.out_latency_ns));
      gate_.emplace(*outbox_);  // after the flusher: it decides how the gate fences
    }
    for (std::size_t k = 0; k < instances_.size(); ++k) instances_[k]->attach(this, k);
    guards_.resize(instances_.size());
    first_worker_ = first_worker;

    switch (group_.input) {
      case GroupInput::generator: run_generator(); break;
      case GroupInput::chunks: run_chunks(); break;
      case GroupInput::channel: run_channel(); break;
    }
    finish();
    // The callables were destroyed at end of stream (finish()); the rest of the instances
    // (buffers) goes now: the process leaves with _exit().
    instances_.clear();
  }

  // Fills the replica record for the exception being handled.
  void record_failure() noexcept {
    ReplicaRecord& r = record();
    try {
      r.stage = static_cast<std::uint32_t>(stage_);
      r.has_item = has_item_ ? 1 : 0;
      r.item_seq = item_seq_;
      put_text(r.exception_type, current_exception_type());
      put_text(r.message, current_exception_message());
    } catch (...) {
      put_text(r.exception_type, "std::bad_alloc");
      put_text(r.message, "out of memory while recording a failure");
    }
    // SYNC POINT (release): the fields above are complete before the supervisor sees `failed`.
    r.status.store(static_cast<std::uint32_t>(ReplicaStatus::failed), std::memory_order_release);
    flush_counters();
    if (spans_) spans_->flush();
  }

  void record_completed() noexcept {
    ReplicaRecord& r = record();
    r.status.store(static_cast<std::uint32_t>(ReplicaStatus::completed), std::memory_order_release);
  }

 private:
  bool ends_in_terminal() const { return def_.stages[group_.end_stage - 1]->is_terminal(); }

  // What pf::this_replica() answers in this process (runtime/identity.hpp).
  void set_identity() const {
    Identity id;
    id.def = &def_;
    id.stage = group_.first_stage;
    id.index = replica_;
    id.replicas = group_.replicas;
    if (group_.scalable && group_.input == GroupInput::channel) {
      id.active = &state_.input_of(group_index_).membership().active;
      id.lanes = channel::lane_mask(group_.slots);
    }
    id.run_seed = plan_.seed;
    runtime::set_identity(id);
  }

  void generator_progress() noexcept {
    tallies_[0].items_out = outbox_->stats().items;
    record_->batch_items.store(tallies_[0].items_out, std::memory_order_relaxed);  // see ReplicaRecord::phase
    const std::uint64_t elapsed = ns_since(generator_start_);
    const std::uint64_t blocked = outbox_->stats().blocked_ns;
    tallies_[0].busy_ns = elapsed > blocked ? elapsed - blocked : 0;
    flush_counters();
  }

  bool retiring() const noexcept { return record_->retire.load(std::memory_order_acquire) != 0; }

  void run_generator() {
    stage_ = 0;
    note_phase(ReplicaPhase::producing);
    const auto t0 = Clock::now();
    generator_start_ = t0;
    if (group_.end_stage == 1) {
      def_.stages[0]->source()->produce(*outbox_);
      tallies_[0].busy_ns = ns_since(t0) - outbox_->stats().blocked_ns;
    }
  }

  void run_chunks() {
    const detail::source_base* source = def_.stages[0]->source();
    if (!source) throw std::logic_error("procflow: chunked group without a source");
    const detail::source_base& src = *source;
    const std::uint64_t total = src.size();
    RunHeader& header = state_.header();
    for (;;) {
      if (group_.scalable && retiring()) break;  // another replica claims the rest
      // Relaxed: see RunHeader::next_chunk.
      const std::uint64_t chunk = header.next_chunk.fetch_add(1, std::memory_order_relaxed);
      if (chunk >= plan_.chunks) break;
      const auto [first, last] = chunk_range(plan_, chunk, total);
      set_stage(0);
      const auto t0 = Clock::now();
      const std::size_t n = src.fill_items(first, last, instances_.front()->input_buffer());
      if (n == 0 && src.ended()) break;  // a source of unknown length (lib/mpi) has no more
      Tally& t = tallies_[0];
      t.items_out += n;
      t.busy_ns += ns_since(t0);
      process({chunk, first, src.units_are_items()}, n, /*batch_end=*/true, /*batch_start=*/true, 0);
    }
  }

  // Waits for the next batch; false at end of stream, or when this replica retires and nothing
  // can reach it any more. A scalable replica waits in short steps to notice a retirement.
  bool next_batch(detail::batch_view& batch) {
    for (;;) {
      const std::uint64_t retire = group_.scalable ? record_->retire.load(std::memory_order_acquire) : 0;
      if (retire != 0 && inbox_->try_retire(retire)) return false;
      if (inbox_->try_receive(batch)) return true;
      // About to wait: hand on what this replica has produced so far (latency).
      if (outbox_) outbox_->flush();
      if (!group_.scalable) return inbox_->receive(batch);
      const auto step = retire != 0 ? std::chrono::milliseconds(2) : std::chrono::milliseconds(50);
      if (inbox_->receive_until(batch, Clock::now() + step)) return true;
      if (inbox_->at_end()) return false;
    }
  }

  void run_channel() {
    detail::batch_view batch;
    bool in_batch = false;
    for (;;) {
      if (!next_batch(batch)) break;
      set_stage(first_worker_);
      const auto t0 = Clock::now();
      const std::size_t n = instances_.front()->decode(batch);
      const std::uint64_t decode_ns = ns_since(t0);
      const bool batch_start = !in_batch;
      in_batch = !batch.batch_end;
      process(batch.meta, n, batch.batch_end, batch_start, decode_ns);
      tallies_[first_worker_].bytes_in += batch.bytes.size();
      inbox_->release();
    }
  }

  // Runs one decoded batch through the fused stages and sends the result on.
  void process(const detail::batch_meta& meta, std::size_t n, bool batch_end, bool batch_start, std::uint64_t extra_ns) {
    const bool ordered = plan_.ordered;
    note_batch(meta, n);
    if (outbox_ && (batch_start || !ordered)) outbox_->begin_batch(meta);
    if (ordered && batch_start && ends_in_terminal()) instances_.back()->begin_batch();
    meta_ = meta;
    run_chain(0, n, meta.dense, extra_ns);
    if (outbox_) {
      const auto t0 = Clock::now();
      // Waiting for room downstream is blocked time, not busy time: the scheduler's true rate
      // (items per busy second) must not count it.
      const std::uint64_t blocked_before = outbox_->stats().blocked_ns;
      if (ordered && batch_end) {
        if (ends_in_terminal()) instances_.back()->end_batch(*outbox_);
        outbox_->end_batch();
      }
      const std::uint64_t elapsed = ns_since(t0);
      const std::uint64_t blocked = outbox_->stats().blocked_ns - blocked_before;
      if (outbox_->publish_each_item()) outbox_->flush();
      tallies_[group_.end_stage - 1].busy_ns += elapsed > blocked ? elapsed - blocked : 0;
    }
    flush_counters();
    note_phase(ReplicaPhase::waiting);
  }

  // The batch about to run, in the replica record (see ReplicaRecord::phase): a few relaxed
  // stores per batch. Its items are source positions when dense, else positions in the stream
  // this replica received (as stage_error::item_seq()).
  void note_batch(const detail::batch_meta& meta, std::size_t n) noexcept {
    ReplicaRecord& r = record();
    r.batch_dense.store(meta.dense ? 1 : 0, std::memory_order_relaxed);
    r.batch_seq.store(meta.seq, std::memory_order_relaxed);
    r.batch_first.store(meta.dense ? meta.first_item : tallies_[first_worker_].items_in, std::memory_order_relaxed);
    r.batch_items.store(n, std::memory_order_relaxed);
    note_phase(ReplicaPhase::in_batch);
  }

  void note_phase(ReplicaPhase phase) noexcept {
    // The time first, then the phase with release.
    // SYNC POINT (release): pairs with the watchdog's acquire load of `phase` (supervisor.cpp):
    // a watchdog that sees the new phase sees this time or a later one, never the previous
    // phase's (older) time, so it can be late but never early.
    const auto now = Clock::now().time_since_epoch();
    record().phase_since_ns.store(static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(now).count()),
                                  std::memory_order_relaxed);
    record().phase.store(static_cast<std::uint32_t>(phase), std::memory_order_release);
  }

  // Runs `n` items in instance `first`'s input buffer through instances first.. and encodes
  // what comes out for the port.
  void run_chain(std::size_t first, std::size_t n, bool lineage_dense, std::uint64_t extra_ns) {
    {
      // While the stages run user code, the flusher may publish what earlier batches left in
      // the open slots (latency bound).
      std::optional<detail::user_code_scope> user;
      if (gate_) user.emplace(*gate_);
      for (std::size_t k = first; k < instances_.size(); ++k) {
        const std::size_t stage = first_worker_ + k;
        set_stage(stage);
        Tally& t = tallies_[stage];
        t.items_in += n;
        t.batches_in += 1;
        const auto t0 = Clock::now();
        const std::uint64_t nested0 = spilled_ns_;
        detail::item_cursor cursor;
        const auto& policy = def_.stages[stage]->options().on_error ? def_.stages[stage]->options().on_error
                                                                     : def_.options.defaults.on_error;
        if (policy) {
          // One guard per fused stage: a flat_map's spill runs the next stages inside its apply().
          PolicyGuard& guard = guards_[k];
          guard.policy = *policy;
          guard.stage = static_cast<std::uint32_t>(stage);
          guard.dense = lineage_dense;
          guard.first_item = meta_.first_item;
          guard.stream_first = t.items_in - n;
          guard.tally = &t;
          guard.record = record_;
          cursor.guard = &guard;
        }
        try {
          n = instances_[k]->apply(cursor);
        } catch (...) {
          if (!has_item_) {  // the innermost failing stage names the item (spills nest)
            has_item_ = true;
            item_seq_ = lineage_dense ? meta_.first_item + cursor.index : t.items_in - (n - cursor.index);
          }
          throw;
        }
        if (k + 1 < instances_.size()) instances_[k]->hand_over(*instances_[k + 1]);
        t.items_out += n;
        // Time spent in spills of this stage's output (see spill()) belongs to the stages after it.
        t.busy_ns += ns_since(t0) - (spilled_ns_ - nested0) + (k == first ? extra_ns : 0);
        lineage_dense = lineage_dense && def_.stages[stage]->one_to_one() && cursor.skipped == 0;
      }
    }
    if (outbox_ && !ends_in_terminal()) {
      const auto t0 = Clock::now();
      // Keyed dispatch runs the next stage's key function here: errors are that stage's.
      set_stage(group_.keyed ? group_.encoder_stage : group_.end_stage - 1);
      void* out = instances_.empty() ? nullptr : instances_.back()->output_buffer();
      const std::uint64_t blocked_before = outbox_->stats().blocked_ns;
      def_.stages[group_.encoder_stage]->encode_input(out, *outbox_, group_.keyed);
      // Blocked on a full ring is not busy time (see process()).
      const std::uint64_t elapsed = ns_since(t0);
      const std::uint64_t blocked = outbox_->stats().blocked_ns - blocked_before;
      tallies_[group_.end_stage - 1].busy_ns += elapsed > blocked ? elapsed - blocked : 0;
    }
  }

 public:
  // A stage whose output buffer filled up in the middle of its batch (a flat_map fanning one
  // input out to many items): the full buffer goes through the rest of the chain and into the
  // port now (blocking on back-pressure like any producer), so memory stays bounded.
  void spill(std::size_t k) override {
    const auto t0 = Clock::now();
    if (gate_) gate_->leave();  // the port is ours again: the flusher must keep off
    detail::stage_instance& from = *instances_[k];
    const std::size_t n = from.output_size();
    tallies_[first_worker_ + k].items_out += n;
    if (k + 1 < instances_.size()) from.hand_over(*instances_[k + 1]);
    run_chain(k + 1, n, false, 0);
    from.clear_output();
    set_stage(first_worker_ + k);
    if (gate_) gate_->enter();
    spilled_ns_ += ns_since(t0);
  }

 private:
  void finish() {
    note_phase(ReplicaPhase::finishing);
    flusher_.reset();  // before the last writes: the Outbox is the producer's alone again
    // Teardown, stage by stage: each callable's finish() and destruction, before end of stream
    // goes on (a file a sink writes is complete when run() returns; a failing flush fails it).
    for (std::size_t k = 0; k < instances_.size(); ++k) {
      set_stage(first_worker_ + k);
      instances_[k]->end_of_stream();
    }
    if (outbox_) {
      if (group_.input == GroupInput::generator) stage_ = 0;
      if (ends_in_terminal() && !plan_.ordered) {
        stage_ = group_.end_stage - 1;
        outbox_->begin_batch({replica_, 0, false});  // partials are merged in replica order
        instances_.back()->finish(*outbox_);
      }
      outbox_->close();
      if (group_.input == GroupInput::generator) tallies_[0].items_out = outbox_->stats().items;
    }
    flush_counters();
    if (spans_) spans_->flush();
  }

  void set_stage(std::size_t stage) noexcept {
    stage_ = stage;
    set_identity_stage(stage);
    // Relaxed: see ReplicaRecord::current_stage.
    record().current_stage.store(static_cast<std::uint32_t>(stage), std::memory_order_relaxed);
  }

  // Validated when the replica starts (run_replica), so it cannot throw later.
  ReplicaRecord& record() const noexcept { return *record_; }

  void flush_counters() noexcept {
    // Relaxed: single writer, independent values (see run_state.hpp).
    for (std::size_t i = group_.first_stage; i < group_.end_stage; ++i) {
      StageCounters& c = state_.counters(i, replica_);
      const Tally& t = tallies_[i];
      c.items_in.store(t.items_in, std::memory_order_relaxed);
      c.items_out.store(t.items_out, std::memory_order_relaxed);
      c.batches_in.store(t.batches_in, std::memory_order_relaxed);
      c.bytes_in.store(t.bytes_in, std::memory_order_relaxed);
      c.busy_ns.store(t.busy_ns, std::memory_order_relaxed);
      c.items_skipped.store(t.items_skipped, std::memory_order_relaxed);
      c.retries.store(t.retries, std::memory_order_relaxed);
    }
    if (inbox_)
      state_.counters(group_.first_stage, replica_).starved_ns.store(inbox_->stats().starved_ns, std::memory_order_relaxed);
    if (outbox_)
      state_.counters(group_.end_stage - 1, replica_).blocked_ns.store(outbox_->stats().blocked_ns, std::memory_order_relaxed);
    if (spans_) {
      std::uint64_t busy = 0;
      for (std::size_t i = group_.first_stage; i < group_.end_stage; ++i) busy += tallies_[i].busy_ns;
      spans_->record(metrics::steady_now_ns(), busy, inbox_ ? inbox_->stats().starved_ns : 0, outbox_ ? outbox_->stats().blocked_ns : 0);
    }
  }

  const detail::pipeline_def& def_;
  const Plan& plan_;
  const RunState& state_;
  const Group& group_;
  std::size_t group_index_;
  std::uint32_t replica_;
  std::size_t first_worker_ = 0;
  std::vector<std::unique_ptr<detail::stage_instance>> instances_;
  std::optional<channel::Inbox> inbox_;
  std::optional<channel::Outbox> outbox_;
  std::optional<channel::Flusher> flusher_;  // after outbox_: stops before it is destroyed
  std::optional<detail::user_code_gate> gate_;
  detail::batch_meta meta_;          // batch being processed
  std::uint64_t spilled_ns_ = 0;     // time spent in spill() so far
  std::vector<Tally> tallies_;
  ReplicaRecord* record_;
  std::size_t stage_ = 0;  // stage running now (named in a failure)
  Clock::time_point generator_start_{};
  std::optional<metrics::SpanRecorder> spans_;  // pf::trace: this replica's timeline
  bool has_item_ = false;
  std::uint64_t item_seq_ = 0;
  std::vector<PolicyGuard> guards_;  // per fused stage: its error policy, while it applies
};

}  // namespace

int run_replica(const detail::pipeline_def& def, const Plan& plan, const RunState& state, std::size_t group,
                std::uint32_t replica) noexcept {
  std::optional<Replica> r;
  metrics::ReplicaStats* stats = nullptr;
  try {
    stats = &state.stats(state.first_replica(group) + replica);
    metrics::record_start(*stats);
    r.emplace(def, plan, state, group, replica);
    r->run();
    metrics::record_end(*stats);
    r->record_completed();
    return exit_completed;
  } catch (...) {
    if (stats) metrics::record_end(*stats);
    if (r) r->record_failure();
    return exit_failed;
  }
}

}  // namespace procflow::runtime
