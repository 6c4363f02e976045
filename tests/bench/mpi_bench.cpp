// mpi_bench: procflow::mpi on one machine (loopback) — the trivial and the CPU-bound pipeline on
// 1 rank versus 2 ranks, the same total replica count (cores), in the same run; and what crossed
// between ranks per item (messages, bytes) and per claim (round-trip time).
//
//   mpirun -np 2 [--oversubscribe] mpi_bench [--json] [--quick] [--repeats=N]
//
// Variants (bench "mpi_bench"): trivial_1rank, trivial_2ranks, cpu_1rank, cpu_2ranks, and the stage
// boundary between ranks, boundary_1rank / boundary_2ranks: a generator of 8-byte items feeding a
// trivial map (on 2 ranks, rank 0 generates and rank 1 maps: every item crosses). A 1-rank
// variant runs on a communicator holding rank 0 alone while rank 1 waits without spinning; a 2-rank
// variant gives each rank half the cores as replicas. groupby_1rank / groupby_2ranks: reduce_by_key
// over 2 M keys (8 M items), each rank merging the key partitions it owns, the groups gathered on
// rank 0; groupby_owned_*: the same with pf::mpi::keyed_value::owned (no gather). The ratio column is against the 1-rank
// variant of the same pipeline. Rows are printed by rank 0.
#include "bench_support.hpp"
#include "pipeline_peers.hpp"

#include <procflow/mpi.hpp>
#include <procflow/procflow.hpp>

#include <chrono>
#include <thread>

namespace pf = procflow;

