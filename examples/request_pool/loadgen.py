#!/usr/bin/env python3
"""Load generator for the request_pool services: sends requests with a fixed number in flight,
checks every answer and prints the latency distribution.

  loadgen.py [--requests R] [--concurrency C] [--max-n N] [--seed S] SERVICE_CMD...
  loadgen.py --compare BINARY [options]   # request_pool (C++) and request_pool.py, one after the other

A request is "ID N" with N drawn from [0, max-n] (plus one malformed request in 100, which must be
answered "ID error: ..."); latency runs from writing the line to reading its answer. Exits 1 when an
answer is missing, out of order or wrong (checked against a sieve computed here).
"""
import argparse
import os
import random
import statistics
import subprocess
import sys
import threading
import time


def prime_counts(limit):
    sieve = bytearray([1]) * (limit + 1)
    sieve[0:2] = b"\x00\x00"[: min(2, limit + 1)]
    for k in range(2, int(limit ** 0.5) + 1):
        if sieve[k]:
            sieve[k * k :: k] = bytearray(len(range(k * k, limit + 1, k)))
    counts, c = [0] * (limit + 1), 0
    for k in range(limit + 1):
        c += sieve[k]
        counts[k] = c
    return counts


def percentile(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))]


def run(cmd, requests, concurrency, counts, rng):
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
    slots = threading.Semaphore(concurrency)
    sent = {}
    expected = []
    for i in range(requests):
        if i % 100 == 99:
            expected.append((str(i), "x%d" % i, None))
        else:
            n = rng.randrange(len(counts))
            expected.append((str(i), str(n), counts[n]))
    latencies, errors = [], []

    def reader():
        for rid, _, want in expected:
            line = proc.stdout.readline()
            now = time.perf_counter()
            if not line:
                errors.append("answer %s missing" % rid)
                return
            got_id, _, value = line.rstrip("\n").partition(" ")
            if got_id != rid:
                errors.append("answer %s out of order (expected %s)" % (got_id, rid))
            elif want is None:
                if not value.startswith("error:"):
                    errors.append("request %s is malformed, answered %r" % (rid, value))
            elif value != str(want):
                errors.append("request %s: answered %r, expected %d" % (rid, value, want))
            latencies.append((now - sent[rid]) * 1e6)
            slots.release()

    t = threading.Thread(target=reader)
    t0 = time.perf_counter()
    t.start()
    for rid, text, _ in expected:
        slots.acquire()
        sent[rid] = time.perf_counter()
        proc.stdin.write("%s %s\n" % (rid, text))
        proc.stdin.flush()
    proc.stdin.close()
    t.join()
    seconds = time.perf_counter() - t0
    proc.wait(timeout=60)
    if proc.returncode != 0:
        errors.append("the service exited with status %d" % proc.returncode)
    return latencies, seconds, errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-n", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--compare", metavar="BINARY")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    counts = prime_counts(a.max_n)
    here = os.path.dirname(os.path.abspath(__file__))
    services = []
    if a.compare:
        services = [("procflow", [a.compare]), ("python_executor", [sys.executable, os.path.join(here, "request_pool.py")])]
    elif a.cmd:
        services = [("service", [c for c in a.cmd if c != "--"])]
    else:
        ap.error("give SERVICE_CMD or --compare BINARY")
    failed = False
    for name, cmd in services:
        latencies, seconds, errors = run(cmd, a.requests, a.concurrency, counts, random.Random(a.seed))
        for e in errors[:10]:
            print("%s: %s" % (name, e), file=sys.stderr)
        failed = failed or bool(errors)
        if latencies:
            print("%-16s %6d requests, %d in flight: p50 %8.0f us  p90 %8.0f us  p99 %8.0f us  %8.0f requests/s" % (
                name, len(latencies), a.concurrency, percentile(latencies, 0.5), percentile(latencies, 0.9),
                percentile(latencies, 0.99), len(latencies) / seconds))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
