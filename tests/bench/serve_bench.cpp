// serve_bench: many small jobs through a pipeline kept warm (pf::serve + submit), against a run()
// per job and Python's warm multiprocessing.Pool(2) / ProcessPoolExecutor(2) in the same
// invocation (tests/bench/python/serve_bench.py, started from here). Issue 17's targets:
//   job100   a 100-item job (x -> x*x+1) on 2 replicas: p50 <= 200 us (vs Pool(2).map, 0.79 ms);
//   submit1  one submit() round trip: p50 <= 50 us (vs ProcessPoolExecutor(2).submit, 263 us);
//   clients8 8 client threads submitting ~20 us items: items/s >= 0.9x one batch run() of them.
// Every row: bench "serve_bench", variant, job, p50_us / p99_us (per job; clients8: per request,
// from submit to its answer), jobs_per_s (clients8: requests per second), medians over --repeats;
// the clients8 rows also caller_cpu_us: the calling process's CPU per request (all its threads:
// clients, the pool's driver and results threads; not the replicas, which are its children).
//
//   serve_bench [--json] [--quick] [--repeats=N] [--only=procflow,python]
#include "bench_support.hpp"
#include "pipeline_peers.hpp"

#include <procflow/procflow.hpp>

#include <sys/resource.h>

#include <cstdio>
#include <future>
#include <numeric>
#include <thread>

namespace pf = procflow;
using Clock = std::chrono::steady_clock;

namespace {

struct Latencies {
  std::vector<double> us;
  double seconds = 0;  // wall time of the whole series
  std::size_t jobs = 0;
  double caller_cpu_s = -1;  // CPU of the calling process over the series (its threads, not its children); -1: not taken
};

// User + system CPU of this process so far: every thread of it, none of its children.
double process_cpu_s() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(k, v.size() - 1)];
}

struct Figures {
  double p50 = 0, p99 = 0, jobs_per_s = 0;
  double caller_cpu_us = -1;  // per job (per request for clients8); -1: not taken
};

// Medians over repeats of each figure.
Figures summarize(const std::vector<Latencies>& runs) {
  std::vector<double> p50, p99, rate, cpu;
  for (const auto& r : runs) {
    p50.push_back(percentile(r.us, 0.5));
    p99.push_back(percentile(r.us, 0.99));
    rate.push_back(static_cast<double>(r.jobs) / r.seconds);
    if (r.caller_cpu_s >= 0) cpu.push_back(r.caller_cpu_s * 1e6 / static_cast<double>(r.jobs));
  }
  return {bench::median(p50), bench::median(p99), bench::median(rate), cpu.empty() ? -1.0 : bench::median(cpu)};
}

void print_row(const bench::Options& o, const std::string& variant, const std::string& job, const Figures& f, const std::string& note) {
  // caller_cpu_us only where taken (the clients8 rows): the calling process's CPU per job.
  const std::string cpu = f.caller_cpu_us >= 0 ? fmt::format(R"(,"caller_cpu_us":{:.3g})", f.caller_cpu_us) : "";
  if (o.json) {
    fmt::print(R"({{"bench":"serve_bench","variant":"{}","job":"{}","p50_us":{:.4g},"p99_us":{:.4g},"jobs_per_s":{:.6g}{},"note":"{}"}})"
               "\n",
               variant, job, f.p50, f.p99, f.jobs_per_s, cpu, bench::json_escape(note));
  } else {
    const std::string cpu_text = f.caller_cpu_us >= 0 ? fmt::format(" [caller CPU {:.2f} us/job]", f.caller_cpu_us) : "";
    fmt::print("{:<22} {:<9} {:>10.1f} {:>10.1f} {:>12.0f}  {}{}\n", variant, job, f.p50, f.p99, f.jobs_per_s, note, cpu_text);
  }
  std::fflush(stdout);
}

std::int64_t trivial(std::int64_t x) { return x * x + 1; }

}  // namespace

