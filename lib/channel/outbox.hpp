// Outbox: producer replica p's side of a Channel, implementing detail::output_port.
//
// Items are encoded straight into the slot open for a lane (one lane per consumer replica).
// A full slot is published with one release store and one notify() of the consumer (no syscall
// unless it sleeps); only when the chosen ring is full does the producer spin briefly, then
// sleep on its space event. Which lane the next slot goes to is the dispatch policy.
#pragma once

#include "channel/channel.hpp"
#include "channel/replay_digest.hpp"

#include <procflow/detail/port.hpp>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <cstdint>
#include <vector>

namespace procflow::channel {

enum class Dispatch : std::uint8_t {
  round_robin,   // next lane in turn
  least_loaded,  // the lane whose ring holds the fewest slots (default for stateless stages)
  by_sequence,   // lane = batch seq mod consumers; every slot of a batch to one lane (ordered)
  by_key,        // the caller picks the lane per item (reserve_lane: key-hash dispatch)
};

// Batches sized for balance: a slot holds about `target_ns` of its consumer's work, so a stage
// whose items are slow (50 us each) gets slots of a few dozen items that its replicas share
// evenly, while a cheap stage keeps full slots. `cost_ns` reads the consumers' measured busy time
// per item (0: not known yet; then slots start at one item and double each round of lanes until
// it is). Read at most once per `target_ns` of the producer's time.
struct SlotWork {
  double (*cost_ns)(const void* context) = nullptr;  // null: slots are filled by bytes only
  const void* context = nullptr;
  std::uint64_t target_ns = 1'000'000;
};

struct OutboxOptions {
  Dispatch dispatch = Dispatch::least_loaded;
  // Source mode: every published slot is a batch of its own, numbered 0, 1, 2, ... and marked
  // dense (its items are consecutive source items), which is what ordering and error reports
  // downstream key on.
  bool source = false;
  std::uint32_t spin = default_spin_iterations;
  // Called after every published slot (e.g. to mirror stats() to live counters); may be null.
  void (*on_publish)(void* context) = nullptr;
  void* publish_context = nullptr;
  // Latency bound 0: the producer publishes every item as soon as it is written.
  bool publish_each_item = false;
  // A producer in the caller's process (a started pipeline's input): while it waits for a free
  // slot it also gives up once this flag is set (the pipeline failed; its consumers are gone),
  // with would_block. Set by another thread of the same process, which then notifies the space
  // event. Null: wait for room as long as it takes.
  const std::atomic<bool>* abandon = nullptr;
  // pf::restart: stamp every slot with its input batch (begin_origin) and its number in that
  // batch's output (SlotHeader::origin*).
  bool stamp_origin = false;
  // With stamp_origin: keep a digest of the slots published here, and check the slots a replay
  // drops against the one its dead predecessor kept (both: begin_origin). Null: no digest.
  ReplayDigest* digest = nullptr;
  // Least-loaded and round-robin dispatch only (a keyed or ordered lane choice is not about
  // balance), and not with stamp_origin (redelivery needs slot boundaries that depend on the
  // items alone).
  SlotWork slot_work;
};

// Thrown by a write that found no free slot before its wait deadline (set_wait_deadline), or
// whose wait was abandoned (OutboxOptions::abandon). Nothing of the item was written.
struct would_block : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Counters kept by the Outbox itself (process-local; the runtime copies them to shared memory).
struct OutboxStats {
  std::uint64_t slots = 0;       // slots published
  std::uint64_t items = 0;       // items published
  std::uint64_t bytes = 0;       // payload bytes published
  std::uint64_t blocked_ns = 0;  // time spent waiting for a free slot (back-pressure)
  std::uint64_t replayed_slots = 0;  // pf::restart: rewritten slots not sent again (begin_origin)
  std::uint64_t replayed_items = 0;  // ... and their items
};

class Outbox final : public detail::output_port {
 public:
  Outbox(const Channel& channel, std::uint32_t producer, const OutboxOptions& options = {});
  ~Outbox() override = default;
  Outbox(const Outbox&) = delete;
  Outbox& operator=(const Outbox&) = delete;

  void write_large_parts(std::size_t lane, std::span<const std::span<const std::byte>> parts) override;
  void begin_batch(const detail::batch_meta& meta) override;
  void end_batch() override;
  void flush() override;
  void close() override;
  // pf::restart (stamp_origin): the items committed from now on derive from input batch `origin`
  // of input ring `lane` (channel::no_origin_lane: source chunk `origin`); the batch's first
  // `already_sent` output slots were published by a replica that died running it, so they are
  // written again (same items, same slot boundaries: the stages are deterministic and nothing but
  // a full slot or the end of the batch publishes one) but not published. Call with no slot open
  // holding items (after flush()).
  void begin_origin(std::uint32_t lane, std::uint64_t origin, std::uint64_t already_sent) noexcept;

  // pf::restart of a generator, run again from its start (after begin_origin): drops the items
  // (and fragments) `r` names by count, whatever slots its predecessor cut them into (the latency
  // flusher cuts by time), so the replay may cut its own. Until they are dropped every item is a
  // slot of its own (publish_each_item()), and the dropped bytes are checked against the
  // predecessor's digest.
  void begin_source_replay(const SourceReplay& r) noexcept;

