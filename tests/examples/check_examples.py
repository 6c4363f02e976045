#!/usr/bin/env python3
"""Checks an example binary against an independent reference computed here, in Python, over the same input.

    check_examples.py real    JOB BINARY [--data DIR]   the real data set (fails if it is missing)
    check_examples.py crafted JOB BINARY                small inputs with edge cases, and the CLI convention

JOB: packages_etl | word_count | geoip_etl | cpu_bound. No expected number is written in this file: every
expected result is computed from the input the example read. Exit 0 when everything matches; otherwise
every mismatch is printed and the exit status is 1.
"""

import collections
import csv
import io
import os
import re
import subprocess
import sys
import tempfile

FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what, file=sys.stderr)
    return cond


def run(binary, args, stdin=None, timeout=240):
    p = subprocess.run([binary] + args, input=stdin, capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def read_csv(path):
    with open(path, newline="", encoding="latin-1") as f:
        return list(csv.reader(f))


# ---- references -----------------------------------------------------------------------------------------

def ref_packages(data):
    """Debian control paragraphs: separated by empty lines; 'Key: value'; continuation lines start with
    space or tab. Per Section (missing or empty -> unknown): count, total Installed-Size (missing -> 0),
    largest by size, ties by the smaller name."""
    sections = {}
    lines = data.decode("latin-1").split("\n")
    record = None

    def close(rec):
        if rec is None:
            return
        sec = rec.get("Section", "") or "unknown"
        size = int(rec["Installed-Size"]) if rec.get("Installed-Size", "") != "" else 0
        name = rec.get("Package", "")
        s = sections.setdefault(sec, {"n": 0, "total": 0, "best": None})
        s["n"] += 1
        s["total"] += size
        if s["best"] is None or (-size, name) < (-s["best"][0], s["best"][1]):
            s["best"] = (size, name)

    for raw in lines:
        line = raw[:-1] if raw.endswith("\r") else raw
        if line.strip(" \t") == "":  # a blank line: empty or only spaces and tabs
            close(record)
            record = None
            continue
        if record is None:
            record = {}
        if line[0] in " \t":
            continue
        key, _, value = line.partition(":")
        record[key] = value.strip(" \t")
    close(record)
    rows = [["section", "packages", "total_installed_size", "mean_installed_size", "largest_package"]]
    for sec in sorted(sections, key=lambda s: s.encode("latin-1")):
        s = sections[sec]
        rows.append([sec, str(s["n"]), str(s["total"]), "%.2f" % (s["total"] / s["n"]), s["best"][1]])
    return rows


def ref_words(data):
    counts = collections.Counter(w.lower() for w in re.findall(rb"[A-Za-z]+", data))
    rows = [["word", "count"]]
    for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        rows.append([w.decode(), str(n)])
    return rows


def ref_geoip(data):
    totals = collections.defaultdict(int)
    for raw in data.decode("latin-1").split("\n"):
        raw = raw[:-1] if raw.endswith("\r") else raw
        if raw == "" or raw.startswith("#"):
            continue
        start, end, country = next(csv.reader([raw]))
        totals[country] += int(end) - int(start) + 1
    rows = [["country", "addresses"]]
    for c, n in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0].encode("latin-1"))):
        rows.append([c, str(n)])
    return rows


def ref_mandelbrot(w, h, limit):
    rows = [["row", "inside", "iterations"]]
    for y in range(h):
        ci = -1.2 + 2.4 * (y + 0.5) / h
        inside = iterations = 0
        for x in range(w):
            cr = -2.2 + 3.0 * (x + 0.5) / w
            zr = zi = 0.0
            i = 0
            while i < limit and zr * zr + zi * zi <= 4.0:
                zr, zi = zr * zr - zi * zi + cr, 2 * zr * zi + ci
                i += 1
            iterations += i
            inside += i == limit
        rows.append([str(y), str(inside), str(iterations)])
    return rows


REFERENCE = {"packages_etl": ref_packages, "word_count": ref_words, "geoip_etl": ref_geoip}
REAL_DATA = {"packages_etl": "Packages", "word_count": "bible-kjv.txt", "geoip_etl": "tor-geoipdb/usr/share/tor/geoip"}


def compare(job, label, binary, input_args, data, tmp, stdin=None, extra=()):
    out = os.path.join(tmp, f"{job}-{label}.csv")
    rc, stdout, stderr = run(binary, list(input_args) + ["--output", out] + list(extra), stdin=stdin)
    if not check(rc == 0, f"{job} [{label}]: exit {rc}, stderr: {stderr.strip()[-600:]}"):
        return None
    got = read_csv(out)
    want = REFERENCE[job](data)
    if got != want:
        diff = [(i, g, w) for i, (g, w) in enumerate(zip(got, want)) if g != w][:5]
        check(False, f"{job} [{label}]: {len(got)} rows vs reference {len(want)}; first differences "
                     f"(row, got, want): {diff}")
    else:
        print(f"ok: {job} [{label}]: {len(got) - 1} rows match the reference")
    return stdout


