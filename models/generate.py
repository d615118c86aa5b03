#!/usr/bin/env python3
"""Generate beltbox's test model packages (see docs/model-package.md).

Two families, each as FP32 plus INT8 variants built by the reference toolchains
(ONNX Runtime static quantisation, TFLite full-integer conversion):

  digits-*            small CNN trained on sklearn's load_digits (real data, real accuracy)
  mobilenetv2-bench-* MobileNetV2-shaped net with deterministic random weights (speed/memory)

Every package gets golden samples (image + reference output of the reference runtime)
chosen so that an off-by-one-quantisation-step implementation cannot flip the top-1.

The digits held-out split is also written as data (models/digits-heldout/), so that tests
can measure accuracy by running the runtime rather than trusting the manifests' figures.

Run:  python3 models/generate.py          (about a minute or two on 2 cores)
      python3 models/generate.py heldout  (only models/digits-heldout/; needs no TensorFlow)
"""

import os

# Must be set before TensorFlow is imported. oneDNN reorders float reductions, which
# makes training (and thus every downstream file) differ from run to run.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"

import collections
import hashlib
import json
import math
import shutil
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

HERE = Path(__file__).resolve().parent
OPSET = 13  # first opset with per-channel (axis) Quantize/DequantizeLinear
IR_VERSION = 8  # opset 13 needs IR >= 7; 8 is readable by every ORT from 1.10 on
F32 = np.float32
T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------------------
# File formats and preprocessing (must match the Rust runtime bit for bit)
# --------------------------------------------------------------------------------------


def write_pgm(path, img, maxval):
    """Binary PGM; maxval 16 is valid netpbm and keeps the raw load_digits values."""
    assert img.dtype == np.uint8 and img.ndim == 2 and int(img.max()) <= maxval
    h, w = img.shape
    Path(path).write_bytes(b"P5\n%d %d\n%d\n" % (w, h, maxval) + img.tobytes())


def write_png(path, rgb):
    """Minimal 8-bit RGB PNG writer (no PIL here); filter 0 on every row."""
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind, data):
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9))
    Path(path).write_bytes(png + chunk(b"IEND", b""))


def preprocess(img_hwc, maxval, scale, mean, std):
    """The manifest's formula, in float32 and in the spec's order; returns HWC float32."""
    x = img_hwc.astype(F32) / F32(maxval)
    x = x * F32(scale)
    return (x - np.asarray(mean, F32)) / np.asarray(std, F32)


def nchw(x_hwc):
    return np.ascontiguousarray(x_hwc.transpose(2, 0, 1)[None])


def nhwc(x_hwc):
    return np.ascontiguousarray(x_hwc[None])


def quantize_input(x, scale, zero_point):
    """TFLite input quantisation as the spec states it (np.round = half to even)."""
    q = np.round(x / F32(scale)) + F32(zero_point)
    return np.clip(q, -128, 127).astype(np.int8)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------
# Reference runtimes
# --------------------------------------------------------------------------------------


def ort_session(model_path_or_bytes):
    # Single thread: deterministic and polite on the shared 2-core box. Default graph
    # optimisation level, i.e. what ORT users get (QDQ is fused into QLinear kernels).
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model_path_or_bytes, so, providers=["CPUExecutionProvider"])


def ort_run(sess, x):
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def tflite_interpreter(model_path):
    import tensorflow as tf

    # TFLite's reference kernels: portable C++, the documented int8 semantics. The
    # optimised builtin kernels (and XNNPACK, the default delegate) occasionally round
    # FULLY_CONNECTED one step differently, and may differ between x86 and ARM builds.
    it = tf.lite.Interpreter(
        model_path=str(model_path),
        num_threads=1,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF,
    )
    it.allocate_tensors()
    return it


def tflite_run(it, q):
    it.set_tensor(it.get_input_details()[0]["index"], q)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).copy()


# --------------------------------------------------------------------------------------
# ONNX helpers
# --------------------------------------------------------------------------------------


