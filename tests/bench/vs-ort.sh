#!/usr/bin/env bash
# beltbox vs ONNX Runtime, side by side (see vs-ort.py). Makes a virtualenv with the
# onnxruntime and numpy pinned in models/requirements.txt, builds the release binary,
# then runs the comparison; extra arguments go to vs-ort.py.
#   bash tests/bench/vs-ort.sh --rounds 5 --threads 1
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=.cache/ort-venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import onnxruntime, numpy' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q $(grep -E '^(onnxruntime|numpy)==' models/requirements.txt)
fi
cargo build --release
exec "$VENV/bin/python" tests/bench/vs-ort.py --beltbox "${CARGO_TARGET_DIR:-target}/release/beltbox" "$@"
