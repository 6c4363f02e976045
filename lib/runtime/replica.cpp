#include "runtime/replica.hpp"

#include "channel/flusher.hpp"
#include "channel/inbox.hpp"
#include "channel/outbox.hpp"
#include "faults/redelivery.hpp"
#include "runtime/exception_info.hpp"
#include "runtime/identity.hpp"

#include <procflow/codec.hpp>
#include <procflow/detail/bad_input.hpp>

#include <fmt/format.h>

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <exception>
#include <iterator>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <typeinfo>
#include <vector>

namespace procflow::runtime {

namespace {

using Clock = std::chrono::steady_clock;

// Replica::begin_reading's scope for a generator's whole stream (a chunk's is its number).
constexpr std::uint64_t generator_scope = ~std::uint64_t{0} - 1;

std::uint64_t ns_since(Clock::time_point t0) noexcept {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
}

// Copies `text` into a fixed-size record field, always NUL-terminated.
template <std::size_t N>
void put_text(char (&field)[N], std::string_view text) noexcept {
  const std::size_t n = std::min(text.size(), N - 1);
  std::memcpy(field, text.data(), n);
  field[n] = '\0';
}

// The next free dead letter of `record`, its stage and item_seq set, or null when the first
// dead_letters_per_replica are kept already or one holds (stage, seq) already: under pf::restart a
// replacement running its dead predecessor's batch again skips the same items, and their letters
// are in the record (it is never reset). Counted in the record by the caller once filled.
DeadLetter* free_dead_letter(ReplicaRecord& record, std::uint32_t stage, std::uint64_t seq, bool dedupe = true) noexcept {
  if (record.dead_letter_count >= dead_letters_per_replica) return nullptr;
  for (std::uint32_t i = 0; dedupe && i < record.dead_letter_count; ++i)
    if (record.dead_letters[i].stage == stage && record.dead_letters[i].item_seq == seq) return nullptr;
  DeadLetter& d = record.dead_letters[record.dead_letter_count];
  d.stage = stage;
  d.item_seq = seq;
  d.item_state = static_cast<std::uint32_t>(DeadItemState::none);
  d.item_bytes = 0;
  return &d;
}

// Where this replica process keeps what its readers set aside (detail::set_aside_input).
struct InputRejects {
  const RunState* state = nullptr;
  ReplicaRecord* record = nullptr;
  std::uint32_t global_replica = 0;
  // pf::restart: inputs of the block being read that a dead predecessor set aside already
  // (ReplicaRecord::aside_count; Replica::begin_reading): the reader meets them first, in order.
  std::uint64_t repeats_left = 0;
};
InputRejects input_rejects;

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
    const std::uint64_t seq = dense ? first_item + index : stream_first + index;
    if (DeadLetter* letter = free_dead_letter(*record, stage, seq)) {
      DeadLetter& d = *letter;
      keep_item(d, index);
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

  // pf::restart: a replacement running its predecessor's batch again notes each item, so that a
  // death on it names the item (a poison item).
  void on_item(std::size_t index) noexcept override {
    if (!track) return;
    // Relaxed: read after the process was reaped (see ReplicaRecord::item_known).
    record->item_stage.store(stage, std::memory_order_relaxed);
    record->item_seq_now.store(dense ? first_item + index : stream_first + index, std::memory_order_relaxed);
    record->item_known.store(1, std::memory_order_relaxed);
  }

  // The encoded item beside the dead letter (dead_letter.hpp); codecs do not throw (codec.hpp).
  void keep_item(DeadLetter& d, std::size_t index) const noexcept {
    d.item_state = static_cast<std::uint32_t>(DeadItemState::none);
    d.item_bytes = 0;
    if (!instance) return;
    std::span<std::byte> room;
    try {
      room = state->dead_letter_item(global_replica, record->dead_letter_count);
    } catch (...) {
      return;  // no room set aside: the letter goes without its item
    }
    const detail::kept_item kept = instance->keep_input_item(index, room);
    d.item_bytes = kept.bytes;
    switch (kept.state) {
      case detail::item_keeping::kept:
        d.item_state = static_cast<std::uint32_t>(DeadItemState::kept);
        break;
      case detail::item_keeping::too_large:
        d.item_state = static_cast<std::uint32_t>(DeadItemState::too_large);
        break;
      case detail::item_keeping::consumed:
        d.item_state = static_cast<std::uint32_t>(DeadItemState::consumed);
        break;
      case detail::item_keeping::unknown:
        break;
    }
  }

  error_policy policy;
  bool track = false;
  std::uint32_t stage = 0;
  bool dense = false;              // item numbers are source positions (first_item + index)
  std::uint64_t first_item = 0;
  std::uint64_t stream_first = 0;  // else: position in this replica's input of the batch's first item
  Tally* tally = nullptr;
  ReplicaRecord* record = nullptr;
  const RunState* state = nullptr;
  std::uint32_t global_replica = 0;
  const detail::stage_instance* instance = nullptr;  // the stage's, whose input items fail
};

class Replica final : public detail::downstream {
 public:
  Replica(const detail::pipeline_def& def, const Plan& plan, const RunState& state, std::size_t group, std::uint32_t replica)
      : def_(def), plan_(plan), state_(state), group_(plan.groups[group]), group_index_(group), replica_(replica),
        tallies_(def.stages.size()), record_(&state.record(state.first_replica(group) + replica)),
        timed_(def.options.profile.counters) {
    if (metrics::SpanRing* ring = state.spans(state.first_replica(group) + replica)) spans_.emplace(*ring, metrics::steady_now_ns());
    if (record_->incarnation > 0) continue_predecessor();  // restart or recycle
    items_base_ = tallies_[group_.input == GroupInput::channel ? group_.first_stage : group_.first_stage + 1].items_in;
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
      if (plan_.ordered && record_->incarnation > 0) resume_ordered(o);  // a restart or a recycle
      o.hold_split_items = restart_;
      o.stream_large_items = true;  // every batch goes to decode_items() (instances_.front()->decode)
      o.spin = plan_.spin;
      inbox_.emplace(state_.input_of(group_index_), replica_, o);
    }
    if (group_.output != GroupOutput::none) {
      channel::OutboxOptions o;
      o.dispatch = group_.dispatch;
      o.source = group_.input == GroupInput::generator && group_.end_stage == 1;
      if (o.source && timed_) {
        // A generator only returns at the end: mirror its counters after every slot so the
        // scheduler sees its rate while it runs.
        o.on_publish = [](void* self) { static_cast<Replica*>(self)->generator_progress(); };
        o.publish_context = this;
      }
      o.publish_each_item = group_.out_latency_ns == 0;
      o.spin = plan_.spin;
      o.stamp_origin = restart_;
      if (restart_ && group_.input == GroupInput::generator) o.digest = &record_->digest;  // a replay is checked
      if (group_.output == GroupOutput::channel) o.slot_work = {&Replica::consumer_cost_ns, this};
      outbox_.emplace(group_.output == GroupOutput::results ? state_.results() : state_.input_of(group_index_ + 1), replica_, o);
      // A group ending in its terminal only sends partials at the end (or per ordered batch).
      // Under restart only a generator (whose replay drops by items): elsewhere slot boundaries
      // must depend on the items only (faults/redelivery.hpp), and every batch's output is
      // published at its end instead.
      if (group_.out_latency_ns > 0 && !ends_in_terminal() && (!restart_ || replays_by_items()))
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
    if (recycled_) {
      leave_for_replacement();
    } else {
      finish();
    }
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
    // SYNC POINT (release): pairs with the supervisor's acquire load of the status.
    r.status.store(static_cast<std::uint32_t>(recycled_ ? ReplicaStatus::recycled : ReplicaStatus::completed), std::memory_order_release);
    if (group_.scalable && plan_.has_results) {
      // SYNC POINT (release): our closed lanes are visible to a supervisor that sees the count
      // (Inbox::receive_until's acquire); the notify wakes it if it sleeps on the results.
      state_.header().scalable_ends.fetch_add(1, std::memory_order_release);
      channel::notify(state_.results().data_event(0));
    }
  }

