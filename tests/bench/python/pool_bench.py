#!/usr/bin/env python3
"""Python peer for procflow's pipeline benchmarks: the same jobs on multiprocessing.Pool(2).

Jobs (same semantics as tests/bench/pipeline_peers.hpp):

* trivial: for x in [0, n): v = x*x; keep v if v % 3 == 0; sum the kept values modulo 2**64.
  Variants: the plain Python loop ("python_sequential"), and Pool(2).imap_unordered with
  chunksize 10000 ("python_pool_chunk10000") and chunksize 1 ("python_pool_chunk1", run over far
  fewer items since every item is a separate task).
* cpu_20us: sum over i in [0, n) of burn(i, k) modulo 2**64, where burn is a pure-Python
  xorshift/multiply loop and k is calibrated so that one call costs about 20 us.
  Variants: the plain Python loop, Pool(2).imap_unordered with chunksize 100, and, as a
  reference without Pool's per-task machinery, two forked processes each summing a static half
  ("python_fork_static_split", timing includes the forks).

Pool variants report speedup (items/s relative to the sequential Python loop) and efficiency
(speedup / 2). Their timing covers the imap_unordered run only (submitting the items, the
workers' computation, collecting and summing the results); starting the pool is timed
separately and reported as "pool_start_s". Each figure is the median of --repeats runs.

Usage: python3 pool_bench.py [--json] [--quick] [--n N] [--repeats R]
With --json, one JSON object per line:
  {"bench": "trivial", "variant": "python_pool_chunk10000", "items_per_s": ..., "speedup": ...,
   "efficiency": ..., ...}
"""

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time

MASK64 = (1 << 64) - 1
WORKERS = 2
CPU_TARGET_US = 20.0

# Explicitly the fork start method (the Linux default up to Python 3.13), so workers inherit the
# module state and start quickly.
MP = multiprocessing.get_context("fork")


# --- trivial job ------------------------------------------------------------------------------


def square_keep(x):
    """Map + filter step of the trivial job: x*x if it is divisible by 3, else None."""
    v = x * x
    return v if v % 3 == 0 else None


def sum_kept(values):
    """Reduce step: sum of the non-None values, modulo 2**64 (as the C++ uint64_t sum)."""
    total = 0
    for v in values:
        if v is not None:
            total += v
    return total & MASK64


def trivial_sequential(n):
    return sum_kept(map(square_keep, range(n)))


# --- CPU-bound job ----------------------------------------------------------------------------


def burn(x, iterations):
    """Deterministic integer work: `iterations` rounds of a 64-bit xorshift/multiply mixer."""
    h = (x * 0x9E3779B97F4A7C15 + 0xD1B54A32D192ED03) & MASK64
    for i in range(iterations):
        h ^= h >> 29
        h = (h * 0xBF58476D1CE4E5B9) & MASK64
        h ^= (h << 11) & MASK64
        h = (h + i) & MASK64
    return h


# Iteration count used by burn_item; set in the parent before the pool forks, so the workers
# inherit it (fork start method).
BURN_ITERATIONS = 1


def burn_item(x):
    return burn(x, BURN_ITERATIONS)


def burn_us_per_call(iterations, batches, calls):
    """Median wall-clock microseconds per burn() call over `batches` batches of `calls` calls."""
    samples = []
    for b in range(batches):
        t0 = time.perf_counter()
        for c in range(calls):
            burn(b * calls + c, iterations)
        samples.append((time.perf_counter() - t0) * 1e6 / calls)
    return statistics.median(samples)


def calibrate_burn(target_us):
    """Iteration count for which one burn() call costs about target_us microseconds."""
    probe = 100
    iterations = target_us / max(burn_us_per_call(probe, 5, 50) / probe, 1e-6)
    calls = max(1, int(2000 / target_us))  # batches of about 2 ms
    for _ in range(2):  # proportional correction at the candidate count
        candidate = max(1, round(iterations))
        measured = burn_us_per_call(candidate, 7, calls)
        if measured <= 0:
            break
        iterations = candidate * target_us / measured
    return max(1, round(iterations))


def cpu_sum(begin, end):
    total = 0
    for i in range(begin, end):
        total += burn_item(i)
    return total & MASK64


def cpu_sequential(n):
    return cpu_sum(0, n)


def cpu_fork_static_split(n, processes):
    """Reference without Pool: fork `processes` children, child k sums its static contiguous
    share of [0, n) and writes the 8-byte result to a pipe; the parent reads and reaps them.
    Shows what two Python processes achieve on this machine with no per-task overhead."""
    sys.stdout.flush()  # so buffered output is not duplicated in the children
    children = []
    begin = 0
    for k in range(processes):
        end = begin + n // processes + (1 if k < n % processes else 0)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            status = 1
            try:
                os.close(r)
                os.write(w, cpu_sum(begin, end).to_bytes(8, "little"))
                status = 0
            finally:
                os._exit(status)
        os.close(w)
        children.append((pid, r))
        begin = end
    total = 0
    for pid, r in children:
        data = b""
        while chunk := os.read(r, 8 - len(data)):
            data += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
        if status != 0 or len(data) != 8:
            raise SystemExit(f"fork_static_split: child {pid} failed (status {status:#x})")
        total += int.from_bytes(data, "little")
    return total & MASK64


