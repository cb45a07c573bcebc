#!/bin/sh
# Builds the libFuzzer targets with clang (ASan+UBSan) and runs each for FUZZ_SECONDS
# (default 20; CI uses a short run, docs/fuzzing.md has a longer one). Seed corpora live
# in test/fuzz/corpus/<target>/; new inputs go to build-fuzz/corpus/<target>/ and crash
# reproducers to build-fuzz/crashes/<target>/. Exits non-zero if any target finds a
# crash, leak or sanitizer report.
set -eu
cd "$(dirname "$0")/.."
./scripts/deps.sh
SECS=${FUZZ_SECONDS:-20}
CC=clang cmake -S . -B build-fuzz -DWP_FUZZ=ON -DWP_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j "$(nproc)" >/dev/null
found=0
failed=""
for bin in build-fuzz/test/fuzz/fuzz_*; do
    [ -x "$bin" ] || continue
    found=1
    name=$(basename "$bin")
    mkdir -p "build-fuzz/corpus/$name" "build-fuzz/crashes/$name"
    seeds="test/fuzz/corpus/$name"
    [ -d "$seeds" ] || seeds=""
    echo "fuzz: $name for ${SECS}s"
    rc=0
    "$bin" -max_total_time="$SECS" -max_len=16384 -print_final_stats=1 \
        -artifact_prefix="build-fuzz/crashes/$name/" \
        "build-fuzz/corpus/$name" $seeds >"build-fuzz/$name.log" 2>&1 || rc=$?
    tail -n 3 "build-fuzz/$name.log"
    if [ "$rc" -ne 0 ]; then
        echo "fuzz: $name FAILED (exit $rc); see build-fuzz/$name.log"
        failed="$failed $name"
    fi
done
[ "$found" -eq 1 ] || { echo "fuzz: no targets built"; exit 1; }
[ -z "$failed" ] || { echo "fuzz: failures:$failed"; exit 1; }
