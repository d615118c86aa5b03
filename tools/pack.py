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

  # an ORT-quantised detector with a symbolic input shape (fixed at 1x3x640x640)
  tools/pack.py yolo-int8.onnx --shape 1,3,640,640 --sample frame.npy --out /tmp/yolo-int8

  # a TFLite model with image samples (PNG/PGM, converted and resized as beltbox does)
  tools/pack.py face.tflite --image rgb --scale 2 --mean 1,1,1 --sample face.png --out /tmp/face

  # then check it on beltbox (loading runs the golden self-check):
  beltbox infer --model /tmp/mobilenet-fp32 --input /tmp/mobilenet-fp32/golden/000.in.npy --json

A sample is a .npy tensor (the model input itself; a missing batch axis of 1 is added), or,
with --image, a PNG/PGM image that is converted exactly as beltbox converts images (colour,
resize, normalisation, layout, quantisation); images are stored as the resulting .npy tensors.
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


def parse_int_list(text: str, what: str) -> list:
    try:
        vals = [int(v) for v in text.replace("x", ",").split(",") if v.strip() != ""]
    except ValueError:
        raise UsageError(f"{what}: `{text}` is not a comma-separated list of integers (e.g. 1,3,224,224)")
    if not vals or any(v <= 0 for v in vals):
        raise UsageError(f"{what}: `{text}` must list positive integers (e.g. 1,3,224,224)")
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
class ModelInfo:
    """format, precision_detected, input (name, dims with None for symbolic, dtype, quant),
    int8 graph facts (output steps, output quantisation)."""

    def __init__(self):
        self.format = None
        self.detected = None  # "fp32" | "int8-qdq" | "int8-qoperator" | "int8-tflite"
        self.input_name = None
        self.input_dims = None  # list of int or None (symbolic); None = rank unknown
        self.input_dtype = None  # numpy dtype
        self.input_quant = None  # (scale, zero_point) or None
        self.input_quant_guessed = False
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
    if len(inputs) != 1:
        names = ", ".join(f"`{i.name}`" for i in inputs) or "none"
        raise PackError(
            f"{path}: the model has {len(inputs)} inputs ({names}); beltbox runs models with exactly one input today"
        )
    inp = inputs[0]
    info.input_name = inp.name
    tt = inp.type.tensor_type
    if not inp.type.HasField("tensor_type"):
        raise PackError(f"{path}: input `{inp.name}` is not a tensor")
    info.input_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else None
    if tt.HasField("shape"):
        info.input_dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
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
    if info.input_dtype is not None and info.input_dtype in (np.dtype(np.int8), np.dtype(np.uint8)):
        for n in m.graph.node:
            if n.op_type == "DequantizeLinear" and n.input[0] == inp.name:
                s = _scalar(consts, n.input[1])
                z = _scalar(consts, n.input[2] if len(n.input) > 2 else "", 0)
                if s is not None and z is not None:
                    info.input_quant = (float(np.float32(s)), int(z))
                break
        if info.input_quant is None:
            info.input_quant, info.input_quant_guessed = (1.0, 0), True
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
    if len(ins) != 1:
        names = ", ".join(f"`{d['name']}`" for d in ins) or "none"
        raise PackError(f"{path}: the model has {len(ins)} inputs ({names}); beltbox runs models with exactly one input today")
    d = ins[0]
    info.input_name = d["name"]
    info.input_dims = [int(v) for v in d["shape"]]
    sig = d.get("shape_signature")
    info.tflite_dynamic = sig is not None and any(int(v) < 0 for v in sig)
    info.input_dtype = np.dtype(d["dtype"])
    q = _tflite_quant(d)
    if q == "per-channel":
        raise PackError(f"{path}: input `{d['name']}` has per-channel quantisation; beltbox needs one scale")
    if info.input_dtype in (np.dtype(np.int8), np.dtype(np.uint8)):
        info.input_quant = q if q is not None else (1.0, 0)
        info.input_quant_guessed = q is None
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
        act = {int(o) for op in it._get_ops_details() for o in op["outputs"]} | {d["index"]}
        sizes = sorted((int(np.prod(td[i]["shape"])) * np.dtype(td[i]["dtype"]).itemsize for i in act if i in td), reverse=True)
        info.act_bytes = sum(sizes[:4])
    except Exception:
        info.act_bytes = 0
    return info