# ---- real data --------------------------------------------------------------------------------------------

def real(job, binary, data_dir):
    if job == "cpu_bound":
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "rows.csv")
            rc, stdout, stderr = run(binary, ["--output", out])
            if check(rc == 0, f"cpu_bound: exit {rc}: {stderr.strip()[-400:]}"):
                check("speedup" in stdout and "efficiency" in stdout, "cpu_bound prints speedup and efficiency")
                check(len(read_csv(out)) == 1201, "cpu_bound --output has a header and 1200 rows")
        return
    path = os.path.join(data_dir, REAL_DATA[job])
    if not os.path.isfile(path):
        check(False, f"{job}: the real data set {path} is missing; get it with: bash cmake/fetch-data.sh "
                     f"(CI runs it from .ci/run)")
        return
    with open(path, "rb") as f:
        data = f.read()
    with tempfile.TemporaryDirectory() as tmp:
        stdout = compare(job, "real data, 2 replicas", binary, [path], data, tmp, extra=["--replicas", "2"])
        if job == "word_count" and stdout is not None:
            top = [l.split() for l in stdout.splitlines() if l.startswith("  ")]
            want = ref_words(data)[1:21]
            check([[n, w] for w, n in want] == top, f"word_count prints the top 20 on stdout (got {top[:3]}...)")
        compare(job, "real data, 1 replica", binary, [path], data, tmp, extra=["--replicas", "1"])
        # the default input is the same file
        default_dir = os.environ.get("PROCFLOW_DATA") or "/var/tmp/procflow-data"
        if os.path.abspath(default_dir) == os.path.abspath(data_dir):
            compare(job, "default input", binary, [], data, tmp)


# ---- crafted inputs ---------------------------------------------------------------------------------------

PACKAGES = (
    b"Package: zeta\nSection: admin\nInstalled-Size: 100\nDescription: first line\n continuation: not a field\n .\n"
    b"\n"
    b"Package: alpha\nSection: admin\nInstalled-Size: 100\n"                      # ties zeta: alpha wins
    b"\n \t\n\n"                                                                 # blank lines, one of spaces/tabs
    b"Package: nosize\nSection: admin\n"                                          # no Installed-Size: 0
    b"\n"
    b"Package: nosection\nInstalled-Size: 7\n"                                    # no Section: unknown
    b"\n"
    b"Package: crlf\r\nSection: net\r\nInstalled-Size: 42\r\n\r\n"               # CRLF
    b"Package: big\nSection:net\nInstalled-Size: 43\nDescription: x\n y\n\tz\n"  # no space after ':'
    b"\n"
    b"Package: last\nSection: libs\nInstalled-Size: 5"                            # no final newline
)

WORDS = (
    b"Hello, World! hello\r\nHELLO world's \xff\xfe\x00binary\x00BYTES\xc3\xa9t\xc3\xa9 caf\xe9\n"
    b"\n"
    b"tab\tseparated\x01words;123numbers456 and_underscores CamelCase\n"
    b"a" * 300 + b" long\n"
    b"no final newline"
)

GEOIP = (
    b"# comment line\n"
    b"# another, with commas\n"
    b"0,0,ZZ\n"                       # one address
    b"16777216,16777471,AU\r\n"       # CRLF
    b"1,10,??\n"
    b"4294967040,4294967295,US\n"     # the top of the IPv4 space
    b"100,199,AU\n"
    b"200,299,US\n"
    b"300,300,\"DE\"\n"               # a quoted field
    b"301,400,FR"                     # no final newline
)

CRAFTED = {"packages_etl": PACKAGES, "word_count": WORDS, "geoip_etl": GEOIP}

BAD = {
    "packages_etl": (b"Package: a\nSection: x\nInstalled-Size: 1\n\nPackage: b\nSection: x\nInstalled-Size: lots\n",
                     ["Installed-Size", "lots"]),
    "geoip_etl": (b"1,2,AU\n5,3,US\n", ["end", "line 2"]),
}


