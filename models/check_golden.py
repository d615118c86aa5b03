#!/usr/bin/env python3
"""Re-verify every model package under models/ against docs/model-package.md.

Deliberately independent of generate.py (own TOML-schema check, PNG/PGM readers and
preprocessing), so a bug in the generator is not simply repeated here:

  * manifest keys are exactly the spec's (the Rust parser rejects unknown keys)
  * [files] lists every file of the package (except manifest.toml) with a matching sha256
  * the manifest's I/O names, shapes, dtypes and quantisation match the model file
  * every golden output is reproduced by the reference runtime from the golden image
    (int8 raw outputs bit-exact, float outputs within 1e-5)
  * every golden sample is classified as its label with a top-1 margin of >= 3 output
    quantisation steps (int8) / >= 3x the family's coarsest int8 step (fp32)

It also reports, for information only, how far other plausible implementations of the
same model are from the goldens (ORT without graph optimisation = the literal QDQ float
semantics; TFLite's optimised builtin kernels and XNNPACK, where the goldens come from
TFLite's reference kernels), in output steps.

Usage: python3 models/check_golden.py [package-dir ...]   (exit status 1 on any failure)
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hashlib
import struct
import sys
import tomllib
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
F32 = np.float32

# Spec schema: table -> (required keys, optional keys)
SCHEMA = {
    "": ({"name", "version", "description", "accuracy_floor", "model", "input", "outputs", "budgets",
          "accuracy", "golden", "files"}, set()),
    "model": ({"file", "format", "precision"}, set()),
    "input": ({"name", "shape", "dtype", "layout"}, {"preprocess", "quantization"}),
    "input.preprocess": ({"resize", "color", "scale", "mean", "std"}, set()),
    "quantization": ({"scale", "zero_point"}, set()),
    "outputs": ({"name", "shape", "dtype", "task"}, {"labels", "scores", "quantization"}),
    "budgets": ({"ram_mib", "p95_ms"}, set()),
    "accuracy": ({"heldout_top1", "heldout_samples", "dataset"}, set()),
    "golden": ({"atol", "rtol", "samples"}, set()),
    "golden.samples": ({"input", "output", "label"}, set()),
}


class Failure(Exception):
    pass


def need(cond, msg):
    if not cond:
        raise Failure(msg)


def check_keys(table, d, where):
    req, opt = SCHEMA[table]
    need(isinstance(d, dict), f"{where} is not a table")
    missing, unknown = req - d.keys(), d.keys() - req - opt
    need(not missing, f"{where}: missing keys {sorted(missing)}")
    need(not unknown, f"{where}: unknown keys {sorted(unknown)}")


def check_schema(m):
    check_keys("", m, "manifest")
    check_keys("model", m["model"], "[model]")
    check_keys("input", m["input"], "[input]")
    if "preprocess" in m["input"]:
        check_keys("input.preprocess", m["input"]["preprocess"], "[input.preprocess]")
    quantised_in = m["input"]["dtype"] in ("int8", "uint8")
    need(quantised_in == ("quantization" in m["input"]), "[input.quantization] iff int8/uint8 input")
    if quantised_in:
        check_keys("quantization", m["input"]["quantization"], "[input.quantization]")
    need(isinstance(m["outputs"], list) and m["outputs"], "[[outputs]] missing")
    for o in m["outputs"]:
        check_keys("outputs", o, "[[outputs]]")
        need((o["dtype"] in ("int8", "uint8")) == ("quantization" in o), "[outputs.quantization] iff int8/uint8")
        if "quantization" in o:
            check_keys("quantization", o["quantization"], "[outputs.quantization]")
    check_keys("budgets", m["budgets"], "[budgets]")
    check_keys("accuracy", m["accuracy"], "[accuracy]")
    check_keys("golden", m["golden"], "[golden]")
    for s in m["golden"]["samples"]:
        check_keys("golden.samples", s, "[[golden.samples]]")
    need(4 <= len(m["golden"]["samples"]) <= 8, "want 4..8 golden samples")
    need(m["version"] == "1.0.0", "version")
    need(m["model"]["format"] in ("onnx", "tflite"), "format")
    need(m["model"]["precision"] in ("fp32", "int8-qdq", "int8-qoperator", "int8-tflite"), "precision")
    need(m["input"]["layout"] in ("nchw", "nhwc"), "layout")
    for v in (m["accuracy_floor"], m["accuracy"]["heldout_top1"], m["golden"]["atol"], m["golden"]["rtol"],
              m["budgets"]["p95_ms"]):
        need(isinstance(v, float), f"{v!r} should be a TOML float")


def check_files(pkg, m):
    on_disk = {p.relative_to(pkg).as_posix() for p in pkg.rglob("*") if p.is_file()} - {"manifest.toml"}
    listed = set(m["files"])
    need(on_disk == listed, f"[files] vs disk: unlisted {sorted(on_disk - listed)}, missing {sorted(listed - on_disk)}")
    for f, h in m["files"].items():
        need(".." not in f.split("/") and not f.startswith("/"), f"bad path {f}")
        need(hashlib.sha256((pkg / f).read_bytes()).hexdigest() == h, f"sha256 mismatch: {f}")
    named = {m["model"]["file"]} | {o["labels"] for o in m["outputs"] if "labels" in o}
    named |= {s[k] for s in m["golden"]["samples"] for k in ("input", "output")}
    need(named <= listed, f"named but not in [files]: {sorted(named - listed)}")


# ---- image readers ---------------------------------------------------------------------


def read_pgm(path):
    data = Path(path).read_bytes()
    need(data[:2] == b"P5", "not a binary PGM")
    fields, pos = [], 2
    while len(fields) < 3:
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos)
            continue
        end = pos
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(int(data[pos:end]))
        pos = end
    w, h, maxval = fields
    need(0 < maxval < 256, "16-bit PGM not expected here")
    pix = np.frombuffer(data[pos + 1:pos + 1 + w * h], np.uint8).reshape(h, w, 1)
    need(int(pix.max()) <= maxval, "pixel above maxval")
    return pix, maxval


def read_png(path):
    data = Path(path).read_bytes()
    need(data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG")
    pos, idat, hdr = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        need(struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(kind + body) & 0xFFFFFFFF,
             "PNG CRC")
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = hdr
    need(depth == 8 and ctype in (0, 2) and interlace == 0, "only 8-bit gray/RGB, non-interlaced")
    ch = 3 if ctype == 2 else 1
    raw, stride = zlib.decompress(idat), w * ch
    out = np.zeros((h, stride), np.int32)
    prev = np.zeros(stride, np.int32)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        cur = np.zeros(stride, np.int32)
        for i in range(stride):
            a = cur[i - ch] if i >= ch else 0
            b, c = prev[i], (prev[i - ch] if i >= ch else 0)
            if f == 0:
                pred = 0
            elif f == 1:
                pred = a
            elif f == 2:
                pred = b
            elif f == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[i] = (line[i] + pred) & 0xFF
        out[y], prev = cur, cur
    return out.astype(np.uint8).reshape(h, w, ch), 255


def load_input(pkg, m, rel):
    inp = m["input"]
    if rel.endswith(".npy"):
        return np.load(pkg / rel)
    pix, maxval = read_pgm(pkg / rel) if rel.endswith(".pgm") else read_png(pkg / rel)
    pre = inp["preprocess"]
    need(list(pix.shape[:2]) == pre["resize"], "golden images are stored at model resolution (no resize)")
    need(pix.shape[2] == (1 if pre["color"] == "gray" else 3), "channel count vs color")
    x = pix.astype(F32) / F32(maxval)
    x = x * F32(pre["scale"])
    x = (x - np.asarray(pre["mean"], F32)) / np.asarray(pre["std"], F32)
    x = x[None] if inp["layout"] == "nhwc" else x.transpose(2, 0, 1)[None]
    if inp["dtype"] != "float32":
        q = inp["quantization"]
        lo, hi = (-128, 127) if inp["dtype"] == "int8" else (0, 255)
        x = np.clip(np.round(x / F32(q["scale"])) + F32(q["zero_point"]), lo, hi).astype(inp["dtype"])
    need(list(x.shape) == inp["shape"], "preprocessed shape vs [input].shape")
    return np.ascontiguousarray(x)


# ---- reference runtimes ----------------------------------------------------------------


class OrtRunner:
    def __init__(self, path, m, optimized=True):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        if not optimized:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        i, o = self.s.get_inputs()[0], self.s.get_outputs()
        need(i.name == m["input"]["name"] and list(i.shape) == m["input"]["shape"], "ONNX input vs manifest")
        need(i.type == "tensor(float)" and m["input"]["dtype"] == "float32", "ONNX input dtype")
        need([x.name for x in o] == [x["name"] for x in m["outputs"]], "ONNX outputs vs manifest")
        need(all(list(a.shape) == b["shape"] for a, b in zip(o, m["outputs"])), "ONNX output shapes")

    def __call__(self, x):
        return self.s.run(None, {self.s.get_inputs()[0].name: x})[0]


class TfliteRunner:
    def __init__(self, path, m, resolver="BUILTIN_REF"):
        import tensorflow as tf

        self.it = tf.lite.Interpreter(
            model_path=str(path), num_threads=1,
            experimental_op_resolver_type=getattr(tf.lite.experimental.OpResolverType, resolver))
        self.it.allocate_tensors()
        i, o = self.it.get_input_details()[0], self.it.get_output_details()
        mi = m["input"]
        need(i["name"] == mi["name"] and list(i["shape"]) == mi["shape"], "tflite input vs manifest")
        need(np.dtype(i["dtype"]).name == mi["dtype"], "tflite input dtype")
        need(i["quantization"] == (F32(mi["quantization"]["scale"]), mi["quantization"]["zero_point"]),
             "tflite input quantization vs manifest")
        need([x["name"] for x in o] == [x["name"] for x in m["outputs"]], "tflite outputs vs manifest")
        for a, b in zip(o, m["outputs"]):
            need(list(a["shape"]) == b["shape"] and np.dtype(a["dtype"]).name == b["dtype"], "tflite output")
            if "quantization" in b:
                need(a["quantization"] == (F32(b["quantization"]["scale"]), b["quantization"]["zero_point"]),
                     "tflite output quantization vs manifest")

    def __call__(self, x):
        self.it.set_tensor(self.it.get_input_details()[0]["index"], x)
        self.it.invoke()
        return self.it.get_tensor(self.it.get_output_details()[0]["index"]).copy()


def dequant(y, out):
    if "quantization" in out:
        q = out["quantization"]
        return (y.astype(np.float64) - q["zero_point"]) * q["scale"]
    return y.astype(np.float64)


def margin(v):
    s = np.sort(v.ravel())
    return s[-1] - s[-2]


def check_package(pkg, manifests):
    m = manifests[pkg]
    check_schema(m)
    need(m["name"] == pkg.name, "name vs directory")
    check_files(pkg, m)
    out = m["outputs"][0]
    labels = (pkg / out["labels"]).read_text().splitlines()
    need(len(labels) == int(np.prod(out["shape"])), "labels.txt length vs output size")

    model = pkg / m["model"]["file"]
    if m["model"]["format"] == "onnx":
        run = OrtRunner(model, m)
        alt = {"ORT_DISABLE_ALL": OrtRunner(model, m, optimized=False)}
    else:
        run = TfliteRunner(model, m)
        alt = {r: TfliteRunner(model, m, r) for r in ("BUILTIN_WITHOUT_DEFAULT_DELEGATES", "AUTO")}  # AUTO = XNNPACK

    g = m["golden"]
    if m["model"]["precision"] == "fp32":
        need(g["atol"] == 0.0 and g["rtol"] == 1e-4, "fp32 golden tolerances")
        # fp32: the family's coarsest INT8 step (the same images are used across the family)
        family = pkg.name[: -len("-fp32")]
        steps = [manifests[p]["golden"]["atol"] if "quantization" not in manifests[p]["outputs"][0]
                 else manifests[p]["outputs"][0]["quantization"]["scale"]
                 for p in manifests if p.name.startswith(family + "-int8")]
        step = max(steps) if steps else None
    else:
        need(g["rtol"] == 0.0, "int8 rtol")
        step = out["quantization"]["scale"] if "quantization" in out else g["atol"]
        need(g["atol"] == step, "int8 atol must be one output step")
    if m["model"]["format"] == "onnx" and m["model"]["precision"] != "fp32":
        import onnx

        om = onnx.load(str(model))
        node = next(n for n in om.graph.node if out["name"] in n.output)
        need(node.op_type == "DequantizeLinear", "output not produced by DequantizeLinear")
        sc = next(i for i in om.graph.initializer if i.name == node.input[1])
        need(float(onnx.numpy_helper.to_array(sc)) == g["atol"], "atol != final DequantizeLinear scale")

    worst_alt = {k: 0.0 for k in alt}
    margins = []
    for s in g["samples"]:
        x = load_input(pkg, m, s["input"])
        ref = np.load(pkg / s["output"])
        need(list(ref.shape) == out["shape"] and ref.dtype.name == out["dtype"], f"{s['output']} shape/dtype")
        need(ref.dtype.byteorder in ("<", "=", "|") and ref.flags.c_contiguous, f"{s['output']} layout")
        y = run(x)
        if ref.dtype == np.float32:
            need(np.abs(y - ref).max() <= 1e-5, f"{s['input']}: output differs by {np.abs(y - ref).max()}")
        else:
            need(np.array_equal(y, ref), f"{s['input']}: int8 output not bit-exact")
        deq = dequant(ref, out)
        need(int(np.argmax(deq)) == s["label"], f"{s['input']}: top-1 {np.argmax(deq)} != label {s['label']}")
        tol = g["atol"] + g["rtol"] * np.abs(deq).max()
        mg = margin(deq)
        margins.append(mg / step if step else mg)
        need(mg >= 3 * tol, f"{s['input']}: margin {mg} < 3x golden tolerance")
        if step:
            need(mg >= 3 * step * (1 - 1e-6), f"{s['input']}: margin {mg / step:.2f} steps < 3")
        for k, r in alt.items():
            worst_alt[k] = max(worst_alt[k], float(np.abs(dequant(r(x), out) - deq).max()))
    unit = step or 1.0
    alt_txt = ", ".join(f"{k} max diff {v / unit:.3g} steps" for k, v in worst_alt.items())
    return (f"{len(g['samples'])} goldens ok, min margin {min(margins):.1f} "
            f"{'steps' if step else '(logits)'}; {alt_txt}")


def main():
    pkgs = [Path(p).resolve() for p in sys.argv[1:]] or sorted(
        p for p in HERE.iterdir() if (p / "manifest.toml").is_file())
    manifests = {}
    for p in sorted(p for p in HERE.iterdir() if (p / "manifest.toml").is_file()) + pkgs:
        with open(p / "manifest.toml", "rb") as f:
            manifests[p] = tomllib.load(f)
    bad = 0
    for p in pkgs:
        try:
            print(f"OK   {p.name}: {check_package(p, manifests)}", flush=True)
        except Failure as e:
            bad += 1
            print(f"FAIL {p.name}: {e}", flush=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