def make_onnx_model(nodes, inits, in_shape, out_shape, name):
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
        initializer=inits,
    )
    model = helper.make_model(
        graph, producer_name="beltbox-models", opset_imports=[helper.make_opsetid("", OPSET)]
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


class ListReader(CalibrationDataReader):
    def __init__(self, arrays):
        self.arrays = list(arrays)
        self.rewind()

    def get_next(self):
        x = next(self.it, None)
        return None if x is None else {"input": x}

    def rewind(self):
        self.it = iter(self.arrays)


def quantize_onnx(fp32_path, out_path, calib_inputs, fmt):
    """ORT static quantisation, per-channel, U8 activations / S8 weights, MinMax calibration.

    quant_type defaults changed between ORT releases (activation default is now QInt8),
    so everything is spelled out.
    """
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre))
        quantize_static(
            str(pre),
            str(out_path),
            ListReader(calib_inputs),
            quant_format=fmt,
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    # quant_pre_process's ORT pass declares every domain ORT knows (ai.onnx.ml,
    # org.pytorch.aten, com.microsoft.nchwc, ...); keep only the domains nodes use.
    m = onnx.load(str(out_path))
    used = {n.domain for n in m.graph.node}
    keep = [o for o in m.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(out_path))
    return m


def output_step(model):
    """Scale of the DequantizeLinear producing graph output 0 = one output quantisation step."""
    out = model.graph.output[0].name
    node = next(n for n in model.graph.node if out in n.output)
    assert node.op_type == "DequantizeLinear", f"{out} produced by {node.op_type}"
    inits = {i.name: i for i in model.graph.initializer}
    scale = numpy_helper.to_array(inits[node.input[1]])
    assert scale.size == 1
    return float(scale.reshape(()))


def op_histogram(model):
    c = collections.Counter(
        (n.domain + "::" if n.domain not in ("", "ai.onnx") else "") + n.op_type
        for n in model.graph.node
    )
    return dict(sorted(c.items()))


# --------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------


def tv(v):
    """TOML value. Floats via repr (shortest round-trip; float32 values stay exact)."""
    if isinstance(v, (bool, np.bool_)):
        raise TypeError("no booleans in the manifest")
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        assert np.isfinite(f)
        return repr(f)
    if isinstance(v, str):
        return json.dumps(v)  # ASCII only here, so a JSON string is a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(tv(x) for x in v) + "]"
    raise TypeError(type(v))


def write_package(pkg_dir, m):
    """Write manifest.toml in the spec's key order; hashes every other file in the dir."""
    L = []

    def kv(k, v):
        L.append(f"{k} = {tv(v)}")

    def table(name, d):
        L.append("")
        L.append(f"[{name}]")
        for k, v in d.items():
            kv(k, v)

    for k in ("name", "version", "description", "accuracy_floor"):
        kv(k, m[k])
    table("model", m["model"])
    inp = dict(m["input"])
    pre = inp.pop("preprocess")
    quant = inp.pop("quantization", None)
    table("input", inp)
    table("input.preprocess", pre)
    if quant is not None:
        table("input.quantization", quant)
    for o in m["outputs"]:
        o = dict(o)
        oq = o.pop("quantization", None)
        L.append("")
        L.append("[[outputs]]")
        for k, v in o.items():
            kv(k, v)
        if oq is not None:
            table("outputs.quantization", oq)
    table("budgets", m["budgets"])
    table("accuracy", m["accuracy"])
    table("golden", {"atol": m["golden"]["atol"], "rtol": m["golden"]["rtol"]})
    for s in m["golden"]["samples"]:
        L.append("")
        L.append("[[golden.samples]]")
        for k in ("input", "output", "label"):
            kv(k, s[k])
    files = sorted(
        p.relative_to(pkg_dir).as_posix()
        for p in pkg_dir.rglob("*")
        if p.is_file() and p.name != "manifest.toml"
    )
    named = {m["model"]["file"], "labels.txt"} | {
        s[k] for s in m["golden"]["samples"] for k in ("input", "output")
    }
    assert named <= set(files), named - set(files)
    L.append("")
    L.append("[files]")
    for f in files:
        L.append(f"{json.dumps(f)} = {json.dumps(sha256(pkg_dir / f))}")
    (pkg_dir / "manifest.toml").write_text("\n".join(L) + "\n")


def fresh_dir(name):
    d = HERE / name
    if d.exists():
        shutil.rmtree(d)
    (d / "golden").mkdir(parents=True)
    return d


def margin_steps(out, step):
    """top1 - top2 of a dequantised output vector, in quantisation steps."""
    s = np.sort(np.asarray(out, np.float64).ravel())
    return (s[-1] - s[-2]) / step


SUMMARY = []  # markdown lines for README.md


def summarise(pkg, model_bytes_path, hist=None, extra=""):
    size = os.path.getsize(model_bytes_path)
    SUMMARY.append(f"### {pkg}\n")
    SUMMARY.append(f"- model file: {Path(model_bytes_path).name}, {size} bytes{extra}")
    if hist is not None:
        SUMMARY.append("- ops: " + ", ".join(f"{k} x{v}" for k, v in hist.items()))
    SUMMARY.append("")
    log(f"{pkg}: {size} bytes {hist if hist else ''}")


# --------------------------------------------------------------------------------------
# Family 1: digits (real data)
# --------------------------------------------------------------------------------------

DIGITS_PRE = {"resize": [8, 8], "color": "gray", "scale": 1.0, "mean": [0.0], "std": [1.0]}
DIGITS_DATASET = "sklearn load_digits, stratified 80/20 split, seed 0"
DIGITS_N_GOLDEN = 8
DIGITS_HELDOUT_DIR = "digits-heldout"  # the held-out split as NPY files


def digits_x(imgs_u8):
    """Batch of HxW uint8 images -> NHWC float32 through the manifest formula."""
    p = DIGITS_PRE
    return np.stack([preprocess(im[:, :, None], 16, p["scale"], p["mean"], p["std"]) for im in imgs_u8])


def train_digits_keras(x_train, y_train):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()

    def body(inp):
        # 8x8 -> 8x8x16 -> 4x4x32 (stride 2, TF 'same' pads bottom/right only) -> 4x4x64
        h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inp)
        h = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="conv2")(h)
        h = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3")(h)
        h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
        return keras.layers.Dense(10, name="fc")(h)  # raw logits, like the ONNX models

    inp = keras.Input((8, 8, 1), name="input")
    model = keras.Model(inp, body(inp))
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, batch_size=32, epochs=80, shuffle=True, verbose=0)

    # Fixed batch 1 for export: the packages declare a fixed [1, ...] input shape.
    inp1 = keras.Input(batch_shape=(1, 8, 8, 1), name="input")
    model1 = keras.Model(inp1, body(inp1))
    model1.set_weights(model.get_weights())
    return model, model1


