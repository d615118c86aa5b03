#!/usr/bin/env bash
# Predicted vs measured RAM for every bundled ONNX model, threads 1 and 2.
#
# Predicted: `beltbox plan --json` (no model served; the planner builds the optimised
# graph and walks it). Measured: a separate `beltbox bench --json` process (load + golden
# self-check + warm-up + runs), so the planner's own allocations never pollute it:
#   serving heap  = counting-allocator high-water mark during warm-up + runs
#                   vs plan steady heap (weights + graph + activations + scratch + preprocessing)
#   peak heap     = max(load peak, serving peak) vs plan peak heap
#   VmHWM         = kernel peak RSS vs plan total (peak heap + runtime overhead), twice:
#                   glibc defaults, and with MALLOC_MMAP_THRESHOLD_=131072 (pins glibc's
#                   mmap threshold at its default so large freed buffers go back to the
#                   kernel instead of staying in the heap; see docs/memory.md)
# Error % = (predicted - measured) / measured: positive means the plan over-estimates
# (safe side). Output is a Markdown table (docs/memory.md).
#
# Usage: tests/bench/plan-accuracy.sh [BELTBOX] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-${CARGO_TARGET_DIR:-target}/debug/beltbox}
RUNS=${2:-20}
export RUST_LOG=warn
models=$(for m in models/*/manifest.toml; do d=$(dirname "$m"); grep -q '^format = "onnx"' "$m" && basename "$d"; done)
echo "| model | threads | serving heap: plan / measured (err) | peak heap: plan / measured (err) | total vs VmHWM, glibc defaults | total vs VmHWM, mmap threshold pinned |"
echo "|---|---|---|---|---|---|"
for m in $models; do
  for t in 1 2; do
    plan=$("$BIN" plan --model "$m" --threads "$t" --json)
    bench=$("$BIN" bench --model "$m" --threads "$t" --runs "$RUNS" --warmup 3 --json)
    pinned=$(MALLOC_MMAP_THRESHOLD_=131072 "$BIN" bench --model "$m" --threads "$t" --runs "$RUNS" --warmup 3 --json)
    python3 - "$m" "$t" "$plan" "$bench" "$pinned" <<'PY'
import json, sys
m, t = sys.argv[1], sys.argv[2]
plan, bench, pinned = (json.loads(a) for a in sys.argv[3:6])
mib = lambda b: f"{b / 1048576:.2f}"
def cell(p, r):
    return f"{mib(p)} / {mib(r)} MiB ({(p - r) / r * 100:+.1f}%)"
serve = bench["alloc_peak_bytes"]
peak = max(serve, bench["alloc_load_peak_bytes"])
total = plan['total_bytes']
print(f"| {m} | {t} | {cell(plan['steady_heap_bytes'], serve)} | {cell(plan['peak_heap_bytes'], peak)} "
      f"| {cell(total, bench['peak_rss_bytes'])} | {cell(total, pinned['peak_rss_bytes'])} |")
PY
  done
done
