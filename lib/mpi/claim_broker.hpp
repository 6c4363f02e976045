// ClaimBroker: the one thread of an MPI rank that talks MPI while the rank's local pipeline runs.
//
// It does two jobs over a private communicator (a dup of the user's):
//  - claims: rank 0 owns the counter of global chunks of a splittable source. Every rank's broker
//    keeps its ChunkTable a few chunks ahead of what its replicas asked for: rank 0 takes them from
//    the counter directly, the others ask rank 0 (CLAIM k -> GRANT [first, first + count); a grant
//    of 0 chunks means none is left). Point-to-point rather than MPI_Fetch_and_op on a window:
//    Open MPI 4.1's passive-target atomics over TCP progress only when the target calls MPI, and
//    rank 0's own broker is polling anyway, so a request/grant costs one round trip either way and
//    needs no RMA support from the interconnect.
//  - the outcome: each rank reports how its local run ended (STATUS); rank 0 answers every rank
//    with the job's outcome (OUTCOME): the first failure as soon as it knows one (every other rank
//    then cancels its local run), or success once all ranks reported success. So no rank waits in
//    a collective for a rank that failed, and the collectives after run() are safe.
//
//  - a stage boundary between ranks (a generator on rank 0 feeding the next stage's replicas on
//    ranks 1..N-1): rank 0 sends the batches of its ExportQueue as DATA messages, each to a rank
//    holding a credit (the one holding most); a rank's ImportInbox posts a receive per free slot
//    and only then grants one CREDIT for it (rank 0 starts with none); END tells each rank how
//    many batches it got in all. So every DATA lands in a receive posted before it was sent (never
//    in MPI's unexpected queue, where the control probe would take it), at most K per rank.
//
// Termination (no message is in flight on the communicator when the brokers return, so nothing
// stale reaches the next run, whose dup may reuse this context id):
//  - rank r > 0 sends CLAIM*, CREDIT*, then STATUS, and nothing after STATUS. It returns once it
//    has OUTCOME, a GRANT for every CLAIM, END (when importing) and every batch END counts, and
//    its own sends completed; receives posted past END's count are cancelled (nothing matches).
//  - rank 0 reads rank r's messages in order (one communicator, one source), so once it has every
//    STATUS it has read every CLAIM and CREDIT too, and answered each CLAIM. It sends OUTCOME once
//    (the first failure, or success when every STATUS is in), END once (when exporting: the
//    stream ended or the job is failing; DATA only before END), and returns after all statuses,
//    OUTCOME and END are out and its sends completed.
//
// Silence (where MPI cannot tell: a rank stopped, hung, or cut off without its connection
// failing): before its STATUS, every rank sends rank 0 an ALIVE at least every heartbeat, and rank
// 0 sends each rank one until its OUTCOME. A rank that has not reported and from which rank 0
// heard nothing for the silence limit is lost: the outcome is a `lost` failure naming it, sent to
// every other rank. A rank that hears nothing from rank 0 for the limit before its OUTCOME ends
// with rank 0 lost. Either way the brokers leave without waiting for the lost rank (its sends are
// abandoned, receives cancelled), and the MPI job cannot run collectives any more: rank_run.cpp
// refuses further runs and the environment aborts the job instead of finalizing it.
//
// Thread use: the broker calls MPI only between start() and join(); the rank's main thread calls
// MPI only outside that window (MPI_THREAD_SERIALIZED suffices). The broker never forks and holds
// no lock the forked replicas could need (they only read the ChunkTable).
#pragma once

#include "mpi/chunk_table.hpp"
#include "mpi/export_queue.hpp"
#include "mpi/import_inbox.hpp"
#include "mpi/rank_status.hpp"

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <vector>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

namespace procflow::detail {
struct cancel_state;
}

namespace procflow::mpi_detail {

struct BrokerTraffic {
  std::uint64_t messages = 0;
  std::uint64_t bytes = 0;
  std::uint64_t claims = 0;         // CLAIM requests this rank sent to rank 0
  std::uint64_t claim_wait_ns = 0;  // summed time from a CLAIM's send to its GRANT's arrival
  std::uint64_t data_messages = 0;  // batches sent across the stage boundary (rank 0)
  std::uint64_t data_bytes = 0;
};

class ClaimBroker {
 public:
  // `table` is null when no source is split across ranks. `total_chunks`: the global chunk count.
  // `stop_local` asks this rank's local run to stop (a failure elsewhere); `user_cancel` (may be
  // null) is the user's cancel_source, forwarded to `stop_local`.
  // `silence_limit`: see "Silence" above (its quarter, at most 1 s, is the heartbeat).
  ClaimBroker(MPI_Comm comm, ChunkTable* table, std::uint64_t total_chunks, std::uint32_t claim_chunks,
              std::function<void()> stop_local, const detail::cancel_state* user_cancel,
              std::chrono::milliseconds silence_limit);
  // The stage boundary between ranks: rank 0's queue (with the slots each rank has), or a rank's
  // inbox. Call before start().
  void export_to_ranks(ExportQueue* queue, std::uint32_t slots_per_rank) noexcept {
    exports_ = queue;
    slots_per_rank_ = slots_per_rank;
  }
  void import_from_root(ImportInbox* inbox) noexcept { imports_ = inbox; }
  ~ClaimBroker();
  ClaimBroker(const ClaimBroker&) = delete;
  ClaimBroker& operator=(const ClaimBroker&) = delete;

  void start();
  // Main thread: this rank's local run ended so.
  void local_finished(RankStatus status);
  // Main thread: waits until the broker has the job's outcome and is done with MPI. Throws
  // procflow::error if an MPI call failed.
  RankStatus join();

  BrokerTraffic traffic() const noexcept { return traffic_; }

 private:
  void run_root();
  void run_member();
  bool poll_sends();
  void send(int to, int tag, std::vector<std::byte> bytes);
  void abandon_sends();
  RankStatus lost_status(int rank, const char* side) const;
  void grant_locally();
  void check(int rc, const char* what);
  static void pause(int& idle_rounds);

  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  ChunkTable* table_;
  std::uint64_t total_chunks_;
  std::uint32_t claim_chunks_;
  std::function<void()> stop_local_;
  const detail::cancel_state* user_cancel_;

  ExportQueue* exports_ = nullptr;
  std::uint32_t slots_per_rank_ = 0;
  ImportInbox* imports_ = nullptr;

  std::uint64_t next_chunk_ = 0;  // rank 0: the next global chunk to grant
  bool exhausted_ = false;        // this rank's table is closed

  std::mutex mutex_;                      // guards local_status_ (main thread -> broker)
  std::optional<RankStatus> local_status_;
  std::atomic<bool> local_done_{false};   // local_status_ is set (release by main, acquire by broker)

  std::chrono::steady_clock::duration silence_limit_;
  std::chrono::steady_clock::duration heartbeat_;
  std::vector<bool> lost_;  // rank 0: ranks declared lost (their sends no longer awaited)

  struct PendingSend {
    MPI_Request request;
    std::unique_ptr<std::vector<std::byte>> bytes;
    int to;
  };
  std::vector<PendingSend> sends_;
  RankStatus outcome_;
  std::string mpi_failure_;  // set by the broker when an MPI call failed
  BrokerTraffic traffic_;
  std::thread thread_;
};

}  // namespace procflow::mpi_detail
