#!/usr/bin/env python3
"""pack.py: turn an ONNX or TFLite model and a few sample inputs into a beltbox model package.

The package (manifest format 2, docs/model-package.md) holds a copy of the model, the samples
as golden inputs, the reference runtime's outputs for them as golden outputs, the manifest
(input and output names, dtypes and shapes read from the model, a tolerance per output, the
sha256 of every file) and the labels if given. beltbox checks every golden output on every
load and refuses the model if it cannot reproduce them.

Reference runtimes (the documented reference modes, docs/model-package.md):
  ONNX FP32   onnxruntime CPU EP, 1 thread, ORT_DISABLE_ALL
  ONNX INT8   onnxruntime CPU EP, 1 thread, ORT_ENABLE_EXTENDED + session.x64quantprecision=1
  TFLite      ai-edge-litert interpreter, 1 thread, OpResolverType.BUILTIN_REF

Tolerances come from the measured spread of the reference runtime's own acceptable modes on
the samples, doubled, with a floor (2 output steps for quantised outputs, 1e-4 and 1e-5 of
the output's peak for float outputs). --atol sets one fixed tolerance and skips that study.

Models with several inputs take each sample as NAME=FILE,NAME=FILE,... (every input once); the
references are fed every input. --task detection writes task = "detection" on the detector's
outputs and the [detection] section that tells beltbox how to decode them into boxes.
--min-shape/--max-shape (and --shape-step) let an ONNX tensor input take requests of any shape
in a range (min_shape/max_shape/shape_step in the manifest); the goldens stay at --shape.

Needs numpy, onnx + onnxruntime (ONNX models) or ai-edge-litert (TFLite models); the repo's
venv has them: .cache/ort-venv/bin/python tools/pack.py --help

Exit codes: 0 package written, 2 usage or input error, 1 the model cannot be packed (or, with
--verify, beltbox refused the package).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

try:
    import numpy as np
except ImportError:  # pragma: no cover - depends on the interpreter
    sys.exit("pack: error: numpy is missing; run with the repo's venv: .cache/ort-venv/bin/python tools/pack.py ...")

TOOL = "pack"

EXAMPLES = """\
examples (run with a Python that has numpy + onnx/onnxruntime or ai-edge-litert, e.g. the
repo's venv: .cache/ort-venv/bin/python tools/pack.py ...):
  # an FP32 ONNX classifier, two sample tensors, labels
  tools/pack.py mobilenet.onnx --sample cat.npy --sample dog.npy \\
      --labels imagenet.txt --out /tmp/mobilenet-fp32

  # an ORT-quantised model with a symbolic input shape (fixed at 1x3x640x640)
  tools/pack.py yolo-int8.onnx --shape 1,3,640,640 --sample frame.npy --out /tmp/yolo-int8

  # a YOLOv8 detector: boxes decoded by beltbox (classes inferred from output0 [1, 4+C, N])
  tools/pack.py yolov8n.onnx --shape 1,3,640,640 --sample frame.npy \\
      --task detection --detection-head yolo --labels coco.txt --out /tmp/yolov8n

  # the same detector taking any 160..640 x 160..640 tensor in steps of 32 (goldens at 320x320;
  # the RAM budget is sized for 640x640)
  tools/pack.py yolov8n.onnx --shape 1,3,320,320 --sample frame320.npy --out /tmp/yolov8n-range \\
      --min-shape 1,3,160,160 --max-shape 1,3,640,640 --shape-step 1,1,32,32

  # a TFLite model with image samples (PNG/PGM, converted and resized as beltbox does)
  tools/pack.py face.tflite --image rgb --scale 2 --mean 1,1,1 --sample face.png --out /tmp/face

  # a model with two inputs: each sample names every input once; --shape and the image
  # options name their input
  tools/pack.py det.onnx --shape image=1,3,640,640 --image rgb --image-input image \\
      --sample image=a.png,scale_factor=a_sf.npy --sample image=b.png,scale_factor=b_sf.npy --out /tmp/det

  # then check it on beltbox (loading runs the golden self-check):
  beltbox infer --model /tmp/mobilenet-fp32 --input /tmp/mobilenet-fp32/golden/000.in.npy --json
  beltbox infer --model /tmp/det --input image=a.png --input scale_factor=a_sf.npy --json

A sample is a .npy tensor (the model input itself; a missing batch axis of 1 is added), or,
with --image, a PNG/PGM image that is converted exactly as beltbox converts images (colour,
resize, normalisation, layout, quantisation); images are stored as the resulting .npy tensors
(golden/NNN.in.npy; with several inputs golden/NNN.in0.npy, NNN.in1.npy, ... in manifest order).
Make a random sample with numpy, e.g.:
  python -c "import numpy as np; np.save('s.npy', np.random.default_rng(0).random((1,3,224,224), np.float32))"

exit codes: 0 written, 2 usage or input error, 1 the model cannot be packed (or --verify failed).
See docs/model-package.md, "Packing your own model: tools/pack.py".
"""

# ---------------------------------------------------------------------------------------------
# Errors: a user mistake is a UsageError (exit 2), a model that cannot be packed a PackError
# (exit 1). Neither prints a traceback.
# ---------------------------------------------------------------------------------------------


class PackError(Exception):
    code = 1


class UsageError(PackError):
    code = 2


def say(msg: str) -> None:
    print(f"{TOOL}: {msg}", flush=True)


def warn(msg: str) -> None:
    print(f"{TOOL}: warning: {msg}", file=sys.stderr, flush=True)


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 600 else text[:600] + " ..."


# ---------------------------------------------------------------------------------------------
# Reference modes
# ---------------------------------------------------------------------------------------------
X64QP = ("session.x64quantprecision", "1")
ORT_LEVELS = {
    "DISABLE_ALL": "ORT_DISABLE_ALL",
    "BASIC": "ORT_ENABLE_BASIC",
    "EXTENDED": "ORT_ENABLE_EXTENDED",
    "ALL": "ORT_ENABLE_ALL",
}
# (label, level, session config entries). The first of each list writes the goldens; all of
# them are exact evaluations of the same arithmetic (they differ in op order and fusion only),
# so their spread is reference noise, not error. Same sets as tests/real_models/make_packages.py.
ORT_MODES = {
    "fp32": [
        ("DISABLE_ALL", "DISABLE_ALL", []),
        ("BASIC", "BASIC", []),
        ("EXTENDED", "EXTENDED", []),
        ("ALL", "ALL", []),
        ("ALL+nonchwc", "ALL", [("optimization.disable_specified_optimizers", "NchwcTransformer")]),
        ("DISABLE_ALL+noprepack", "DISABLE_ALL", [("session.disable_prepacking", "1")]),
        ("DISABLE_ALL+daz", "DISABLE_ALL", [("session.set_denormal_as_zero", "1")]),
    ],
    "int8": [
        ("EXTENDED+x64qp", "EXTENDED", [X64QP]),
        ("ALL+x64qp", "ALL", [X64QP]),
        ("ALL+x64qp+nonchwc", "ALL", [X64QP, ("optimization.disable_specified_optimizers", "NchwcTransformer")]),
        ("EXTENDED+x64qp+qdqcleanup", "EXTENDED", [X64QP, ("session.enable_quant_qdq_cleanup", "1")]),
        ("EXTENDED+x64qp+nodqdqrm", "EXTENDED", [X64QP, ("session.disable_double_qdq_remover", "1")]),
        ("EXTENDED+x64qp+noprepack", "EXTENDED", [X64QP, ("session.disable_prepacking", "1")]),
    ],
}
TFLITE_MODES = ["BUILTIN_REF", "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "AUTO"]

SAFETY = 2.0  # tolerance = SAFETY x the measured spread (or one output step)
FLOAT_ATOL_FLOOR = 1e-4  # float outputs: absolute floor ...
FLOAT_PEAK_FLOOR = 1e-5  # ... and relative to the output's peak |value|
DEFAULT_P95_MS = 1000.0

# ONNX ops that make a graph QOperator-format INT8 (anything integer besides Q/DQ).
QOPERATOR_OPS = {
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear",
    "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax",
    "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearConcat", "QLinearReduceMean",
    "QLinearWhere", "QLinearGemm", "QGemm", "QAttention", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "QOrderedMatMul",
}
# Where an op's output scale / zero point are among its inputs (for integer graph outputs).
QOUT_PARAMS = {
    "QuantizeLinear": (1, 2),
    "QLinearConv": (6, 7),
    "QLinearMatMul": (6, 7),
    "QLinearAdd": (6, 7),
    "QLinearMul": (6, 7),
    "QGemm": (6, 7),
    "QLinearSigmoid": (3, 4),
    "QLinearLeakyRelu": (3, 4),
    "QLinearSoftmax": (3, 4),
    "QLinearAveragePool": (3, 4),
    "QLinearGlobalAveragePool": (3, 4),
    "QLinearReduceMean": (3, 4),
    "QLinearConcat": (0, 1),
}
PASSTHROUGH = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"}
MAX_INPUTS = 16  # as beltbox's manifest (crates/core/src/manifest.rs)
SUPPORTED_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8"}


def versions() -> dict:
    out = {}
    for dist in ("numpy", "onnx", "onnxruntime", "ai-edge-litert"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_int_list(text: str, what: str, example: str = "1,3,224,224") -> list:
    try:
        vals = [int(v) for v in text.replace("x", ",").split(",") if v.strip() != ""]
    except ValueError:
        raise UsageError(f"{what}: `{text}` is not a comma-separated list of integers (e.g. {example})")
    if not vals or any(v <= 0 for v in vals):
        raise UsageError(f"{what}: `{text}` must list positive integers (e.g. {example})")
    return vals


def parse_float_list(text: str, what: str) -> list:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{what}: `{text}` is not a comma-separated list of numbers")
    if not all(math.isfinite(v) for v in vals):
        raise UsageError(f"{what}: `{text}` must be finite numbers")
    return vals


def nice_ceil(x: float) -> float:
    """Round up to two significant digits (keeps manifests readable); float32 noise in x (a
    step of 0.05 is 0.0500000007) does not bump it to the next digit."""
    if x <= 0:
        return 0.0
    e = math.floor(math.log10(x)) - 1
    q = 10.0**e
    return float(f"{math.ceil(x / q - 1e-6) * q:.12g}")


def package_name(text: str) -> str:
    s = re.sub(r"[^a-z0-9-]+", "-", text.lower())
    s = re.sub(r"-+", "-", s).strip("-")
    return s[:64].rstrip("-")


NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
VERSION_RE = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")


def f32(x) -> float:
    """The float that a manifest f32 field parses back to exactly."""
    return float(np.float32(x))


def dequantise(a: np.ndarray, quant) -> np.ndarray:
    if quant is None:
        return a.astype(np.float64)
    scale, zp = quant
    return (a.astype(np.float64) - zp) * scale


# ---------------------------------------------------------------------------------------------
# Images (only with --image): PNG and PGM decoded here without extra dependencies, then turned
# into the model tensor exactly as beltbox does it (crates/core/src/preprocess.rs): float32
# arithmetic in the same order, so the stored tensor is what beltbox would compute.
# ---------------------------------------------------------------------------------------------
def decode_pgm(data: bytes, path: Path):
    ascii_ = data.startswith(b"P2")
    pos = 2
    fields = []

    def next_number():
        nonlocal pos
        while pos < len(data):
            c = data[pos : pos + 1]
            if c.isspace():
                pos += 1
            elif c == b"#":
                while pos < len(data) and data[pos : pos + 1] != b"\n":
                    pos += 1
            else:
                break
        start = pos
        while pos < len(data) and data[pos : pos + 1].isdigit():
            pos += 1
        if start == pos:
            raise UsageError(f"{path}: malformed PGM header")
        return int(data[start:pos])

    for _ in range(3):
        fields.append(next_number())
    w, h, maxval = fields
    if w == 0 or h == 0 or not (1 <= maxval <= 65535):
        raise UsageError(f"{path}: PGM size {w}x{h} / maxval {maxval} is invalid")
    n = w * h
    if ascii_:
        vals = [next_number() for _ in range(n)]
        px = np.array(vals, dtype=np.int64)
    else:
        pos += 1
        wide = maxval > 255
        raw = data[pos : pos + n * (2 if wide else 1)]
        if len(raw) < n * (2 if wide else 1):
            raise UsageError(f"{path}: PGM raster is truncated")
        px = np.frombuffer(raw, dtype=">u2" if wide else np.uint8).astype(np.int64)
    if px.max(initial=0) > maxval:
        raise UsageError(f"{path}: a PGM sample exceeds maxval {maxval}")
    return px.reshape(h, w, 1), maxval


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(data: bytes, path: Path):
    """8/16-bit and sub-byte PNG, gray / gray+alpha / RGB / RGBA / palette, not interlaced.
    Alpha is dropped, palettes expanded to RGB, sub-byte gray scaled to 8 bits (as beltbox)."""
    pos, ihdr, plte, idat = 8, None, None, []
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if ctype == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif ctype == b"PLTE":
            plte = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3)
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IEND":
            break
    if ihdr is None or not idat:
        raise UsageError(f"{path}: not a complete PNG (no IHDR or IDAT)")
    w, h, depth, ctype, _, _, interlace = ihdr
    if interlace:
        raise UsageError(f"{path}: interlaced PNGs are not supported by pack; save it without interlacing")
    chans = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(ctype)
    if chans is None or depth not in (1, 2, 4, 8, 16):
        raise UsageError(f"{path}: unsupported PNG colour type {ctype} / bit depth {depth}")
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise UsageError(f"{path}: corrupt PNG data ({e})")
    bits = chans * depth
    stride = (w * bits + 7) // 8
    bpp = max(1, bits // 8)
    if len(raw) < h * (stride + 1):
        raise UsageError(f"{path}: PNG data is truncated")
    out = np.zeros((h, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int64)
    for y in range(h):
        ftype = raw[y * (stride + 1)]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1).astype(np.int64)
        if ftype == 0:
            cur = line
        elif ftype == 1:
            cur = np.empty_like(line)
            for j in range(bpp):
                cur[j::bpp] = np.cumsum(line[j::bpp]) & 0xFF
        elif ftype == 2:
            cur = (line + prev) & 0xFF
        elif ftype in (3, 4):
            cur = line.copy()
            lst, pv = cur.tolist(), prev.tolist()
            for i in range(stride):
                a = lst[i - bpp] if i >= bpp else 0
                c = pv[i - bpp] if i >= bpp else 0
                pred = (a + pv[i]) >> 1 if ftype == 3 else _paeth(a, pv[i], c)
                lst[i] = (lst[i] + pred) & 0xFF
            cur = np.array(lst, dtype=np.int64)
        else:
            raise UsageError(f"{path}: corrupt PNG (filter type {ftype})")
        out[y] = cur
        prev = cur
    if depth == 16:
        px = out.view(">u2").astype(np.int64).reshape(h, w, chans)
        maxval = 65535
    elif depth == 8:
        px = out.astype(np.int64).reshape(h, w, chans)
        maxval = 255
    else:
        per = 8 // depth
        shifts = np.array([8 - depth * (k + 1) for k in range(per)], dtype=np.int64)
        vals = (out.astype(np.int64)[:, :, None] >> shifts) & ((1 << depth) - 1)
        px = vals.reshape(h, -1)[:, :w].reshape(h, w, 1)
        if ctype == 0:
            px = px * (255 // ((1 << depth) - 1))
        maxval = 255
    if ctype == 3:
        if plte is None:
            raise UsageError(f"{path}: palette PNG without a PLTE chunk")
        idx = px[:, :, 0]
        if idx.max(initial=0) >= len(plte):
            raise UsageError(f"{path}: palette index out of range")
        px = plte[idx].astype(np.int64)
    elif ctype == 4:
        px = px[:, :, :1]
    elif ctype == 6:
        px = px[:, :, :3]
    return px, maxval


def load_image(path: Path):
    data = path.read_bytes()
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return decode_png(data, path)
    if data[:2] in (b"P5", b"P2"):
        return decode_pgm(data, path)
    return None


def _resize_bilinear(src: np.ndarray, dw: int, dh: int) -> np.ndarray:
    """Bilinear, half-pixel centres, float32, as beltbox's resize_bilinear."""
    sh, sw, _ = src.shape
    if sw == dw and sh == dh:
        return src
    sx = np.float32(sw) / np.float32(dw)
    sy = np.float32(sh) / np.float32(dh)
    fy = np.maximum((np.arange(dh, dtype=np.float32) + np.float32(0.5)) * sy - np.float32(0.5), np.float32(0))
    fx = np.maximum((np.arange(dw, dtype=np.float32) + np.float32(0.5)) * sx - np.float32(0.5), np.float32(0))
    y0 = np.minimum(fy.astype(np.int64), sh - 1)
    x0 = np.minimum(fx.astype(np.int64), sw - 1)
    y1 = np.minimum(y0 + 1, sh - 1)
    x1 = np.minimum(x0 + 1, sw - 1)
    wy = (fy - y0.astype(np.float32))[:, None, None]
    wx = (fx - x0.astype(np.float32))[None, :, None]
    p00, p01 = src[y0][:, x0], src[y0][:, x1]
    p10, p11 = src[y1][:, x0], src[y1][:, x1]
    top = p00 + (p01 - p00) * wx
    bottom = p10 + (p11 - p10) * wx
    return (top + (bottom - top) * wy).astype(np.float32)


def image_to_tensor(px: np.ndarray, maxval: int, spec: dict) -> np.ndarray:
    """beltbox's from_image: colour, fit (stretch/letterbox), normalise, layout, quantise."""
    pre = spec["preprocess"]
    h, w, c = spec["hwc"]
    img = px.astype(np.float32)
    have = img.shape[2]
    if pre["color"] == "gray" and have == 3:
        img = (
            np.float32(0.299) * img[:, :, 0] + np.float32(0.587) * img[:, :, 1] + np.float32(0.114) * img[:, :, 2]
        )[:, :, None].astype(np.float32)
    elif pre["color"] != "gray" and have == 1:
        img = np.repeat(img, 3, axis=2)
    mv = np.float32(maxval)
    sh, sw = img.shape[:2]
    if pre["resize_mode"] == "stretch":
        fitted = _resize_bilinear(img, w, h)
    else:
        scale = min(w / sw, h / sh)
        nw = min(max(int(math.floor(sw * scale + 0.5)), 1), w)
        nh = min(max(int(math.floor(sh * scale + 0.5)), 1), h)
        inner = _resize_bilinear(img, nw, nh)
        pad = np.float32(pre["pad"]) / np.float32(255.0) * mv
        fitted = np.full((h, w, c), pad, dtype=np.float32)
        if pre.get("letterbox_anchor", "center") == "top-left":
            top, left = 0, 0
        else:
            top, left = (h - nh) // 2, (w - nw) // 2
        fitted[top : top + nh, left : left + nw] = inner
    if pre["color"] == "bgr":
        fitted = fitted[:, :, ::-1]
    mean = np.array(pre["mean"], dtype=np.float32)
    std = np.array(pre["std"], dtype=np.float32)
    norm = ((fitted / mv * np.float32(pre["scale"]) - mean) / std).astype(np.float32)
    if spec["layout"] == "nchw":
        norm = norm.transpose(2, 0, 1)
    x = np.ascontiguousarray(norm.reshape(spec["shape"]))
    if spec["dtype"] != "float32":
        x = quantise(x, spec["dtype"], spec["quant"])
    return x


def quantise(x: np.ndarray, dtype: str, quant) -> np.ndarray:
    """q = clamp(round_half_even(x / scale) + zero_point), in float32 as beltbox does."""
    scale, zp = quant if quant is not None else (1.0, 0)
    lo, hi = (-128, 127) if dtype == "int8" else (0, 255)
    q = np.rint(x.astype(np.float32) / np.float32(scale)) + np.float32(zp)
    return np.clip(q, lo, hi).astype(np.int8 if dtype == "int8" else np.uint8)


# ---------------------------------------------------------------------------------------------
# Model inspection
# ---------------------------------------------------------------------------------------------
class InputInfo:
    """One model input: name, dims (None for a symbolic dim; None = rank unknown), dtype and
    quantisation (integer inputs)."""

    def __init__(self, name):
        self.name = name
        self.dims = None  # list of int or None (symbolic); None = rank unknown
        self.dtype = None  # numpy dtype
        self.quant = None  # (scale, zero_point) or None
        self.quant_guessed = False
        self.dynamic = False  # TFLite: the signature has dynamic dims


class ModelInfo:
    """format, precision_detected, inputs (graph / interpreter order), int8 graph facts
    (output steps, output quantisation)."""

    def __init__(self):
        self.format = None
        self.detected = None  # "fp32" | "int8-qdq" | "int8-qoperator" | "int8-tflite"
        self.inputs = []  # [InputInfo], ONNX graph order / TFLite interpreter order
        self.output_names = []
        self.output_quant = {}  # name -> (scale, zp) for integer outputs
        self.output_steps = {}  # name -> float step for dequantised float outputs
        self.onnx_model = None


def _onnx_consts(m):
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    return consts


def _scalar(consts, name, default=None):
    if name == "" or name is None:
        return default
    v = consts.get(name)
    if v is None or v.size != 1:
        return None
    return v.reshape(()).item()


def inspect_onnx(path: Path) -> ModelInfo:
    try:
        import onnx
        from onnx import helper
    except ImportError:
        raise PackError("the `onnx` Python package is missing (use .cache/ort-venv/bin/python or pip install onnx onnxruntime)")
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, OSError, ...
        raise UsageError(f"{path}: not a readable ONNX model ({one_line(e)})")
    for init in m.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise PackError(
                f"{path}: weights are stored as external data (`{init.name}`); a package holds one model file. "
                "Re-save it inline: onnx.save(onnx.load(path), out, save_as_external_data=False)"
            )
    info = ModelInfo()
    info.format = "onnx"
    info.onnx_model = m
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    if not inputs:
        raise PackError(f"{path}: the model has no inputs (every graph input is an initializer)")
    if len(inputs) > MAX_INPUTS:
        raise PackError(f"{path}: the model has {len(inputs)} inputs; beltbox runs models with at most {MAX_INPUTS}")
    for inp in inputs:
        if not inp.type.HasField("tensor_type"):
            raise PackError(f"{path}: input `{inp.name}` is not a tensor")
        ii = InputInfo(inp.name)
        tt = inp.type.tensor_type
        ii.dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else None
        if tt.HasField("shape"):
            ii.dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
        info.inputs.append(ii)
    info.output_names = [o.name for o in m.graph.output]

    ops = {n.op_type for n in m.graph.node}
    if ops & QOPERATOR_OPS:
        info.detected = "int8-qoperator"
    elif ops & {"DequantizeLinear", "QuantizeLinear"}:
        info.detected = "int8-qdq"
    else:
        info.detected = "fp32"

    consts = _onnx_consts(m)
    producer = {o: n for n in m.graph.node for o in n.output}
    for out in m.graph.output:
        t, step, quant = out.name, None, None
        while t in producer:
            n = producer[t]
            if n.op_type == "DequantizeLinear":
                s = _scalar(consts, n.input[1])
                step = float(np.float32(s)) if s is not None else None
                break
            if n.op_type in QOUT_PARAMS:
                si, zi = QOUT_PARAMS[n.op_type]
                if len(n.input) > si:
                    s = _scalar(consts, n.input[si])
                    z = _scalar(consts, n.input[zi] if len(n.input) > zi else "", 0)
                    if s is not None and z is not None:
                        quant = (float(np.float32(s)), int(z))
                break
            if n.op_type in PASSTHROUGH:
                t = n.input[0]
                continue
            break
        info.output_steps[out.name] = step
        if quant is not None:
            info.output_quant[out.name] = quant
    for ii in info.inputs:
        if ii.dtype is None or ii.dtype not in (np.dtype(np.int8), np.dtype(np.uint8)):
            continue
        for n in m.graph.node:
            if n.op_type == "DequantizeLinear" and n.input[0] == ii.name:
                sc = _scalar(consts, n.input[1])
                z = _scalar(consts, n.input[2] if len(n.input) > 2 else "", 0)
                if sc is not None and z is not None:
                    ii.quant = (float(np.float32(sc)), int(z))
                break
        if ii.quant is None:
            ii.quant, ii.quant_guessed = (1.0, 0), True
    return info


def tflite_interpreter(path: Path, mode: str):
    from ai_edge_litert import interpreter as litert

    it = litert.Interpreter(
        model_path=str(path), num_threads=1, experimental_op_resolver_type=getattr(litert.OpResolverType, mode)
    )
    it.allocate_tensors()
    return it


def _tflite_quant(d):
    scale, zp = d.get("quantization", (0.0, 0))
    qp = d.get("quantization_parameters") or {}
    scales = qp.get("scales")
    if scales is not None and len(scales) > 1:
        return "per-channel"
    if not scale:
        return None
    return (float(np.float32(scale)), int(zp))


def inspect_tflite(path: Path) -> ModelInfo:
    try:
        from ai_edge_litert import interpreter as _  # noqa: F401
    except ImportError:
        raise PackError("the `ai-edge-litert` Python package is missing (use .cache/ort-venv/bin/python or pip install ai-edge-litert)")
    try:
        it = tflite_interpreter(path, "BUILTIN_REF")
    except Exception as e:
        raise UsageError(f"{path}: the LiteRT interpreter cannot load it ({one_line(e)})")
    info = ModelInfo()
    info.format = "tflite"
    ins = it.get_input_details()
    if not ins:
        raise PackError(f"{path}: the model has no inputs")
    if len(ins) > MAX_INPUTS:
        raise PackError(f"{path}: the model has {len(ins)} inputs; beltbox runs models with at most {MAX_INPUTS}")
    for d in ins:
        ii = InputInfo(d["name"])
        ii.dims = [int(v) for v in d["shape"]]
        sig = d.get("shape_signature")
        ii.dynamic = sig is not None and any(int(v) < 0 for v in sig)
        ii.dtype = np.dtype(d["dtype"])
        q = _tflite_quant(d)
        if q == "per-channel":
            raise PackError(f"{path}: input `{d['name']}` has per-channel quantisation; beltbox needs one scale")
        if ii.dtype in (np.dtype(np.int8), np.dtype(np.uint8)):
            ii.quant = q if q is not None else (1.0, 0)
            ii.quant_guessed = q is None
        info.inputs.append(ii)
    if len({ii.name for ii in info.inputs}) != len(info.inputs):
        raise PackError(f"{path}: two inputs share a name ({', '.join(ii.name for ii in info.inputs)}); the manifest names each input")
    outs = it.get_output_details()
    info.output_names = [o["name"] for o in outs]
    for o in outs:
        q = _tflite_quant(o)
        if q == "per-channel":
            raise PackError(f"{path}: output `{o['name']}` has per-channel quantisation; beltbox needs one scale")
        if np.dtype(o["dtype"]) in (np.dtype(np.int8), np.dtype(np.uint8)):
            info.output_quant[o["name"]] = q if q is not None else (1.0, 0)
        info.output_steps[o["name"]] = None
    quantised = any(
        np.dtype(t["dtype"]) in (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16))
        and t.get("quantization", (0.0, 0))[0]
        for t in it.get_tensor_details()
    )
    info.detected = "int8-tflite" if quantised else "fp32"
    try:  # activation estimate: the 4 largest op outputs (bytes)
        td = {t["index"]: t for t in it.get_tensor_details()}
        act = {int(o) for op in it._get_ops_details() for o in op["outputs"]} | {int(d["index"]) for d in ins}
        sizes = sorted((int(np.prod(td[i]["shape"])) * np.dtype(td[i]["dtype"]).itemsize for i in act if i in td), reverse=True)
        info.act_bytes = sum(sizes[:4])
    except Exception:
        info.act_bytes = 0
    return info