int main(int argc, char** argv) {
  const auto o = bench::parse_options(argc, argv);
  const int jobs = std::max(20, static_cast<int>(2000 * o.scale));
  const auto client_items = static_cast<std::uint64_t>(std::max(2000.0, 40000 * o.scale));
  const std::uint32_t iters = bench::peers::calibrate_burn(20.0);
  if (!o.json) fmt::print("{:<22} {:<9} {:>10} {:>10} {:>12}\n{}\n", "variant", "job", "p50_us", "p99_us", "jobs/s", std::string(70, '-'));

  // --- procflow_run_per_job: a run() per job (fork, rings, reap every time) ---------------------
  if (o.wants("procflow_run_per_job")) {
    auto per_job = [&](std::int64_t items, int count) {
      std::vector<Latencies> runs;
      for (int r = 0; r < o.repeats; ++r) {
        Latencies l;
        const auto t0 = Clock::now();
        for (int j = 0; j < count; ++j) {
          const auto s = Clock::now();
          auto res = pf::pipeline("job").source("n", pf::iota<std::int64_t>(0, items)).map("f", trivial, pf::replicas(2)).collect().run();
          if (res.value.size() != static_cast<std::size_t>(items)) std::exit(1);
          l.us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - s).count());
        }
        l.seconds = bench::seconds_since(t0);
        l.jobs = static_cast<std::size_t>(count);
        runs.push_back(std::move(l));
      }
      return summarize(runs);
    };
    const int count = std::max(10, jobs / 10);
    print_row(o, "procflow_run_per_job", "job100", per_job(100, count), "run() of iota(0,100) -> map x2 -> collect, per job");
    print_row(o, "procflow_run_per_job", "submit1", per_job(1, count), "run() of a 1-item pipeline, per job");
  }

  // --- procflow_submit: a pool started once ------------------------------------------------------
  if (o.wants("procflow_submit")) {
    {
      auto pool = pf::serve<std::int64_t>("serve").map("f", trivial, pf::replicas(2)).start();
      for (int i = 0; i < 2000; ++i) pool.submit(i).get();  // warm-up
      std::vector<Latencies> job100, job100_each, single;
      std::vector<std::int64_t> job(100);
      for (int r = 0; r < o.repeats; ++r) {
        Latencies all;
        const auto ta = Clock::now();
        for (int j = 0; j < jobs; ++j) {
          const auto s = Clock::now();
          std::iota(job.begin(), job.end(), std::int64_t{0});
          auto answers = pool.submit_all(job);
          for (std::int64_t i = 0; i < 100; ++i)
            if (answers.get(static_cast<std::size_t>(i)) != trivial(i)) std::exit(1);
          all.us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - s).count());
        }
        all.seconds = bench::seconds_since(ta);
        all.jobs = static_cast<std::size_t>(jobs);
        job100.push_back(std::move(all));
        Latencies l;
        std::vector<std::future<std::int64_t>> futures;
        futures.reserve(100);
        const auto t0 = Clock::now();
        for (int j = 0; j < jobs; ++j) {
          const auto s = Clock::now();
          futures.clear();
          for (std::int64_t i = 0; i < 100; ++i) futures.push_back(pool.submit(i));
          for (std::int64_t i = 0; i < 100; ++i)
            if (futures[static_cast<std::size_t>(i)].get() != trivial(i)) std::exit(1);
          l.us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - s).count());
        }
        l.seconds = bench::seconds_since(t0);
        l.jobs = static_cast<std::size_t>(jobs);
        job100_each.push_back(std::move(l));
        Latencies one;
        const auto t1 = Clock::now();
        for (int j = 0; j < jobs * 5; ++j) {
          const auto s = Clock::now();
          if (pool.submit(j).get() != trivial(j)) std::exit(1);
          one.us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - s).count());
        }
        one.seconds = bench::seconds_since(t1);
        one.jobs = static_cast<std::size_t>(jobs * 5);
        single.push_back(std::move(one));
      }
      print_row(o, "procflow_submit", "job100", summarize(job100), "submit_all(100 items) then get(i) of each, 2 replicas kept warm");
      print_row(o, "procflow_submit", "job100_each", summarize(job100_each), "100 submit() then 100 get(), 2 replicas kept warm");
      print_row(o, "procflow_submit", "submit1", summarize(single), "submit(x).get(), one at a time");
    }
  }

  // --- clients8: 8 client threads against one batch run() of the same items, alternated per
  // repeat so that both see the same machine load --------------------------------------------------
  if (o.wants("procflow_submit") || o.wants("procflow_run_per_job")) {
    auto burn = [iters](std::uint64_t x) { return bench::peers::burn(x, iters); };
    auto pool = pf::serve<std::uint64_t>("serve8").map("burn", burn, pf::replicas(2)).start();
    std::vector<Latencies> batch_runs, client_runs;
    for (int r = 0; r < o.repeats; ++r) {
      {
        const auto t0 = Clock::now();
        const double cpu0 = process_cpu_s();
        // allow_threads: the pool's own threads are idle meanwhile and hold nothing a stage uses.
        auto res = pf::pipeline("batch", pf::allow_threads).source("n", pf::iota<std::uint64_t>(0, client_items))
                       .map("burn", burn, pf::replicas(2))
                       .reduce("sum", std::uint64_t{0}, std::plus<>{}, std::plus<>{})
                       .run();
        (void)res;
        Latencies l;
        l.seconds = bench::seconds_since(t0);
        l.caller_cpu_s = process_cpu_s() - cpu0;
        l.jobs = client_items;
        l.us.push_back(l.seconds * 1e6);
        batch_runs.push_back(std::move(l));
      }
      constexpr int clients = 8;
      std::vector<std::vector<double>> lat(clients);
      const auto t0 = Clock::now();
      const double cpu0 = process_cpu_s();
      std::vector<std::thread> threads;
      for (int c = 0; c < clients; ++c)
        threads.emplace_back([&, c] {
          const std::uint64_t per = client_items / clients;
          std::vector<std::pair<Clock::time_point, std::future<std::uint64_t>>> window;
          for (std::uint64_t i = 0; i < per;) {
            window.clear();
            for (int k = 0; k < 32 && i < per; ++k, ++i) window.emplace_back(Clock::now(), pool.submit(c * per + i));
            for (auto& [s, f] : window) {
              f.get();
              lat[static_cast<std::size_t>(c)].push_back(std::chrono::duration<double, std::micro>(Clock::now() - s).count());
            }
          }
        });
      for (auto& t : threads) t.join();
      Latencies l;
      l.seconds = bench::seconds_since(t0);
      l.caller_cpu_s = process_cpu_s() - cpu0;
      for (auto& v : lat) l.us.insert(l.us.end(), v.begin(), v.end());
      l.jobs = l.us.size();
      client_runs.push_back(std::move(l));
    }
    const Figures batch = summarize(batch_runs);
    const Figures served = summarize(client_runs);
    print_row(o, "procflow_run_per_job", "clients8", batch,
              fmt::format("one batch run() of {} ~20 us items on 2 replicas (p50/p99: the whole run)", client_items));
    print_row(o, "procflow_submit", "clients8", served,
              fmt::format("8 threads x {} submits of ~20 us items, windows of 32, 2 replicas; {:.3f}x the batch run's items/s (same repeats, alternated)",
                          client_items / 8, served.jobs_per_s / batch.jobs_per_s));
  }

  // --- Python peers, same invocation -------------------------------------------------------------
  if (o.wants("python")) {
    const std::string cmd = fmt::format("python3 {}/tests/bench/python/serve_bench.py --jobs={} --client-items={} --repeats={}{}",
                                        PROCFLOW_SOURCE_DIR, jobs, client_items, o.repeats, o.json ? " --json" : "");
    std::FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) {
      fmt::print(stderr, "serve_bench: cannot run '{}'\n", cmd);
      return 1;
    }
    char line[4096];
    while (std::fgets(line, sizeof line, p)) fmt::print("{}", line);
    std::fflush(stdout);
    if (::pclose(p) != 0) {
      fmt::print(stderr, "serve_bench: the Python peers failed ('{}')\n", cmd);
      return 1;
    }
  }
  return 0;
}
