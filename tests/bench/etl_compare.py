#!/usr/bin/env python3
"""The ETL examples side by side with the tools people use today, on the same file, in one run.

    python3 tests/bench/etl_compare.py [--target-mb M | --scale K] [--repeats R] [--jobs a,b] [--json] [--build DIR]

For each job (packages_etl, word_count, geoip_etl) on its real data set (cmake/fetch-data.sh; the
directory is $PROCFLOW_DATA, default /var/tmp/procflow-data), replicated K times into a temporary
file so that times are measurable (by default K makes about 100 MB: Packages x2, the Bible x23,
geoip x11), runs every variant R times and reports the median:

  sequential     tests/bench/etl_peers/etl_sequential.cpp: a plain C++ loop (1 MiB reads, in-place
                 parsing, one hash map)
  procflow       the example binary itself, --replicas 2
  python_pool    tests/bench/python/etl_pool.py: multiprocessing.Pool(2).imap_unordered, chunksize 2048
  unix_pipeline  awk / tr / sort / uniq (LC_ALL=C)
  sequential_pair  two copies of the sequential loop at once, each on the whole input: what two
                 processes get out of this machine's two cores now (shared caches, memory bandwidth,
                 a neighbour's load). Its speedup is 2 x the loop's wall / the pair's wall: the ceiling
                 of a 2-process run of the job, which is 2.0 only on a machine with two idle cores.

Variants run in rounds (one run of each, then the next round), so that a load that drifts during
the run weighs on all of them alike.

Every variant writes its --output; a variant whose output differs from the sequential loop's fails the
run (exit 1) instead of reporting a time. Wall time and CPU time (user + system of the process and all
its reaped descendants, from wait4) are both reported: on a machine shared with other work, wall
ratios move with the load, CPU seconds much less. `speedup` is sequential wall / variant wall;
`cpu/seq` is the variant's CPU seconds / the sequential loop's (the work it spends on the same job: on
2 idle cores the best wall speedup is 2 / cpu/seq).
With --json, one JSON object per line: {"bench", "variant", "wall_s", "cpu_s", "speedup", ...}.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

DATA_FILES = {
    "packages_etl": "Packages",
    "word_count": "bible-kjv.txt",
    "geoip_etl": "tor-geoipdb/usr/share/tor/geoip",
}

UNIX = {
    "word_count": r"""LC_ALL=C tr -cs 'A-Za-z' '\n' < "$IN" | LC_ALL=C tr 'A-Z' 'a-z' | LC_ALL=C sort | uniq -c \
      | LC_ALL=C sort -k1,1nr -k2,2 | awk 'BEGIN { print "word,count" } NF == 2 { print $2 "," $1 }' > "$OUT" """,
    "geoip_etl": r"""{ echo country,addresses
      LC_ALL=C awk -F, '!/^#/ && NF >= 3 { sub(/\r$/, "", $3); a[$3] += $2 - $1 + 1 }
                        END { for (c in a) printf "%s,%.0f\n", c, a[c] }' "$IN" | LC_ALL=C sort -t, -k2,2nr -k1,1
    } > "$OUT" """,
    "packages_etl": r"""{ echo section,packages,total_installed_size,mean_installed_size,largest_package
      LC_ALL=C awk 'BEGIN { RS = ""; FS = "\n" }
        { sec = "unknown"; size = 0; name = ""
          for (i = 1; i <= NF; i++) {
            sub(/\r$/, "", $i)
            if ($i ~ /^Package:/) { name = $i; sub(/^Package:[ \t]*/, "", name); sub(/[ \t]+$/, "", name) }
            else if ($i ~ /^Section:/) { v = $i; sub(/^Section:[ \t]*/, "", v); sub(/[ \t]+$/, "", v); if (v != "") sec = v }
            else if ($i ~ /^Installed-Size:/) { v = $i; sub(/^Installed-Size:[ \t]*/, "", v); size = v + 0 }
          }
          if (!(sec in n) || size > big[sec] || (size == big[sec] && name < best[sec])) { big[sec] = size; best[sec] = name }
          n[sec]++; total[sec] += size }
        END { for (s in n) printf "%s,%d,%.0f,%.2f,%s\n", s, n[s], total[s], total[s] / n[s], best[s] }' "$IN" \
      | LC_ALL=C sort -t, -k1,1
    } > "$OUT" """,
}


def run_timed(cmds, env=None):
    """Runs the commands at once; returns (wall seconds until the last ends, cpu seconds of them and
    their descendants, the first non-zero returncode or 0, stderr)."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) for c in cmds]
    cpu, rc, stderr = 0.0, 0, ""
    for p in procs:
        err = p.stderr.read()
        _, status, ru = os.wait4(p.pid, 0)
        cpu += ru.ru_utime + ru.ru_stime
        code = os.waitstatus_to_exitcode(status)
        if code != 0 and rc == 0:
            rc, stderr = code, err.decode(errors="replace")
    return time.perf_counter() - t0, cpu, rc, stderr