def digits_onnx_from_keras(kmodel):
    W = {l.name: [w.numpy() for w in l.weights] for l in kmodel.layers if l.weights}
    nodes, inits = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, F32), name))
        return name

    x = "input"
    # pads = [top, left, bottom, right]; TF 'same' with stride 2 on even input pads only
    # bottom/right, which is the whole reason this is built by hand with explicit pads.
    for lname, stride, pads in (("conv1", 1, [1, 1, 1, 1]), ("conv2", 2, [0, 0, 1, 1]), ("conv3", 1, [1, 1, 1, 1])):
        k, b = W[lname]
        wn = init(f"{lname}.weight", k.transpose(3, 2, 0, 1))  # HWIO -> OIHW
        bn = init(f"{lname}.bias", b)
        nodes.append(helper.make_node("Conv", [x, wn, bn], [f"{lname}_out"], name=lname,
                                      kernel_shape=[3, 3], strides=[stride, stride], pads=pads))
        nodes.append(helper.make_node("Relu", [f"{lname}_out"], [f"{lname}_relu"], name=f"{lname}_relu"))
        x = f"{lname}_relu"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap_out"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap_out"], ["flat"], name="flatten", axis=1))
    k, b = W["fc"]
    nodes.append(helper.make_node("Gemm", ["flat", init("fc.weight", k.T), init("fc.bias", b)], ["logits"],
                                  name="fc", transB=1))
    return make_onnx_model(nodes, inits, [1, 1, 8, 8], [1, 10], "digits_cnn")


def tflite_from_keras(kmodel1, rep_inputs, path):
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(kmodel1)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x] for x in rep_inputs)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    Path(path).write_bytes(conv.convert())


def tflite_op_histogram(path):
    # _get_ops_details is private but is the only structured op listing the Python API has.
    it = tflite_interpreter(path)
    c = collections.Counter(d["op_name"] for d in it._get_ops_details())
    return dict(sorted(c.items()))


def digits_split():
    """load_digits as uint8 images (values 0..16), int64 labels, and the train / held-out
    indices every digits package is trained and evaluated on (DIGITS_DATASET)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ds = load_digits()
    assert np.array_equal(ds.images, np.round(ds.images)) and ds.images.max() <= 16
    imgs = ds.images.astype(np.uint8)  # values 0..16
    labels = ds.target.astype(np.int64)
    idx_tr, idx_te = train_test_split(
        np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0
    )
    return imgs, labels, idx_tr, idx_te


def write_digits_heldout(imgs, labels, idx_te):
    """The held-out split as data files, for tests that measure accuracy by running the
    runtime itself (tests/accuracy.rs). Images stay raw (uint8 0..16, maxval 16): a test
    wraps each in the same 8x8 binary PGM that write_pgm makes for the golden samples, so
    it goes through the runtime's own preprocessing exactly as a user's file would.
    Labels are uint8 because beltbox's NPY reader takes <f4, |i1 and |u1 only."""
    d = HERE / DIGITS_HELDOUT_DIR
    d.mkdir(exist_ok=True)
    x = np.ascontiguousarray(imgs[idx_te], np.uint8)
    y = labels[idx_te]
    assert x.shape == (len(idx_te), 8, 8) and int(x.max()) <= 16 and 0 <= y.min() and y.max() <= 9
    np.save(d / "images.npy", x)  # |u1, shape (N, 8, 8), C order, NPY 1.0
    np.save(d / "labels.npy", y.astype(np.uint8))  # |u1, shape (N,)
    counts = np.bincount(y, minlength=10)
    (d / "README.md").write_text(
        "# digits held-out split\n\n"
        "Written by `models/generate.py` (`python3 models/generate.py heldout` writes only this\n"
        "directory); do not edit. Not a model package: the data the `digits-*` packages'\n"
        "`[accuracy]` figures are measured on, for tests that run the runtime on all of it\n"
        "(`tests/accuracy.rs`).\n\n"
        f"- split: {DIGITS_DATASET}: the test part of\n"
        f"  `train_test_split(arange({len(labels)}), test_size=0.2, stratify=target, random_state=0)`,\n"
        "  in the order that call returns\n"
        f"- N = {len(y)}; per class 0..9: {', '.join(str(int(c)) for c in counts)}\n"
        f"- `images.npy`: uint8 (`|u1`), shape ({len(y)}, 8, 8), raw `load_digits` pixel values\n"
        "  0..16 (not scaled)\n"
        f"- `labels.npy`: uint8 (`|u1`), shape ({len(y)},), the digit 0..9 of each image\n\n"
        "To feed a sample to beltbox as a user would, write it as an 8x8 binary PGM with\n"
        "maxval 16 (`P5\\n8 8\\n16\\n` + the 64 bytes, row-major), like the packages' golden\n"
        "inputs: the manifests' preprocessing (`resize = [8, 8]`, gray, scale 1, mean 0,\n"
        "std 1) divides by the maxval, so the model sees pixel / 16 in [0, 1].\n"
    )
    log(f"digits: held-out split written to {d.name}/ ({len(y)} images)")