# --- measurement ------------------------------------------------------------------------------


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def run_pool(func, n, chunksize, reduce):
    """One pool run: returns (result, seconds of the imap_unordered run, pool start seconds)."""
    t0 = time.perf_counter()
    pool = MP.Pool(WORKERS)
    start_s = time.perf_counter() - t0
    try:
        result, seconds = timed(lambda: reduce(pool.imap_unordered(func, range(n), chunksize=chunksize)))
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    return result, seconds, start_s


def measure(repeats, once, expected, label):
    """Runs once() -> (result, seconds, *extra) `repeats` times; checks the result; returns the
    median seconds and the medians of the extra values."""
    seconds, extras = [], []
    for _ in range(repeats):
        result, s, *extra = once()
        if result != expected:
            raise SystemExit(f"{label}: wrong result {result} (expected {expected})")
        seconds.append(s)
        extras.append(extra)
    extra_medians = [statistics.median(column) for column in zip(*extras)]
    return statistics.median(seconds), extra_medians


def make_row(bench, variant, n, seconds, sequential_ips=None, **extra):
    ips = n / seconds
    row = {"bench": bench, "variant": variant, "items_per_s": ips}
    if sequential_ips:
        row["speedup"] = ips / sequential_ips
        row["efficiency"] = ips / sequential_ips / WORKERS
    row["n"] = n
    row["seconds"] = seconds
    row.update(extra)
    return row


def bench_trivial(n, n_fine, repeats):
    rows = []
    expected = trivial_sequential(n)
    seq_s, _ = measure(repeats, lambda: (*timed(lambda: trivial_sequential(n)),), expected, "sequential")
    rows.append(make_row("trivial", "python_sequential", n, seq_s, sum=expected))
    seq_ips = n / seq_s

    pool_s, (start_s,) = measure(
        repeats, lambda: run_pool(square_keep, n, 10000, sum_kept), expected, "pool chunk 10000"
    )
    rows.append(make_row("trivial", "python_pool_chunk10000", n, pool_s, seq_ips, pool_start_s=start_s))

    expected_fine = trivial_sequential(n_fine)
    fine_s, (start_s,) = measure(
        max(1, repeats // 3), lambda: run_pool(square_keep, n_fine, 1, sum_kept), expected_fine, "pool chunk 1"
    )
    rows.append(make_row("trivial", "python_pool_chunk1", n_fine, fine_s, seq_ips, pool_start_s=start_s))
    return rows


def bench_cpu(n, repeats):
    global BURN_ITERATIONS
    BURN_ITERATIONS = calibrate_burn(CPU_TARGET_US)
    rows = []
    expected, _ = timed(lambda: cpu_sequential(n))
    seq_s, _ = measure(repeats, lambda: (*timed(lambda: cpu_sequential(n)),), expected, "cpu sequential")
    rows.append(
        make_row("cpu_20us", "python_sequential", n, seq_s, iterations=BURN_ITERATIONS, us_per_item=seq_s / n * 1e6)
    )

    def reduce_sum(values):
        return sum(values) & MASK64

    pool_s, (start_s,) = measure(repeats, lambda: run_pool(burn_item, n, 100, reduce_sum), expected, "cpu pool")
    rows.append(make_row("cpu_20us", "python_pool_chunk100", n, pool_s, n / seq_s, pool_start_s=start_s))

    fork_s, _ = measure(
        repeats, lambda: (*timed(lambda: cpu_fork_static_split(n, WORKERS)),), expected, "cpu fork split"
    )
    rows.append(make_row("cpu_20us", "python_fork_static_split", n, fork_s, n / seq_s))
    return rows


def print_table(rows):
    header = f"{'bench':<10} {'variant':<24} {'n':>9} {'items/s':>11} {'speedup':>8} {'effic.':>7} {'pool start':>10}"
    print(header)
    print("-" * len(header))
    for r in rows:

        def opt(key, fmt):
            return format(r[key], fmt) if key in r else ""

        print(
            f"{r['bench']:<10} {r['variant']:<24} {r['n']:>9} {r['items_per_s']:>11.3g} "
            f"{opt('speedup', '.3f'):>8} {opt('efficiency', '.3f'):>7} "
            f"{(opt('pool_start_s', '.4f') + ' s') if 'pool_start_s' in r else '':>10}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--quick", action="store_true", help="small sizes (a few seconds)")
    parser.add_argument("--n", type=int, default=None, help="items for the trivial job (default 5M, quick 2M)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per variant (median; default 3; the chunksize-1 run uses a third of it)")
    args = parser.parse_args()

    n = args.n if args.n is not None else (2_000_000 if args.quick else 5_000_000)
    n_fine = min(n, 50_000 if args.quick else 200_000)  # chunksize 1: one task per item
    n_cpu = 10_000 if args.quick else 20_000  # ~20 us per item
    repeats = max(1, args.repeats if args.repeats is not None else 3)

    rows = bench_cpu(n_cpu, repeats) + bench_trivial(n, n_fine, repeats)
    if args.json:
        for r in rows:
            print(json.dumps(r), flush=True)
    else:
        print(f"multiprocessing.Pool({WORKERS}).imap_unordered, start method {MP.get_start_method()}, "
              f"median of {repeats} run(s)\n")
        print_table(rows)


if __name__ == "__main__":
    main()
