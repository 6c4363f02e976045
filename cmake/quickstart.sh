#!/usr/bin/env bash
# Quick start: install what is missing, fetch the example data sets, build, run the flagship example
# (packages_etl: the Debian package index on this machine, summarized per Section by a procflow pipeline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash cmake/install-deps.sh
bash cmake/fetch-data.sh
cmake --preset release >/dev/null
cmake --build --preset demo
./build/release/examples/packages_etl --output build/release/packages_by_section.csv
echo
echo "full result: build/release/packages_by_section.csv ($(($(wc -l <build/release/packages_by_section.csv) - 1)) sections)"
echo "more: ./build/release/examples/{word_count,geoip_etl,cpu_bound} --help"