def build_digits():
    log("digits: training")
    imgs, labels, idx_tr, idx_te = digits_split()
    write_digits_heldout(imgs, labels, idx_te)
    x_tr, x_te = digits_x(imgs[idx_tr]), digits_x(imgs[idx_te])
    y_tr, y_te = labels[idx_tr], labels[idx_te]
    kmodel, kmodel1 = train_digits_keras(x_tr, y_tr)
    k_logits = kmodel.predict(x_te, verbose=0)
    log(f"digits: keras held-out top1 {np.mean(k_logits.argmax(1) == y_te):.4f}")

    # Calibration / representative data: first 200 training images (training order is
    # stratified-shuffled already, so all classes are covered).
    calib_nhwc = [x_tr[i:i + 1] for i in range(200)]
    calib_nchw = [np.ascontiguousarray(a.transpose(0, 3, 1, 2)) for a in calib_nhwc]

    work = Path(tempfile.mkdtemp(prefix="beltbox-digits-"))
    fp32 = work / "fp32.onnx"
    onnx.save(digits_onnx_from_keras(kmodel1), str(fp32))
    variants = {"digits-fp32": ("onnx", "fp32", fp32)}
    for tag, fmt in (("qdq", QuantFormat.QDQ), ("qoperator", QuantFormat.QOperator)):
        p = work / f"{tag}.onnx"
        quantize_onnx(fp32, p, calib_nchw, fmt)
        variants[f"digits-int8-{tag}"] = ("onnx", f"int8-{tag}", p)
    tfl = work / "int8.tflite"
    tflite_from_keras(kmodel1, calib_nhwc, tfl)
    variants["digits-int8-tflite"] = ("tflite", "int8-tflite", tfl)

    # Raw outputs of every variant on every held-out image, through the reference runtimes.
    outs, meta = {}, {}
    for pkg, (fmt, prec, path) in variants.items():
        if fmt == "onnx":
            sess = ort_session(str(path))
            outs[pkg] = np.stack([ort_run(sess, nchw(x))[0] for x in x_te])
            meta[pkg] = {"step": None if prec == "fp32" else output_step(onnx.load(str(path)))}
        else:
            it = tflite_interpreter(path)
            ind, outd = it.get_input_details()[0], it.get_output_details()[0]
            assert list(ind["shape"]) == [1, 8, 8, 1] and ind["dtype"] == np.int8
            assert list(outd["shape"]) == [1, 10] and outd["dtype"] == np.int8
            iq, oq = ind["quantization"], outd["quantization"]
            outs[pkg] = np.stack([tflite_run(it, quantize_input(nhwc(x), *iq))[0] for x in x_te])
            meta[pkg] = {"step": float(oq[0]), "in_name": ind["name"], "iq": iq, "oq": oq}

    # The hand-built graph must be the Keras model, not an approximation of it.
    diff = np.abs(outs["digits-fp32"] - k_logits).max()
    log(f"digits: |onnx fp32 - keras| max {diff:.2e}")
    assert diff < 1e-4, diff

    acc = {pkg: float(np.mean(o.argmax(1) == y_te)) for pkg, o in outs.items()}
    for pkg, a in acc.items():
        log(f"digits: {pkg} held-out top1 {a:.4f} ({int(round(a * len(y_te)))}/{len(y_te)})")
        assert abs(a - acc["digits-fp32"]) <= 0.01, f"{pkg} more than 1 point off fp32"

    # A few points of slack under the measured FP32 accuracy, rounded down to 0.05.
    floor = math.floor((acc["digits-fp32"] - 0.03) * 20) / 20

    # Golden samples: the same held-out images for all four variants; every variant must
    # classify them correctly with a top-1 margin of >= 3 output steps (fp32: >= 3 of the
    # coarsest int8 step of the family, in logit units).
    coarse = max(meta[p]["step"] for p in variants if meta[p]["step"] is not None)
    ok = np.ones(len(y_te), bool)
    for pkg, o in outs.items():
        step = meta[pkg]["step"]
        ok &= o.argmax(1) == y_te
        if pkg == "digits-int8-tflite":
            srt = np.sort(o.astype(np.int32), 1)
            ok &= (srt[:, -1] - srt[:, -2]) >= 3
        else:
            ok &= np.array([margin_steps(v, step or coarse) >= 3 - 1e-3 for v in o])
    # One image for each of the first 8 classes that have a candidate, first in held-out order.
    chosen = []
    for c in range(10):
        cand = np.flatnonzero(ok & (y_te == c))
        if len(cand):
            chosen.append(int(cand[0]))
        if len(chosen) == DIGITS_N_GOLDEN:
            break
    assert len(chosen) >= 4, "not enough golden candidates"
    log(f"digits: golden held-out indices {chosen} ({int(ok.sum())} candidates)")

    for pkg, (fmt, prec, path) in variants.items():
        d = fresh_dir(pkg)
        mfile = "model.onnx" if fmt == "onnx" else "model.tflite"
        shutil.copyfile(path, d / mfile)
        (d / "labels.txt").write_text("".join(f"{i}\n" for i in range(10)))
        samples = []
        for n, i in enumerate(chosen):
            write_pgm(d / f"golden/{n:03d}.pgm", imgs[idx_te[i]], 16)
            np.save(d / f"golden/{n:03d}.out.npy", outs[pkg][i][None])  # shape [1, 10]
            samples.append({"input": f"golden/{n:03d}.pgm", "output": f"golden/{n:03d}.out.npy",
                            "label": int(y_te[i])})
        kind = {"fp32": "FP32 reference", "int8-qdq": "INT8 QDQ (ONNX Runtime static quantisation, per-channel)",
                "int8-qoperator": "INT8 QOperator (ONNX Runtime static quantisation, per-channel)",
                "int8-tflite": "INT8 TFLite (full-integer post-training quantisation, int8 in/out)"}[prec]
        inp = {"name": "input", "shape": [1, 1, 8, 8], "dtype": "float32", "layout": "nchw",
               "preprocess": DIGITS_PRE}
        out = {"name": "logits", "shape": [1, 10], "dtype": "float32", "task": "classification",
               "labels": "labels.txt", "scores": "logits"}
        if fmt == "tflite":
            mt = meta[pkg]
            inp.update(name=mt["in_name"], shape=[1, 8, 8, 1], dtype="int8", layout="nhwc",
                       quantization={"scale": float(mt["iq"][0]), "zero_point": int(mt["iq"][1])})
            out_name = tflite_interpreter(path).get_output_details()[0]["name"]
            out.update(name=out_name, dtype="int8",
                       quantization={"scale": float(mt["oq"][0]), "zero_point": int(mt["oq"][1])})
        step = meta[pkg]["step"]
        write_package(d, {
            "name": pkg, "version": "1.0.0",
            "description": f"8x8 digits CNN (3x Conv3x3+ReLU, GlobalAveragePool, Dense), {kind}; "
                           f"trained with Keras on sklearn load_digits",
            "accuracy_floor": floor,
            "model": {"file": mfile, "format": fmt, "precision": prec},
            "input": inp, "outputs": [out],
            "budgets": {"ram_mib": 64, "p95_ms": 5.0},
            "accuracy": {"heldout_top1": acc[pkg], "heldout_samples": len(y_te), "dataset": DIGITS_DATASET},
            "golden": {"atol": step if step else 0.0, "rtol": 0.0 if step else 1e-4, "samples": samples},
        })
        if fmt == "onnx":
            hist = op_histogram(onnx.load(str(d / mfile)))
        else:
            hist = tflite_op_histogram(d / mfile)
        extra = f"; held-out top-1 {acc[pkg]:.4f} ({int(round(acc[pkg] * len(y_te)))}/{len(y_te)})"
        extra += f"; golden atol {step}" if step else "; golden rtol 1e-4"
        if fmt == "tflite":
            extra += (f"; input `{inp['name']}` int8 scale {inp['quantization']['scale']!r} zp "
                      f"{inp['quantization']['zero_point']}; output `{out['name']}` int8 scale "
                      f"{out['quantization']['scale']!r} zp {out['quantization']['zero_point']}")
        summarise(pkg, d / mfile, hist, extra)
    shutil.rmtree(work)


