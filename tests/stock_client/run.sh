#!/usr/bin/env bash
# Runs the service against the stock KServe v2 client (tritonclient[http], pinned) in a
# virtualenv under .cache/. Usage: bash tests/stock_client/run.sh [path/to/beltbox]
# Installs python3-venv with apt when the interpreter cannot create virtualenvs.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${1:-${CARGO_TARGET_DIR:-target}/debug/beltbox}"
VENV=.cache/kserve-venv
if [ ! -x "$BIN" ]; then
    echo "error: $BIN is not built; run 'cargo build' first (or pass the binary's path)" >&2
    exit 2
fi
if ! python3 -c 'import ensurepip' 2>/dev/null; then
    apt-get install -y -q python3-venv >/dev/null
fi
# onnx (pinned as in models/requirements.txt) writes the two-input model the client sends
# INT64/BOOL tensors to.
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import tritonclient.http, numpy, onnx' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q 'tritonclient[http]==2.73.0' 'numpy==2.4.6' 'onnx==1.23.2'
fi
exec "$VENV/bin/python" tests/stock_client/kserve_client.py "$BIN"