def onnx_activation_bytes(m, shapes: dict) -> int:
    """Sum of the 4 largest activation tensors at the fixed input shapes (ONNX shape inference);
    `shapes` maps each input name to its concrete shape."""
    try:
        import onnx
        from onnx import helper

        m2 = onnx.ModelProto()
        m2.CopyFrom(m)
        for i in m2.graph.input:
            if i.name in shapes:
                dims = i.type.tensor_type.shape.dim
                while len(dims):
                    dims.pop()
                for v in shapes[i.name]:
                    dims.add().dim_value = int(v)
        m2 = onnx.shape_inference.infer_shapes(m2)
        inits = {i.name for i in m2.graph.initializer}
        sizes = []
        for vi in list(m2.graph.value_info) + list(m2.graph.input) + list(m2.graph.output):
            if vi.name in inits:
                continue
            tt = vi.type.tensor_type
            dims = [d.dim_value for d in tt.shape.dim]
            if dims and all(d > 0 for d in dims) and tt.elem_type:
                item = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize
                sizes.append(int(np.prod(dims)) * item)
        return sum(sorted(sizes, reverse=True)[:4])
    except Exception:
        return 0


def ram_budget_mib(model_bytes: int, act_bytes: int) -> int:
    """2 x (model file + 4 largest activations), in 64 MiB steps, at least 128 MiB."""
    mib = 2.0 * (model_bytes + act_bytes) / (1 << 20)
    return max(128, int(math.ceil(mib / 64.0)) * 64)