  const OutboxStats& stats() const noexcept { return stats_; }

  // Waits for a free slot end at `deadline` (then the write throws would_block, having written
  // nothing); Clock::time_point::max() (the default) waits as long as needed. For items that fit
  // one slot: a larger item's later fragments always wait.
  void set_wait_deadline(Clock::time_point deadline) noexcept { wait_deadline_ = deadline; }

  // For the Flusher, which calls these (and flush()) only while it holds the gate.
  detail::flush_gate& gate() noexcept { return gate_storage_; }
  // Some open slot holds items not yet published.
  bool has_pending() const noexcept;
  // Fewest slots any active consumer has published to it and not yet released (the one it works
  // on included): 0 or 1 means that consumer is idle or about to be. Racy (consumers move on).
  std::uint64_t min_queued_slots() const noexcept;

 protected:
  std::byte* reserve_slow(std::size_t lane, std::size_t n) override;

 private:
  struct Lane {
    RingWriter ring;
    EventShared* data_event = nullptr;  // the consumer's
    SlotHeader* open = nullptr;         // claimed, not yet published
    detail::batch_meta meta;            // meta of the open slot
  };

  std::size_t pick_lane();
  // Reads the channel's membership when it changed: lanes that left get no new slot; a slot
  // still open on one is published first, then the change is acknowledged.
  void refresh_membership();
  void open(std::size_t lane, std::size_t n = 0);
  void step_slow_start() noexcept;
  std::size_t slot_room(std::size_t n);
  std::size_t balanced_room(std::size_t n, std::size_t full);
  // wake = false: the consumer is not notified (a fragment between two that wake it; see
  // write_large_parts).
  void publish(std::size_t lane, std::uint32_t extra_flags = 0, std::uint64_t large_total = 0, bool wake = true);
  void publish_current_if_used();

  std::vector<Lane> lanes_;
  std::vector<detail::write_cursor> cursor_storage_;
  detail::write_cursor no_slot_;  // current_ before anything is open: always "full"
  detail::flush_gate gate_storage_;
  EventShared* space_event_ = nullptr;
  OutboxOptions options_;
  detail::batch_meta batch_;      // current input batch
  std::uint64_t source_seq_ = 0;  // source mode: next batch number
  std::uint64_t source_items_ = 0;
  std::size_t current_lane_ = 0;
  std::size_t rotation_ = 0;      // round-robin / tie-break position
  bool in_fragments_ = false;    // source mode: fragments of one item share one batch number
  // Ordered source: room of the next slots (bytes; 0 = the first item's size), doubled after
  // every lane got a slot of this size, until a whole slot (then 0 and done_slow_start_).
  std::size_t slow_start_bytes_ = 0;
  std::size_t slow_start_slots_ = 0;  // slots published at the current size
  bool done_slow_start_ = false;
  // SlotWork: items per slot now (0: no limit), the consumers' cost when last read, and when.
  std::uint64_t balance_items_ = 1;
  std::size_t balance_slots_ = 0;  // slots published at the current slow-start size
  double balance_cost_ns_ = 0;
  Clock::time_point balance_read_{};
  bool closed_ = false;
  std::uint32_t origin_lane_ = no_origin_lane;  // begin_origin
  std::uint64_t origin_ = 0;
  std::uint64_t origin_slots_ = 0;  // output slots of the current origin so far (published or skipped)
  std::uint64_t skip_slots_ = 0;    // of them, still to skip
  // begin_source_replay: still to drop, and where the stream goes on.
  bool source_replay_ = false;
  SourceReplay replay_;
  std::uint64_t fragment_ = 0;  // write_large_parts: number of the fragment being published (1, 2, ...)
  bool wake_next_ = false;      // the first slot after a replay wakes its consumer (it may sleep mid-item)
  void drop_replayed(Lane& l, detail::write_cursor& c, std::uint32_t flags);
  [[noreturn]] void throw_replay_differs() const;
  // OutboxOptions::digest: a hash of the bytes published so far as one stream (8-byte words, the
  // last partial word carried), and what the dead predecessor's digest said (expect_items_ == 0:
  // nothing to check).
  std::uint64_t digest_hash_ = 0;
  std::uint64_t digest_carry_ = 0;
  std::uint64_t digest_bytes_ = 0;
  std::uint64_t digest_writes_ = 0;
  std::uint64_t expect_items_ = 0;
  std::uint64_t expect_hash_ = 0;
  void fold_digest(const std::byte* payload, std::size_t bytes) noexcept;
  std::uint64_t digest_value() const noexcept;
  OutboxStats stats_;
  Clock::time_point wait_deadline_ = Clock::time_point::max();
  MembershipShared* membership_ = nullptr;  // null: more lanes than a mask holds, all active
  MembershipAck* ack_ = nullptr;
  std::uint64_t seen_epoch_ = ~std::uint64_t{0};
  std::uint64_t active_ = ~std::uint64_t{0};  // lanes that get new slots (dispatch by load/turn)
};

}  // namespace procflow::channel
