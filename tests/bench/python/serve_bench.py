#!/usr/bin/env python3
"""Python peers of tests/bench/serve_bench.cpp (run by it, in the same invocation).

The same three jobs on a warm multiprocessing.Pool(2) ("python_pool") and a warm
concurrent.futures.ProcessPoolExecutor(2) ("python_executor"), both with the fork start method:

* job100:   100 items x -> x*x+1 (Pool.map / Executor.map over range(100)); latency per job.
* submit1:  one item (Pool.apply / Executor.submit(...).result()); latency per round trip.
* clients8: 8 client threads submitting ~20 us items (pure-Python burn, calibrated as in
            pool_bench.py) in windows of 32 (apply_async / submit); latency per request, items/s.

Rows (JSON lines with --json): bench "serve_bench", variant, job, p50_us, p99_us, jobs_per_s,
note; each figure the median over --repeats.
"""

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pool_bench  # noqa: E402  (burn and its calibration)

MP = multiprocessing.get_context("fork")
BURN_ITERATIONS = 1


def trivial(x):
    return x * x + 1


def burn_item(x):
    return pool_bench.burn(x, BURN_ITERATIONS)


def percentile(values, p):
    v = sorted(values)
    k = min(len(v) - 1, int(p * (len(v) - 1) + 0.5))
    return v[k]


def summarize(runs):
    """runs: list of (latencies_us, seconds, jobs) -> medians of p50, p99, jobs/s."""
    return (statistics.median(percentile(l, 0.5) for l, _, _ in runs),
            statistics.median(percentile(l, 0.99) for l, _, _ in runs),
            statistics.median(j / s for _, s, j in runs))


def series(count, once, repeats):
    runs = []
    for _ in range(repeats):
        lat = []
        t0 = time.perf_counter()
        for j in range(count):
            s = time.perf_counter()
            once(j)
            lat.append((time.perf_counter() - s) * 1e6)
        runs.append((lat, time.perf_counter() - t0, count))
    return summarize(runs)


def clients8(submit, items, repeats):
    runs = []
    for _ in range(repeats):
        lat = [[] for _ in range(8)]
        per = items // 8

        def client(c):
            i = 0
            while i < per:
                window = []
                for _ in range(32):
                    if i >= per:
                        break
                    window.append((time.perf_counter(), submit(c * per + i)))
                    i += 1
                for s, f in window:
                    f()
                    lat[c].append((time.perf_counter() - s) * 1e6)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        flat = [x for l in lat for x in l]
        runs.append((flat, time.perf_counter() - t0, len(flat)))
    return summarize(runs)


def main():
    global BURN_ITERATIONS
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--client-items", type=int, default=40000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    BURN_ITERATIONS = pool_bench.calibrate_burn(20.0)  # before the pools fork: the workers inherit it
    # Python answers ~10x fewer items per second: a quarter of the C++ item count keeps the run short.
    client_items = max(800, a.client_items // 4)
    rows = []
    with MP.Pool(2) as pool:
        pool.map(trivial, range(1000))  # warm
        rows.append(("python_pool", "job100", series(max(10, a.jobs // 4), lambda j: pool.map(trivial, range(100)), a.repeats),
                     "warm Pool(2).map(f, range(100))"))
        rows.append(("python_pool", "submit1", series(a.jobs, lambda j: pool.apply(trivial, (j,)), a.repeats),
                     "warm Pool(2).apply(f, (x,))"))
        rows.append(("python_pool", "clients8",
                     clients8(lambda x: pool.apply_async(burn_item, (x,)).get, client_items, a.repeats),
                     "8 threads x {} apply_async of ~20 us items, windows of 32".format(client_items // 8)))
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=MP) as ex:
        list(ex.map(trivial, range(1000)))  # warm
        rows.append(("python_executor", "job100",
                     series(max(10, a.jobs // 4), lambda j: list(ex.map(trivial, range(100))), a.repeats),
                     "warm ProcessPoolExecutor(2).map(f, range(100))"))
        rows.append(("python_executor", "submit1", series(a.jobs, lambda j: ex.submit(trivial, j).result(), a.repeats),
                     "warm ProcessPoolExecutor(2).submit(f, x).result()"))
        rows.append(("python_executor", "clients8",
                     clients8(lambda x: ex.submit(burn_item, x).result, client_items, a.repeats),
                     "8 threads x {} submit of ~20 us items, windows of 32".format(client_items // 8)))
    for variant, job, (p50, p99, rate), note in rows:
        if a.json:
            print(json.dumps({"bench": "serve_bench", "variant": variant, "job": job, "p50_us": round(p50, 2),
                              "p99_us": round(p99, 2), "jobs_per_s": round(rate, 2), "note": note}, separators=(",", ":")))
        else:
            print("{:<22} {:<9} {:>10.1f} {:>10.1f} {:>12.0f}  {}".format(variant, job, p50, p99, rate, note))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
