#!/usr/bin/env bash
# Prints a markdown table of `beltbox bench` for every bundled model package.
#
#   tests/bench/bench-all.sh [--bin PATH] [--runs N] [--threads N] [--features tflite]
#
# Each model runs in its own process, so peak RSS is per model. Defaults: the release
# binary (built if missing), 50 runs, 1 thread. TFLite packages are included when the
# binary was built with the `tflite` feature and the LiteRT library is available.
set -euo pipefail
cd "$(dirname "$0")/../.."

bin="" runs=50 threads=1 features=""
while [ $# -gt 0 ]; do
    case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --features) features="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "bench-all: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -z "$bin" ]; then
    cargo build --release ${features:+--features "$features"} >&2
    bin="${CARGO_TARGET_DIR:-target}/release/beltbox"
fi
[ -x "$bin" ] || { echo "bench-all: no binary at $bin" >&2; exit 2; }
if [ -z "${BELTBOX_LITERT_LIB:-}" ] && [ -f ".cache/litert/$(uname -m)/libLiteRt.so" ]; then
    export BELTBOX_LITERT_LIB="$PWD/.cache/litert/$(uname -m)/libLiteRt.so"
fi

echo "| model | precision | backend | load ms | p50 ms | p95 ms | p99 ms | inference p50 ms | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|---|"
for dir in models/*/; do
    name=$(basename "$dir")
    [ -f "$dir/manifest.toml" ] || continue
    if ! out=$("$bin" bench --model "$dir" --runs "$runs" --threads "$threads" --json 2>/tmp/bench-all.err); then
        echo "| $name | – | – | skipped: $(tr '\n' ' ' </tmp/bench-all.err | cut -c1-120) |||||"
        continue
    fi
    python3 -c '
import json, sys
d = json.loads(sys.argv[1])
print("| {model} | {precision} | {backend} | {load:.0f} | {p50:.3f} | {p95:.3f} | {p99:.3f} | {inf:.3f} | {rss:.1f} |".format(
    model=d["model"], precision=d["precision"], backend=d["backend"], load=d["load_ms"],
    p50=d["p50_ms"], p95=d["p95_ms"], p99=d["p99_ms"], inf=d["stages"]["inference"]["p50_ms"],
    rss=(d["peak_rss_bytes"] or 0) / 1048576))' "$out"
done
echo
echo "$(uname -m), $(nproc) cores, ${threads} thread(s), ${runs} runs; $("$bin" --version)"