# --------------------------------------------------------------------------------------
# Family 2: MobileNetV2-shaped benchmark network (random weights)
# --------------------------------------------------------------------------------------

IMAGENET_PRE = {"resize": [224, 224], "color": "rgb", "scale": 1.0,
                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
MBV2_TABLE = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1)]  # (expansion t, out channels c, repeats n, stride s)
MBV2_N_GOLDEN = 6


def mbv2_program():
    """Layer list: ('conv', name, cin, cout, k, stride, groups, relu6) and residual markers."""
    prog = [("conv", "stem", 3, 32, 3, 2, 1, True)]
    cin, b = 32, 0
    for t, c, n, s in MBV2_TABLE:
        for i in range(n):
            stride = s if i == 0 else 1
            hid = cin * t
            residual = stride == 1 and cin == c
            if residual:
                prog.append(("save",))
            if t != 1:
                prog.append(("conv", f"b{b}.expand", cin, hid, 1, 1, 1, True))
            prog.append(("conv", f"b{b}.dw", hid, hid, 3, stride, hid, True))
            prog.append(("conv", f"b{b}.project", hid, c, 1, 1, 1, False))
            if residual:
                prog.append(("add", f"b{b}"))
            cin, b = c, b + 1
    assert b == 17
    prog.append(("conv", "head", cin, 1280, 1, 1, 1, True))
    prog.append(("classifier",))
    return prog


