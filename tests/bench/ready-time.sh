#!/usr/bin/env bash
# Service start -> ready: wall time from starting `beltbox run` on one model until
# /v2/health/ready answers 200 (every model verified, built, planned, self-checked, gate
# open). Several binaries are measured in alternating rounds (A B A B ...) so machine noise
# hits them alike; prints the median per binary and model.
#
#   tests/bench/ready-time.sh [--rounds N] [--port P] --model PKG [--model PKG...] BIN [BIN...]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=5 port=18931 models=() bins=()
while [ "$#" -gt 0 ]; do
    case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --model) models+=("$2"); shift 2 ;;
    -h | --help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) bins+=("$1"); shift ;;
    esac
done
[ "${#bins[@]}" -gt 0 ] && [ "${#models[@]}" -gt 0 ] || { echo "give --model PKG and at least one BIN" >&2; exit 2; }
command -v curl >/dev/null || { echo "needs curl" >&2; exit 2; }

ready_ms() { # BIN MODEL -> ms until ready, or "fail"
    local bin="$1" model="$2" t0 pid
    t0=$(date +%s%N)
    RUST_LOG=warn "$bin" run --listen "127.0.0.1:$port" --model "$model" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 3000); do
        if curl -fs -o /dev/null "http://127.0.0.1:$port/v2/health/ready"; then
            echo $(( ($(date +%s%N) - t0) / 1000000 ))
            kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
            return
        fi
        kill -0 "$pid" 2>/dev/null || { echo fail; return; }
        sleep 0.005
    done
    kill -KILL "$pid" 2>/dev/null || true
    echo fail
}

declare -A samples
for _ in $(seq 1 "$rounds"); do
    for m in "${models[@]}"; do
        for b in "${bins[@]}"; do
            samples["$b|$m"]+="$(ready_ms "$b" "$m") "
        done
    done
done
echo "| binary | model | start -> ready, median of $rounds (all, ms) |"
echo "|---|---|---|"
for m in "${models[@]}"; do
    for b in "${bins[@]}"; do
        s="${samples["$b|$m"]}"
        med=$(echo "$s" | tr ' ' '\n' | grep -E '^[0-9]+$' | sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "fail"}')
        echo "| $b | $m | $med ($s) |"
    done
done
