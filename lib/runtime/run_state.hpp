// RunState: the shared memory of one pipeline run, laid out before fork.
//
//   Segment
//   +------------+----------------------------+------------------------+------------------+
//   | RunHeader  | StageCounters[stage][rep]  | ReplicaRecord[replica] | Channels (rings, |
//   | chunk ctr  | one cache line each        | status + failure text  | events) ...      |
//   +------------+----------------------------+------------------------+------------------+
//
// Counters have exactly one writer (their replica) and are read by the supervisor at any time,
// so they are relaxed atomics: each value is independent and only needs to be untorn.
#pragma once

#include "channel/channel.hpp"
#include "channel/replay_digest.hpp"
#include "metrics/replica_stats.hpp"
#include "metrics/span_ring.hpp"
#include "metrics/user_counter_table.hpp"
#include "runtime/plan.hpp"
#include "shm/segment.hpp"

#include <atomic>
#include <cstdint>
#include <span>
#include <vector>

namespace procflow::runtime {

inline constexpr std::uint64_t run_magic = 0x4e55525746434f52ULL;  // "ROCFWRUN"

struct alignas(shm::cache_line) RunHeader {
  std::uint64_t magic;
  std::uint32_t stages;
  std::uint32_t replicas;
  // Next chunk of a splittable source to claim (fetch_add by the first group's replicas).
  // Relaxed: the counter only hands out distinct numbers; the chunk's items are computed from
  // the number, nothing is published through it.
  alignas(shm::cache_line) std::atomic<std::uint64_t> next_chunk;
  // Replicas of scalable groups that ended (completed, after closing their output lanes). Each
  // adds 1 (release) and then notifies the results channel's data event, so that the supervisor,
  // waiting there, reads the group's replica records and, once all completed, closes the lanes of
  // its slots never started at once rather than when it reaps them at its next tick (the
  // consumers' end of stream waits for that; Elastic::on_completions).
  alignas(shm::cache_line) std::atomic<std::uint32_t> scalable_ends;
};
static_assert(std::is_standard_layout_v<RunHeader>);

struct alignas(shm::cache_line) StageCounters {
  std::atomic<std::uint64_t> items_in;
  std::atomic<std::uint64_t> items_out;
  std::atomic<std::uint64_t> batches_in;
  std::atomic<std::uint64_t> bytes_in;
  std::atomic<std::uint64_t> busy_ns;
  std::atomic<std::uint64_t> starved_ns;
  std::atomic<std::uint64_t> blocked_ns;
  std::atomic<std::uint64_t> items_skipped;  // set aside under skip / retry(..., skip)
  std::atomic<std::uint64_t> retries;        // tries after a failure under retry(n, ...)
};
static_assert(std::is_standard_layout_v<StageCounters> && sizeof(StageCounters) == shm::cache_line);

// recycled: left for a fresh process after its batch (pf::recycle): its slot goes on.
enum class ReplicaStatus : std::uint32_t { running = 0, completed = 1, failed = 2, recycled = 3 };

// ReplicaRecord::phase.
enum class ReplicaPhase : std::uint32_t {
  starting = 0,   // before the first batch (instantiating stages, attaching channels)
  in_batch = 1,   // running a batch through its stages (user code, or blocked writing its output)
  waiting = 2,    // between batches: waiting for input
  finishing = 3,  // end of stream: a sink's finish(), partials, closing the output
  producing = 4,  // a generator source producing items
};

// An item a replica skipped (policy skip): the first few are kept in its record, and each one's
// encoded item (dead_letter.hpp) beside the records when a stage may skip.
enum class DeadItemState : std::uint32_t {
  none = 0,       // not recorded (no room set aside, or an unknown stage)
  kept = 1,       // item_bytes bytes in RunState::dead_letter_item()
  too_large = 2,  // its encoding is larger than dead_letter_item_bytes
  consumed = 3,   // the stage function took it as an rvalue and its type cannot be copied
};
struct DeadLetter {
  std::uint32_t stage;
  std::uint32_t item_state;  // DeadItemState: whether its encoded item is in RunState::dead_letter_item()
  std::uint64_t item_seq;    // as stage_error::item_seq
  std::uint64_t item_bytes;  // the size of the item's encoding (0: unknown)
  char exception_type[64];  // NUL-terminated (the supervisor forces termination anyway)
  char message[256];
};
static_assert(std::is_standard_layout_v<DeadLetter> && std::is_trivially_copyable_v<DeadLetter>);

// Written by its replica only, read by the supervisor after the replica was reaped.
struct ReplicaRecord {
  // Release-stored last, after the fields below; acquire-loaded by the supervisor (SYNC POINT).
  std::atomic<std::uint32_t> status;
  // Stage the replica is running now, so a replica killed by a signal is reported with the
  // stage it died in. Relaxed: read after the process is reaped (wait4 orders it).
  std::atomic<std::uint32_t> current_stage;
  // Set by the supervisor to retire this replica (0: keep running). For a channel input, the
  // membership epoch from which on no producer sends it new batches (it drains and exits, see
  // channel/membership.hpp); for a chunked source, any value: claim no further chunk. Relaxed
  // would do for the flag itself; acquire keeps the epoch reading simple to reason about
  // (pairs with the supervisor's release store).
  std::atomic<std::uint64_t> retire;
  // What the replica is doing, so that a replica that dies without a record (a signal, exit(),
  // a watchdog kill) is reported with the batch it had in hand. Written once per batch, not per
  // item. Single writer, relaxed except `phase` (release, see Replica::note_phase): read after the
  // process was reaped (the wait orders it), or by the watchdog while it runs.
  std::atomic<std::uint32_t> phase;        // ReplicaPhase
  std::atomic<std::uint64_t> phase_since_ns;  // steady_clock when the phase (or batch) began
  std::atomic<std::uint32_t> batch_dense;  // 1: batch_first is a source position
  std::atomic<std::uint64_t> batch_seq;    // source batch (chunk) number
  std::atomic<std::uint64_t> batch_first;  // first item: source position, or position in this replica's input
  std::atomic<std::uint64_t> batch_items;  // items in the batch (a generator: items produced so far)
  // pf::restart (runtime/redelivery.hpp). The batch's origin as stamped on its output slots
  // (input ring and slot index, or no_origin_lane and the chunk), written with the fields above.
  // origin_noted: 1 once an origin was stored (after it): until then the zeros above name no
  // batch, not ring 0's slot 0 (or chunk 0).
  std::atomic<std::uint32_t> batch_origin_lane;
  std::atomic<std::uint64_t> batch_origin;
  std::atomic<std::uint32_t> origin_noted;
  // While a replacement runs a redelivered batch: the item in hand (stage, item number as
  // stage_error::item_seq), stored before each item so that a death names it. Relaxed: read
  // after the process was reaped.
  std::atomic<std::uint32_t> item_known;
  std::atomic<std::uint32_t> item_stage;
  std::atomic<std::uint64_t> item_seq_now;
  // Written by the supervisor before it forks a replacement into this slot (fork orders them):
  // the batch to run again and how many of its output slots were already sent.
  std::uint32_t replay;  // 1: replay_* below are set
  std::uint32_t replay_lane;
  std::uint64_t replay_origin;
  std::uint64_t replay_sent_slots;
  // A generator's replay (channel::Outbox::begin_source_replay): what its predecessor had sent.
  channel::SourceReplay replay_source;
  std::uint32_t incarnation;  // 0 for the first process in this slot, +1 per restart
  // Ordered input under pf::restart or pf::recycle: the replica's place in it once the slot in
  // hand is given back, stored just before it is (Inbox::position_after_release(); one word, so a
  // death cannot tear it): low 48 bits the batch expected next + 1, high 16 bits the ring it began
  // on + 1 (0: not begun); 0 when nothing was stored. Relaxed: read after the process was reaped.
  std::atomic<std::uint64_t> ordered_resume;
  // A restartable generator's published slots (Outbox::begin_origin checks a replay against it).
  channel::ReplayDigest digest;
  // pf::restart: what this slot's readers set aside (detail::set_aside_input) in the block they
  // read now: the block's scope + 1 (0: none; see Replica::begin_reading) and how many inputs
  // were set aside in it — counted and written out. A replacement reading that block again sets
  // the first that many aside no more. Relaxed: read after the process was reaped.
  std::atomic<std::uint64_t> aside_scope;
  std::atomic<std::uint64_t> aside_count;
  // Dead letters kept (<= dead_letters_per_replica). Read after the replica was reaped.
  std::uint32_t dead_letter_count;
  DeadLetter dead_letters[dead_letters_per_replica];
  std::uint32_t stage;        // pipeline stage index that failed
  std::uint32_t has_item;
  std::uint64_t item_seq;
  char exception_type[160];   // NUL-terminated (the supervisor forces termination anyway)
  char message[1024];
};
static_assert(std::is_standard_layout_v<ReplicaRecord>);

// Process-local description of where everything is; built before fork, inherited by children.
class RunState {
 public:
  RunState(const detail::pipeline_def& def, const Plan& plan);