def mbv2_graph(params, batch=1, stop_at=None):
    """ONNX model from params; stop_at = a conv name (its pre-activation becomes the
    output) or 'features' (the pooled 1280-vector); batch may be symbolic."""
    nodes, inits, saved = [], [], []
    inits += [numpy_helper.from_array(np.array(0, F32), "relu6.min"),
              numpy_helper.from_array(np.array(6, F32), "relu6.max")]
    x = "input"
    for op in mbv2_program():
        if op[0] == "save":
            saved.append(x)
        elif op[0] == "add":
            nodes.append(helper.make_node("Add", [saved.pop(), x], [f"{op[1]}.add"], name=f"{op[1]}.add"))
            x = f"{op[1]}.add"
        elif op[0] == "conv":
            _, name, cin, cout, k, s, g, relu6 = op
            w, bias = params[name]
            inits += [numpy_helper.from_array(w, f"{name}.weight"), numpy_helper.from_array(bias, f"{name}.bias")]
            p = k // 2
            nodes.append(helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [f"{name}.out"], name=name,
                                          kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, group=g))
            x = f"{name}.out"
            if name == stop_at:
                break
            if relu6:
                nodes.append(helper.make_node("Clip", [x, "relu6.min", "relu6.max"], [f"{name}.relu6"],
                                              name=f"{name}.relu6"))
                x = f"{name}.relu6"
        elif op[0] == "classifier":
            nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap.out"], name="gap"))
            nodes.append(helper.make_node("Flatten", ["gap.out"], ["features"], name="flatten", axis=1))
            x = "features"
            if stop_at == "features":
                break
            w, bias = params["fc"]
            inits += [numpy_helper.from_array(w, "fc.weight"), numpy_helper.from_array(bias, "fc.bias")]
            nodes.append(helper.make_node("Gemm", ["features", "fc.weight", "fc.bias"], ["logits"], name="fc",
                                          transB=1))
            x = "logits"
    graph = helper.make_graph(
        nodes, "mobilenetv2_bench",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 224, 224])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, producer_name="beltbox-models", opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def synthetic_images(seed, n):
    """Smooth random RGB patterns, uint8 HxWx3: low-frequency noise (a few random grid
    sizes, bilinearly upsampled), plus a grating, with per-image colour cast and contrast
    so that globally pooled features differ from image to image."""
    rng = np.random.default_rng(seed)
    H = 224

    def up(g):  # separable bilinear upsample with half-pixel centres, s x s -> H x H
        s = g.shape[0]
        src = np.clip((np.arange(H) + 0.5) * s / H - 0.5, 0, s - 1)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, s - 1)
        f = src - i0
        M = np.zeros((H, s))
        M[np.arange(H), i0] += 1 - f
        M[np.arange(H), i1] += f
        return np.einsum("hs,stc,wt->hwc", M, g, M)

    out = []
    yy, xx = np.mgrid[0:H, 0:H] / H
    for _ in range(n):
        img = np.zeros((H, H, 3))
        for s in rng.choice([3, 5, 8, 14, 28], size=2, replace=False):
            img += up(rng.normal(size=(s, s, 3))) * rng.uniform(0.3, 1.0)
        th, fr = rng.uniform(0, np.pi), rng.uniform(2, 12)
        grating = np.sin(2 * np.pi * fr * (np.cos(th) * xx + np.sin(th) * yy) + rng.uniform(0, 2 * np.pi))
        img += grating[:, :, None] * rng.uniform(0, 1.0, size=3)
        img = img / (img.std() + 1e-6) * rng.uniform(30, 70) + 128 + rng.normal(0, 40, size=3)
        out.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
    return out


def mbv2_x(img):
    p = IMAGENET_PRE
    return nchw(preprocess(img, 255, p["scale"], p["mean"], p["std"]))


