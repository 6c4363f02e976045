#!/usr/bin/env bash
# Installs the Debian 12 packages procflow needs, only those missing. As root it runs apt-get;
# otherwise it prints the exact command to run and fails.
set -euo pipefail
packages=(build-essential cmake libtbb-dev libboost-dev libfmt-dev doctest-dev zlib1g-dev python3 nlohmann-json3-dev
  clang-14 libclang-rt-14-dev  # clang 14 and its libFuzzer runtime: the fuzz step (cmake/fuzz.sh)
  clang-19 libclang-rt-19-dev  # the ASan+UBSan builds (presets asan, asan-mpi): README, "Building, testing, conventions"
  ninja-build  # the sanitizer presets: Ninja builds their list of test targets in parallel (make builds a target list one by one)
  procps  # pgrep/pkill: tests/mpi/silence_check.sh's check that an aborted MPI job left no process
  libopenmpi-dev openmpi-bin)  # optional for the core: the procflow::mpi component and its tests (label mpi)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "procflow needs: ${missing[*]}" >&2
  echo "run:  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