namespace {

// Waits for every rank of `comm` without spinning (Open MPI's blocking barrier polls a core,
// which would slow the rank being measured).
void quiet_barrier(MPI_Comm comm) {
  MPI_Request r;
  MPI_Ibarrier(comm, &r);
  for (int done = 0; !done;) {
    MPI_Test(&r, &done, MPI_STATUS_IGNORE);
    if (!done) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

struct Measured {
  double items_per_s = 0;
  double messages_per_item = 0;
  double bytes_per_item = 0;
  double claim_rtt_us = 0;
};

}  // namespace

int main(int argc, char** argv) {
  pf::mpi::environment mpi(argc, argv);
  const auto o = bench::parse_options(argc, argv);
  int rank = 0;
  int size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size != 2) {
    if (rank == 0) fmt::print(stderr, "mpi_bench: run it on 2 ranks (mpirun -np 2 mpi_bench)\n");
    return 2;
  }
  MPI_Comm alone;  // rank 0 by itself; rank 1 gets MPI_COMM_NULL
  MPI_Comm_split(MPI_COMM_WORLD, rank == 0 ? 0 : MPI_UNDEFINED, 0, &alone);
  const auto cores = std::max(1u, std::thread::hardware_concurrency());
  // Calibrated on rank 0 and shared: every rank must compute the same burn() (the same sum).
  std::uint32_t iters = rank == 0 ? bench::peers::calibrate_burn(20.0) : 0;
  MPI_Bcast(&iters, 1, MPI_UINT32_T, 0, MPI_COMM_WORLD);

  const auto trivial_n = static_cast<std::int64_t>(200'000'000 * o.scale);
  const auto cpu_n = static_cast<std::uint64_t>(100'000 * o.scale);
  const std::uint64_t trivial_expected = bench::peers::trivial_expected(static_cast<std::uint64_t>(trivial_n));

  // One run of a pipeline on `comm` (null: this rank sits the run out). Returns items/s on rank 0.
  const auto trivial = [&](MPI_Comm comm, std::uint32_t replicas) {
    auto job = pf::pipeline("trivial")
                   .source("numbers", pf::iota<std::int64_t>(0, trivial_n))
                   .map("square", [](std::int64_t x) { return static_cast<std::uint64_t>(x) * static_cast<std::uint64_t>(x); },
                        pf::replicas(replicas))
                   .filter("div3", [](std::uint64_t v) { return v % 3 == 0; })
                   .reduce("sum", std::uint64_t{0}, std::plus<>{}, std::plus<>{});
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = pf::mpi::run(job, comm);
    const double s = bench::seconds_since(t0);
    if (r.value != trivial_expected) {
      fmt::print(stderr, "trivial: wrong sum {} (expected {})\n", r.value, trivial_expected);
      std::exit(1);
    }
    return std::make_pair(static_cast<double>(trivial_n) / s, r.sent);
  };
  std::uint64_t cpu_expected = 0;
  bool cpu_known = false;
  const auto cpu = [&](MPI_Comm comm, std::uint32_t replicas) {
    auto job = pf::pipeline("cpu")
                   .source("numbers", pf::iota<std::uint64_t>(0, cpu_n))
                   .map("burn", [iters](std::uint64_t x) { return bench::peers::burn(x, iters); }, pf::replicas(replicas))
                   .reduce("sum", std::uint64_t{0}, std::plus<>{}, std::plus<>{});
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = pf::mpi::run(job, comm);
    const double s = bench::seconds_since(t0);
    if (!cpu_known) {
      cpu_expected = r.value;
      cpu_known = true;
    } else if (r.value != cpu_expected) {
      fmt::print(stderr, "cpu: wrong sum {} (expected {})\n", r.value, cpu_expected);
      std::exit(1);
    }
    return std::make_pair(static_cast<double>(cpu_n) / s, r.sent);
  };

  const auto boundary_n = static_cast<std::int64_t>(20'000'000 * o.scale);
  const auto boundary = [&](MPI_Comm comm, std::uint32_t replicas) {
    auto job = pf::pipeline("boundary")
                   .source("gen", [i = std::int64_t{0}, boundary_n]() mutable -> std::optional<std::int64_t> {
                     if (i == boundary_n) return std::nullopt;
                     return i++;
                   })
                   .map("id", [](std::int64_t x) { return x; }, pf::replicas(replicas))
                   .reduce("sum", std::int64_t{0}, std::plus<>{}, std::plus<>{});
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = pf::mpi::run(job, comm);
    const double s = bench::seconds_since(t0);
    if (r.value != boundary_n * (boundary_n - 1) / 2) {
      fmt::print(stderr, "boundary: wrong sum {}\n", r.value);
      std::exit(1);
    }
    return std::make_pair(static_cast<double>(boundary_n) / s, r.sent);
  };

  // reduce_by_key at high cardinality: on 2 ranks each rank merges the partitions it owns, then
  // (on_root) rank 0 gathers the merged groups; keyed_value::owned skips the gather (the ranks'
  // values are checked together).
  const auto groupby_n = static_cast<std::int64_t>(8'000'000 * o.scale);
  const std::int64_t groupby_keys = std::max<std::int64_t>(1, groupby_n / 4);
  const auto groupby = [&](MPI_Comm comm, std::uint32_t replicas, pf::mpi::keyed_value where) {
    auto job = pf::pipeline("groupby")
                   .source("numbers", pf::iota<std::int64_t>(0, groupby_n))
                   .reduce_by_key("by_key", [groupby_keys](std::int64_t x) { return x * 2654435761LL % groupby_keys; }, std::int64_t{0},
                                  [](std::int64_t acc, std::int64_t) { return acc + 1; }, std::plus<>{}, pf::replicas(replicas));
    pf::mpi::run_options options;
    options.comm = comm;
    options.keys = where;
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = pf::mpi::run(job, options);
    const double s = bench::seconds_since(t0);
    std::int64_t counted[2] = {static_cast<std::int64_t>(r.value.size()), 0};
    for (const auto& [k, c] : r.value) counted[1] += c;
    std::int64_t total[2] = {counted[0], counted[1]};
    if (where == pf::mpi::keyed_value::owned) MPI_Allreduce(counted, total, 2, MPI_INT64_T, MPI_SUM, comm);
    if (r.rank == 0 && (total[1] != groupby_n || total[0] > groupby_keys)) {
      fmt::print(stderr, "groupby: wrong groups ({} keys, {} items)\n", total[0], total[1]);
      std::exit(1);
    }
    return std::make_pair(static_cast<double>(groupby_n) / s, r.sent);
  };
  const auto groupby_on_root = [&](MPI_Comm comm, std::uint32_t replicas) { return groupby(comm, replicas, pf::mpi::keyed_value::on_root); };
  const auto groupby_owned = [&](MPI_Comm comm, std::uint32_t replicas) { return groupby(comm, replicas, pf::mpi::keyed_value::owned); };

  std::vector<bench::Row> rows;
  const auto measure = [&](const std::string& pipeline, const auto& once, std::uint64_t n) {
    Measured one_rank;
    Measured two_ranks;
    std::vector<double> rates1;
    std::vector<double> rates2;
    pf::mpi::traffic last2;
    for (int i = 0; i < o.repeats; ++i) {
      // Alternating, so that a change in machine load hits both alike.
      if (rank == 0) rates1.push_back(once(alone, cores).first);
      quiet_barrier(MPI_COMM_WORLD);
      const auto [rate, sent] = once(MPI_COMM_WORLD, std::max(1u, cores / 2));
      rates2.push_back(rate);
      last2 = sent;
      quiet_barrier(MPI_COMM_WORLD);
    }
    if (rank != 0) return;
    one_rank.items_per_s = bench::median(rates1);
    two_ranks.items_per_s = bench::median(rates2);
    const double items = static_cast<double>(n);
    two_ranks.messages_per_item = static_cast<double>(last2.messages) / items;
    two_ranks.bytes_per_item = static_cast<double>(last2.bytes) / items;
    two_ranks.claim_rtt_us = last2.claims ? last2.claim_wait_s / static_cast<double>(last2.claims) * 1e6 : 0;
    rows.push_back({"mpi_bench", pipeline + "_1rank", one_rank.items_per_s, {{"ratio", 1.0}},
                    fmt::format("1 rank, {} replicas", cores)});
    rows.push_back({"mpi_bench", pipeline + "_2ranks", two_ranks.items_per_s,
                    {{"ratio", two_ranks.items_per_s / one_rank.items_per_s},
                     {"messages_per_item", two_ranks.messages_per_item},
                     {"bytes_per_item", two_ranks.bytes_per_item},
                     {"claims", static_cast<double>(last2.claims)},
                     {"claim_rtt_us", two_ranks.claim_rtt_us},
                     {"batches", static_cast<double>(last2.batches)},
                     {"bytes_per_batch", last2.batches ? static_cast<double>(last2.batch_bytes) / static_cast<double>(last2.batches) : 0.0}},
                    fmt::format("2 ranks x {} replicas, loopback", std::max(1u, cores / 2))});
  };
  if (o.wants("trivial")) measure("trivial", trivial, static_cast<std::uint64_t>(trivial_n));
  if (o.wants("cpu")) measure("cpu", cpu, cpu_n);
  if (o.wants("boundary")) measure("boundary", boundary, static_cast<std::uint64_t>(boundary_n));
  if (o.wants("groupby")) measure("groupby", groupby_on_root, static_cast<std::uint64_t>(groupby_n));
  if (o.wants("groupby_owned")) measure("groupby_owned", groupby_owned, static_cast<std::uint64_t>(groupby_n));
  if (rank == 0) bench::report(o, rows);
  if (alone != MPI_COMM_NULL) MPI_Comm_free(&alone);
  return 0;
}
