#!/usr/bin/env python3
"""Checks examples/monte_carlo (issue 15).

    check_monte_carlo.py BINARY

- with --seed, the estimate line is identical for --replicas 1, 2 and 4;
- the hit count equals an independent reference computed here: Philox4x32-10 (Random123) keyed by
  procflow's documented stream key, over the same blocks of points;
- without --seed, the estimate lies within 6 standard errors of pi;
- --output writes the CSV row, and the Python multiprocessing.Pool comparison line is printed.
Exit 0 when everything holds; otherwise every failure is printed and the exit status is 1.
"""

import csv
import math
import os
import re
import subprocess
import sys
import tempfile

FAILURES = []
M64 = (1 << 64) - 1
M32 = (1 << 32) - 1


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what, file=sys.stderr)
    return cond


def run(binary, args):
    p = subprocess.run([binary] + args, capture_output=True, timeout=240)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def mix64(z):  # SplitMix64's finalizer (lib/runtime/identity.cpp)
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def stream_key(seed, stage):
    return mix64(mix64(seed ^ 0x5851F42D4C957F2D) ^ stage)


def philox(c, k):
    c, k = list(c), list(k)
    for r in range(10):
        if r:
            k = [(k[0] + 0x9E3779B9) & M32, (k[1] + 0xBB67AE85) & M32]
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & M32, (p0 >> 32) ^ c[3] ^ k[1], p0 & M32]
    return c


def draws(key, counter):
    block = 0
    while True:
        w = philox([counter & M32, counter >> 32, block & M32, block >> 32], [key & M32, key >> 32])
        block += 1
        yield (w[1] << 32) | w[0]
        yield (w[3] << 32) | w[2]


def reference_hits(seed, n, block_points=4096):
    key = stream_key(seed, 1)
    hits = 0
    for b in range((n + block_points - 1) // block_points):
        g = draws(key, b)
        for _ in range(min(block_points, n - b * block_points)):
            x = (next(g) >> 11) * 2.0 ** -53
            y = (next(g) >> 11) * 2.0 ** -53
            hits += x * x + y * y < 1.0
    return hits


def main():
    binary = sys.argv[1]
    assert philox([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    lines = {}
    for r in (1, 2, 4):
        rc, out, err = run(binary, ["--draws", "300000", "--seed", "11", "--replicas", str(r), "--no-python"])
        if check(rc == 0, f"--replicas {r}: exit {rc}: {err.strip()[-400:]}"):
            lines[r] = out.splitlines()[0]
    check(len(set(lines.values())) == 1, f"seeded estimate differs across replica counts: {lines}")
    rc, out, err = run(binary, ["--draws", "20000", "--seed", "5", "--replicas", "2", "--no-python"])
    if check(rc == 0, f"small seeded run: exit {rc}"):
        m = re.search(r"\(20000 draws, (\d+) hits, seed 5\)", out)
        if check(m is not None, f"hits line missing: {out}"):
            want = reference_hits(5, 20000)
            check(int(m.group(1)) == want, f"hits {m.group(1)} != reference {want}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pi.csv")
        rc, out, err = run(binary, ["--draws", "400000", "--replicas", "2", "--output", path])
        if check(rc == 0, f"unseeded run: exit {rc}: {err.strip()[-400:]}"):
            m = re.search(r"pi estimate ([0-9.]+)  standard error ([0-9.]+)", out)
            if check(m is not None, f"estimate line missing: {out}"):
                est, se = float(m.group(1)), float(m.group(2))
                check(abs(est - math.pi) < 6 * se, f"estimate {est} not within 6 SE ({se}) of pi")
            check("speedup" in out, "prints the speedup vs the sequential loop")
            check("multiprocessing.Pool" in out, "prints the Python multiprocessing.Pool line")
            rows = list(csv.reader(open(path)))
            check(rows[0] == ["draws", "hits", "estimate", "standard_error", "seed"] and rows[1][0] == "400000",
                  f"--output: {rows}")
    rc, out, err = run(binary, ["--seed", "x"])
    check(rc == 2, f"bad --seed: exit {rc} (want 2)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