 private:
  bool ends_in_terminal() const { return def_.stages[group_.end_stage - 1]->is_terminal(); }
  // Under pf::restart a generator's replay drops what its predecessor sent by count of items
  // (Outbox::begin_source_replay), so its slots may be cut by time; every other group's replay
  // drops whole slots, whose boundaries must depend on the items only (faults/redelivery.hpp).
  bool replays_by_items() const { return group_.input == GroupInput::generator; }

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
    tallies_[0].items_out = outbox_->stats().items + outbox_->stats().replayed_items;
    record_->batch_items.store(tallies_[0].items_out, std::memory_order_relaxed);  // see ReplicaRecord::phase
    const std::uint64_t elapsed = ns_since(generator_start_);
    const std::uint64_t blocked = outbox_->stats().blocked_ns;
    tallies_[0].busy_ns = elapsed > blocked ? elapsed - blocked : 0;
    flush_counters();
  }

  bool retiring() const noexcept { return record_->retire.load(std::memory_order_acquire) != 0; }

  // A replacement (pf::restart): the counters go on from the dead replica's last flush, and the
  // batch it died on (if any) is run again without resending what it had sent.
  void continue_predecessor() noexcept {
    for (std::size_t i = group_.first_stage; i < group_.end_stage; ++i) {
      // Relaxed: its writer is dead; fork() ordered its stores before us.
      const StageCounters& c = state_.counters(i, replica_);
      Tally& t = tallies_[i];
      t.items_in = c.items_in.load(std::memory_order_relaxed);
      t.items_out = c.items_out.load(std::memory_order_relaxed);
      t.batches_in = c.batches_in.load(std::memory_order_relaxed);
      t.bytes_in = c.bytes_in.load(std::memory_order_relaxed);
      t.busy_ns = c.busy_ns.load(std::memory_order_relaxed);
      t.items_skipped = c.items_skipped.load(std::memory_order_relaxed);
      t.retries = c.retries.load(std::memory_order_relaxed);
    }
    starved_base_ = state_.counters(group_.first_stage, replica_).starved_ns.load(std::memory_order_relaxed);
    blocked_base_ = state_.counters(group_.end_stage - 1, replica_).blocked_ns.load(std::memory_order_relaxed);
    replay_pending_ = record_->replay != 0;
    replay_lane_ = record_->replay_lane;
    replay_origin_ = record_->replay_origin;
    replay_sent_ = record_->replay_sent_slots;
    source_replay_ = record_->replay_source;
    aside_scope_before_ = record_->aside_scope.load(std::memory_order_relaxed);
    aside_count_before_ = record_->aside_count.load(std::memory_order_relaxed);
  }

