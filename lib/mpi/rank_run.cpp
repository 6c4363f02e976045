// pf::mpi::run's compiled part: one rank's share of a job (see include/procflow/mpi.hpp).
//
//   rank r:  [ChunkTable] <- ClaimBroker thread <-MPI-> rank 0's ClaimBroker (chunk counter, outcome)
//               |                                   
//            local run_in_processes(def with RankSource as stage 0, RankCollector)
//               |
//            outcome agreed -> results gathered on rank 0 -> reports gathered on rank 0
#include "mpi/chunk_table.hpp"
#include "mpi/claim_broker.hpp"
#include "mpi/export_queue.hpp"
#include "mpi/import_inbox.hpp"
#include "mpi/import_source.hpp"
#include "mpi/rank_collector.hpp"
#include "mpi/rank_source.hpp"
#include "mpi/rank_status.hpp"
#include "runtime/cancel_state.hpp"
#include "runtime/exception_info.hpp"

#include <procflow/cancel.hpp>
#include <procflow/codec.hpp>
#include <procflow/detail/job_place.hpp>
#include <procflow/mpi.hpp>

#include <fmt/format.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>
#include <tuple>

namespace procflow::mpi {

namespace {

int current_rank = -1;  // read by replicas too (forked after it is set)
// Set when a run lost a rank (ClaimBroker, "Silence"): the job cannot run collectives any more.
std::string lost_job;

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(rc, text, &length);
  throw procflow::error(fmt::format("procflow::mpi: {} failed: {}", what, std::string(text, static_cast<std::size_t>(std::max(length, 0)))));
}

// A private duplicate of the user's communicator (procflow's messages never meet theirs), whose
// errors are returned rather than aborting the job.
class PrivateComm {
 public:
  explicit PrivateComm(MPI_Comm user) {
    check(MPI_Comm_dup(user, &comm_), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  }
  ~PrivateComm() { MPI_Comm_free(&comm_); }
  PrivateComm(const PrivateComm&) = delete;
  PrivateComm& operator=(const PrivateComm&) = delete;
  MPI_Comm get() const noexcept { return comm_; }

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
};

// One stage's counters on the wire.
using wire_stage = std::tuple<std::string, std::string, std::uint32_t, std::uint64_t, std::uint64_t, std::uint64_t, std::uint64_t,
                              double, double, double, double, std::uint64_t, std::uint64_t, std::uint64_t>;
using wire_report = std::tuple<double, std::uint32_t, std::uint32_t, std::vector<wire_stage>, std::uint64_t, std::uint64_t, std::uint64_t, std::uint64_t, std::uint64_t, std::uint64_t>;

wire_report to_wire(const run_report& r, const mpi_detail::BrokerTraffic& sent) {
  wire_report w{r.wall_s, r.processes, r.cores, {}, sent.messages, sent.bytes, sent.claims, sent.claim_wait_ns, sent.data_messages, sent.data_bytes};
  for (const stage_report& s : r.stages)
    std::get<3>(w).emplace_back(s.name, s.kind, s.replicas, s.items_in, s.items_out, s.batches_in, s.bytes_in, s.busy_s, s.starved_s,
                                s.blocked_s, s.cpu_s, s.peak_rss_bytes, s.items_skipped, s.retries);
  return w;
}

run_report from_wire(const wire_report& w, const std::string& pipeline) {
  run_report r;
  r.pipeline = pipeline;
  r.wall_s = std::get<0>(w);
  r.processes = std::get<1>(w);
  r.cores = std::get<2>(w);
  for (const wire_stage& ws : std::get<3>(w)) {
    stage_report s;
    std::tie(s.name, s.kind, s.replicas, s.items_in, s.items_out, s.batches_in, s.bytes_in, s.busy_s, s.starved_s, s.blocked_s, s.cpu_s,
             s.peak_rss_bytes, s.items_skipped, s.retries) = ws;
    r.stages.push_back(std::move(s));
  }
  return r;
}

// Every rank's stages summed (stage by stage; every rank runs the same declaration).
// With a stage boundary, rank 0 ran the source (and "to ranks") and the others the rest: the
// source's row comes from rank 0, every other row from ranks 1..N-1.
run_report merge(const std::vector<rank_report>& ranks, const std::string& pipeline, bool boundary) {
  run_report total;
  total.pipeline = pipeline;
  for (const rank_report& rr : ranks) {
    if (boundary && rr.rank == 0) continue;
    const run_report& r = rr.report;
    total.wall_s = std::max(total.wall_s, r.wall_s);
    total.processes += r.processes;
    total.cores += r.cores;
    if (total.stages.size() < r.stages.size()) total.stages.resize(r.stages.size());
    for (std::size_t i = 0; i < r.stages.size(); ++i) {
      stage_report& t = total.stages[i];
      const stage_report& s = r.stages[i];
      t.name = s.name;
      t.kind = s.kind;
      t.replicas += s.replicas;
      t.peak_replicas += s.replicas;
      t.items_in += s.items_in;
      t.items_out += s.items_out;
      t.batches_in += s.batches_in;
      t.bytes_in += s.bytes_in;
      t.busy_s += s.busy_s;
      t.starved_s += s.starved_s;
      t.blocked_s += s.blocked_s;
      t.cpu_s += s.cpu_s;
      t.peak_rss_bytes = std::max(t.peak_rss_bytes, s.peak_rss_bytes);
      t.items_skipped += s.items_skipped;
      t.retries += s.retries;
      t.replica_items_in.push_back(s.items_in);  // one entry per rank
    }
  }
  if (boundary && !ranks.empty() && !ranks.front().report.stages.empty() && !total.stages.empty()) {
    const run_report& root = ranks.front().report;
    total.stages.front() = root.stages.front();
    total.processes += root.processes;
    total.wall_s = std::max(total.wall_s, root.wall_s);
  }
  return total;
}

// How the local run ended, as a status for rank 0. `stopped`: this rank's broker asked it to stop.
mpi_detail::RankStatus status_of_current_exception(bool stopped, const std::string& pipeline) {
  mpi_detail::RankStatus s;
  s.kind = mpi_detail::RankStatus::state::failed;
  try {
    throw;
  } catch (const stage_error& e) {
    s.failure = e.info();
  } catch (const interrupted& e) {
    if (stopped) {
      s.kind = mpi_detail::RankStatus::state::cancelled;
      return s;
    }
    s.failure.stage = pipeline;
    s.failure.in_supervisor = true;
    s.failure.replica = stage_error::no_replica;
    s.failure.pid = static_cast<std::int32_t>(::getpid());
    s.failure.kind = stage_error::cause::signal;
    s.failure.signal_number = e.signal();
    s.failure.message = e.what();
  } catch (...) {
    s.failure.stage = pipeline;
    s.failure.in_supervisor = true;
    s.failure.replica = stage_error::no_replica;
    s.failure.pid = static_cast<std::int32_t>(::getpid());
    s.failure.exception_type = runtime::current_exception_type();
    s.failure.message = runtime::current_exception_message();
  }
  return s;
}

// Collective: when any rank passes a failure, every rank throws the same stage_error, made of the
// lowest such rank's status as for a stage failure ("on MPI rank R of N: ..."); on that rank it
// carries the original exception nested.
void agree_on_failure(MPI_Comm comm, int rank, int size, const std::exception_ptr& failure, const std::string& pipeline) {
  const int mine = failure ? rank : size;
  int first = size;
  check(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm), "MPI_Allreduce");
  if (first == size) return;
  std::vector<std::byte> status;
  mpi_detail::RankStatus s;
  if (rank == first) {
    try {
      std::rethrow_exception(failure);
    } catch (...) {
      s = status_of_current_exception(false, pipeline);
      s.rank = rank;
      status = mpi_detail::encode_status(s);
    }
  }
  mpi_detail::broadcast_bytes(comm, status, first);
  if (rank != first) throw mpi_detail::make_rank_error(mpi_detail::decode_status(status), size);
  try {
    std::rethrow_exception(failure);
  } catch (...) {
    std::throw_with_nested(mpi_detail::make_rank_error(s, size));
  }
}

}  // namespace

