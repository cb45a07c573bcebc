#!/bin/sh
# Builds the libFuzzer targets with clang (ASan+UBSan) and runs each for FUZZ_SECONDS
# (default 20; CI uses a short run, see docs/testing.md for a longer one). Seed corpora
# live in test/fuzz/corpus/<target>/; new findings go to build-fuzz/corpus/<target>/.
set -eu
cd "$(dirname "$0")/.."
./scripts/deps.sh
SECS=${FUZZ_SECONDS:-20}
CC=clang cmake -S . -B build-fuzz -DWP_FUZZ=ON -DWP_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j "$(nproc)" >/dev/null
found=0
for bin in build-fuzz/test/fuzz/fuzz_*; do
    [ -x "$bin" ] || continue
    found=1
    name=$(basename "$bin")
    mkdir -p "build-fuzz/corpus/$name"
    seeds="test/fuzz/corpus/$name"
    [ -d "$seeds" ] || seeds=""
    echo "fuzz: $name for ${SECS}s"
    "$bin" -max_total_time="$SECS" -max_len=16384 -print_final_stats=1 \
        "build-fuzz/corpus/$name" $seeds 2>&1 | tail -n 3
done
[ "$found" -eq 1 ] || echo "fuzz: no targets built"