def onnx_activation_bytes(m, input_name: str, shape) -> int:
    """Sum of the 4 largest activation tensors at the fixed input shape (ONNX shape inference)."""
    try:
        import onnx
        from onnx import helper

        m2 = onnx.ModelProto()
        m2.CopyFrom(m)
        for i in m2.graph.input:
            if i.name == input_name:
                dims = i.type.tensor_type.shape.dim
                while len(dims):
                    dims.pop()
                for v in shape:
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


def run_onnx(model_path: Path, modes, input_name: str, samples):
    """{label: [[output arrays] per sample]} for every mode (first = golden)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise PackError("the `onnxruntime` Python package is missing (use .cache/ort-venv/bin/python)")
    results = {}
    for label, level, config in modes:
        try:
            sess = ort_session(model_path, level, config)
            results[label] = [[np.asarray(o) for o in sess.run(None, {input_name: x})] for x in samples]
        except Exception as e:
            raise PackError(f"onnxruntime ({label}) failed on the model: {one_line(e)}")
        finally:
            sess = None
        say(f"  ran {label}: {len(samples)} sample(s)")
    return results


def run_tflite(model_path: Path, modes, samples):
    results = {}
    for mode in modes:
        try:
            it = tflite_interpreter(model_path, mode)
            ind, outd = it.get_input_details()[0], it.get_output_details()
            res = []
            for x in samples:
                it.set_tensor(ind["index"], x)
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
def resolve_input(args, info: ModelInfo, npy_shapes):
    """The concrete input shape: the model's static dims, symbolic ones fixed by --shape or by
    the (first) .npy sample."""
    dims = info.input_dims
    if args.shape is not None:
        shape = parse_int_list(args.shape, "--shape")
        if dims is not None:
            if len(shape) != len(dims):
                raise UsageError(f"--shape {shape} has rank {len(shape)} but input `{info.input_name}` has rank {len(dims)} ({fmt_dims(dims)})")
            for k, (s, d) in enumerate(zip(shape, dims)):
                if d is not None and s != d:
                    raise UsageError(f"--shape {shape}: dim {k} is {s} but the model fixes it at {d} ({fmt_dims(dims)})")
        if info.format == "tflite" and shape != dims:
            raise UsageError(
                f"--shape {shape}: beltbox runs a TFLite model at its own input shape {dims} (it does not resize TFLite inputs)"
            )
        return shape
    if dims is not None and all(d is not None for d in dims):
        return list(dims)
    if not npy_shapes and args.image is not None and dims is not None and dims[0] is None and all(d is not None for d in dims[1:]):
        say(f"input `{info.input_name}` {fmt_dims(dims)}: batch fixed to 1")
        return [1] + list(dims[1:])
    if not npy_shapes:
        raise UsageError(
            f"input `{info.input_name}` has dynamic/symbolic dims {fmt_dims(dims)}: give the shape beltbox should run at, "
            "e.g. --shape 1,3,224,224 (or pass .npy samples of that shape)"
        )
    s = list(npy_shapes[0])
    if dims is not None and len(s) == len(dims) - 1 and (dims[0] in (None, 1)):
        s = [1] + s
    if dims is not None and len(s) != len(dims):
        raise UsageError(f"sample shape {list(npy_shapes[0])} does not fit input `{info.input_name}` {fmt_dims(dims)}")
    if dims is not None:
        for k, (a, d) in enumerate(zip(s, dims)):
            if d is not None and a != d:
                raise UsageError(f"sample shape {list(npy_shapes[0])} does not fit input `{info.input_name}` {fmt_dims(dims)} (dim {k})")
    say(f"input `{info.input_name}` {fmt_dims(dims)}: dynamic dims fixed from the first sample to {s}")
    return s


def fmt_dims(dims) -> str:
    if dims is None:
        return "[rank unknown]"
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def build_input_spec(args, info: ModelInfo, shape):
    dt = info.input_dtype
    if dt not in SUPPORTED_DTYPES:
        raise PackError(
            f"input `{info.input_name}` is {dt}; beltbox inputs are float32, int8 or uint8"
        )
    spec = {
        "name": info.input_name,
        "shape": shape,
        "dtype": SUPPORTED_DTYPES[dt],
        "quant": info.input_quant if SUPPORTED_DTYPES[dt] != "float32" else None,
        "preprocess": None,
        "layout": None,
    }
    if info.input_quant_guessed:
        warn(f"input `{info.input_name}` is {spec['dtype']} with no quantisation found; writing scale 1, zero_point 0 (values as they are)")
    if args.image is None:
        for opt in ("mean", "std", "scale", "layout", "letterbox"):
            if getattr(args, opt) is not None:
                raise UsageError(f"--{opt} only applies with --image gray|rgb|bgr")
        return spec
    c = 1 if args.image == "gray" else 3
    if len(shape) != 4 or shape[0] != 1:
        raise UsageError(f"--image needs a 4-D input with batch 1; `{info.input_name}` is {shape}")
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
    if any(s == 0 for s in std):
        raise UsageError("--std values must be non-zero")
    scale = 1.0 if args.scale is None else args.scale
    if not math.isfinite(scale):
        raise UsageError("--scale must be finite")
    pad = args.letterbox
    if pad is not None and not (0.0 <= pad <= 255.0):
        raise UsageError("--letterbox PAD must be a pixel value in 0..255")
    spec["layout"] = layout
    spec["hwc"] = (h, w, c)
    spec["preprocess"] = {
        "resize": [h, w],
        "resize_mode": "stretch" if pad is None else "letterbox",
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
    i = p["input"]
    L += ["", "[[inputs]]", f"name = {toml_value(i['name'])}", f"shape = {toml_value(i['shape'])}", f"dtype = {toml_value(i['dtype'])}"]
    if i["preprocess"] is not None:
        pre = i["preprocess"]
        L.append(f"layout = {toml_value(i['layout'])}")
        L += ["", "[inputs.preprocess]", f"resize = {toml_value(pre['resize'])}"]
        if pre["resize_mode"] != "stretch":
            L += [f"resize_mode = {toml_value(pre['resize_mode'])}", f"pad = {toml_value(pre['pad'])}"]
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
    """Writes into a temporary sibling directory, then swaps it into place."""
    parent = out.parent if str(out.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.pack-", dir=parent))
    try:
        (tmp / "golden").mkdir()
        shutil.copyfile(model_src, tmp / p["model_file"])
        files = [p["model_file"]]
        if labels is not None:
            (tmp / "labels.txt").write_text("".join(l + "\n" for l in labels), encoding="utf-8")
            files.append("labels.txt")
        for s, (x, outs) in enumerate(zip(inputs, outputs)):
            ifn = f"golden/{s:03d}.in.npy"
            save_npy(tmp / ifn, x)
            ofns = []
            for k, a in enumerate(outs):
                ofn = f"golden/{s:03d}.out{k}.npy"
                save_npy(tmp / ofn, a)
                ofns.append(ofn)
            files += [ifn] + ofns
            p["samples"][s]["inputs"] = [ifn]
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


def verify(beltbox: str, out: Path) -> bool:
    cmd = [beltbox, "infer", "--model", str(out), "--input", str(out / "golden/000.in.npy"), "--json"]
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
    ap.add_argument("--sample", type=Path, action="append", required=True, metavar="FILE",
                    help="a sample input (.npy tensor; PNG/PGM with --image); repeat for more (golden inputs, in order)")
    ap.add_argument("--out", type=Path, required=True, metavar="DIR", help="package directory to write (must not exist unless --force)")
    ap.add_argument("--force", action="store_true", help="replace DIR if it is an existing package (or empty)")
    ap.add_argument("--name", help="package name, [a-z0-9-], at most 64 chars (default: from DIR's name)")
    ap.add_argument("--version", default="1.0.0", help="package version MAJOR.MINOR.PATCH (default 1.0.0)")
    ap.add_argument("--description", help="one-line description (the reference mode and model sha256 are appended)")
    ap.add_argument("--precision", choices=["fp32", "int8", "int8-qdq", "int8-qoperator", "int8-tflite"],
                    help="default: detected (int8 if the ONNX graph has QuantizeLinear/DequantizeLinear/QLinear*/"
                    "integer ops, or the TFLite model has quantised tensors); selects the reference mode")
    ap.add_argument("--task", choices=["raw", "classification"],
                    help="what outputs[0] is (default raw; classification if --labels is given). Other outputs are raw")
    ap.add_argument("--labels", type=Path, metavar="FILE", help="labels, one per line, line N = class N (classification)")
    ap.add_argument("--scores", choices=["logits", "probabilities"],
                    help="classification scores (default: probabilities if every sample's outputs[0] is in [0,1] and sums to 1)")
    ap.add_argument("--input-name", help="check that the model's input has this name")
    ap.add_argument("--shape", help="the concrete input shape, e.g. 1,3,224,224 (fixes dynamic/symbolic dims; default: the model's, else the first .npy sample's)")
    g = ap.add_argument_group("image inputs (optional: writes [inputs.preprocess] so beltbox also takes PNG/PGM images)")
    g.add_argument("--image", choices=["gray", "rgb", "bgr"], help="colour order of the tensor's channels")
    g.add_argument("--scale", type=float, help="x = (pixel / maxval * scale - mean[c]) / std[c]; default 1")
    g.add_argument("--mean", help="per channel, comma-separated (default 0)")
    g.add_argument("--std", help="per channel, comma-separated (default 1)")
    g.add_argument("--layout", choices=["nchw", "nhwc"], help="default: from the shape's channel dim")
    g.add_argument("--letterbox", type=float, metavar="PAD", help="keep the aspect ratio, pad with PAD (0-255); default: stretch")
    t = ap.add_argument_group("tolerances and budgets")
    t.add_argument("--atol", type=float, help="one absolute tolerance for every output (dequantised units); skips the reference-mode study")
    t.add_argument("--ram-mib", type=int, help="RAM budget (default: 2 x (model + 4 largest activations), >= 128, in 64 MiB steps)")
    t.add_argument("--p95-ms", type=float, default=DEFAULT_P95_MS, help=f"latency SLO, p95 per frame (default {DEFAULT_P95_MS:g})")
    ap.add_argument("--verify", action="store_true", help="run `beltbox infer` on the package afterwards (exit 1 if it is refused)")
    ap.add_argument("--beltbox", metavar="PATH", help="beltbox binary for --verify (default: $BELTBOX, PATH, target/release/beltbox)")
    return ap.parse_args(argv)


def pack(args) -> int:
    model = args.model
    if not model.is_file():
        raise UsageError(f"{model}: no such file")
    ext = model.suffix.lower()
    if ext not in (".onnx", ".tflite"):
        raise UsageError(f"{model}: expected a .onnx or .tflite file")
    for s in args.sample:
        if not s.is_file():
            raise UsageError(f"sample {s}: no such file")
    if args.labels is not None and not args.labels.is_file():
        raise UsageError(f"--labels {args.labels}: no such file")
    if args.labels is not None and args.task == "raw":
        raise UsageError("--labels needs --task classification")
    task = args.task or ("classification" if args.labels is not None else "raw")
    if args.scores is not None and task != "classification":
        raise UsageError("--scores needs --task classification")
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
    if args.input_name is not None and args.input_name != info.input_name:
        raise UsageError(f"--input-name `{args.input_name}`: the model's input is `{info.input_name}`")
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
    if getattr(info, "tflite_dynamic", False):
        say(f"  the TFLite input has dynamic dims; beltbox runs it at its default shape {info.input_dims}")

    # --- samples
    raw_samples = []
    for s in args.sample:
        img = None
        if s.suffix.lower() == ".npy":
            raw_samples.append((s, load_npy(s), None))
            continue
        try:
            img = load_image(s)
        except UsageError:
            raise
        except Exception as e:
            raise UsageError(f"sample {s}: cannot decode the image ({one_line(e)})")
        if img is None:
            raise UsageError(f"sample {s}: not a .npy tensor, PNG or PGM image")
        if args.image is None:
            raise UsageError(
                f"sample {s} is an image: give --image gray|rgb|bgr (and --scale/--mean/--std) so pack knows how the "
                "model wants it, or pass the tensor as .npy"
            )
        raw_samples.append((s, None, img))
    shape = resolve_input(args, info, [a.shape for _, a, _ in raw_samples if a is not None])
    spec = build_input_spec(args, info, shape)
    if any(d == 0 for d in shape) or not shape:
        raise UsageError(f"input shape {shape} must be non-empty without zero dims")
    say(f"  input `{spec['name']}` {spec['dtype']} {shape}" + (f", quantisation {spec['quant']}" if spec["quant"] else ""))
    samples = [prepare_sample(p, a, img, spec) for p, a, img in raw_samples]
    if fmt == "tflite" and list(shape) != list(info.input_dims):
        raise UsageError(f"the TFLite model's input is {info.input_dims}; beltbox does not resize TFLite inputs")

    # --- references
    if fmt == "onnx":
        modes = ORT_MODES["fp32" if precision == "fp32" else "int8"]
        if args.atol is not None:
            modes = modes[:1]
        label, level, config = modes[0]
        ref_text = f"onnxruntime {versions()['onnxruntime']} CPU EP, 1 thread, {ort_mode_text(level, config)}"
        say(f"running the reference ({ref_text})" + ("" if len(modes) == 1 else f" and {len(modes) - 1} other acceptable ORT modes for the tolerances"))
        results = run_onnx(model, modes, spec["name"], samples)
    else:
        modes = TFLITE_MODES[:1] if args.atol is not None else TFLITE_MODES
        ref_text = f"ai-edge-litert {versions()['ai-edge-litert']} interpreter, 1 thread, OpResolverType.BUILTIN_REF"
        say(f"running the reference ({ref_text})" + ("" if len(modes) == 1 else f" and {len(modes) - 1} other LiteRT op resolvers for the tolerances"))
        results = run_tflite(model, modes, samples)
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
            text = args.labels.read_text(encoding="utf-8", errors="replace")
            labels = [l.rstrip() for l in text.splitlines()]
            while labels and labels[-1] == "":
                labels.pop()
            if len(labels) != n:
                raise UsageError(f"--labels {args.labels} has {len(labels)} labels but outputs[0] `{first['name']}` has {n} classes")
            first["labels"] = "labels.txt"
        for i, v in enumerate(deq):
            order = np.argsort(-v, kind="stable")
            margin = float(v[order[0]] - v[order[1]])
            if margin > 2 * first["atol"]:
                sample_labels[i] = int(order[0])
            else:
                say(f"  sample {i:03d}: top-1 margin {margin:.3g} is within 2 x atol; no expected label written for it")

    # --- budgets, description
    model_bytes = model.stat().st_size
    if args.ram_mib is not None:
        ram = args.ram_mib
    else:
        act = onnx_activation_bytes(info.onnx_model, spec["name"], shape) if fmt == "onnx" else getattr(info, "act_bytes", 0)
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
        "input": spec,
        "outputs": outputs,
        "ram_mib": ram,
        "p95_ms": args.p95_ms,
        "samples": [{"label": sample_labels[i]} for i in range(len(samples))],
    }
    manifest = write_package(args.out, p, model, labels, samples, golden)
    say(f"wrote {args.out}: {manifest.name}, {p['model_file']}, {len(samples)} golden sample(s) x {len(outputs)} output(s)"
        + (", labels.txt" if labels is not None else "") + f"; ram budget {ram} MiB, p95 {args.p95_ms:g} ms")
    cmd = f"beltbox infer --model {args.out} --input {args.out / 'golden/000.in.npy'} --json"
    say("verify it (loading runs the golden self-check), then check the RAM plan against the budget:")
    print(f"  {cmd}")
    print(f"  beltbox plan --model {args.out}")
    if args.verify:
        bb = find_beltbox(args.beltbox)
        if bb is None:
            raise PackError("--verify: no beltbox binary found (give --beltbox PATH or set $BELTBOX)")
        if not verify(bb, args.out):
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