  // pf::restart: the readers are about to read block `scope` (a chunk, or generator_scope). A
  // replacement reading its predecessor's block again skips the inputs already set aside in it
  // (detail::set_aside_input). Three stores so that a death between them leaves no wrong pair.
  void begin_reading(std::uint64_t scope) noexcept {
    if (!restart_) return;
    const std::uint64_t key = scope + 1;
    const std::uint64_t already = key == aside_scope_before_ ? aside_count_before_ : 0;
    aside_scope_before_ = 0;  // a block is read again once
    record_->aside_scope.store(0, std::memory_order_relaxed);
    record_->aside_count.store(already, std::memory_order_relaxed);
    record_->aside_scope.store(key, std::memory_order_relaxed);
    input_rejects.repeats_left = already;
  }

  // pf::restart: the batch about to run is `origin` of input ring `lane` (faults/redelivery.hpp).
  void begin_origin(std::uint32_t lane, std::uint64_t origin, bool redeliverable) noexcept {
    if (!restart_) return;
    const bool replay = replay_pending_ && lane == replay_lane_ && origin == replay_origin_;
    if (replay) replay_pending_ = false;
    if (tracking_ && !replay) record_->item_known.store(0, std::memory_order_relaxed);
    tracking_ = replay;
    // Relaxed: read after the process was reaped; stored before any output of the batch.
    record_->batch_origin_lane.store(redeliverable ? lane : lane | faults::lost_origin_bit, std::memory_order_relaxed);
    record_->batch_origin.store(origin, std::memory_order_relaxed);
    record_->origin_noted.store(1, std::memory_order_relaxed);  // after the origin (a death in between: none)
    if (!outbox_) return;
    if (replays_by_items()) {
      outbox_->begin_origin(lane, origin, 0);
      if (replay) outbox_->begin_source_replay(source_replay_);
    } else {
      outbox_->begin_origin(lane, origin, replay ? replay_sent_ : 0);
    }
  }