# ---------------------------------------------------------------------------------------------
# Running the references
# ---------------------------------------------------------------------------------------------
def ort_session(model_path: Path, level: str, config):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_LEVELS[level])
    for k, v in config:
        so.add_session_config_entry(k, v)
    return ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])


def ort_mode_text(level: str, config) -> str:
    s = f"GraphOptimizationLevel.{ORT_LEVELS[level]}"
    for k, v in config:
        s += f', session config "{k}" = "{v}"'
    return s


def run_onnx(model_path: Path, modes, input_names, samples):
    """{label: [[output arrays] per sample]} for every mode (first = golden). Each sample is one
    tensor per input, in `input_names` order; every input is fed by name."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise PackError("the `onnxruntime` Python package is missing (use .cache/ort-venv/bin/python)")
    results = {}
    for label, level, config in modes:
        sess = None
        try:
            sess = ort_session(model_path, level, config)
            results[label] = [[np.asarray(o) for o in sess.run(None, dict(zip(input_names, xs)))] for xs in samples]
        except Exception as e:
            raise PackError(f"onnxruntime ({label}) failed on the model: {one_line(e)}")
        finally:
            sess = None
        say(f"  ran {label}: {len(samples)} sample(s)")
    return results


def run_tflite(model_path: Path, modes, samples):
    """As run_onnx; each sample holds one tensor per input in the interpreter's input order."""
    results = {}
    for mode in modes:
        try:
            it = tflite_interpreter(model_path, mode)
            ind, outd = it.get_input_details(), it.get_output_details()
            res = []
            for xs in samples:
                for d, x in zip(ind, xs):
                    it.set_tensor(d["index"], x)
                it.invoke()
                res.append([it.get_tensor(o["index"]).copy() for o in outd])
            results[mode] = res
        except Exception as e:
            raise PackError(f"the LiteRT interpreter ({mode}) failed on the model: {one_line(e)}")
        say(f"  ran {mode}: {len(samples)} sample(s)")
    return results


# ---------------------------------------------------------------------------------------------
# Arguments -> input spec and sample tensors
# ---------------------------------------------------------------------------------------------
def names_text(names) -> str:
    return ", ".join(f"`{n}`" for n in names)


def match_name(text: str, names):
    """(name, rest) when `text` is `NAME=rest` for one of the model's input names (the longest
    such name: names may hold `=` or `/`), else None."""
    hits = [n for n in names if text.startswith(n + "=")]
    if not hits:
        return None
    n = max(hits, key=len)
    return n, text[len(n) + 1 :]


def sample_form(names) -> str:
    return "--sample " + ",".join(f"{n}=FILE" for n in names)


def parse_sample_arg(text: str, names) -> dict:
    """One --sample value -> {input name: file}. One input: `FILE` (or `NAME=FILE`). Several:
    `NAME=FILE,NAME=FILE,...`, every input once, in any order; a comma followed by text without
    `=` continues the previous file name."""
    if len(names) == 1:
        if Path(text).is_file():  # an existing file wins, even if its name holds `=`
            return {names[0]: text}
        m = match_name(text, names)
        return {names[0]: m[1] if m else text}
    pairs = []
    for piece in text.split(","):
        m = match_name(piece, names)
        if m is not None:
            pairs.append([m[0], m[1]])
        elif "=" in piece:
            raise UsageError(
                f"--sample `{text}`: `{piece.split('=', 1)[0]}` is not an input of the model (its inputs: {names_text(names)})"
            )
        elif pairs:
            pairs[-1][1] += "," + piece
        else:
            raise UsageError(
                f"--sample `{text}`: the model has {len(names)} inputs ({names_text(names)}); "
                f"give each sample as {sample_form(names)}"
            )
    out = {}
    for n, f in pairs:
        if n in out:
            raise UsageError(f"--sample `{text}`: input `{n}` is given twice")
        if f == "":
            raise UsageError(f"--sample `{text}`: no file after `{n}=`")
        out[n] = f
    missing = [n for n in names if n not in out]
    if missing:
        raise UsageError(
            f"--sample `{text}`: no file for input {names_text(missing)} (every input once: {sample_form(names)})"
        )
    return {n: out[n] for n in names}


def parse_shape_args(texts, names, opt: str = "--shape") -> dict:
    """--shape (or --min-shape, --max-shape, --shape-step: `opt`) values -> {input name: shape
    text}. One input: a bare `1,3,224,224` (or `NAME=...`); several: `NAME=1,3,224,224`, at most
    once per input."""
    out = {}
    for text in texts or []:
        m = match_name(text, names)
        if m is None:
            if "=" in text:
                raise UsageError(f"{opt} `{text}`: `{text.split('=', 1)[0]}` is not an input of the model (its inputs: {names_text(names)})")
            if len(names) != 1:
                raise UsageError(
                    f"{opt} `{text}`: the model has {len(names)} inputs ({names_text(names)}); "
                    f"name the one it is for: {opt} {names[0]}={text}"
                )
            m = (names[0], text)
        if m[0] in out:
            raise UsageError(f"{opt}: input `{m[0]}` is given twice")
        out[m[0]] = m[1]
    return out