def mbv2_params(norm_batch, pca_batch):
    """Deterministic random weights with BatchNorm 'folded' from statistics measured on
    synthetic images (a data-dependent init), tuned so that the network behaves like a
    trained one numerically: activations in a realistic ReLU6 range, outputs that depend
    smoothly on the input (INT8 noise is not amplified) and that differ between images.

    The naive version (He init, per-channel renormalisation) is chaotic: random 3x3
    depthwise filters are high-pass, and renormalising each channel to unit variance blows
    their noise up layer after layer, so INT8 agreed with FP32 on under 20% of images.
    """
    rng = np.random.default_rng(1234)
    params = {}
    convs = [op for op in mbv2_program() if op[0] == "conv"]
    yy, xx = np.mgrid[-1:2, -1:2]
    blur = np.exp(-(yy ** 2 + xx ** 2) / 2.0)
    blur /= blur.sum()
    for _, name, cin, cout, k, s, g, relu6 in convs:
        if g > 1:  # depthwise: perturbed low-pass kernels, as trained MobileNets mostly have
            w = blur[None, None] * (1 + 0.1 * rng.normal(size=(cout, 1, 3, 3)))
        else:  # He init
            w = rng.normal(size=(cout, cin // g, k, k)) * np.sqrt(2.0 / ((cin // g) * k * k))
        params[name] = [w.astype(F32), np.zeros(cout, F32)]

    def run(stop_at, x):
        sess = ort_session(mbv2_graph(params, batch="N", stop_at=stop_at).SerializeToString())
        return ort_run(sess, x).astype(np.float64)

    # Layer by layer: one scale per layer (so weak channels stay weak instead of having
    # their noise amplified), per-channel bias to a random mean; target std per channel
    # gamma, mean beta (in units of the layer's std).
    for _, name, cin, cout, k, s, g, relu6 in convs:
        y = run(name, norm_batch)
        mu = y.mean(axis=(0, 2, 3))
        sd = (y - mu[None, :, None, None]).std() + 1e-3
        if relu6:
            gamma, beta = rng.uniform(1.0, 2.0, cout), rng.normal(0.5, 0.5, cout)
        else:  # linear bottleneck; a bit smaller so residual sums stay moderate
            gamma, beta = rng.uniform(0.5, 1.0, cout), rng.normal(0.0, 0.2, cout)
        a = gamma / sd
        params[name] = [(params[name][0] * a[:, None, None, None]).astype(F32), (beta - mu * a).astype(F32)]

    # Classifier: random mixtures of the top 16 principal directions of the pooled
    # features. A plain random 1000x1280 matrix mostly reads directions in which the
    # images do not differ (i.e. quantisation noise); the bias centres every logit.
    f = np.concatenate([run("features", norm_batch), run("features", pca_batch)])
    mean = f.mean(0)
    vt = np.linalg.svd(f - mean, full_matrices=False)[2]
    w = rng.normal(size=(1000, 16)) @ vt[:16]
    a = 4.0 / ((f - mean) @ w.T).std()  # logits spread ~ 4 across classes and images
    params["fc"] = [(w * a).astype(F32), (-(mean @ w.T) * a).astype(F32)]
    return params


def build_mobilenet():
    log("mobilenetv2: data-dependent init")
    # Disjoint synthetic sets: init statistics, calibration, evaluation/golden.
    norm_imgs = synthetic_images(100, 16)
    pca_imgs = synthetic_images(400, 48)
    calib_imgs = synthetic_images(200, 32)
    eval_imgs = synthetic_images(300, 64)
    params = mbv2_params(np.concatenate([mbv2_x(i) for i in norm_imgs]),
                         np.concatenate([mbv2_x(i) for i in pca_imgs]))

    work = Path(tempfile.mkdtemp(prefix="beltbox-mbv2-"))
    fp32 = work / "fp32.onnx"
    model = mbv2_graph(params)
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000]))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(fp32))
    variants = {"mobilenetv2-bench-fp32": ("fp32", fp32)}
    calib = [mbv2_x(i) for i in calib_imgs]
    for tag, fmt in (("qdq", QuantFormat.QDQ), ("qoperator", QuantFormat.QOperator)):
        log(f"mobilenetv2: quantising {tag}")
        p = work / f"{tag}.onnx"
        quantize_onnx(fp32, p, calib, fmt)
        variants[f"mobilenetv2-bench-int8-{tag}"] = (f"int8-{tag}", p)

    log("mobilenetv2: evaluating")
    xs = [mbv2_x(i) for i in eval_imgs]
    outs, steps = {}, {}
    for pkg, (prec, path) in variants.items():
        sess = ort_session(str(path))
        outs[pkg] = np.stack([ort_run(sess, x)[0] for x in xs])
        steps[pkg] = None if prec == "fp32" else output_step(onnx.load(str(path)))
    ref = outs["mobilenetv2-bench-fp32"].argmax(1)
    agree = {pkg: float(np.mean(o.argmax(1) == ref)) for pkg, o in outs.items()}
    log(f"mobilenetv2: fp32 top-1 classes on eval images: {sorted(set(ref.tolist()))}")
    log(f"mobilenetv2: fp32 logits range [{outs['mobilenetv2-bench-fp32'].min():.2f}, "
        f"{outs['mobilenetv2-bench-fp32'].max():.2f}]; agreement {agree}")

    coarse = max(s for s in steps.values() if s)
    ok = np.ones(len(xs), bool)
    for pkg, o in outs.items():
        ok &= o.argmax(1) == ref
        ok &= np.array([margin_steps(v, steps[pkg] or coarse) >= 3 - 1e-3 for v in o])
    # Largest INT8 margins first (the threshold is a floor, not a target), and distinct
    # labels so that a runtime returning a constant class cannot pass.
    min_margin = np.min([[margin_steps(v, steps[p]) for v in outs[p]] for p in outs if steps[p]], axis=0)
    chosen, seen = [], set()
    for i in sorted(np.flatnonzero(ok), key=lambda i: (-min_margin[i], i)):
        if int(ref[i]) not in seen:
            chosen.append(int(i))
            seen.add(int(ref[i]))
        if len(chosen) == MBV2_N_GOLDEN:
            break
    assert len(chosen) >= 4, f"only {len(chosen)} golden candidates"
    log(f"mobilenetv2: golden eval indices {chosen} labels {[int(ref[i]) for i in chosen]} "
        f"({int(ok.sum())} candidates)")

    for pkg, (prec, path) in variants.items():
        d = fresh_dir(pkg)
        shutil.copyfile(path, d / "model.onnx")
        (d / "labels.txt").write_text("".join(f"class_{i}\n" for i in range(1000)))
        samples = []
        for n, i in enumerate(chosen):
            write_png(d / f"golden/{n:03d}.png", eval_imgs[i])
            np.save(d / f"golden/{n:03d}.out.npy", outs[pkg][i][None])  # shape [1, 1000]
            samples.append({"input": f"golden/{n:03d}.png", "output": f"golden/{n:03d}.out.npy",
                            "label": int(ref[i])})
        kind = {"fp32": "FP32", "int8-qdq": "INT8 QDQ (ONNX Runtime static quantisation, per-channel)",
                "int8-qoperator": "INT8 QOperator (ONNX Runtime static quantisation, per-channel)"}[prec]
        step = steps[pkg]
        write_package(d, {
            "name": pkg, "version": "1.0.0",
            "description": f"MobileNetV2-shaped network (17 inverted residual blocks, 224x224) with "
                           f"deterministic random weights, {kind}. Exists to measure speed and memory; "
                           f"its outputs are not meaningful classes and the accuracy figure is top-1 "
                           f"agreement with the FP32 model on synthetic images",
            "accuracy_floor": 0.0,
            "model": {"file": "model.onnx", "format": "onnx", "precision": prec},
            "input": {"name": "input", "shape": [1, 3, 224, 224], "dtype": "float32", "layout": "nchw",
                      "preprocess": IMAGENET_PRE},
            "outputs": [{"name": "logits", "shape": [1, 1000], "dtype": "float32", "task": "classification",
                         "labels": "labels.txt", "scores": "logits"}],
            "budgets": {"ram_mib": 256, "p95_ms": 200.0},
            "accuracy": {"heldout_top1": agree[pkg], "heldout_samples": len(xs),
                         "dataset": f"top-1 agreement with mobilenetv2-bench-fp32 on {len(xs)} synthetic 224x224 "
                                    "images (no real dataset; random weights)"},
            "golden": {"atol": step if step else 0.0, "rtol": 0.0 if step else 1e-4, "samples": samples},
        })
        extra = f"; top-1 agreement with fp32 {agree[pkg]:.4f} on {len(xs)} synthetic images"
        extra += f"; golden atol {step}" if step else "; golden rtol 1e-4"
        summarise(pkg, d / "model.onnx", op_histogram(onnx.load(str(d / "model.onnx"))), extra)
    shutil.rmtree(work)


# --------------------------------------------------------------------------------------


def update_readme():
    """Replace the generated part of README.md (after the marker) with this run's summary."""
    readme = HERE / "README.md"
    marker = "<!-- everything below is written by generate.py -->"
    head = readme.read_text().split(marker)[0] if readme.exists() else ""
    import tensorflow as tf

    versions = (f"Generated with Python {sys.version.split()[0]}, numpy {np.__version__}, onnx {onnx.__version__}, "
                f"onnxruntime {ort.__version__}, tensorflow {tf.__version__}.\n")
    readme.write_text(head + marker + "\n\n" + versions + "\n" + "\n".join(SUMMARY))


def main():
    which = sys.argv[1:] or ["digits", "mobilenet"]
    if "digits" in which:
        build_digits()  # writes the held-out split too
    elif "heldout" in which:  # the held-out split only (no training, no TensorFlow)
        imgs, labels, _, idx_te = digits_split()
        write_digits_heldout(imgs, labels, idx_te)
    if "mobilenet" in which:
        build_mobilenet()
    if set(which) == {"digits", "mobilenet"}:
        update_readme()
    log("done")


if __name__ == "__main__":
    main()
