// procflow::mpi — the same pipeline declaration across the ranks of an MPI job
// (component procflow::mpi, built when CMake finds MPI; the core library has no MPI dependency).
//
//   int main(int argc, char** argv) {
//     pf::mpi::environment mpi(argc, argv);             // MPI_Init_thread(SERIALIZED) .. Finalize
//     auto job = pf::pipeline("squares")
//                    .source("n", pf::iota<std::int64_t>(0, 100'000'000))
//                    .map("square", [](std::int64_t x) { return x * x; })
//                    .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{});
//     auto r = pf::mpi::run(job);                        // every rank calls it
//     if (r.rank == 0) fmt::print("{}\n{}", r.value, pf::mpi::rank_table(r.ranks));
//   }
//   $ mpirun -np 4 ./squares
//
// Every rank runs the whole declaration with a supervisor and replicas in processes of its own,
// as run() does on one machine. What crosses ranks:
//   - a splittable source (pf::iota, pf::from, the file readers) is split in chunks that the ranks
//     claim dynamically from rank 0 (a rank asks for a few chunks ahead of its replicas; see
//     lib/mpi/claim_broker.hpp for why point-to-point rather than MPI_Fetch_and_op).
//   - a generator (pf::generate) runs on rank 0 and feeds the next stage's replicas on ranks
//     1..N-1: a stage boundary between ranks carrying the encoded batches as MPI messages, under
//     credit-based flow control (lib/mpi/import_inbox.hpp). Under pf::ordered each batch carries
//     its place in rank 0's export order, by which rank 0 orders every rank's results. When only
//     the terminal follows the generator, the whole job runs on rank 0.
//   - the terminal's results: every rank's encoded result batches are gathered on rank 0, which
//     merges them with the terminal's own collector: collect (in source order with pf::ordered),
//     reduce (partials combined in source order with pf::ordered). The value is on rank 0; a
//     reduce's value is broadcast to every rank as well; collect gives the other ranks an empty
//     value. A sink runs on every rank over that rank's items.
//   - reduce_by_key: keys go to their owning rank (partition p of keyed_result's 64 to rank
//     p % N): each rank merges its replicas' partials, sends each merged partition to its owner
//     (MPI_Alltoallv), and the owners merge them in rank order. run_options::keys then says where
//     the value is: on rank 0 (gathered; default) or on the owners (keyed_value::owned). Under
//     pf::ordered every rank's partials are merged on rank 0 in source order instead.
//     A combine that throws on any rank ends the run on every rank with the same stage_error.
//   - failures: a replica failing on any rank ends the job on every rank, each throwing the same
//     procflow::stage_error (stage, replica, pid, cause as on one machine; its message starts
//     "on MPI rank R of N"). A rank *process* that dies is MPI's to handle: mpirun ends the job.
//     A rank that is stopped, hung or cut off without its connection failing (where MPI cannot
//     tell) is found by silence: the ranks exchange heartbeats during a run, and one not heard
//     for run_options::silence_limit (10 s) is lost. Every other rank's run then throws a
//     stage_error (cause lost, naming the lost rank and the pipeline). The job cannot go on (a
//     collective would wait for the lost rank): later runs throw, and the environment's
//     destructor calls MPI_Abort instead of MPI_Finalize, so mpirun ends every rank.
//   - the report: result::report sums every rank's counters per stage; result::ranks (on rank 0)
//     holds each rank's own report; rank_table() prints them with a rank column.
#pragma once

#include <procflow/pipeline.hpp>

#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

