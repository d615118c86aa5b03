#!/usr/bin/env bash
# Install-to-serving time of an OTA package: `beltbox ota pull --no-reload` from a
# directory channel into an empty store (verify, unpack, qualify, move in, activate),
# three runs per bundled package, with the release binary. Prints one line per run.
# Usage: cargo build --release && bash tests/bench/ota-install-time.sh [PACKAGE...]
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${BELTBOX:-target/release/beltbox}
[ -x "$B" ] || { echo "no $B: run cargo build --release first (or set BELTBOX)" >&2; exit 2; }
packages=("$@")
[ ${#packages[@]} -gt 0 ] || packages=(digits-int8-qdq mobilenetv2-bench-int8-qdq)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
"$B" ota channel-init "$W/ch" --keys "$W/keys" >/dev/null
for m in "${packages[@]}"; do
    "$B" ota publish "$W/ch" "models/$m" --keys "$W/keys" >/dev/null
done
for m in "${packages[@]}"; do
    for i in 1 2 3; do
        rm -rf "$W/st"
        s=$(date +%s.%N)
        "$B" ota pull --channel "$W/ch" --model "$m" --state-dir "$W/st" \
            --root "$W/ch/metadata/1.root.json" --no-reload >/dev/null 2>&1
        e=$(date +%s.%N)
        card=$(ls "$W"/st/ota/cards/"$m"@*.json)
        p95=$(python3 -c "import json,sys; print('%.2f' % json.load(open(sys.argv[1]))['p95_ms'])" "$card")
        echo "$m run $i: $(python3 -c "import sys; print('%.2f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$s" "$e") s install to serving (qualification p95 $p95 ms)"
    done
done