def evict_page_cache(path):
    """Drops a binary's pages from the page cache, so it is read back from disk like any other file.
    A binary as the linker left it in the page cache ran slower: packages_etl fresh from the build
    took 105 ms of CPU where a byte-identical copy, or the same file once evicted, took 80 (2026-12-07,
    most of the difference seen under libc's memchr; why was not found). Evicting every binary once
    makes the variants start alike."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    except OSError:
        pass


def scaled_copy(src, k, tmpdir, name):
    """src replicated k times (a blank line between copies, so records never merge)."""
    if k == 1:
        return src
    dst = os.path.join(tmpdir, name + f".x{k}")
    with open(src, "rb") as f:
        data = f.read()
    if not data.endswith(b"\n"):
        data += b"\n"
    with open(dst, "wb") as f:
        for _ in range(k):
            f.write(data)
            f.write(b"\n")
    return dst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=0,
                    help="replicate each input K times (default: as many times as make about --target-mb)")
    ap.add_argument("--target-mb", type=float, default=100.0,
                    help="without --scale, replicate each input to about this size (default 100 MB)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per variant; the median is reported (default 3)")
    ap.add_argument("--jobs", default="packages_etl,word_count,geoip_etl")
    ap.add_argument("--variants", default="sequential,procflow,sequential_pair,python_pool,unix_pipeline")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--data", default=os.environ.get("PROCFLOW_DATA") or "/var/tmp/procflow-data")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    jobs = [j for j in args.jobs.split(",") if j]
    variants = [v for v in args.variants.split(",") if v]
    for j in jobs:
        if j not in DATA_FILES:
            sys.exit(f"etl_compare: unknown job {j}")
    sequential = os.path.join(args.build, "tests", "bench", "etl_sequential")
    needed = [os.path.join(args.build, "examples", j) for j in jobs] if "procflow" in variants else []
    for exe in [sequential] + needed:
        if not os.access(exe, os.X_OK):
            sys.exit(f"etl_compare: {exe} is missing; build it: cmake --build {args.build} "
                     f"--target etl_sequential {' '.join(jobs)}")
        evict_page_cache(exe)

    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    if not args.json:
        print(f"etl_compare: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
              f"median of {args.repeats}")

    failed = False
    tmpdir = tempfile.mkdtemp(prefix="procflow-etl-")
    try:
        for job in jobs:
            src = os.path.join(args.data, DATA_FILES[job])
            if not os.path.isfile(src):
                sys.exit(f"etl_compare: {src} is missing; run: bash cmake/fetch-data.sh")
            scale = args.scale or max(1, round(args.target_mb * 1e6 / os.path.getsize(src)))
            inp = scaled_copy(src, scale, tmpdir, job)
            size = os.path.getsize(inp)
            commands = {
                "sequential": [sequential, job, inp, "--output"],
                "procflow": [os.path.join(args.build, "examples", job), inp, "--replicas", str(args.replicas), "--output"],
                "python_pool": [sys.executable, os.path.join(HERE, "python", "etl_pool.py"), job, inp,
                                "--processes", str(args.replicas), "--output"],
                "unix_pipeline": ["bash", "-c", "set -o pipefail; " + UNIX[job]],
            }
            # One run of every variant per round, rounds repeated: a drifting load on a shared machine
            # then weighs on every variant alike.
            order = ["sequential"] + [v for v in variants if v != "sequential"]
            samples = {v: ([], []) for v in order}
            broken = set()
            reference = None
            for _ in range(args.repeats):
                for variant in order:
                    if variant in broken:
                        continue
                    outs = [os.path.join(tmpdir, f"{job}.{variant}.csv")]
                    env = None
                    if variant == "unix_pipeline":
                        cmds = [list(commands[variant])]
                        env = dict(os.environ, IN=inp, OUT=outs[0])
                    elif variant == "sequential_pair":
                        outs.append(os.path.join(tmpdir, f"{job}.{variant}.2.csv"))
                        cmds = [commands["sequential"] + [o] for o in outs]
                    else:
                        cmds = [commands[variant] + [outs[0]]]
                    wall, cpu, rc, err = run_timed(cmds, env)
                    if rc != 0:
                        print(f"etl_compare: {job}/{variant} failed (exit {rc}): {err.strip()[-400:]}", file=sys.stderr)
                        failed = True
                        broken.add(variant)
                        continue
                    samples[variant][0].append(wall)
                    samples[variant][1].append(cpu)
                    for out in outs:
                        with open(out, "rb") as f:
                            produced = f.read()
                        if variant == "sequential":
                            reference = produced
                        elif reference is not None and produced != reference:
                            print(f"etl_compare: {job}/{variant}: its output differs from the sequential loop's ({out})",
                                  file=sys.stderr)
                            failed = True
                            broken.add(variant)
            results = {v: (statistics.median(w), statistics.median(c)) for v, (w, c) in samples.items()
                       if v not in broken and w}
            if "sequential" not in results:
                continue
            base = results["sequential"][0]
            if not args.json:
                print(f"\n{job}: {os.path.basename(src)} x{scale} = {size / 1e6:.1f} MB")
                print(f"  {'variant':<16} {'wall s':>8} {'cpu s':>8} {'MB/s':>8} {'speedup':>8} {'cpu/seq':>8}")
            for variant in variants:
                if variant not in results:
                    continue
                wall, cpu = results[variant]
                work = 2 if variant == "sequential_pair" else 1  # the pair does the job twice
                row = {"bench": job, "variant": variant, "wall_s": round(wall, 4), "cpu_s": round(cpu, 4),
                       "mb_per_s": round(work * size / 1e6 / wall, 2), "speedup": round(work * base / wall, 3),
                       "cpu_vs_sequential": round(cpu / work / results["sequential"][1], 3) if results["sequential"][1] else None,
                       "scale": scale, "input_bytes": size, "replicas": args.replicas,
                       "loadavg_1min": round(load[0], 2)}
                if args.json:
                    print(json.dumps(row), flush=True)
                else:
                    print(f"  {variant:<16} {wall:8.3f} {cpu:8.3f} {row['mb_per_s']:8.1f} {row['speedup']:7.2f}x "
                          f"{row['cpu_vs_sequential'] or 0:7.2f}x")
            if not args.json and "procflow" in results and "python_pool" in results:
                print(f"  procflow vs python_pool: {results['python_pool'][0] / results['procflow'][0]:.1f}x")
            if not args.json and "procflow" in results and "sequential_pair" in results:
                ceiling = 2 * base / results["sequential_pair"][0]
                print(f"  two loops at once do the job at {ceiling:.2f}x one loop's rate on this machine now; "
                      f"procflow reaches {base / results['procflow'][0] / ceiling:.2f} of that")
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
