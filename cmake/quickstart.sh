#!/usr/bin/env bash
# Quick start: install what is missing, build, run the flagship examples.
set -euo pipefail
cd "$(dirname "$0")/.."
bash cmake/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset demo
./build/release/examples/quickstart
./build/release/examples/word_count