  void run_generator() {
    stage_ = 0;
    note_phase(ReplicaPhase::producing);
    const auto t0 = Clock::now();
    generator_start_ = t0;
    if (group_.end_stage == 1) {
      // pf::restart: the whole stream is one batch; a replacement runs the generator again from
      // its start and drops the slots already published (faults/redelivery.hpp).
      begin_origin(channel::no_origin_lane, 0, true);
      begin_reading(generator_scope);
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
    // pf::restart: chunks have owners; a replacement first takes its predecessor's unfinished
    // chunk and any chunk nobody owns (faults/redelivery.hpp).
    const auto owners = state_.chunk_owners();
    std::vector<std::uint64_t> reclaimed;
    if (restart_ && record_->incarnation > 0)
      reclaimed = faults::reclaim_chunks(owners, header.next_chunk.load(std::memory_order_relaxed), replica_);
    std::size_t next_reclaimed = 0;
    for (;;) {
      std::uint64_t chunk = 0;
      if (next_reclaimed < reclaimed.size()) {
        chunk = reclaimed[next_reclaimed++];
      } else {
        if (group_.scalable && retiring()) break;  // another replica claims the rest
        // Relaxed: see RunHeader::next_chunk.
        chunk = header.next_chunk.fetch_add(1, std::memory_order_relaxed);
        if (chunk >= plan_.chunks) break;
        if (restart_ && !faults::claim_chunk(owners, chunk, replica_)) continue;  // a replacement took it
      }
      const auto [first, last] = chunk_range(plan_, chunk, total);
      set_stage(0);
      begin_reading(chunk);
      const auto t0 = clock_start();
      const std::size_t n = src.fill_into(first, last, *instances_.front());
      if (n == 0 && src.ended()) break;  // a source of unknown length (lib/mpi) has no more
      Tally& t = tallies_[0];
      t.items_out += n;
      t.busy_ns += elapsed_ns(t0);
      begin_origin(channel::no_origin_lane, chunk, true);
      process({chunk, first, src.units_are_items()}, n, /*batch_end=*/true, /*batch_start=*/true, 0);
      if (restart_) faults::finish_chunk(owners, chunk);  // its output is published (process())
      if (time_to_recycle()) break;
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
      begin_origin(inbox_->held_ring(), inbox_->held_index(), inbox_->held_redeliverable());
      set_stage(first_worker_);
      const std::uint64_t starved_before = inbox_->stats().starved_ns;
      const auto t0 = clock_start();
      const std::size_t n = instances_.front()->decode(batch);
      // Waiting inside decode for a streamed item's later fragments is starved time, not busy.
      const std::uint64_t waited = inbox_->stats().starved_ns - starved_before;
      const std::uint64_t decode_elapsed = elapsed_ns(t0);
      const std::uint64_t decode_ns = decode_elapsed > waited ? decode_elapsed - waited : 0;
      const bool batch_start = !in_batch;
      in_batch = !batch.batch_end;
      process(batch.meta, n, batch.batch_end, batch_start, decode_ns);
      tallies_[first_worker_].bytes_in += batch.large ? batch.large_bytes : batch.bytes.size();
      if (plan_.ordered && (restart_ || recycles())) note_ordered_position();
      inbox_->release();
      // Ordered, a recycled replica leaves between batches: its batch's output, and a terminal's
      // partial of it, are sent at the batch's end.
      if (time_to_recycle() && !(plan_.ordered && in_batch)) break;
    }
  }

  // An ordered pipeline under pf::restart or pf::recycle: where this replica will be in its
  // ordered input once the slot in hand is given back, stored just before it is. A replacement
  // reads on from there (resume_ordered) — unless its predecessor died still holding a slot
  // (before or after this store: the slot is at the head of its ring either way, and the
  // supervisor said so in `replay`), which it then reads first.
  static constexpr int resume_ring_shift = 48;
  void note_ordered_position() noexcept {
    const channel::Inbox::position p = inbox_->position_after_release();
    const std::uint64_t ring = p.ring ? std::uint64_t{*p.ring} + 1 : 0;
    record_->ordered_resume.store((ring << resume_ring_shift) | (p.seq + 1), std::memory_order_relaxed);
  }
  void resume_ordered(channel::InboxOptions& o) const noexcept {
    if (replay_pending_ && replay_lane_ != channel::no_origin_lane) {
      o.resume_at_head = replay_lane_;
      return;
    }
    const std::uint64_t word = record_->ordered_resume.load(std::memory_order_relaxed);
    if (word == 0) return;  // the predecessor gave nothing back: it starts where it did
    o.first_seq = (word & ((std::uint64_t{1} << resume_ring_shift) - 1)) - 1;
    if (const std::uint64_t ring = word >> resume_ring_shift; ring != 0) o.continue_ring = static_cast<std::uint32_t>(ring - 1);
  }

  // Runs one decoded batch through the fused stages and sends the result on.
  void process(const detail::batch_meta& meta, std::size_t n, bool batch_end, bool batch_start, std::uint64_t extra_ns) {
    const bool ordered = plan_.ordered;
    note_batch(meta, n);
    if (outbox_ && (batch_start || !ordered)) outbox_->begin_batch(meta);
    if (ordered && batch_start && ends_in_terminal()) instances_.back()->begin_batch();
    if (restart_ && ends_in_terminal()) instances_.back()->begin_batch();  // a partial per batch (redelivery.hpp)
    meta_ = meta;
    run_chain(0, n, meta.dense, extra_ns);
    if (restart_ && ends_in_terminal()) {
      set_stage(group_.end_stage - 1);
      instances_.back()->settle();
    }
    if (outbox_) {
      const auto t0 = clock_start();
      // Waiting for room downstream is blocked time, not busy time: the scheduler's true rate
      // (items per busy second) must not count it.
      const std::uint64_t blocked_before = outbox_->stats().blocked_ns;
      // Under restart a terminal sends a partial per input slot (redelivery.hpp), ordered or not.
      if (restart_ && ends_in_terminal()) instances_.back()->end_batch(*outbox_);
      if (ordered && batch_end) {
        if (ends_in_terminal() && !restart_) instances_.back()->end_batch(*outbox_);
        outbox_->end_batch();
      }
      if (!ordered && !restart_ && ends_in_terminal()) {
        set_stage(group_.end_stage - 1);
        instances_.back()->after_batch(*outbox_, group_index_ > 0 && plan_.groups[group_index_ - 1].keyed);
      }
      // The batch's output is all published before its input is released (redelivery.hpp).
      if (restart_) outbox_->flush();
      const std::uint64_t elapsed = elapsed_ns(t0);
      const std::uint64_t blocked = outbox_->stats().blocked_ns - blocked_before;
      if (outbox_->publish_each_item()) outbox_->flush();
      tallies_[group_.end_stage - 1].busy_ns += elapsed > blocked ? elapsed - blocked : 0;
    }
    if (timed_) flush_counters();  // counters_off: only at the end (finish())
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
        const auto t0 = clock_start();
        const std::uint64_t nested0 = spilled_ns_;
        detail::item_cursor cursor;
        const auto& policy = def_.stages[stage]->options().on_error ? def_.stages[stage]->options().on_error
                                                                     : def_.options.defaults.on_error;
        if (policy || tracking_) {
          // One guard per fused stage: a flat_map's spill runs the next stages inside its apply().
          PolicyGuard& guard = guards_[k];
          guard.policy = policy ? *policy : error_policy{};  // tracking alone: fail as without a guard
          guard.track = tracking_;
          guard.stage = static_cast<std::uint32_t>(stage);
          guard.dense = lineage_dense;
          guard.first_item = meta_.first_item;
          guard.stream_first = t.items_in - n;
          guard.tally = &t;
          guard.record = record_;
          guard.state = &state_;
          guard.global_replica = state_.first_replica(group_index_) + replica_;
          guard.instance = instances_[k].get();
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
        t.busy_ns += elapsed_ns(t0) - (spilled_ns_ - nested0) + (k == first ? extra_ns : 0);
        lineage_dense = lineage_dense && def_.stages[stage]->one_to_one() && cursor.skipped == 0;
      }
    }
    if (outbox_ && !ends_in_terminal()) {
      const auto t0 = clock_start();
      // Keyed dispatch runs the next stage's key function here: errors are that stage's.
      set_stage(group_.keyed ? group_.encoder_stage : group_.end_stage - 1);
      void* out = instances_.empty() ? nullptr : instances_.back()->output_buffer();
      const std::uint64_t blocked_before = outbox_->stats().blocked_ns;
      def_.stages[group_.encoder_stage]->encode_input(out, *outbox_, group_.keyed);
      // Blocked on a full ring is not busy time (see process()).
      const std::uint64_t elapsed = elapsed_ns(t0);
      const std::uint64_t blocked = outbox_->stats().blocked_ns - blocked_before;
      tallies_[group_.end_stage - 1].busy_ns += elapsed > blocked ? elapsed - blocked : 0;
    }
  }

