#!/usr/bin/env bash
# What the result spool costs the service (docs/offline.md, "What it costs"), measured side
# by side in one run. Three configurations of the release binary, interleaved over
# ROUNDS rounds so that drift (thermal, other load) hits them alike:
#   off      spool.enabled = false
#   on       the spool, no upload sink
#   hammered the spool, and the uploader retrying as fast as it may (backoff 10-50 ms)
#            against an MQTT broker that refuses connections and an HTTP receiver that
#            answers every batch after 2 s with 503
# Each round starts the service, warms it (1 s), then runs `beltbox loadgen` at RATE
# requests/s for DURATION. Prints per-round p95s, the median p95 of each configuration,
# the ratio on/off, and the spool's fsync cost per record (from /metrics).
# Usage: cargo build --release && bash tests/bench/offline-p95.sh [ROUNDS] [RATE] [DURATION]
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${BELTBOX:-target/release/beltbox}
[ -x "$B" ] || { echo "no $B: run cargo build --release first (or set BELTBOX)" >&2; exit 2; }
ROUNDS=${1:-3}
RATE=${2:-200}
DURATION=${3:-10s}
W=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$W"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The slow, failing HTTP receiver (tests/offline/receiver.py with its .slow and .fail flags).
python3 tests/offline/receiver.py "$W/rx.port" "$W/rx" &
pids+=($!)
touch "$W/rx.slow" "$W/rx.fail"
while [ ! -s "$W/rx.port" ]; do sleep 0.05; done
RX="http://127.0.0.1:$(cat "$W/rx.port")/ingest"
DEAD_MQTT="mqtt://127.0.0.1:$(port)"   # nothing listens there

config() { # NAME
    local extra=""
    case $1 in
        off) extra=$'[spool]\nenabled = false' ;;
        on) extra="" ;;
        hammered) extra=$'[upload]\nmqtt = "'"$DEAD_MQTT"$'"\nhttp = "'"$RX"$'"\nbackoff_min_ms = 10\nbackoff_max_ms = 50\ntimeout_ms = 1000' ;;
    esac
    printf 'state_dir = "%s"\n[ota]\nrecent_frames = 0\npoll_interval_s = 0\n%s\n' "$W/state-$1" "$extra"
}

declare -A P95
for r in $(seq 1 "$ROUNDS"); do
    for c in off on hammered; do
        config "$c" > "$W/$c.toml"
        p=$(port)
        NOTIFY_SOCKET= RUST_LOG=error "$B" run --config "$W/$c.toml" --listen "127.0.0.1:$p" 2>"$W/$c.log" &
        sp=$!
        for _ in $(seq 200); do curl -sf "127.0.0.1:$p/v2/health/ready" >/dev/null && break; sleep 0.05; done
        "$B" loadgen --url "http://127.0.0.1:$p" --rates 50 --duration 1s --connections 8 >/dev/null
        out=$("$B" loadgen --url "http://127.0.0.1:$p" --rates "$RATE" --duration "$DURATION" --connections 8 --json)
        p95=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); s=(d["steps"] if isinstance(d, dict) else d)[0]; print("%.3f" % s["p95_ms"])' "$out")
        ok=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); s=(d["steps"] if isinstance(d, dict) else d)[0]; print(s["ok"], "of", s["sent"])' "$out")
        P95[$c]="${P95[$c]:-} $p95"
        extra=""
        if [ "$c" != off ]; then
            m=$(curl -s "127.0.0.1:$p/metrics")
            extra=$(python3 - "$m" <<'PY'
import sys
m = {}
for line in sys.argv[1].splitlines():
    if line and not line.startswith("#"):
        k, v = line.rsplit(" ", 1)
        m[k] = float(v)
recs, syncs, secs = m["beltbox_spool_written_seq"], m["beltbox_spool_syncs_total"], m["beltbox_spool_sync_seconds_total"]
fail = sum(v for k, v in m.items() if k.startswith("beltbox_upload_failures_total"))
print("  %d records, %d syncs (%.1f records/sync), fdatasync %.3f ms mean, %.1f us per record; upload failures %d"
      % (recs, syncs, recs / max(syncs, 1), 1e3 * secs / max(syncs, 1), 1e6 * secs / max(recs, 1), fail))
PY
)
        fi
        echo "round $r $c: p95 $p95 ms ($ok ok)$extra"
        kill -TERM "$sp"; wait "$sp" || true
    done
done
python3 - "${P95[off]}" "${P95[on]}" "${P95[hammered]}" <<'PY'
import statistics, sys
off, on, ham = ([float(x) for x in a.split()] for a in sys.argv[1:4])
mo, mn, mh = statistics.median(off), statistics.median(on), statistics.median(ham)
print("median p95: off %.3f ms, on %.3f ms (%+.1f %%), hammered %.3f ms (%+.1f %%)"
      % (mo, mn, 100 * (mn / mo - 1), mh, 100 * (mh / mo - 1)))
PY