int rank() noexcept { return current_rank; }

environment::environment(int& argc, char**& argv) {
  int provided = 0;
  check(MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
  if (provided < MPI_THREAD_SERIALIZED) {
    MPI_Finalize();
    throw procflow::error("procflow::mpi: the MPI library does not provide MPI_THREAD_SERIALIZED");
  }
  int world_rank = 0, world_size = 1;
  check(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank), "MPI_Comm_rank");
  check(MPI_Comm_size(MPI_COMM_WORLD, &world_size), "MPI_Comm_size");
  procflow::detail::set_job_place({world_rank, world_size});  // files written by name: one per rank
}

environment::~environment() {
  procflow::detail::set_job_place({});
  if (lost_job.empty()) {
    MPI_Finalize();
    return;
  }
  // MPI_Finalize would wait for the lost rank; MPI_Abort has mpirun end every rank, the lost one
  // (stopped or hung) included.
  std::fprintf(stderr, "procflow::mpi: aborting the MPI job (%s)\n", lost_job.c_str());
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
}

std::string rank_table(const std::vector<rank_report>& ranks) {
  std::string out = fmt::format("{:>4}  {:<16} {:<13} {:>8} {:>14} {:>14} {:>10} {:>9}\n", "rank", "stage", "kind", "replicas",
                                "items in", "items out", "busy s", "wall s");
  for (const rank_report& rr : ranks)
    for (const stage_report& s : rr.report.stages)
      out += fmt::format("{:>4}  {:<16} {:<13} {:>8} {:>14} {:>14} {:>10.3f} {:>9.3f}\n", rr.rank, s.name, s.kind, s.replicas, s.items_in,
                         s.items_out, s.busy_s, rr.report.wall_s);
  return out;
}