 public:
  // A stage whose output buffer filled up in the middle of its batch (a flat_map fanning one
  // input out to many items): the full buffer goes through the rest of the chain and into the
  // port now (blocking on back-pressure like any producer), so memory stays bounded.
  void spill(std::size_t k) override {
    const auto t0 = clock_start();
    if (gate_) gate_->leave();  // the port is ours again: the flusher must keep off
    detail::stage_instance& from = *instances_[k];
    const std::size_t n = from.output_size();
    tallies_[first_worker_ + k].items_out += n;
    if (k + 1 < instances_.size()) from.hand_over(*instances_[k + 1]);
    run_chain(k + 1, n, false, 0);
    from.clear_output();
    set_stage(first_worker_ + k);
    if (gate_) gate_->enter();
    spilled_ns_ += elapsed_ns(t0);
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
      if (ends_in_terminal() && !plan_.ordered && !restart_) {  // under restart: sent per batch
        stage_ = group_.end_stage - 1;
        outbox_->begin_batch({replica_, 0, false});  // partials are merged in replica order
        instances_.back()->finish(*outbox_);
      }
      outbox_->close();
      if (group_.input == GroupInput::generator) tallies_[0].items_out = outbox_->stats().items + outbox_->stats().replayed_items;
    }
    flush_counters();
    if (spans_) spans_->flush();
  }

