#!/usr/bin/env python3
"""The ETL examples' jobs on Python multiprocessing.Pool: the peer a user moving off Python has today.

    python3 etl_pool.py JOB INPUT [--output FILE] [--processes N] [--chunksize C]
    JOB: packages_etl | word_count | geoip_etl

Written the way the multiprocessing docs suggest: the parent reads the file and splits it into items
(lines; blank-line separated records for packages_etl), Pool.imap_unordered maps a per-item parse
function over them with a chunksize (default 2048 items per task, so the per-task pickling cost is
amortized), and the parent folds the small per-item results into a dict. --output is the same CSV,
byte for byte, as the C++ example's (etl_compare.py checks it).
"""

import argparse
import collections
import multiprocessing
import re
import sys

WORD = re.compile(rb"[A-Za-z]+")


def parse_record(text):
    """One Packages record -> (section, installed_size, package)."""
    section, size, name = "unknown", 0, ""
    for line in text.split("\n"):
        if not line or line[0] in " \t":
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        if key == "Package":
            name = value.strip(" \t")
        elif key == "Section":
            section = value.strip(" \t") or "unknown"
        elif key == "Installed-Size":
            size = int(value)
    return section, size, name


def words_of(line):
    return [w.lower() for w in WORD.findall(line)]


def parse_geoip(line):
    if not line or line.startswith(b"#"):
        return None
    start, end, country = line.split(b",", 2)
    return country, int(end) - int(start) + 1


def packages_etl(pool, data, chunksize):
    text = data.decode("latin-1").replace("\r\n", "\n")
    records = [r for r in re.split(r"\n[ \t]*\n", text) if r.strip()]
    stats = {}
    for section, size, name in pool.imap_unordered(parse_record, records, chunksize):
        s = stats.get(section)
        if s is None:
            stats[section] = [1, size, size, name]
            continue
        s[0] += 1
        s[1] += size
        if size > s[2] or (size == s[2] and name < s[3]):
            s[2], s[3] = size, name
    rows = ["section,packages,total_installed_size,mean_installed_size,largest_package"]
    for section in sorted(stats):
        n, total, _, largest = stats[section]
        rows.append(f"{section},{n},{total},{total / n:.2f},{largest}")
    return rows


def counts_csv(header, counts):
    rows = [header]
    for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        rows.append(f"{key.decode('latin-1')},{n}")
    return rows


def word_count(pool, data, chunksize):
    counts = collections.Counter()
    for words in pool.imap_unordered(words_of, data.split(b"\n"), chunksize):
        counts.update(words)
    return counts_csv("word,count", counts)


def geoip_etl(pool, data, chunksize):
    counts = collections.defaultdict(int)
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    for r in pool.imap_unordered(parse_geoip, lines, chunksize):
        if r is not None:
            counts[r[0]] += r[1]
    return counts_csv("country,addresses", counts)


JOBS = {"packages_etl": packages_etl, "word_count": word_count, "geoip_etl": geoip_etl}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("job", choices=sorted(JOBS))
    ap.add_argument("input")
    ap.add_argument("--output")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--chunksize", type=int, default=2048)
    args = ap.parse_args()
    with open(args.input, "rb") if args.input != "-" else sys.stdin.buffer as f:
        data = f.read()
    with multiprocessing.get_context("fork").Pool(args.processes) as pool:
        rows = JOBS[args.job](pool, data, args.chunksize)
    if args.output:
        with open(args.output, "w", encoding="latin-1", newline="") as out:
            out.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
