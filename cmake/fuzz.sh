#!/usr/bin/env bash
# Bounded fuzzing run (CI step): builds the libFuzzer targets with the fuzz preset (clang 14,
# ASan+UBSan), runs the corpus regression (every seed once, ctest), then fuzzes each target for
# PROCFLOW_FUZZ_SECONDS (default 60) from its seed corpus in tests/fuzz/corpus/<target>/. New
# inputs go to build/fuzz/corpus/<target>/ (the committed seeds are never modified). Fails on any
# crash, sanitizer report, leak, timeout or over-allocation; the reproducer is left in
# build/fuzz/artifacts/ (re-run it: build/fuzz/tests/fuzz/<target> <file>).
#   PROCFLOW_FUZZ_SECONDS=600 bash cmake/fuzz.sh            # longer
#   PROCFLOW_FUZZ_TARGETS="codec_fuzz" bash cmake/fuzz.sh   # one target
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${PROCFLOW_FUZZ_SECONDS:-60}
targets=${PROCFLOW_FUZZ_TARGETS:-"codec_fuzz shm_fuzz dead_letter_fuzz"}
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi

cmake --preset fuzz "${launcher[@]}" >/dev/null
# shellcheck disable=SC2086
cmake --build --preset fuzz --target $targets
# The corpus regression of the targets built (fuzz_corpus_<target>), not of the others.
ctest --preset fuzz -R "^fuzz_corpus_(${targets// /|})\$"

mkdir -p build/fuzz/artifacts
for t in $targets; do
  mkdir -p "build/fuzz/corpus/$t"
  echo "== fuzzing $t for ${seconds}s"
  # -malloc_limit_mb: no input of at most -max_len bytes (4 KiB, or the largest seed) may make a
  # single allocation this large: a decoder must not allocate from a count it has not checked.
  # -timeout: one input taking longer is a hang.
  rc=0
  "build/fuzz/tests/fuzz/$t" -max_total_time="$seconds" -timeout=10 -malloc_limit_mb=64 -rss_limit_mb=1536 \
    -print_final_stats=1 -artifact_prefix="build/fuzz/artifacts/$t-" \
    "build/fuzz/corpus/$t" "tests/fuzz/corpus/$t" >"build/fuzz/$t.log" 2>&1 || rc=$?
  grep -E '^(#[0-9]+.*(INITED|DONE)|stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb))' "build/fuzz/$t.log" || true
  if [ "$rc" -ne 0 ]; then
    echo "fuzz: $t failed (exit $rc); see build/fuzz/$t.log and build/fuzz/artifacts/" >&2
    tail -n 60 "build/fuzz/$t.log" >&2
    exit 1
  fi
done
echo "fuzz: no crash in ${seconds}s per target ($targets)"