def resolve_input(ii: InputInfo, shape_text, npy_shapes, image: bool, fmt: str, opt: str):
    """The concrete shape of one input: the model's static dims, symbolic ones fixed by --shape or
    by the input's (first) .npy sample. `opt` is the option as the user writes it, before the
    dims (`--shape ` or `--shape NAME=`)."""
    dims = ii.dims
    if shape_text is not None:
        given = f"{opt}{shape_text}"
        shape = parse_int_list(shape_text, opt.rstrip("= "))
        if dims is not None:
            if len(shape) != len(dims):
                raise UsageError(f"{given} has rank {len(shape)} but input `{ii.name}` has rank {len(dims)} ({fmt_dims(dims)})")
            for k, (sv, d) in enumerate(zip(shape, dims)):
                if d is not None and sv != d:
                    raise UsageError(f"{given}: dim {k} is {sv} but the model fixes it at {d} ({fmt_dims(dims)})")
        if fmt == "tflite" and shape != dims:
            raise UsageError(
                f"{given}: beltbox runs a TFLite model at its own input shape {dims} (it does not resize TFLite inputs)"
            )
        return shape
    if dims is not None and all(d is not None for d in dims):
        return list(dims)
    if not npy_shapes and image and dims is not None and dims[0] is None and all(d is not None for d in dims[1:]):
        say(f"input `{ii.name}` {fmt_dims(dims)}: batch fixed to 1")
        return [1] + list(dims[1:])
    if not npy_shapes:
        raise UsageError(
            f"input `{ii.name}` has dynamic/symbolic dims {fmt_dims(dims)}: give the shape beltbox should run at, "
            f"e.g. {opt}1,3,224,224 (or pass .npy samples of that shape)"
        )
    sh = list(npy_shapes[0])
    if dims is not None and len(sh) == len(dims) - 1 and (dims[0] in (None, 1)):
        sh = [1] + sh
    if dims is not None and len(sh) != len(dims):
        raise UsageError(f"sample shape {list(npy_shapes[0])} does not fit input `{ii.name}` {fmt_dims(dims)}")
    if dims is not None:
        for k, (a, d) in enumerate(zip(sh, dims)):
            if d is not None and a != d:
                raise UsageError(f"sample shape {list(npy_shapes[0])} does not fit input `{ii.name}` {fmt_dims(dims)} (dim {k})")
    say(f"input `{ii.name}` {fmt_dims(dims)}: dynamic dims fixed from the first sample to {sh}")
    return sh


def fmt_dims(dims) -> str:
    if dims is None:
        return "[rank unknown]"
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


MAX_ELEMENTS = 1 << 30  # per input and all inputs together, at max_shape (beltbox's manifest)
RANGE_OPTS = ("--min-shape", "--max-shape", "--shape-step")


def resolve_range(ii: InputInfo, shape: list, texts: dict, image: bool, fmt: str, one_input: bool):
    """(min_shape, max_shape, shape_step) of one input from its --min-shape/--max-shape/
    --shape-step texts (`texts`: option -> text, the ones given), checked as beltbox checks the
    manifest; (None, None, None) when none is given. `shape` is the input's concrete shape."""
    if not texts:
        return None, None, None
    given = {o: (f"{o} {t}" if one_input else f"{o} {ii.name}={t}") for o, t in texts.items()}
    opts = "/".join(o for o in RANGE_OPTS if o in texts)
    if fmt != "onnx":
        raise UsageError(f"{opts} for input `{ii.name}`: dimension ranges are for ONNX models; beltbox runs a TFLite model at its input shape {shape}")
    if image:
        raise UsageError(
            f"{opts} for input `{ii.name}`: it takes images (--image), which beltbox resizes to its shape {shape}, so it "
            "cannot take a range; drop the range options or --image for it"
        )
    if "--min-shape" not in texts and "--max-shape" not in texts:
        raise UsageError(f"{given['--shape-step']}: a step needs a range (--min-shape and --max-shape for input `{ii.name}`)")
    if ("--min-shape" in texts) != ("--max-shape" in texts):
        raise UsageError(f"{opts}: give both --min-shape and --max-shape for input `{ii.name}` (or neither)")
    lo = parse_int_list(texts["--min-shape"], "--min-shape")
    hi = parse_int_list(texts["--max-shape"], "--max-shape")
    step = parse_int_list(texts["--shape-step"], "--shape-step", "1,1,32,32") if "--shape-step" in texts else None
    for o, v in (("--min-shape", lo), ("--max-shape", hi), ("--shape-step", step)):
        if v is not None and len(v) != len(shape):
            raise UsageError(f"{given[o]} has rank {len(v)} but input `{ii.name}` has rank {len(shape)} (shape {shape})")
    dims = ii.dims
    for a in range(len(shape)):
        d = dims[a] if dims is not None and a < len(dims) else None
        if d is not None and (lo[a] != d or hi[a] != d):
            raise UsageError(
                f"{opts} for input `{ii.name}`: axis {a} is fixed at {d} by the model ({fmt_dims(dims)}), so it cannot take a "
                f"range; give {d} at axis {a} in both --min-shape and --max-shape"
            )
        if not (lo[a] <= shape[a] <= hi[a]):
            raise UsageError(
                f"input `{ii.name}` axis {a}: need 1 <= --min-shape ({lo[a]}) <= shape ({shape[a]}) <= --max-shape ({hi[a]})"
            )
        s = step[a] if step is not None else 1
        if any(v % s for v in (lo[a], shape[a], hi[a])):
            raise UsageError(
                f"input `{ii.name}` axis {a}: --min-shape ({lo[a]}), shape ({shape[a]}) and --max-shape ({hi[a]}) must be "
                f"multiples of the step ({s})"
            )
    if math.prod(hi) > MAX_ELEMENTS:
        raise UsageError(f"{given['--max-shape']}: {hi} has more than 2^30 elements (beltbox's limit for one input)")
    return lo, hi, step


def shape_range_text(shape, lo, hi, step) -> str:
    """As beltbox prints it: `[1, 3, 160..=640 (step 32), 160..=640 (step 32)]`."""
    if lo is None:
        return str(list(shape))
    parts = []
    for a in range(len(shape)):
        s = step[a] if step is not None else 1
        if lo[a] == hi[a]:
            parts.append(str(lo[a]))
        else:
            parts.append(f"{lo[a]}..={hi[a]}" + (f" (step {s})" if s != 1 else ""))
    return "[" + ", ".join(parts) + "]"


def build_input_spec(args, ii: InputInfo, shape, image: bool):
    """The manifest entry of one input; `image` says the --image options apply to it."""
    dt = ii.dtype
    if dt not in SUPPORTED_DTYPES:
        raise PackError(
            f"input `{ii.name}` is {dt}; beltbox inputs are float32, int8 or uint8"
        )
    spec = {
        "name": ii.name,
        "shape": shape,
        "dtype": SUPPORTED_DTYPES[dt],
        "quant": ii.quant if SUPPORTED_DTYPES[dt] != "float32" else None,
        "preprocess": None,
        "layout": None,
        "min_shape": None,  # with max_shape: the range of shapes a request may have (ONNX tensor inputs)
        "max_shape": None,
        "shape_step": None,
    }
    if ii.quant_guessed:
        warn(f"input `{ii.name}` is {spec['dtype']} with no quantisation found; writing scale 1, zero_point 0 (values as they are)")
    if not image:
        return spec
    c = 1 if args.image == "gray" else 3
    if len(shape) != 4 or shape[0] != 1:
        raise UsageError(f"--image needs a 4-D input with batch 1; `{ii.name}` is {shape}")
    layout = args.layout
    if layout is None:
        if shape[1] == c:
            layout = "nchw"
        elif shape[3] == c:
            layout = "nhwc"
        else:
            raise UsageError(f"--image {args.image} has {c} channel(s) but input shape {shape} has {c} at neither dim 1 (NCHW) nor dim 3 (NHWC)")
    h, w, ch = (shape[2], shape[3], shape[1]) if layout == "nchw" else (shape[1], shape[2], shape[3])
    if ch != c:
        raise UsageError(f"--image {args.image} has {c} channel(s) but input shape {shape} ({layout}) has {ch}")
    mean = parse_float_list(args.mean, "--mean") if args.mean is not None else [0.0] * c
    std = parse_float_list(args.std, "--std") if args.std is not None else [1.0] * c
    if len(mean) == 1 and c == 3:
        mean = mean * 3
    if len(std) == 1 and c == 3:
        std = std * 3
    if len(mean) != c or len(std) != c:
        raise UsageError(f"--mean/--std need {c} value(s) for --image {args.image}")
    if any(v == 0 for v in std):
        raise UsageError("--std values must be non-zero")
    scale = 1.0 if args.scale is None else args.scale
    if not math.isfinite(scale):
        raise UsageError("--scale must be finite")
    pad = args.letterbox
    if pad is not None and not (0.0 <= pad <= 255.0):
        raise UsageError("--letterbox PAD must be a pixel value in 0..255")
    spec["layout"] = layout
    spec["hwc"] = (h, w, c)
    if args.letterbox_anchor is not None and pad is None:
        raise UsageError("--letterbox-anchor needs --letterbox PAD")
    spec["preprocess"] = {
        "resize": [h, w],
        "resize_mode": "stretch" if pad is None else "letterbox",
        "letterbox_anchor": args.letterbox_anchor or "center",
        "pad": 0.0 if pad is None else float(pad),
        "color": args.image,
        "scale": f32(scale),
        "mean": [f32(v) for v in mean],
        "std": [f32(v) for v in std],
    }
    return spec


def load_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise UsageError(f"sample {path}: not a .npy file (save tensors with numpy.save)")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:
        raise UsageError(f"sample {path}: not a readable .npy file ({one_line(e)})")


def prepare_sample(path: Path, arr, img, spec: dict) -> np.ndarray:
    """The model input tensor for one sample, in the input's dtype and shape."""
    want = spec["dtype"]
    if img is not None:
        px, maxval = img
        return image_to_tensor(px, maxval, spec)
    a = arr
    if a.dtype.kind not in "fiu" or a.dtype.kind == "c":
        raise UsageError(f"sample {path}: dtype {a.dtype} is not a numeric tensor")
    shape = list(spec["shape"])
    if list(a.shape) != shape:
        if list(a.shape) == shape[1:] and shape[0] == 1:
            a = a[None]
        else:
            raise UsageError(f"sample {path}: shape {list(a.shape)} does not match the input `{spec['name']}` {shape}")
    if want == "float32":
        if a.dtype == np.float32:
            pass
        elif a.dtype in (np.float64, np.float16):
            warn(f"sample {path}: {a.dtype} cast to float32")
            a = a.astype(np.float32)
        else:
            raise UsageError(f"sample {path}: dtype {a.dtype}, but input `{spec['name']}` takes float32 (use x.astype(np.float32))")
        if not np.isfinite(a).all():
            raise UsageError(f"sample {path}: contains NaN or infinite values")
    else:
        if a.dtype == np.dtype(want):
            pass
        elif a.dtype == np.float32:
            a = quantise(a, want, spec["quant"])
            say(f"  sample {path.name}: float32 quantised to {want} with scale {spec['quant'][0]:g}, zero_point {spec['quant'][1]}")
        else:
            raise UsageError(f"sample {path}: dtype {a.dtype}, but input `{spec['name']}` takes {want} (or float32, which is quantised)")
    return np.ascontiguousarray(a)