  // pf::recycle: after a batch, whether this process has taken its share of items or grown past
  // its memory limit; then it leaves (leave_for_replacement) and a fresh one takes its slot.
  bool recycles() const noexcept { return group_.recycle_items != 0 || group_.recycle_rss_bytes != 0; }
  bool time_to_recycle() {
    if (group_.recycle_items != 0 && tallies_[first_worker_].items_in - items_base_ >= group_.recycle_items) recycled_ = true;
    if (group_.recycle_rss_bytes != 0 && resident_bytes() > group_.recycle_rss_bytes) recycled_ = true;
    return recycled_;
  }

  static std::uint64_t resident_bytes() noexcept {
    std::FILE* f = std::fopen("/proc/self/statm", "r");
    if (!f) return 0;
    unsigned long long size = 0, resident = 0;
    const int got = std::fscanf(f, "%llu %llu", &size, &resident);
    std::fclose(f);
    return got == 2 ? resident * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE)) : 0;
  }

  // A recycled replica's end: its teardown and its partial as at the end of the stream, its output
  // published, but its rings left open: the replacement goes on writing them.
  void leave_for_replacement() {
    note_phase(ReplicaPhase::finishing);
    flusher_.reset();
    for (std::size_t k = 0; k < instances_.size(); ++k) {
      set_stage(first_worker_ + k);
      instances_[k]->end_of_stream();
    }
    if (outbox_) {
      if (ends_in_terminal() && !plan_.ordered && !restart_) {
        stage_ = group_.end_stage - 1;
        outbox_->begin_batch({replica_, 0, false});
        instances_.back()->finish(*outbox_);
      }
      outbox_->flush();
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

  // The per-batch busy-time clock; with pf::counters_off it reads no clock and measures 0.
  Clock::time_point clock_start() const noexcept { return timed_ ? Clock::now() : Clock::time_point{}; }
  std::uint64_t elapsed_ns(Clock::time_point t0) const noexcept { return timed_ ? ns_since(t0) : 0; }

  // SlotWork (channel/outbox.hpp): the next group's busy time per item taken so far, over all
  // its replicas (0 until it has measured any).
  static double consumer_cost_ns(const void* self) {
    const auto& r = *static_cast<const Replica*>(self);
    const Group& next = r.plan_.groups[r.group_index_ + 1];
    std::uint64_t busy = 0;
    std::uint64_t items = 0;
    // Relaxed: independent counters, each from its own single writer; a stale value only delays
    // the estimate.
    for (std::uint32_t k = 0; k < next.slots; ++k) {
      items += r.state_.counters(next.first_stage, k).items_in.load(std::memory_order_relaxed);
      for (std::size_t i = next.first_stage; i < next.end_stage; ++i) busy += r.state_.counters(i, k).busy_ns.load(std::memory_order_relaxed);
    }
    return items > 0 && busy > 0 ? static_cast<double>(busy) / static_cast<double>(items) : 0.0;
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
      state_.counters(group_.first_stage, replica_).starved_ns.store(starved_base_ + inbox_->stats().starved_ns, std::memory_order_relaxed);
    if (outbox_)
      state_.counters(group_.end_stage - 1, replica_).blocked_ns.store(blocked_base_ + outbox_->stats().blocked_ns, std::memory_order_relaxed);
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
  bool timed_ = true;  // false under pf::counters_off: no busy-time clock, counters published at the end only
  // pf::restart (faults/redelivery.hpp).
  bool restart_ = group_.restartable;
  bool tracking_ = false;        // running the redelivered batch: each item is noted
  bool replay_pending_ = false;  // the predecessor's batch has not come round yet
  std::uint32_t replay_lane_ = 0;
  channel::SourceReplay source_replay_;  // a generator's replay (begin_origin)
  std::uint64_t replay_origin_ = 0;
  std::uint64_t replay_sent_ = 0;
  std::uint64_t aside_scope_before_ = 0;  // the predecessor's ReplicaRecord::aside_* (begin_reading)
  std::uint64_t aside_count_before_ = 0;
  std::uint64_t starved_base_ = 0;  // the predecessor's, for the counters
  std::uint64_t blocked_base_ = 0;
  // pf::recycle.
  bool recycled_ = false;
  std::uint64_t items_base_ = 0;  // items_in of the first stage when this process started
};

// pf::pinning: this replica process runs on one CPU of the budget, by its slot (round robin). A
// CPU taken away since the plan was made (a cgroup change) fails the call: the replica then runs
// where the kernel puts it.
void pin_to_cpu(const Plan& plan, std::uint32_t slot) noexcept {
  if (plan.pin_cpus.empty()) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(static_cast<std::size_t>(plan.pin_cpus[slot % plan.pin_cpus.size()]), &set);
  (void)sched_setaffinity(0, sizeof set, &set);
}

}  // namespace

int run_replica(const detail::pipeline_def& def, const Plan& plan, const RunState& state, std::size_t group,
                std::uint32_t replica) noexcept {
  std::optional<Replica> r;
  metrics::ReplicaStats* stats = nullptr;
  try {
    pin_to_cpu(plan, state.first_replica(group) + replica);
    stats = &state.stats(state.first_replica(group) + replica);
    metrics::record_start(*stats);
    metrics::use_counter_table(&state.user_counters(state.first_replica(group) + replica));  // pf::counter
    input_rejects = {&state, &state.record(state.first_replica(group) + replica), state.first_replica(group) + replica};
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

namespace procflow::detail {

namespace {

// "file:line[:column]: error"; without a line, "file: column N: error" (no bare number after the file).
template <class Out>
void format_rejection(Out out, const bad_input& input) {
  fmt::format_to(out, "{}", input.file);
  if (input.line != 0) {
    fmt::format_to(out, ":{}", input.line);
    if (input.column) fmt::format_to(out, ":{}", *input.column);
  } else if (input.column) {
    fmt::format_to(out, ": column {}", *input.column);
  }
  fmt::format_to(out, ": {}", input.error);
}

}  // namespace

bool keep_bad_input(const bad_input& input) noexcept {
  runtime::InputRejects& target = runtime::input_rejects;
  if (target.repeats_left > 0) {  // pf::restart: set aside by this replica's dead predecessor
    --target.repeats_left;
    return false;
  }
  const runtime::Identity& id = runtime::identity();
  if (!target.record || !id.def) return true;
  // A line number names the input: a restarted replica reading its predecessor's block again
  // does not keep it twice. Without one (0), every such letter is kept.
  runtime::DeadLetter* d = runtime::free_dead_letter(*target.record, static_cast<std::uint32_t>(id.stage), input.line, input.line != 0);
  if (!d) return true;
  runtime::put_text(d->exception_type, "bad input");
  d->message[0] = '\0';
  try {
    fmt::basic_memory_buffer<char, sizeof d->message> message;  // on the stack unless longer than the letter's field
    format_rejection(std::back_inserter(message), input);
    runtime::put_text(d->message, std::string_view(message.data(), message.size()));
    const std::span<std::byte> room = target.state->dead_letter_item(target.global_replica, target.record->dead_letter_count);
    const std::size_t bytes = chars_encoded_size(input.text.size());
    d->item_bytes = bytes;
    if (bytes > room.size()) {
      d->item_state = static_cast<std::uint32_t>(runtime::DeadItemState::too_large);
    } else {
      encode_chars(input.text, room.data());
      d->item_state = static_cast<std::uint32_t>(runtime::DeadItemState::kept);
    }
  } catch (...) {  // out of memory, or no room set aside for its item: the letter goes as far as it got
    if (d->message[0] == '\0') runtime::put_text(d->message, input.error);
  }
  ++target.record->dead_letter_count;
  return true;
}

void bad_input_written() noexcept {
  runtime::ReplicaRecord* record = runtime::input_rejects.record;
  if (record) record->aside_count.store(record->aside_count.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

}  // namespace procflow::detail