# --reject FILE: (input, the good part of it, the line of its one malformed row/record, items a stage
# fails on). The run goes on; FILE holds the malformed one with its line; the rest is skipped and counted.
REJECT = {
    "geoip_etl": (b"1,2,AU\n5,3,US\n7,\"x\"y,US\n10,19,US\n", b"1,2,AU\n10,19,US\n", 3, 1),
    "packages_etl": (b"Package: a\nSection: x\nInstalled-Size: 1\n\n"
                     b"Package: b\nSection: x\nInstalled-Size: lots\n\n"
                     b"Package: c\nnot a field\nSection: y\n\n"
                     b"Package: d\nSection: y\nInstalled-Size: 5\n",
                     b"Package: a\nSection: x\nInstalled-Size: 1\n\nPackage: d\nSection: y\nInstalled-Size: 5\n", 10, 1),
}


def rejects(job, binary, tmp):
    text, good, line, failed = REJECT[job]
    bad = os.path.join(tmp, "reject-input")
    with open(bad, "wb") as f:
        f.write(text)
    out, rej = os.path.join(tmp, "reject-out.csv"), os.path.join(tmp, "rejects.csv")
    rc, _, err = run(binary, [bad, "--output", out, "--reject", rej, "--replicas", "2"])
    if not check(rc == 0, f"{job} --reject: exit 0 past bad input (got {rc}: {err.strip()[-400:]})"):
        return
    check(read_csv(out) == REFERENCE[job](good), f"{job} --reject: the result is that of the good rows only")
    rows = read_csv(rej)
    check(len(rows) == 2 and rows[0][:2] == ["file", "line"] and rows[1][0] == bad and rows[1][1] == str(line),
          f"{job} --reject: the reject file holds the malformed one with its file and line {line} (got {rows})")
    check(f"set aside: 1 malformed in {rej}; the first: {bad}:{line}" in err and f"set aside: {failed} items stage" in err,
          f"{job} --reject: stderr counts what was set aside (got {[l for l in err.splitlines() if 'set aside' in l]})")
    rc, _, err = run(binary, [bad, "--output", out])
    check(rc == 1, f"{job} without --reject: the same input stops the run (got {rc})")


def cli_convention(job, binary, tmp):
    rc, out, _ = run(binary, ["--help"])
    check(rc == 0 and "--output" in out and "--replicas" in out, f"{job} --help: exit 0 and describes the options")
    rc, _, err = run(binary, ["--no-such-flag"])
    check(rc == 2 and "--no-such-flag" in err, f"{job} --no-such-flag: exit 2 naming the flag (got {rc})")
    rc, _, err = run(binary, ["--replicas", "0"])
    check(rc == 2, f"{job} --replicas 0: exit 2 (got {rc})")
    rc, _, err = run(binary, ["--output"])
    check(rc == 2, f"{job} --output without a value: exit 2 (got {rc})")
    if job == "cpu_bound":
        return
    missing = os.path.join(tmp, "no-such-input")
    rc, _, err = run(binary, [missing])
    check(rc == 1 and missing in err and len(err.strip().splitlines()) == 1,
          f"{job} on a missing file: exit 1 with one line naming it (got {rc}: {err.strip()})")
    env = dict(os.environ, PROCFLOW_DATA=os.path.join(tmp, "empty-data-dir"))
    p = subprocess.run([binary], capture_output=True, env=env, timeout=60)
    err = p.stderr.decode(errors="replace")
    check(p.returncode == 2 and "fetch-data.sh" in err,
          f"{job} without input and without its data set: exit 2 saying how to get it (got {p.returncode}: {err.strip()})")
    if job in BAD:
        text, words = BAD[job]
        bad = os.path.join(tmp, "bad-input")
        with open(bad, "wb") as f:
            f.write(text)
        out = os.path.join(tmp, "bad.csv")
        rc, _, err = run(binary, [bad, "--output", out])
        lines = err.strip().splitlines()
        check(rc == 1 and lines and all(w in lines[0] for w in words),
              f"{job} on a bad row: exit 1, first stderr line names stage and cause {words} (got {rc}: {lines[:1]})")
        leftovers = [n for n in os.listdir(tmp) if n.startswith("bad.csv")]
        check(not leftovers, f"{job}: a failed run leaves no output file (found {leftovers})")
    if job in REJECT:
        rejects(job, binary, tmp)
    else:
        rc, _, err = run(binary, ["--reject", os.path.join(tmp, "r.csv")])
        check(rc == 2, f"{job} takes no --reject: exit 2 (got {rc})")