  const shm::Segment& segment() const noexcept { return segment_; }
  RunHeader& header() const { return *segment_.at<RunHeader>(header_offset_); }
  StageCounters& counters(std::size_t stage, std::uint32_t replica) const;
  ReplicaRecord& record(std::uint32_t global_replica) const;
  metrics::ReplicaStats& stats(std::uint32_t global_replica) const;
  // The replica's timeline for the trace; nullptr when no trace was asked for.
  metrics::SpanRing* spans(std::uint32_t global_replica) const;
  // The named counters (pf::counter) of a global replica; index total_replicas() is the
  // supervisor's own table (a sink or collect running in the caller).
  metrics::UserCounterTable& user_counters(std::uint32_t global_replica_or_supervisor) const;
  metrics::UserCounterTable& caller_counters() const { return user_counters(total_replicas_); }
  std::uint32_t total_replicas() const noexcept { return total_replicas_; }
  // Channel feeding group `g` (g >= 1), and the results channel to the supervisor.
  const channel::Channel& input_of(std::size_t group) const { return channels_.at(group - 1); }
  const channel::Channel& results() const { return results_; }
  // First global replica number of group g.
  std::uint32_t first_replica(std::size_t group) const { return replica_base_.at(group); }
  // pf::restart on a chunk-claiming group: one owner word per chunk (runtime/redelivery.hpp);
  // empty without restart.
  std::span<std::atomic<std::uint16_t>> chunk_owners() const;
  std::uint32_t max_replicas() const noexcept { return max_replicas_; }
  // Room for the encoded item of dead letter `index` of a global replica (dead_letter_item_bytes);
  // empty when no stage may skip (nothing set aside).
  std::span<std::byte> dead_letter_item(std::uint32_t global_replica, std::uint32_t index) const;

 private:
  shm::SegmentLayout layout_;
  std::uint64_t header_offset_ = 0;
  std::uint64_t counters_offset_ = 0;
  std::uint64_t records_offset_ = 0;
  std::uint64_t stats_offset_ = 0;
  std::uint64_t spans_offset_ = 0;  // 0: no span rings
  std::uint64_t user_counters_offset_ = 0;  // total_replicas_ + 1 tables
  std::uint64_t owners_offset_ = 0;  // 0: no chunk owners
  std::uint64_t owners_ = 0;
  std::uint64_t dead_items_offset_ = 0;  // 0: no stage may skip
  std::size_t stages_ = 0;
  std::uint32_t max_replicas_ = 0;
  std::uint32_t total_replicas_ = 0;
  std::vector<std::uint32_t> replica_base_;
  std::vector<channel::Channel> channels_;
  channel::Channel results_;
  shm::Segment segment_;
};

}  // namespace procflow::runtime
