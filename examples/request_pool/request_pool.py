#!/usr/bin/env python3
"""The request_pool service written with Python's ProcessPoolExecutor (the peer of request_pool.cpp).

Lines "ID N" on stdin -> "ID COUNT" (primes <= N, trial division) on stdout, in request order, each
answer written as soon as it and every earlier one are ready; "ID error: MESSAGE" for a bad N.

Usage: request_pool.py [--workers N]
"""
import argparse
import concurrent.futures
import multiprocessing
import os
import queue
import sys
import threading


def count_primes(n):
    count = 0
    for k in range(2, n + 1):
        d = 2
        prime = True
        while d * d <= k:
            if k % d == 0:
                prime = False
                break
            d += 1
        count += prime
    return count


def answer(text):
    n = int(text)
    if n < 0 or n > 100_000_000:
        raise ValueError("N must be an integer in [0, 1e8], got '%s'" % text)
    return count_primes(n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    pending = queue.Queue()
    out = sys.stdout

    def writer():
        while True:
            item = pending.get()
            if item is None:
                return
            rid, future = item
            try:
                out.write("%s %d\n" % (rid, future.result()))
            except Exception as e:  # noqa: BLE001 - the request's own error, answered on its line
                out.write("%s error: %s\n" % (rid, e))
            if pending.empty():
                out.flush()

    with concurrent.futures.ProcessPoolExecutor(a.workers, mp_context=multiprocessing.get_context("fork")) as ex:
        t = threading.Thread(target=writer)
        t.start()
        for line in sys.stdin:
            rid, _, text = line.rstrip("\n").partition(" ")
            pending.put((rid, ex.submit(answer, text)))
        pending.put(None)
        t.join()
    out.flush()


if __name__ == "__main__":
    main()
