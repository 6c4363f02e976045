#!/usr/bin/env bash
# check.sh SOURCE_DIR BUILD_DIR WORK_DIR [MPIEXEC]: installs procflow from BUILD_DIR into a scratch
# prefix, then builds and runs tests/consumer both with find_package and with add_subdirectory.
# With MPIEXEC (BUILD_DIR built procflow::mpi) also the MPI component: consumer_mpi on 2 ranks
# both ways, and a clear error when the component is asked for where it is not installed.
set -euo pipefail
src=$1 build=$2 work=$3.$$   # per run: concurrent ctest invocations must not share it
mpiexec=${4:-}
mpi_flags=(-n 2)
if [ -n "$mpiexec" ] && "$mpiexec" --version 2>/dev/null | grep -qE "Open MPI|OpenRTE"; then
  # Open MPI: as root, more ranks than cores, loopback TCP (nothing left in /dev/shm).
  mpi_flags+=(--oversubscribe --mca btl self,tcp)
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
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
if [ -n "$mpiexec" ]; then
  cmake -S "$src/tests/consumer" -B "$work/package_mpi" -DPROCFLOW_CONSUME=package -DPROCFLOW_CONSUME_MPI=ON \
    -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$work/package_mpi" -j2 --target consumer_mpi >/dev/null
  "$mpiexec" "${mpi_flags[@]}" "$work/package_mpi/consumer_mpi"
  # The same request against a prefix without the component: find_package fails and says why.
  cp -r "$work/prefix" "$work/prefix_nompi"
  rm "$work/prefix_nompi"/lib*/cmake/procflow/procflowMpiTargets*.cmake
  if cmake -S "$src/tests/consumer" -B "$work/nompi" -DPROCFLOW_CONSUME=package -DPROCFLOW_CONSUME_MPI=ON \
       -DCMAKE_PREFIX_PATH="$work/prefix_nompi" >"$work/nompi.log" 2>&1; then
    echo "find_package(procflow COMPONENTS mpi) succeeded without the component installed" >&2
    exit 1
  fi
  if ! tr -s ' \n' '  ' <"$work/nompi.log" | grep -q "was built without MPI"; then  # CMake wraps lines
    cat "$work/nompi.log" >&2
    echo "find_package(procflow COMPONENTS mpi) failed without saying why (above)" >&2
    exit 1
  fi
fi
consume_mpi=OFF
[ -n "$mpiexec" ] && consume_mpi=ON
# Unoptimized (no build type): this checks the CMake integration, and compiles the library from
# source in 58 s instead of 80 s.
cmake -S "$src/tests/consumer" -B "$work/subdir" -DPROCFLOW_CONSUME=subdir -DPROCFLOW_SOURCE_DIR="$src" \
  -DPROCFLOW_CONSUME_MPI=$consume_mpi >/dev/null
cmake --build "$work/subdir" -j2 --target consumer >/dev/null
"$work/subdir/consumer"
if [ -n "$mpiexec" ]; then
  cmake --build "$work/subdir" -j2 --target consumer_mpi >/dev/null
  "$mpiexec" "${mpi_flags[@]}" "$work/subdir/consumer_mpi"
fi
# add_subdirectory must not switch on procflow's own tests or examples.
if [ -d "$work/subdir/procflow/tests" ] || [ -d "$work/subdir/procflow/examples" ]; then
  echo "procflow built its tests/examples as a subproject" >&2
  exit 1
fi
echo "consumer: find_package and add_subdirectory both work${mpiexec:+, procflow::mpi included}"