namespace detail {

void broadcast(MPI_Comm comm, std::vector<std::byte>& bytes) { mpi_detail::broadcast_bytes(comm, bytes); }

rank_outcome run_on_ranks(const procflow::detail::pipeline_def& def, procflow::detail::result_collector* collector,
                          const run_options& options) {
  const MPI_Comm user_comm = options.comm;
  const std::chrono::milliseconds silence_limit = options.silence_limit;
  if (!lost_job.empty())
    throw procflow::error(fmt::format("procflow::mpi::run: an earlier run lost a rank ({}); the MPI job cannot run another", lost_job));
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) throw procflow::error("procflow::mpi::run: MPI is not initialized (create a procflow::mpi::environment first)");
  int level = 0;
  MPI_Query_thread(&level);
  if (level < MPI_THREAD_SERIALIZED)
    throw procflow::error("procflow::mpi::run: MPI was initialized below MPI_THREAD_SERIALIZED (use procflow::mpi::environment "
                          "or MPI_Init_thread with MPI_THREAD_SERIALIZED)");
  if (def.stages.empty()) throw procflow::error("procflow::mpi::run: empty pipeline");
  const PrivateComm comm(user_comm);
  int rank = 0;
  int size = 1;
  MPI_Comm_rank(comm.get(), &rank);
  MPI_Comm_size(comm.get(), &size);

  // This rank's copy of the declaration: the source split across ranks, its own cancel source
  // (a failure elsewhere stops it), and threads allowed (MPI's own and the broker's: neither holds
  // anything a replica uses; replicas never call MPI).
  procflow::detail::pipeline_def local = def;
  local.options.allow_threads = true;
  const cancel_source stop;
  local.options.cancel = stop.state();
  const bool is_ordered = def.options.defaults.ordered ||
                          std::any_of(def.stages.begin(), def.stages.end(), [](const auto& s) { return s->options().ordered; });
  const procflow::detail::source_base* source = def.stages.front()->source();
  const bool split = source && source->splittable();
  std::unique_ptr<mpi_detail::ChunkTable> table;
  std::uint64_t total_chunks = 0;
  if (split) {
    const std::uint64_t chunk_units = mpi_detail::RankSource::chunk_units_for(*source, size);
    const std::uint64_t units = source->size();
    total_chunks = units / chunk_units + (units % chunk_units != 0 ? 1 : 0);
    table = std::make_unique<mpi_detail::ChunkTable>(total_chunks);
    local.stages.front() = std::make_shared<mpi_detail::RankSource>(def.stages.front(), chunk_units, *table, is_ordered);
  }
  // A generator on rank 0 feeding the next stage's replicas on ranks 1..N-1 (a stage boundary
  // between ranks), also under pf::ordered (each batch carries its place in rank 0's export
  // order, by which rank 0 orders every rank's results); not when the generator is the whole
  // pipeline but its terminal.
  const bool boundary = !split && size > 1 && def.stages.size() > 2 && source != nullptr;
  const bool runs_here = split || boundary || rank == 0;  // otherwise a generator runs on rank 0 only
  constexpr std::uint32_t boundary_slots = 8;
  constexpr std::size_t boundary_slot_bytes = std::size_t{4} << 20;
  std::unique_ptr<mpi_detail::ExportQueue> exports;
  std::unique_ptr<mpi_detail::ImportInbox> imports;
  std::unique_ptr<procflow::detail::result_collector> export_collector;
  if (boundary && rank == 0) {
    exports = std::make_unique<mpi_detail::ExportQueue>(2, boundary_slot_bytes);
    local.stages.resize(1);
    local.stages.push_back(std::make_shared<mpi_detail::ExportSink>("to ranks", *exports));
    export_collector = local.stages.back()->make_collector(false);
  } else if (boundary) {
    imports = std::make_unique<mpi_detail::ImportInbox>(boundary_slots, boundary_slot_bytes);
    local.stages.front() = std::make_shared<mpi_detail::ImportSource>(def.stages.front(), *imports, is_ordered);
  }
  // A sink's collector (in the caller, or committing the output of its own processes) is this
  // rank's own: it takes this rank's items and ends with this rank's run.
  const bool forward = def.stages.back()->kind() == procflow::detail::stage_kind::sink;
  mpi_detail::RankCollector results(collector, table.get(), imports.get(), is_ordered, forward);