# ---------------------------------------------------------------------------------------------
# Tolerances
# ---------------------------------------------------------------------------------------------
def tolerances(results: dict, names, quants: dict, steps: dict):
    """Per output: atol = nice_ceil(max(SAFETY * max(spread, step), floor)), where spread is the
    largest |a - b| between any two acceptable modes over all samples (dequantised values), step
    one output quantisation step (integer outputs, or the scale of the DequantizeLinear a float
    output of an INT8 graph comes from), floor (float outputs only) max(1e-4, 1e-5 * peak)."""
    modes = list(results)
    out = {}
    for k, name in enumerate(names):
        deq = {m: [dequantise(s[k], quants.get(name)) for s in results[m]] for m in modes}
        spread = 0.0
        for i, a in enumerate(modes):
            for b in modes[i + 1 :]:
                for sa, sb in zip(deq[a], deq[b]):
                    if sa.size:
                        spread = max(spread, float(np.abs(sa - sb).max()))
        q = quants.get(name)
        step = q[0] if q is not None else steps.get(name)
        atol = SAFETY * max(spread, step or 0.0)
        peak = max(float(np.abs(g).max()) if g.size else 0.0 for g in deq[modes[0]])
        if q is None:
            atol = max(atol, FLOAT_ATOL_FLOOR, FLOAT_PEAK_FLOOR * peak)
        out[name] = {"atol": nice_ceil(atol), "spread": spread, "step": step, "peak": peak}
    return out


# ---------------------------------------------------------------------------------------------
# Detection (--task detection): the [detection] section, checked against the reference outputs
# the way beltbox reads them (crates/core/src/manifest.rs check_detection, docs/model-package.md
# "Detection"), so a package pack writes is one beltbox can decode.
# ---------------------------------------------------------------------------------------------
HEAD_OUTPUTS = {"yolo": 1, "yolo-objectness": 1, "boxes-scores": 2}  # picodet: 2 per stride
DEFAULT_SCORE_THRESHOLD = 0.25
DEFAULT_IOU_THRESHOLD = 0.45
DEFAULT_MAX_DETECTIONS = 100
MAX_DETECTIONS_LIMIT = 10000


def dims2(shape):
    """`[1, a, b]` or `[a, b]` -> (a, b), as beltbox's detection heads read outputs."""
    if len(shape) == 3 and shape[0] == 1:
        return shape[1], shape[2]
    if len(shape) == 2:
        return shape[0], shape[1]
    return None


def detection_geometry(specs, args, fmt):
    """The input whose pixels boxes are measured in, as beltbox picks it (the first input with
    preprocess, else the first input), and its (height, width). A tensor input must be 4-D; its
    layout comes from --layout or is guessed from where a small channel dim is, and is written.
    For ONNX (inputs matched by name) a 4-D input is moved first when the first is not."""
    img = [s for s in specs if s["preprocess"] is not None]
    if img:
        s = img[0]
        return specs, s, tuple(s["preprocess"]["resize"])
    if len(specs[0]["shape"]) != 4:
        four = [s for s in specs if len(s["shape"]) == 4]
        if fmt != "onnx" or not four:
            raise UsageError(
                f"--task detection: boxes are measured in the pixels of the image input (the first input with --image, else "
                f"the first input), but `{specs[0]['name']}` is {specs[0]['shape']}, not 4-D"
                + (": give --image ... --image-input NAME for the image input" if len(specs) > 1 else "")
            )
        specs = [four[0]] + [s for s in specs if s is not four[0]]
        say(f"  detection: input `{four[0]['name']}` listed first in the manifest (its pixels are the boxes' pixels; ONNX inputs are matched by name)")
    s = specs[0]
    shape = s["shape"]
    layout = args.layout
    if layout is None:
        if shape[3] <= 4 < shape[1]:
            layout = "nhwc"
        else:
            layout = "nchw"
        say(f"  detection: input `{s['name']}` {shape} read as {layout} (override with --layout)")
    s["layout"] = layout
    hw = (shape[2], shape[3]) if layout == "nchw" else (shape[1], shape[2])
    return specs, s, hw


def yolo_table(a: np.ndarray, width: int, objectness: bool) -> np.ndarray:
    """A yolo output as rows of candidates [N, width], with beltbox's orientation rule: the axis
    equal to 4+C (5+C) is the values axis; when both are, channels first for yolo, rows for
    yolo-objectness."""
    r, c = dims2(list(a.shape))
    a2 = a.reshape(r, c)
    first = (r == width) and (c != width or not objectness)
    return a2.T if first else a2


def check_detection_args(args, output_names):
    """The detection options that need no output values, checked before the references run:
    the head's outputs (names, count, order rules), strides, thresholds. Returns (the outputs the
    head reads, strides or None)."""
    head = args.detection_head
    if args.detection_outputs is not None:
        names = [n.strip() for n in args.detection_outputs.split(",") if n.strip() != ""]
        if not names:
            raise UsageError("--detection-outputs: give output names, comma-separated")
        for n in names:
            if n not in output_names:
                raise UsageError(f"--detection-outputs: `{n}` is not an output of the model (its outputs: {names_text(output_names)})")
        dup = [n for i, n in enumerate(names) if n in names[:i]]
        if dup:
            raise UsageError(f"--detection-outputs: `{dup[0]}` is listed twice")
    else:
        names = list(output_names)
    chosen = "--detection-outputs" if args.detection_outputs is not None else f"the model's outputs (default: all {len(names)})"
    strides = None
    if args.strides is not None:
        if head != "picodet":
            raise UsageError("--strides: only the picodet head has strides")
        strides = parse_int_list(args.strides, "--strides", "8,16,32,64")
    want = HEAD_OUTPUTS.get(head)
    if want is not None and len(names) != want:
        raise UsageError(
            f"--detection-head {head} reads {want} output(s); {chosen} list {len(names)} ({names_text(names)})"
            + ("" if args.detection_outputs is not None else ": pick them with --detection-outputs NAME[,NAME]")
        )
    if head == "picodet":
        if len(names) < 2 or len(names) % 2:
            raise UsageError(
                f"--detection-head picodet reads a scores and a distances output per stride (all scores outputs, then all "
                f"distances outputs); {chosen} list {len(names)} ({names_text(names)})"
            )
        if strides is not None and len(names) != 2 * len(strides):
            raise UsageError(f"--strides {args.strides}: {len(strides)} strides need {2 * len(strides)} outputs, {chosen} list {len(names)}")
        if args.box_format is not None or args.normalized:
            raise UsageError("--box-format/--normalized do not apply to the picodet head (its distances decode to corners in tensor pixels)")
    if args.classes is not None and args.classes < 1:
        raise UsageError("--classes must be at least 1")
    for opt, v in (("--score-threshold", args.score_threshold), ("--iou-threshold", args.iou_threshold)):
        if v is not None and not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise UsageError(f"{opt} {v} must be within 0..1")
    if args.max_detections is not None and not (1 <= args.max_detections <= MAX_DETECTIONS_LIMIT):
        raise UsageError(f"--max-detections {args.max_detections} must be within 1..{MAX_DETECTIONS_LIMIT}")
    return names, strides