namespace procflow::mpi {

// Initializes MPI with MPI_THREAD_SERIALIZED (procflow's claim broker thread calls MPI while the
// rank's main thread waits in run()) and finalizes it. Throws procflow::error if the MPI library
// cannot provide that level.
class environment {
 public:
  environment(int& argc, char**& argv);
  ~environment();
  environment(const environment&) = delete;
  environment& operator=(const environment&) = delete;
};

struct rank_report {
  int rank = 0;
  run_report report;
};

// Messages and bytes one run sent between ranks (summed over ranks): chunk claims and grants,
// status and outcome messages, and the result gather.
struct traffic {
  std::uint64_t messages = 0;
  std::uint64_t bytes = 0;
  std::uint64_t claims = 0;  // chunk claims ranks 1.. sent to rank 0 (each answered by one grant)
  double claim_wait_s = 0;   // summed round trips of those claims (a claim to its grant)
  std::uint64_t batches = 0;      // item batches sent across a stage boundary between ranks
  std::uint64_t batch_bytes = 0;  // their bytes (included in `bytes`)
};

template <class R>
struct result {
  R value{};                       // rank 0 (reduce: every rank; reduce_by_key: see keyed_value)
  run_report report;               // every rank's counters summed per stage (rank 0; else this rank's)
  std::vector<rank_report> ranks;  // rank 0: each rank's report
  int rank = 0;                    // this process's rank in the communicator
  int size = 1;                    // ranks
  mpi::traffic sent;               // rank 0: the whole job's cross-rank traffic
};

template <>
struct result<void> {
  run_report report;
  std::vector<rank_report> ranks;
  int rank = 0;
  int size = 1;
  mpi::traffic sent;
};

// This process's rank in the communicator of the run going on (also in the run's replicas and
// stage code); -1 outside pf::mpi::run.
int rank() noexcept;

// A table of every rank's per-stage counters, with a rank column.
std::string rank_table(const std::vector<rank_report>& ranks);

// Where an unordered reduce_by_key's value ends up (see the top of this file: each rank merges
// the groups of the key partitions it owns).
enum class keyed_value : std::uint8_t {
  on_root,  // gathered on rank 0, whose value holds every group; the other ranks' values are empty
  owned,    // kept where merged: each rank's value holds the groups of the partitions it owns
            // (keyed_result partition p on rank p % N); the ranks' values are disjoint, their
            // union is the result. No gather, so no rank needs memory for every group.
};

struct run_options {
  MPI_Comm comm = MPI_COMM_WORLD;
  // How long a rank may go unheard during a run before it is taken as lost (see the top of this
  // file). Heartbeats go every quarter of it, at most every second.
  std::chrono::milliseconds silence_limit = std::chrono::seconds(10);
  keyed_value keys = keyed_value::on_root;
};

namespace detail {

struct rank_outcome {
  run_report report;
  std::vector<rank_report> ranks;
  int rank = 0;
  int size = 1;
  traffic sent;
  bool value_here = false;  // the collector holds this rank's value (rank 0; every owner with keyed_value::owned)
};

// Runs `def` on every rank of `options.comm` (lib/mpi/rank_run.cpp). `collector` is the terminal's
// (null for a sink in its own processes). Collective: every rank of the communicator must call it.
rank_outcome run_on_ranks(const procflow::detail::pipeline_def& def, procflow::detail::result_collector* collector,
                          const run_options& options);
// Rank 0's bytes on every rank of `comm`.
void broadcast(MPI_Comm comm, std::vector<std::byte>& bytes);

}  // namespace detail


// Runs the job on every rank of `options.comm` (collective: every rank calls it with the same
// declaration and options). Blocks; throws procflow::stage_error on every rank when any rank's
// stage fails or a rank is lost.
template <class R>
result<R> run(const runnable<R>& job, const run_options& options) {
  const MPI_Comm comm = options.comm;
  const auto& def = job.definition();
  const bool is_ordered = def.options.defaults.ordered ||
                          std::any_of(def.stages.begin(), def.stages.end(), [](const auto& s) { return s->options().ordered; });
  auto collector = def.stages.back()->make_collector(is_ordered);
  detail::rank_outcome o = detail::run_on_ranks(def, collector.get(), options);
  result<R> r;
  if constexpr (!std::is_void_v<R>) {
    auto* typed = static_cast<procflow::detail::typed_collector<R>*>(collector.get());
    if (o.value_here) r.value = typed->take();
    if constexpr (encodable<R>) {
      if (def.stages.back()->kind() == procflow::detail::stage_kind::reduce) {
        std::vector<std::byte> bytes;
        if (o.rank == 0) bytes = encode_to_bytes(r.value);
        detail::broadcast(comm, bytes);
        if (o.rank != 0) r.value = decode_from_bytes<R>(bytes);
      }
    }
  }
  r.report = std::move(o.report);
  r.ranks = std::move(o.ranks);
  r.rank = o.rank;
  r.size = o.size;
  r.sent = o.sent;
  return r;
}

template <class R>
result<R> run(const runnable<R>& job, MPI_Comm comm = MPI_COMM_WORLD) {
  return run(job, run_options{comm});
}

}  // namespace procflow::mpi