  const std::uint32_t claim_chunks = std::max(2u, std::thread::hardware_concurrency());
  std::atomic<bool> stopped{false};
  mpi_detail::ClaimBroker broker(comm.get(), table.get(), total_chunks, claim_chunks,
                                 [&] {
                                   stopped.store(true, std::memory_order_relaxed);
                                   stop.request_stop();
                                   if (exports) exports->stop();
                                 },
                                 def.options.cancel.get(), silence_limit);
  if (exports) broker.export_to_ranks(exports.get(), boundary_slots);
  if (imports) broker.import_from_root(imports.get());
  struct RankScope {
    int saved = current_rank;
    ~RankScope() { current_rank = saved; }
  } rank_scope;
  current_rank = rank;

  run_report mine;
  mine.pipeline = def.name;
  broker.start();
  mpi_detail::RankStatus status;
  try {
    if (runs_here) {
      procflow::detail::result_collector* local_collector = export_collector ? export_collector.get() : collector ? &results : nullptr;
      mine = procflow::detail::run_in_processes(local, local_collector);
    } else {
      if (table) table->close();
    }
  } catch (...) {
    status = status_of_current_exception(stopped.load(std::memory_order_relaxed), def.name);
  }
  broker.local_finished(status);
  mpi_detail::RankStatus outcome = broker.join();
  if (outcome.kind == mpi_detail::RankStatus::state::lost) {
    outcome.failure.stage = def.name;  // no stage of it is to blame: the pipeline is named
    lost_job = fmt::format("MPI rank {} of {} was lost during '{}'", outcome.rank, size, def.name);
  }
  if (outcome.kind != mpi_detail::RankStatus::state::ok) throw mpi_detail::make_rank_error(outcome, size);

  rank_outcome o;
  o.rank = rank;
  o.size = size;
  // Results to rank 0, or keyed groups to the ranks owning their keys. A failure merging on any
  // rank is agreed on like a stage failure, so that no rank goes on into the next collective (a
  // reduce's broadcast, the reports' gather) without the others.
  const auto agree = [&](std::exception_ptr failure) { agree_on_failure(comm.get(), rank, size, failure, def.name); };
  const bool route_keys = size > 1 && !is_ordered && !forward && collector && collector->keyed();
  const bool keep_owned = route_keys && options.keys == keyed_value::owned;
  const std::uint64_t result_bytes = route_keys ? results.route_keys(comm.get(), def.stages.back()->name(), keep_owned, agree)
                                                : results.gather_to_root(comm.get(), def.stages.back()->name(), agree);
  o.value_here = rank == 0 || keep_owned;

  // Reports (and the traffic counted so far) to rank 0.
  mpi_detail::BrokerTraffic sent = broker.traffic();
  if (result_bytes > 0) {
    ++sent.messages;
    sent.bytes += result_bytes;
  }
  const auto reports = mpi_detail::gather_bytes(comm.get(), encode_to_bytes(to_wire(mine, sent)));
  if (rank == 0) {
    for (std::size_t r = 0; r < reports.size(); ++r) {
      const auto w = decode_from_bytes<wire_report>(reports[r]);
      o.ranks.push_back({static_cast<int>(r), from_wire(w, def.name)});
      o.sent.messages += std::get<4>(w);
      o.sent.bytes += std::get<5>(w);
      o.sent.claims += std::get<6>(w);
      o.sent.claim_wait_s += static_cast<double>(std::get<7>(w)) / 1e9;
      o.sent.batches += std::get<8>(w);
      o.sent.batch_bytes += std::get<9>(w);
    }
    o.report = merge(o.ranks, def.name, boundary);
    o.report.decisions = mine.decisions;
    o.report.dead_letters = mine.dead_letters;
  } else {
    o.report = std::move(mine);
  }
  return o;
}

}  // namespace detail
}  // namespace procflow::mpi
