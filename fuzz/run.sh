#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS (default 60) from its committed corpus
# (fuzz/corpus/TARGET, read only; new inputs go to $CARGO_TARGET_DIR/fuzz-corpus), all at
# once (FUZZ_JOBS targets at a time, default all: CI's wall time is the scarce part). Installs cargo-fuzz when missing. Fails on the first crash; libFuzzer then prints
# the input and `cargo fuzz` saves it under fuzz/artifacts/TARGET/.
#
#   bash fuzz/run.sh [SECONDS]
#
# Stable Rust: no sanitizer (`-s none`): what the targets hunt is panics, overflows (debug
# assertions are on) and runaway memory in safe Rust, not memory errors.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-60}"
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    # --debug: a CLI that only drives cargo needs no optimisation, and CI pays for its
    # build on every fresh machine (docs/fuzzing.md has the times).
    cargo install cargo-fuzz --locked --debug --version "$CARGO_FUZZ_VERSION"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
work="$CARGO_TARGET_DIR/fuzz-corpus"
flags=(-s none --release --debug-assertions)
t0=$(date +%s)
cargo fuzz build "${flags[@]}"
echo "fuzz targets built in $(($(date +%s) - t0)) s"
run() {
    local t="$1"
    mkdir -p "$work/$t"
    # -rss_limit_mb: a decoder that allocates without bound fails the run.
    cargo fuzz run "${flags[@]}" "$t" "$work/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$SECS" -rss_limit_mb=1024 -max_len=262144 -print_final_stats=1 \
        >"$work/$t.log" 2>&1
}
targets=($(cargo fuzz list))
failed=()
jobs="${FUZZ_JOBS:-${#targets[@]}}"
for ((i = 0; i < ${#targets[@]}; i += jobs)); do
    pids=()
    for t in "${targets[@]:i:jobs}"; do
        run "$t" & pids+=("$!:$t")
    done
    for p in "${pids[@]}"; do
        if wait "${p%%:*}"; then
            echo "ok     ${p#*:}: $(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$work/${p#*:}.log" | grep -o '[0-9]*$') runs in ${SECS} s, corpus $(ls "$work/${p#*:}" | wc -l) + $(ls "fuzz/corpus/${p#*:}" | wc -l) committed"
        else
            echo "FAILED ${p#*:}:"
            tail -40 "$work/${p#*:}.log"
            failed+=("${p#*:}")
        fi
    done
done
[ "${#failed[@]}" -eq 0 ] || { echo "fuzz targets failed: ${failed[*]}"; exit 1; }
echo "all fuzz targets ran ${SECS} s without a crash"
