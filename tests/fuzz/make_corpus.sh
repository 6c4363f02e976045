#!/usr/bin/env bash
# Regenerates the seed corpus (tests/fuzz/corpus) with corpus_gen from a fuzz build tree:
#   cmake --preset fuzz && cmake --build build/fuzz --target corpus_gen && tests/fuzz/make_corpus.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gen=${1:-$here/../../build/fuzz/tests/fuzz/corpus_gen}
rm -rf "$here/corpus/codec_fuzz" "$here/corpus/shm_fuzz"
"$gen" "$here/corpus"
du -sh "$here/corpus"
