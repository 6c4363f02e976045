#!/usr/bin/env python3
"""Old and new binaries (or any commands) alternated round by round, CPU time beside wall time.

    python3 tests/bench/cpu_ab.py ROUNDS "PEER COMMAND" "COMMAND A" ["COMMAND B" ...]

Each round runs every command once, in the order given, so that a change in the machine's load hits
them alike. The first command is the peer: ratios are against it. CPU is user + system time of the
command and all its reaped descendants (wait4), which on a loaded machine moves much less than wall
time. Prints, per command, the median and minimum CPU seconds, their ratios to the peer's, and the
median wall seconds with the peer's median wall over it (speedup). A command that exits non-zero stops
the run (exit 1). Commands are split on spaces (no shell).
"""

import os
import statistics
import subprocess
import sys
import time


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    rounds = int(sys.argv[1])
    commands = [c.split() for c in sys.argv[2:]]
    walls = [[] for _ in commands]
    cpus = [[] for _ in commands]
    load = os.getloadavg()
    for _ in range(rounds):
        for i, command in enumerate(commands):
            t0 = time.perf_counter()
            p = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _, status, usage = os.wait4(p.pid, 0)
            walls[i].append(time.perf_counter() - t0)
            cpus[i].append(usage.ru_utime + usage.ru_stime)
            if os.waitstatus_to_exitcode(status) != 0:
                sys.exit(f"cpu_ab: '{' '.join(command)}' failed (exit {os.waitstatus_to_exitcode(status)})")
    end = os.getloadavg()
    print(f"cpu_ab: {rounds} rounds, load average {load[0]:.1f} at the start, {end[0]:.1f} at the end")
    peer_cpu, peer_min, peer_wall = statistics.median(cpus[0]), min(cpus[0]), statistics.median(walls[0])
    for i, command in enumerate(commands):
        cpu, low, wall = statistics.median(cpus[i]), min(cpus[i]), statistics.median(walls[i])
        print(f"  {' '.join(command)}\n    cpu median {cpu:.4f} s ({cpu / peer_cpu:.2f}x the peer), min {low:.4f} s "
              f"({low / peer_min:.2f}x); wall median {wall:.4f} s, speedup {peer_wall / wall:.2f}")


if __name__ == "__main__":
    main()
