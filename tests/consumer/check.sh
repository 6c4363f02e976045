#!/usr/bin/env bash
# check.sh SOURCE_DIR BUILD_DIR WORK_DIR: installs procflow from BUILD_DIR into a scratch prefix,
# then builds and runs tests/consumer both with find_package and with add_subdirectory.
set -euo pipefail
src=$1 build=$2 work=$3.$$   # per run: concurrent ctest invocations must not share it
rm -rf "$work" && mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
# The installed package requires exactly what the library uses: a consumer finds it with Boost
# hidden (used inside lib/ only); oneTBB is linked (thread mode) but no public header includes it.
cmake -S "$src/tests/consumer" -B "$work/package" -DPROCFLOW_CONSUME=package -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release \
  --no-warn-unused-cli -DCMAKE_DISABLE_FIND_PACKAGE_Boost=ON >/dev/null
if grep -rlE 'find_dependency\(Boost|Boost::' "$work/prefix/lib"*/cmake/procflow/ >&2; then
  echo "the installed package still refers to Boost (files above)" >&2
  exit 1
fi
if grep -rlE '#include <(boost|tbb|oneapi)/' "$work/prefix/include/procflow" >&2; then
  echo "a public header includes Boost or oneTBB (files above)" >&2
  exit 1
fi
cmake --build "$work/package" -j2 >/dev/null
"$work/package/consumer"
cmake -S "$src/tests/consumer" -B "$work/subdir" -DPROCFLOW_CONSUME=subdir -DPROCFLOW_SOURCE_DIR="$src" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/subdir" -j2 --target consumer >/dev/null
"$work/subdir/consumer"
# add_subdirectory must not switch on procflow's own tests or examples.
if [ -d "$work/subdir/procflow/tests" ] || [ -d "$work/subdir/procflow/examples" ]; then
  echo "procflow built its tests/examples as a subproject" >&2
  exit 1
fi
echo "consumer: find_package and add_subdirectory both work"