def processes_running(binary):
    """pids of live processes running `binary` (the example and its forked replicas)."""
    pids = []
    target = os.path.realpath(binary)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.readlink(f"/proc/{pid}/exe") == target:
                    with open(f"/proc/{pid}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                            pids.append(int(pid))
            except OSError:
                pass
    return pids


def interrupted(job, binary, tmp):
    """Reading stdin that never ends, the example is interrupted: run() stops and reaps its replicas
    and throws procflow::interrupted, the example prints one line on stderr and exits 128 + signal
    (130 / 143), no replica survives, and --output is not written."""
    import signal
    import time
    for sig in (signal.SIGINT, signal.SIGTERM):
        out = os.path.join(tmp, "interrupted.csv")
        err_path = os.path.join(tmp, "interrupted.err")
        err_file = open(err_path, "wb")
        p = subprocess.Popen([binary, "-", "--output", out], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=err_file)
        err_file.close()
        p.stdin.write((CRAFTED[job] + b"\n\n") * 100)
        p.stdin.flush()
        time.sleep(0.5)
        p.send_signal(sig)
        try:
            rc = p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
            check(False, f"{job}: still running 30 s after {sig.name}")
        p.stdin.close()
        check(rc == 128 + sig, f"{job}: {sig.name} ends it with exit status {128 + sig} (got {rc})")
        with open(err_path, "rb") as f:
            err_lines = f.read().decode(errors="replace").splitlines()
        os.unlink(err_path)
        check(len(err_lines) == 1 and "interrupted" in err_lines[0],
              f"{job}: {sig.name} prints one line on stderr (got {err_lines!r})")
        deadline = time.time() + 10
        while processes_running(binary) and time.time() < deadline:
            time.sleep(0.1)
        left = processes_running(binary)
        check(not left, f"{job}: no replica survives {sig.name} (left: {left})")
        leftovers = [n for n in os.listdir(tmp) if n.startswith("interrupted.csv")]
        check(not leftovers, f"{job}: an interrupted run writes no --output (found {leftovers})")


def crafted(job, binary):
    with tempfile.TemporaryDirectory() as tmp:
        cli_convention(job, binary, tmp)
        if job != "cpu_bound":
            interrupted(job, binary, tmp)
        if job == "cpu_bound":
            out = os.path.join(tmp, "rows.csv")
            w, h, limit = 61, 47, 150
            rc, stdout, err = run(binary, ["--width", str(w), "--height", str(h), "--iterations", str(limit),
                                           "--replicas", "2", "--output", out])
            if check(rc == 0, f"cpu_bound small image: exit {rc}: {err.strip()}"):
                check(read_csv(out) == ref_mandelbrot(w, h, limit), "cpu_bound rows match a Python reference")
                check("speedup" in stdout and "efficiency" in stdout, "cpu_bound prints speedup and efficiency")
                check("pipeline 'cpu_bound'" in err, "cpu_bound prints the profile report on stderr")
            return
        data = CRAFTED[job]
        path = os.path.join(tmp, "input")
        with open(path, "wb") as f:
            f.write(data)
        out = os.path.join(tmp, "x.csv")
        rc, _, err = run(binary, [path, "--output", out])
        check(rc == 0 and f"pipeline '{job}'" in err, f"{job} prints the profile report on stderr")
        for replicas in ("1", "2", "3"):
            compare(job, f"crafted, {replicas} replicas", binary, [path], data, tmp, extra=["--replicas", replicas])
        compare(job, "crafted on stdin", binary, ["-"], data, tmp, stdin=data)
        # a directory: every file under it, recursively; the result is the sum over the files
        d = os.path.join(tmp, "dir")
        os.makedirs(os.path.join(d, "sub"))
        with open(os.path.join(d, "a"), "wb") as f:
            f.write(data)
        with open(os.path.join(d, "sub", "b"), "wb") as f:
            f.write(data)
        # one file may end without a newline: the reference joins the files as separate inputs
        joined = data + (b"\n" if not data.endswith(b"\n") else b"") + (b"\n" if job == "packages_etl" else b"") + data
        compare(job, "a directory of two files", binary, [d], joined, tmp)
        # an empty file
        empty = os.path.join(tmp, "empty")
        open(empty, "wb").close()
        compare(job, "empty input", binary, [empty], b"", tmp)
        # many records/lines, so that byte-range splitting cuts them in many places
        big = data + (b"\n" if not data.endswith(b"\n") else b"")
        if job == "packages_etl":
            big += b"\n"
        big = big * 2000
        with open(path, "wb") as f:
            f.write(big)
        compare(job, "crafted x2000, 2 replicas", binary, [path], big, tmp, extra=["--replicas", "2"])


def main():
    if len(sys.argv) < 4 or sys.argv[1] not in ("real", "crafted"):
        sys.exit(__doc__)
    mode, job, binary = sys.argv[1:4]
    data_dir = os.environ.get("PROCFLOW_DATA") or "/var/tmp/procflow-data"
    if "--data" in sys.argv:
        data_dir = sys.argv[sys.argv.index("--data") + 1]
    if mode == "real":
        real(job, binary, data_dir)
    else:
        crafted(job, binary)
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed", file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