def plan_detection(args, names, strides, outputs, golden, quants, hw):
    """The [detection] table for --task detection, from the reference outputs' shapes and values
    (classes, strides and score activation inferred unless given); marks the detection outputs'
    task."""
    head = args.detection_head
    by_name = {o["name"]: o for o in outputs}
    all_names = [o["name"] for o in outputs]

    def deq(k_name, sample):
        return dequantise(golden[sample][all_names.index(k_name)], quants.get(k_name))

    shapes = {n: by_name[n]["shape"] for n in names}
    classes = args.classes
    scores_of = None  # sample -> (per-candidate best class score array or all pair scores, objectness or None)
    if head in ("yolo", "yolo-objectness"):
        objectness = head == "yolo-objectness"
        lead = 5 if objectness else 4
        n0 = names[0]
        d = dims2(shapes[n0])
        if d is None:
            raise UsageError(f"output `{n0}` {shapes[n0]}: the {head} head reads [1, {lead}+C, N] or [1, N, {lead}+C]")
        if classes is None:
            small = min(d)
            if small <= lead:
                raise UsageError(f"output `{n0}` {shapes[n0]}: no axis fits {lead}+C values per candidate for the {head} head")
            classes = small - lead
            say(f"  detection: classes {classes} (inferred from `{n0}` {shapes[n0]}: the smaller axis is {lead}+C; override with --classes)")
        width = classes + lead
        if width not in d:
            raise UsageError(
                f"output `{n0}` {shapes[n0]}: the {head} head with {classes} classes needs [1, {width}, N] or [1, N, {width}] "
                f"({lead}+{classes}={width})"
            )

        def scores_of(i):
            t = yolo_table(deq(n0, i), width, objectness)
            return t[:, lead:], (t[:, 4] if objectness else None)

    elif head == "boxes-scores":
        nb, ns = names
        db, ds = dims2(shapes[nb]), dims2(shapes[ns])
        if db is None or db[1] != 4:
            raise UsageError(f"output `{nb}` {shapes[nb]}: the boxes-scores head reads boxes [1, N, 4] first, then scores (--detection-outputs BOXES,SCORES)")
        n = db[0]
        if ds is None or n not in ds:
            raise UsageError(f"output `{ns}` {shapes[ns]}: the boxes-scores head needs scores [1, {n}, C] or [1, C, {n}] for {n} boxes")
        c_inf = ds[1] if ds[0] == n else ds[0]
        if classes is None:
            classes = c_inf
            say(f"  detection: classes {classes} (inferred from scores `{ns}` {shapes[ns]}; override with --classes)")
        elif ds not in ((n, classes), (classes, n)):
            raise UsageError(f"output `{ns}` {shapes[ns]}: with {classes} classes the scores must be [1, {n}, {classes}] or [1, {classes}, {n}]")
        rows_first = ds == (n, classes)

        def scores_of(i):
            a = deq(ns, i).reshape(ds)
            return (a if rows_first else a.T), None

    else:  # picodet
        k = len(names) // 2
        sc_names, di_names = names[:k], names[k:]
        h, w = hw
        for nm in names:
            if dims2(shapes[nm]) is None:
                raise UsageError(f"output `{nm}` {shapes[nm]}: the picodet head reads [1, H*W, C] scores and [1, H*W, 4*(reg_max+1)] distances")
        cells = [dims2(shapes[nm])[0] for nm in sc_names]
        if strides is None:
            # Inferred only when each scores output's cell count fits exactly one power-of-two
            # stride and they increase; otherwise the user says.
            fit = []
            for c in cells:
                hits = [sv for sv in (2, 4, 8, 16, 32, 64, 128, 256) if -(-h // sv) * -(-w // sv) == c]
                fit.append(hits[0] if len(hits) == 1 else None)
            if not all(fit) or any(b <= a for a, b in zip(fit, fit[1:])):
                raise UsageError(
                    f"--detection-head picodet needs --strides, one per scores output (e.g. 8,16,32,64): the scores outputs' "
                    f"cell counts {cells} on the {h} x {w} input do not determine them"
                )
            strides = fit
            say(f"  detection: strides {','.join(map(str, strides))} (inferred from the scores outputs' cell counts {cells} on "
                f"{h} x {w}; override with --strides)")
        if classes is None:
            classes = dims2(shapes[sc_names[0]])[1]
            say(f"  detection: classes {classes} (inferred from scores `{sc_names[0]}` {shapes[sc_names[0]]}; override with --classes)")
        for sv, sn, dn in zip(strides, sc_names, di_names):
            c = -(-h // sv) * -(-w // sv)
            grid = f"ceil({h}/{sv}) x ceil({w}/{sv}) = {c} cells for stride {sv}"
            if dims2(shapes[sn]) != (c, classes):
                raise UsageError(f"output `{sn}` {shapes[sn]}: picodet scores for stride {sv} must be [1, {c}, {classes}] ({grid}; scores outputs come first)")
            dd = dims2(shapes[dn])
            if dd is None or dd[0] != c or dd[1] == 0 or dd[1] % 4:
                raise UsageError(f"output `{dn}` {shapes[dn]}: picodet distances for stride {sv} must be [1, {c}, 4*(reg_max+1)] ({grid})")

        def scores_of(i):
            return np.concatenate([deq(nm, i).reshape(-1, classes) for nm in sc_names]), None

    thr = DEFAULT_SCORE_THRESHOLD if args.score_threshold is None else args.score_threshold

    per_sample = [scores_of(i) for i in range(len(golden))]
    activation = args.score_activation
    if activation is None:
        steps = [quants[n][0] for n in names if n in quants]
        slack = max([1e-6] + steps)
        vals = [v for sc, obj in per_sample for v in ((sc, obj) if obj is not None else (sc,))]
        probs = all(v.size == 0 or (v.min() >= -slack and v.max() <= 1 + slack) for v in vals)
        activation = "probabilities" if probs else "logits"
        say(f"  detection: score_activation {activation} (detected: the scores {'lie' if probs else 'do not lie'} in [0, 1]; override with --score-activation)")

    def act(v):
        v = v.astype(np.float32)
        if activation == "probabilities":
            return v
        with np.errstate(over="ignore"):
            return (np.float32(1) / (np.float32(1) + np.exp(-v))).astype(np.float32)

    for i, (sc, obj) in enumerate(per_sample):
        if head in ("yolo", "yolo-objectness"):
            best = act(sc.max(axis=1)) if sc.size else sc
            if obj is not None:
                best = best * act(obj)
            n_cand = int((best >= np.float32(thr)).sum())
        else:
            n_cand = int((act(sc) >= np.float32(thr)).sum())
        say(f"  detection: sample {i:03d}: {n_cand} candidate(s) score >= {thr:g} before NMS")

    for o in outputs:
        if o["name"] in names:
            o["task"] = "detection"
    det = {"head": head, "outputs": names, "classes": int(classes)}
    if args.box_format is not None:
        det["box_format"] = args.box_format
    if args.normalized:
        det["normalized"] = True
    det["score_activation"] = activation
    det["score_threshold"] = float(thr)
    det["iou_threshold"] = float(DEFAULT_IOU_THRESHOLD if args.iou_threshold is None else args.iou_threshold)
    det["max_detections"] = int(DEFAULT_MAX_DETECTIONS if args.max_detections is None else args.max_detections)
    if args.class_agnostic:
        det["class_agnostic"] = True
    if strides is not None:
        det["strides"] = strides
    return det


# ---------------------------------------------------------------------------------------------
# Package writing
# ---------------------------------------------------------------------------------------------
def toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        r = repr(float(v))
        return r if any(c in r for c in ".en") else r + ".0"
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def save_npy(path: Path, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr)
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    with open(path, "wb") as f:
        np.lib.format.write_array(f, arr, version=(1, 0), allow_pickle=False)


def manifest_text(p: dict) -> str:
    L = [
        f"name = {toml_value(p['name'])}",
        f"version = {toml_value(p['version'])}",
        f"description = {toml_value(p['description'])}",
        "",
        "[model]",
        f"file = {toml_value(p['model_file'])}",
        f"format = {toml_value(p['format'])}",
        f"precision = {toml_value(p['precision'])}",
    ]
    for i in p["inputs"]:
        L += ["", "[[inputs]]", f"name = {toml_value(i['name'])}", f"shape = {toml_value(i['shape'])}"]
        for k in ("min_shape", "max_shape", "shape_step"):
            if i.get(k) is not None:
                L.append(f"{k} = {toml_value(i[k])}")
        L.append(f"dtype = {toml_value(i['dtype'])}")
        if i["layout"] is not None:
            L.append(f"layout = {toml_value(i['layout'])}")
        if i["preprocess"] is not None:
            pre = i["preprocess"]
            L += ["", "[inputs.preprocess]", f"resize = {toml_value(pre['resize'])}"]
            if pre["resize_mode"] != "stretch":
                L += [f"resize_mode = {toml_value(pre['resize_mode'])}", f"pad = {toml_value(pre['pad'])}"]
                if pre.get("letterbox_anchor", "center") != "center":
                    L.append(f"letterbox_anchor = {toml_value(pre['letterbox_anchor'])}")
            L += [
                f"color = {toml_value(pre['color'])}",
                f"scale = {toml_value(pre['scale'])}",
                f"mean = {toml_value(pre['mean'])}",
                f"std = {toml_value(pre['std'])}",
            ]
        if i["quant"] is not None:
            L += ["", "[inputs.quantization]", f"scale = {toml_value(i['quant'][0])}", f"zero_point = {toml_value(i['quant'][1])}"]
    for o in p["outputs"]:
        L += ["", "[[outputs]]", f"name = {toml_value(o['name'])}", f"shape = {toml_value(o['shape'])}", f"dtype = {toml_value(o['dtype'])}"]
        L.append(f"task = {toml_value(o['task'])}")
        if o["task"] == "classification":
            L.append(f"scores = {toml_value(o['scores'])}")
            if o.get("labels"):
                L.append(f"labels = {toml_value(o['labels'])}")
        L += [f"atol = {toml_value(o['atol'])}", "rtol = 0.0"]
        if o["quant"] is not None:
            L += ["", "[outputs.quantization]", f"scale = {toml_value(o['quant'][0])}", f"zero_point = {toml_value(o['quant'][1])}"]
    det = p.get("detection")
    if det is not None:
        L += ["", "[detection]"]
        for k in ("head", "outputs", "classes", "labels", "box_format", "normalized", "score_activation",
                  "score_threshold", "iou_threshold", "max_detections", "class_agnostic", "strides"):
            if k in det:
                L.append(f"{k} = {toml_value(det[k])}")
    L += ["", "[budgets]", f"ram_mib = {int(p['ram_mib'])}", f"p95_ms = {toml_value(float(p['p95_ms']))}"]
    L += ["", "[golden]", "atol = 0.0", "rtol = 0.0"]
    for s in p["samples"]:
        L += ["", "[[golden.samples]]", f"inputs = {toml_value(s['inputs'])}", f"outputs = {toml_value(s['outputs'])}"]
        if s.get("label") is not None:
            L.append(f"label = {int(s['label'])}")
    L += ["", "[files]"]
    for fn, h in p["files"].items():
        L.append(f"{toml_value(fn)} = {toml_value(h)}")
    return "\n".join(L) + "\n"


def golden_input_names(sample: int, n_inputs: int):
    if n_inputs == 1:
        return [f"golden/{sample:03d}.in.npy"]
    return [f"golden/{sample:03d}.in{k}.npy" for k in range(n_inputs)]


def prepare_out_dir(out: Path, force: bool) -> None:
    if out.exists() or out.is_symlink():
        if not force:
            raise UsageError(f"{out} already exists (use --force to replace it)")
        if not out.is_dir() or out.is_symlink():
            raise UsageError(f"{out} exists and is not a directory; not replacing it")
        if any(out.iterdir()) and not (out / "manifest.toml").is_file():
            raise UsageError(f"{out} is a non-empty directory without manifest.toml; --force only replaces a package directory")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{parent} does not exist (create it first)")


def write_package(out: Path, p: dict, model_src: Path, labels, inputs, outputs) -> Path:
    """Writes into a temporary sibling directory, then swaps it into place. `inputs` holds one
    list of tensors per sample (one per manifest input); a single input's file is NNN.in.npy,
    several inputs' NNN.in0.npy, NNN.in1.npy, ... in manifest order."""
    parent = out.parent if str(out.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.pack-", dir=parent))
    try:
        (tmp / "golden").mkdir()
        shutil.copyfile(model_src, tmp / p["model_file"])
        files = [p["model_file"]]
        if labels is not None:
            (tmp / "labels.txt").write_text("".join(l + "\n" for l in labels), encoding="utf-8")
            files.append("labels.txt")
        for s, (xs, outs) in enumerate(zip(inputs, outputs)):
            ifns = golden_input_names(s, len(xs))
            for ifn, x in zip(ifns, xs):
                save_npy(tmp / ifn, x)
            ofns = []
            for k, a in enumerate(outs):
                ofn = f"golden/{s:03d}.out{k}.npy"
                save_npy(tmp / ofn, a)
                ofns.append(ofn)
            files += ifns + ofns
            p["samples"][s]["inputs"] = ifns
            p["samples"][s]["outputs"] = ofns
        p["files"] = {fn: sha256_file(tmp / fn) for fn in files}
        text = manifest_text(p)
        try:
            import tomllib

            tomllib.loads(text)
        except ImportError:  # Python < 3.11: nothing to check with
            pass
        (tmp / "manifest.toml").write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            os.rename(out, old / "pkg")
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "manifest.toml"


# ---------------------------------------------------------------------------------------------
# beltbox (optional --verify)
# ---------------------------------------------------------------------------------------------
def find_beltbox(explicit):
    if explicit:
        return explicit
    if os.environ.get("BELTBOX"):
        return os.environ["BELTBOX"]
    found = shutil.which("beltbox")
    if found:
        return found
    repo = Path(__file__).resolve().parents[1]
    for cand in (repo / "target/release/beltbox", repo / "target/debug/beltbox"):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def infer_input_args(out: Path, names):
    """`beltbox infer` --input arguments for golden sample 000 (NAME=FILE with several inputs)."""
    files = golden_input_names(0, len(names))
    if len(names) == 1:
        return ["--input", str(out / files[0])]
    args = []
    for n, f in zip(names, files):
        args += ["--input", f"{n}={out / f}"]
    return args


def verify(beltbox: str, out: Path, names) -> bool:
    cmd = [beltbox, "infer", "--model", str(out)] + infer_input_args(out, names) + ["--json"]
    say("verifying: " + " ".join(cmd))
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        warn(f"could not run beltbox: {one_line(e)}")
        return False
    lines = []
    for l in r.stderr.splitlines():
        if "golden self-check" in l and "loaded model" in l:
            lines.append(l[l.index("golden self-check") :])
        elif "error" in l.lower():
            lines.append(l)
    for l in lines[-3:]:
        print("  " + l.strip())
    if r.returncode == 0:
        say("beltbox loaded the package and passed its golden self-check")
        return True
    say(f"beltbox refused the package (exit {r.returncode})")
    if not lines:
        print(r.stderr.strip()[-2000:])
    return False


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="tools/pack.py",
        description="Package an ONNX or TFLite model with sample inputs as a beltbox model package "
        "(manifest format 2, docs/model-package.md): goldens from ONNX Runtime in the documented "
        "reference mode or from the LiteRT reference interpreter, a tolerance per output from the "
        "measured spread of the reference's own modes, the sha256 of every file.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("model", type=Path, help="the model: MODEL.onnx or MODEL.tflite")
    ap.add_argument("--sample", action="append", required=True, metavar="FILE|NAME=FILE,...",
                    help="one golden sample (.npy tensor; PNG/PGM with --image); repeat for more, in order. A model with "
                    "several inputs takes each sample as NAME=FILE,NAME=FILE,... naming every input once")
    ap.add_argument("--out", type=Path, required=True, metavar="DIR", help="package directory to write (must not exist unless --force)")
    ap.add_argument("--force", action="store_true", help="replace DIR if it is an existing package (or empty)")
    ap.add_argument("--name", help="package name, [a-z0-9-], at most 64 chars (default: from DIR's name)")
    ap.add_argument("--version", default="1.0.0", help="package version MAJOR.MINOR.PATCH (default 1.0.0)")
    ap.add_argument("--description", help="one-line description (the reference mode and model sha256 are appended)")
    ap.add_argument("--precision", choices=["fp32", "int8", "int8-qdq", "int8-qoperator", "int8-tflite"],
                    help="default: detected (int8 if the ONNX graph has QuantizeLinear/DequantizeLinear/QLinear*/"
                    "integer ops, or the TFLite model has quantised tensors); selects the reference mode")
    ap.add_argument("--task", choices=["raw", "classification", "detection"],
                    help="raw (default), classification (outputs[0]; the default with --labels) or detection (the "
                    "--detection-outputs, decoded by --detection-head). Other outputs are raw")
    ap.add_argument("--labels", type=Path, metavar="FILE",
                    help="labels, one per line, line N = class N (classification: outputs[0]'s size; detection: --classes lines)")
    ap.add_argument("--scores", choices=["logits", "probabilities"],
                    help="classification scores (default: probabilities if every sample's outputs[0] is in [0,1] and sums to 1)")
    ap.add_argument("--input-name", help="check that the model has an input of this name")
    ap.add_argument("--shape", action="append", metavar="[NAME=]DIMS",
                    help="the concrete input shape, e.g. 1,3,224,224 (fixes dynamic/symbolic dims; default: the model's, else the "
                    "first .npy sample's). Several inputs: --shape NAME=1,3,224,224, once per input that needs it")
    ap.add_argument("--min-shape", action="append", metavar="[NAME=]DIMS",
                    help="ONNX tensor inputs: the smallest shape a request may have (with --max-shape; goldens stay at --shape)")
    ap.add_argument("--max-shape", action="append", metavar="[NAME=]DIMS",
                    help="the largest shape a request may have (with --min-shape); the RAM plan and default --ram-mib are sized for it")
    ap.add_argument("--shape-step", action="append", metavar="[NAME=]DIMS",
                    help="per dim, what a request's size must be a multiple of, e.g. 1,1,32,32 (default 1; needs a range)")
    g = ap.add_argument_group("image inputs (optional: writes [inputs.preprocess] so beltbox also takes PNG/PGM images)")
    g.add_argument("--image", choices=["gray", "rgb", "bgr"], help="colour order of the tensor's channels")
    g.add_argument("--image-input", metavar="NAME", help="the input the image options are for (required with --image when the model has several inputs)")
    g.add_argument("--scale", type=float, help="x = (pixel / maxval * scale - mean[c]) / std[c]; default 1")
    g.add_argument("--mean", help="per channel, comma-separated (default 0)")
    g.add_argument("--std", help="per channel, comma-separated (default 1)")
    g.add_argument("--layout", choices=["nchw", "nhwc"],
                   help="default: from the shape's channel dim. Also with --task detection and no --image: the detector's input layout")
    g.add_argument("--letterbox", type=float, metavar="PAD", help="keep the aspect ratio, pad with PAD (0-255); default: stretch")
    g.add_argument("--letterbox-anchor", choices=["center", "top-left"],
                   help="where the letterboxed image sits: centred (default) or top-left, padding right and below (nudenet)")
    d = ap.add_argument_group("detection (--task detection; writes task = \"detection\" on those outputs and the [detection] section)")
    d.add_argument("--detection-head", choices=["yolo", "yolo-objectness", "boxes-scores", "picodet"],
                   help="the output layout: yolo [1,4+C,N]; yolo-objectness [1,N,5+C]; boxes-scores boxes [1,N,4] then scores "
                   "[1,N,C]; picodet scores [1,HW,C] per stride then distances [1,HW,4(reg_max+1)] per stride")
    d.add_argument("--detection-outputs", metavar="NAME,...", help="the outputs the head reads, in its order (default: every output, in graph order)")
    d.add_argument("--classes", type=int, metavar="N", help="number of classes (default: inferred from the output shapes)")
    d.add_argument("--strides", metavar="S,...", help="picodet: the feature strides, one per scores output, e.g. 8,16,32,64")
    d.add_argument("--box-format", choices=["cxcywh", "xyxy", "yxyx"], help="default cxcywh (yolo heads), xyxy (boxes-scores)")
    d.add_argument("--normalized", action="store_true", help="box coordinates are fractions of the input's width/height")
    d.add_argument("--score-activation", choices=["probabilities", "logits"],
                   help="default: probabilities if every score on the samples lies in [0,1], else logits (a sigmoid is applied)")
    d.add_argument("--score-threshold", type=float, metavar="X", help=f"keep candidates scoring >= X (default {DEFAULT_SCORE_THRESHOLD:g})")
    d.add_argument("--iou-threshold", type=float, metavar="X", help=f"NMS IoU threshold (default {DEFAULT_IOU_THRESHOLD:g})")
    d.add_argument("--max-detections", type=int, metavar="N", help=f"at most N boxes (default {DEFAULT_MAX_DETECTIONS}, at most {MAX_DETECTIONS_LIMIT})")
    d.add_argument("--class-agnostic", action="store_true", help="NMS across classes")
    t = ap.add_argument_group("tolerances and budgets")
    t.add_argument("--atol", type=float, help="one absolute tolerance for every output (dequantised units); skips the reference-mode study")
    t.add_argument("--ram-mib", type=int, help="RAM budget (default: 2 x (model + 4 largest activations), >= 128, in 64 MiB steps)")
    t.add_argument("--p95-ms", type=float, default=DEFAULT_P95_MS, help=f"latency SLO, p95 per frame (default {DEFAULT_P95_MS:g})")
    ap.add_argument("--verify", action="store_true", help="run `beltbox infer` on the package afterwards (exit 1 if it is refused)")
    ap.add_argument("--beltbox", metavar="PATH", help="beltbox binary for --verify (default: $BELTBOX, PATH, target/release/beltbox)")
    return ap.parse_args(argv)


DETECTION_OPTS = ("detection_outputs", "classes", "strides", "box_format", "score_activation", "score_threshold",
                  "iou_threshold", "max_detections")
DETECTION_FLAGS = ("normalized", "class_agnostic")


def opt_name(attr: str) -> str:
    return "--" + attr.replace("_", "-")


def read_samples(args, names, image_input):
    """--sample values -> per sample, per input (in `names` order): (path, npy array or None,
    decoded image or None)."""
    out = []
    for text in args.sample:
        files = parse_sample_arg(text, names)
        row = []
        for n in names:
            path = Path(files[n])
            if not path.is_file():
                raise UsageError(f"sample {path}: no such file" + (f" (input `{n}`)" if len(names) > 1 else ""))
            if path.suffix.lower() == ".npy":
                row.append((path, load_npy(path), None))
                continue
            try:
                img = load_image(path)
            except UsageError:
                raise
            except Exception as e:
                raise UsageError(f"sample {path}: cannot decode the image ({one_line(e)})")
            if img is None:
                raise UsageError(f"sample {path}: not a .npy tensor, PNG or PGM image")
            if args.image is None:
                raise UsageError(
                    f"sample {path} is an image: give --image gray|rgb|bgr (and --scale/--mean/--std) so pack knows how the "
                    "model wants it, or pass the tensor as .npy"
                )
            if n != image_input:
                raise UsageError(f"sample {path} is an image, but the image options are for input `{image_input}`, not `{n}`; give `{n}` a .npy tensor")
            row.append((path, None, img))
        out.append(row)
    return out


def pack(args) -> int:
    model = args.model
    if not model.is_file():
        raise UsageError(f"{model}: no such file")
    ext = model.suffix.lower()
    if ext not in (".onnx", ".tflite"):
        raise UsageError(f"{model}: expected a .onnx or .tflite file")
    if args.labels is not None and not args.labels.is_file():
        raise UsageError(f"--labels {args.labels}: no such file")
    if args.labels is not None and args.task == "raw":
        raise UsageError("--labels needs --task classification or detection")
    task = args.task
    if task is None:
        task = "detection" if args.detection_head is not None else ("classification" if args.labels is not None else "raw")
    if task == "detection" and args.detection_head is None:
        raise UsageError("--task detection needs --detection-head yolo|yolo-objectness|boxes-scores|picodet")
    if task != "detection":
        for attr in ("detection_head",) + DETECTION_OPTS:
            if getattr(args, attr) is not None:
                raise UsageError(f"{opt_name(attr)} needs --task detection")
        for attr in DETECTION_FLAGS:
            if getattr(args, attr):
                raise UsageError(f"{opt_name(attr)} needs --task detection")
    if args.scores is not None and task != "classification":
        raise UsageError("--scores needs --task classification")
    if args.image is None:
        if args.image_input is not None:
            raise UsageError("--image-input only applies with --image gray|rgb|bgr")
        for opt in ("mean", "std", "scale", "letterbox", "letterbox_anchor") + (() if task == "detection" else ("layout",)):
            if getattr(args, opt) is not None:
                raise UsageError(f"--{opt.replace('_', '-')} only applies with --image gray|rgb|bgr")
    if not VERSION_RE.match(args.version):
        raise UsageError(f"--version `{args.version}` is not MAJOR.MINOR.PATCH")
    name = args.name if args.name is not None else (package_name(args.out.resolve().name) or package_name(model.stem) or "model")
    if not NAME_RE.match(name):
        raise UsageError(f"--name `{name}` must be 1-64 chars of [a-z0-9-], not starting with `-`")
    if args.atol is not None and not (math.isfinite(args.atol) and args.atol >= 0):
        raise UsageError("--atol must be a finite number >= 0")
    if args.ram_mib is not None and args.ram_mib <= 0:
        raise UsageError("--ram-mib must be positive")
    if not (math.isfinite(args.p95_ms) and args.p95_ms > 0):
        raise UsageError("--p95-ms must be a positive number")
    prepare_out_dir(args.out, args.force)

    # --- the model
    say(f"reading {model}")
    info = inspect_onnx(model) if ext == ".onnx" else inspect_tflite(model)
    in_names = [ii.name for ii in info.inputs]
    if args.input_name is not None and args.input_name not in in_names:
        raise UsageError(f"--input-name `{args.input_name}`: the model's input{'s are' if len(in_names) > 1 else ' is'} {names_text(in_names)}")
    image_input = None
    if args.image is not None:
        if args.image_input is not None:
            if args.image_input not in in_names:
                raise UsageError(f"--image-input `{args.image_input}` is not an input of the model (its inputs: {names_text(in_names)})")
            image_input = args.image_input
        elif len(in_names) == 1:
            image_input = in_names[0]
        else:
            raise UsageError(f"--image: the model has {len(in_names)} inputs ({names_text(in_names)}); say which one takes images with --image-input NAME")
    fmt = info.format
    precision = args.precision
    if precision is None:
        precision = info.detected
    elif precision == "int8":
        if info.detected == "fp32":
            raise UsageError(f"--precision int8: the model has no quantised ops/tensors (detected fp32)")
        precision = info.detected
    elif precision != info.detected:
        if fmt == "tflite" and precision in ("int8-qdq", "int8-qoperator") or fmt == "onnx" and precision == "int8-tflite":
            raise UsageError(f"--precision {precision} does not apply to a {fmt} model")
        warn(f"--precision {precision} overrides the detected {info.detected}; the goldens use the {precision} reference mode")
    say(f"  format {fmt}, precision {precision}" + (" (detected)" if args.precision in (None, "int8") else ""))
    if len(in_names) > 1:
        say(f"  {len(in_names)} inputs: {names_text(in_names)}" + (" (interpreter order)" if fmt == "tflite" else ""))
    for ii in info.inputs:
        if ii.dynamic:
            say(f"  the TFLite input `{ii.name}` has dynamic dims; beltbox runs it at its default shape {ii.dims}")

    # --- samples and input specs (model order)
    raw_samples = read_samples(args, in_names, image_input)
    shape_texts = parse_shape_args(args.shape, in_names)
    range_texts = {o: parse_shape_args(getattr(args, o[2:].replace("-", "_")), in_names, o) for o in RANGE_OPTS}
    specs = []
    for k, ii in enumerate(info.inputs):
        opt = "--shape " if len(in_names) == 1 else f"--shape {ii.name}="
        npy_shapes = [row[k][1].shape for row in raw_samples if row[k][1] is not None]
        shape = resolve_input(ii, shape_texts.get(ii.name), npy_shapes, ii.name == image_input, fmt, opt)
        spec = build_input_spec(args, ii, shape, ii.name == image_input)
        if any(d == 0 for d in shape) or not shape:
            raise UsageError(f"input `{ii.name}` shape {shape} must be non-empty without zero dims")
        if fmt == "tflite" and list(shape) != list(ii.dims):
            raise UsageError(f"the TFLite model's input `{ii.name}` is {ii.dims}; beltbox does not resize TFLite inputs")
        texts = {o: range_texts[o][ii.name] for o in RANGE_OPTS if ii.name in range_texts[o]}
        spec["min_shape"], spec["max_shape"], spec["shape_step"] = resolve_range(
            ii, shape, texts, ii.name == image_input, fmt, len(in_names) == 1
        )
        say(f"  input `{spec['name']}` {spec['dtype']} {shape}" + (f", quantisation {spec['quant']}" if spec["quant"] else "")
            + (f", images ({args.image})" if spec["preprocess"] is not None else "")
            + (f", requests {shape_range_text(shape, spec['min_shape'], spec['max_shape'], spec['shape_step'])} (goldens at {shape})"
               if spec["min_shape"] is not None else ""))
        specs.append(spec)
    if any(s_["max_shape"] is not None for s_ in specs):
        total = sum(math.prod(s_["max_shape"] or s_["shape"]) for s_ in specs)
        if total > MAX_ELEMENTS:
            raise UsageError(f"the inputs together have {total} elements at --max-shape, more than beltbox's 2^30")
    samples = [[prepare_sample(p_, a, img, spec) for (p_, a, img), spec in zip(row, specs)] for row in raw_samples]
    feed = samples  # model order, for the references
    if task == "detection":
        det_names, det_strides = check_detection_args(args, info.output_names)
        specs, geo, hw = detection_geometry(specs, args, fmt)
        if [s_["name"] for s_ in specs] != in_names:  # ONNX: a 4-D input moved first
            idx = [in_names.index(s_["name"]) for s_ in specs]
            samples = [[row[i] for i in idx] for row in samples]
        say(f"  detection: head {args.detection_head}, boxes in the pixels of input `{geo['name']}` ({hw[0]} x {hw[1]})")

    # --- references (fed every input)
    if fmt == "onnx":
        modes = ORT_MODES["fp32" if precision == "fp32" else "int8"]
        if args.atol is not None:
            modes = modes[:1]
        label, level, config = modes[0]
        ref_text = f"onnxruntime {versions()['onnxruntime']} CPU EP, 1 thread, {ort_mode_text(level, config)}"
        say(f"running the reference ({ref_text})" + ("" if len(modes) == 1 else f" and {len(modes) - 1} other acceptable ORT modes for the tolerances"))
        results = run_onnx(model, modes, in_names, feed)
    else:
        modes = TFLITE_MODES[:1] if args.atol is not None else TFLITE_MODES
        ref_text = f"ai-edge-litert {versions()['ai-edge-litert']} interpreter, 1 thread, OpResolverType.BUILTIN_REF"
        say(f"running the reference ({ref_text})" + ("" if len(modes) == 1 else f" and {len(modes) - 1} other LiteRT op resolvers for the tolerances"))
        results = run_tflite(model, modes, feed)
    golden = results[next(iter(results))]

    # --- outputs
    names = info.output_names
    if len(golden[0]) != len(names):
        raise PackError(f"the reference produced {len(golden[0])} outputs but the model lists {len(names)}")
    outputs, quants = [], {}
    for k, oname in enumerate(names):
        a = golden[0][k]
        if a.dtype not in SUPPORTED_DTYPES:
            raise PackError(f"output `{oname}` is {a.dtype}; beltbox outputs are float32, int8 or uint8 (cast it or remove it from the graph)")
        if a.ndim == 0:
            raise PackError(f"output `{oname}` is a scalar; the manifest needs a shape with at least one dim (reshape it to [1])")
        if 0 in a.shape:
            raise PackError(f"output `{oname}` has shape {list(a.shape)} with a zero dim on the samples; beltbox needs non-empty outputs")
        for s in golden[1:]:
            if s[k].shape != a.shape or s[k].dtype != a.dtype:
                raise PackError(f"output `{oname}` changes shape between samples ({list(a.shape)} vs {list(s[k].shape)}); beltbox needs one shape")
        dtype = SUPPORTED_DTYPES[a.dtype]
        q = None
        if dtype != "float32":
            q = info.output_quant.get(oname)
            if q is None:
                warn(f"output `{oname}` is {dtype} with no quantisation found; writing scale 1, zero_point 0 (values compared as integers)")
                q = (1.0, 0)
            quants[oname] = q
        outputs.append({"name": oname, "shape": [int(v) for v in a.shape], "dtype": dtype, "quant": q, "task": "raw"})

    if args.atol is not None:
        tol = {n: {"atol": float(args.atol), "spread": None, "step": None, "peak": None} for n in names}
        tol_rule = f"atol {args.atol:g} for every output (given with --atol)"
    else:
        tol = tolerances(results, names, quants, info.output_steps)
        tol_rule = (
            f"atol per output = 2 x the spread of {len(results)} acceptable reference modes "
            "(at least 2 output steps for quantised outputs; for float outputs at least 1e-4 and 1e-5 x peak)"
        )
    for o in outputs:
        t = tol[o["name"]]
        o["atol"] = t["atol"]
        extra = ""
        if t["spread"] is not None:
            extra = f" (spread {t['spread']:.3g}" + (f", step {t['step']:.3g}" if t["step"] else "") + f", peak |value| {t['peak']:.3g})"
        say(f"  output `{o['name']}` {o['dtype']} {o['shape']}: atol {o['atol']:g}{extra}")

    def read_labels(n: int, what: str):
        text = args.labels.read_text(encoding="utf-8", errors="replace")
        lines = [l.rstrip() for l in text.splitlines()]
        while lines and lines[-1] == "":
            lines.pop()
        if len(lines) != n:
            raise UsageError(f"--labels {args.labels} has {len(lines)} labels but {what} has {n} classes")
        return lines

    # --- classification
    labels = None
    sample_labels = [None] * len(samples)
    if task == "classification":
        first = outputs[0]
        n = int(np.prod(first["shape"]))
        if n < 2:
            raise UsageError(f"--task classification: outputs[0] `{first['name']}` has {n} value; it needs one score per class")
        first["task"] = "classification"
        deq = [dequantise(s[0], quants.get(first["name"])).ravel() for s in golden]
        if args.scores is not None:
            first["scores"] = args.scores
        else:
            step = quants[first["name"]][0] if first["name"] in quants else 0.0
            slack = max(1e-3, n * step)
            probs = all(v.min() >= -slack and v.max() <= 1 + slack and abs(v.sum() - 1.0) <= slack for v in deq)
            first["scores"] = "probabilities" if probs else "logits"
            say(f"  outputs[0] scores: {first['scores']} (detected; override with --scores)")
        if args.labels is not None:
            labels = read_labels(n, f"outputs[0] `{first['name']}`")
            first["labels"] = "labels.txt"
        for i, v in enumerate(deq):
            order = np.argsort(-v, kind="stable")
            margin = float(v[order[0]] - v[order[1]])
            if margin > 2 * first["atol"]:
                sample_labels[i] = int(order[0])
            else:
                say(f"  sample {i:03d}: top-1 margin {margin:.3g} is within 2 x atol; no expected label written for it")

    # --- detection
    detection = None
    if task == "detection":
        detection = plan_detection(args, det_names, det_strides, outputs, golden, quants, hw)
        if args.labels is not None:
            labels = read_labels(detection["classes"], f"[detection] ({args.detection_head} head)")
            detection["labels"] = "labels.txt"
        say(f"  detection: outputs {names_text(detection['outputs'])}, classes {detection['classes']}, score_threshold "
            f"{detection['score_threshold']:g}, iou_threshold {detection['iou_threshold']:g}, max_detections {detection['max_detections']}")

    # --- budgets, description
    model_bytes = model.stat().st_size
    if args.ram_mib is not None:
        ram = args.ram_mib
    else:
        # at max_shape where a range is given: the default budget must hold the largest request
        act = (onnx_activation_bytes(info.onnx_model, {s_["name"]: s_["max_shape"] or s_["shape"] for s_ in specs})
               if fmt == "onnx" else getattr(info, "act_bytes", 0))
        ram = ram_budget_mib(model_bytes, act)
    model_sha = sha256_file(model)
    desc = args.description or f"{model.name} packed by tools/pack.py"
    desc = (
        f"{desc.rstrip('.')} (model sha256 {model_sha[:16]}..., {precision}). Goldens: {len(samples)} sample(s), "
        f"reference {ref_text}; {tol_rule}."
    )
    p = {
        "name": name,
        "version": args.version,
        "description": desc,
        "model_file": "model.onnx" if fmt == "onnx" else "model.tflite",
        "format": fmt,
        "precision": precision,
        "inputs": specs,
        "outputs": outputs,
        "detection": detection,
        "ram_mib": ram,
        "p95_ms": args.p95_ms,
        "samples": [{"label": sample_labels[i]} for i in range(len(samples))],
    }
    manifest = write_package(args.out, p, model, labels, samples, golden)
    say(f"wrote {args.out}: {manifest.name}, {p['model_file']}, {len(samples)} golden sample(s) x {len(specs)} input(s) x {len(outputs)} output(s)"
        + (", labels.txt" if labels is not None else "") + f"; ram budget {ram} MiB, p95 {args.p95_ms:g} ms")
    spec_names = [s_["name"] for s_ in specs]
    cmd = " ".join(["beltbox", "infer", "--model", str(args.out)] + infer_input_args(args.out, spec_names) + ["--json"])
    say("verify it (loading runs the golden self-check), then check the RAM plan against the budget:")
    print(f"  {cmd}")
    print(f"  beltbox plan --model {args.out}")
    if args.verify:
        bb = find_beltbox(args.beltbox)
        if bb is None:
            raise PackError("--verify: no beltbox binary found (give --beltbox PATH or set $BELTBOX)")
        if not verify(bb, args.out, spec_names):
            return 1
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return pack(args)
    except PackError as e:
        print(f"{TOOL}: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"{TOOL}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
