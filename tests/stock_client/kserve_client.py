#!/usr/bin/env python3
"""The service against a stock KServe v2 client (NVIDIA's tritonclient[http]), unchanged.

Starts `beltbox run` on a free loopback port, then uses only tritonclient's public API:
health, server/model metadata, inference with JSON and binary tensors, the classification
extension, request compression (gzip, deflate), 720p and 1080p camera frames (binary UINT8
and PNG), and error reporting. Then two more packages: a two-input model written here with
`onnx` (an INT64 input, INT64 and BOOL outputs; expectations computed with numpy), and the
real PicoDet layout detector with a `[detection]` section (when the real-model cache exists),
whose boxes come back in the response parameters. Exits non-zero on the first mismatch.

    python3 tests/stock_client/kserve_client.py target/debug/beltbox

(`bash tests/stock_client/run.sh` creates the virtualenv with the pinned client first.)
"""
import os
import re
import signal
import struct
import subprocess
import sys
import time
import tomllib
import urllib.request
import zlib

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = "digits-int8-qdq"


def start(binary, *args):
    proc = subprocess.Popen(
        [binary, "run", "--listen", "127.0.0.1:0", *args],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RUST_LOG": "info"},
    )
    deadline = time.time() + 60
    url = None
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r"listening on http://(\S+)", line)
        if m:
            url = m.group(1)
        if "ready: serving" in line:
            return proc, url
    proc.kill()
    sys.exit("beltbox did not become ready")


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok   {what}")


def golden():
    pkg = os.path.join(REPO, "models", MODEL)
    with open(os.path.join(pkg, "manifest.toml"), "rb") as f:
        manifest = tomllib.load(f)
    return [(os.path.join(pkg, s["input"]), s["label"]) for s in manifest["golden"]["samples"]]


def pgm_pixels(path):
    data = open(path, "rb").read()
    # P5 header: magic, width, height, maxval, then one whitespace byte.
    fields = data.split(maxsplit=4)
    w, h, maxval = int(fields[1]), int(fields[2]), int(fields[3])
    pixels = np.frombuffer(fields[4][: w * h], dtype=np.uint8)
    return pixels.reshape(h, w), maxval


def main():
    proc, url = start(sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "target/debug/beltbox"))
    try:
        c = httpclient.InferenceServerClient(url=url)
        check(c.is_server_live(), "is_server_live")
        check(c.is_server_ready(), "is_server_ready")
        check(c.is_model_ready(MODEL), "is_model_ready")
        check(not c.is_model_ready("no-such-model"), "is_model_ready is false for an unknown model")
        meta = c.get_model_metadata(MODEL)
        check(meta["inputs"][0]["shape"] == [1, 1, 8, 8] and meta["inputs"][0]["datatype"] == "FP32",
              "model metadata: input FP32 [1,1,8,8]")
        check(c.get_server_metadata()["name"] == "beltbox", "server metadata")

        for path, label in golden():
            pgm = open(path, "rb").read()
            inp = httpclient.InferInput("input", [1], "BYTES")
            inp.set_data_from_numpy(np.array([pgm], dtype=np.object_), binary_data=True)
            out = httpclient.InferRequestedOutput("logits", binary_data=True, class_count=3)
            r = c.infer(MODEL, [inp], outputs=[out], request_id=os.path.basename(path))
            top = r.as_numpy("logits")[0].decode()
            check(int(top.split(":")[1]) == label, f"{os.path.basename(path)}: classification top-1 {top} is label {label}")
            check(r.get_response()["id"] == os.path.basename(path), "request id echoed")

            pixels, maxval = pgm_pixels(path)
            x = (pixels.astype(np.float32) / maxval).reshape(1, 1, 8, 8)
            for binary in (False, True):
                t = httpclient.InferInput("input", [1, 1, 8, 8], "FP32")
                t.set_data_from_numpy(x, binary_data=binary)
                o = httpclient.InferRequestedOutput("logits", binary_data=binary)
                logits = c.infer(MODEL, [t], outputs=[o]).as_numpy("logits")
                check(logits.shape == (1, 10) and int(np.argmax(logits)) == label,
                      f"FP32 tensor ({'binary' if binary else 'JSON'}): argmax {int(np.argmax(logits))} is label {label}")

        # Request compression as tritonclient does it (Content-Encoding), both algorithms:
        # the same logits as the plain request.
        path, label = golden()[4]
        pixels, maxval = pgm_pixels(path)
        x = (pixels.astype(np.float32) / maxval).reshape(1, 1, 8, 8)
        t = httpclient.InferInput("input", [1, 1, 8, 8], "FP32")
        t.set_data_from_numpy(x, binary_data=False)
        plain = c.infer(MODEL, [t]).as_numpy("logits")
        for algo in ("gzip", "deflate"):
            z = c.infer(MODEL, [t], request_compression_algorithm=algo).as_numpy("logits")
            check(np.array_equal(z, plain), f"request_compression_algorithm={algo}: same logits as uncompressed")

        # Camera frames: 720p and 1080p RGB UINT8 through the binary extension, resized by
        # the server; the same frame as a PNG file (BYTES) gives the same logits.
        rng = np.random.default_rng(14)
        for h, w in ((720, 1280), (1080, 1920)):
            frame = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            t = httpclient.InferInput("input", [h, w, 3], "UINT8")
            t.set_data_from_numpy(frame, binary_data=True)
            as_tensor = c.infer(MODEL, [t]).as_numpy("logits")
            f = httpclient.InferInput("input", [1], "BYTES")
            f.set_data_from_numpy(np.array([png_rgb(frame)], dtype=np.object_), binary_data=True)
            as_png = c.infer(MODEL, [f]).as_numpy("logits")
            check(as_tensor.shape == (1, 10) and np.array_equal(as_tensor, as_png),
                  f"{w}x{h} UINT8 frame (binary) is served, and as a PNG with the same logits")

        bad = httpclient.InferInput("input", [1, 1, 8, 7], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 1, 8, 7), dtype=np.float32))
        try:
            c.infer(MODEL, [bad])
            check(False, "a wrong shape is refused")
        except InferenceServerException as e:
            check("does not match the model input" in str(e), f"a wrong shape is refused: {e}")
        try:
            c.infer("no-such-model", [bad])
            check(False, "an unknown model is refused")
        except InferenceServerException as e:
            check("unknown model `no-such-model`" in str(e), f"an unknown model is refused: {e}")
        stats = urllib.request.urlopen(f"http://{url}/metrics").read().decode()
        check('beltbox_requests_total{model="digits-int8-qdq",outcome="ok"}' in stats, "metrics count the requests")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
    check(code == 0, "SIGTERM: clean exit 0")


def png_rgb(frame):
    """An 8-bit RGB PNG of an HxWx3 uint8 array (zlib and struct: no imaging library)."""
    h, w, _ = frame.shape
    raw = b"".join(b"\x00" + frame[y].tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def sha256(path):
    import hashlib
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def two_input_package(dst):
    """`shift` (INT64 [1,1]) is the graph's first input, `x` (FP32 [1,5]) the second; the
    manifest lists x first. Outputs: best = ArgMax(x) (INT64 [1]), positive = x > 0 (BOOL
    [1,5]), shifted = x + shift (FP32 [1,5])."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("ArgMax", ["x"], ["best"], axis=1, keepdims=0),
            helper.make_node("Greater", ["x", "zero"], ["positive"]),
            helper.make_node("Cast", ["shift"], ["shift_f"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["x", "shift_f"], ["shifted"]),
            helper.make_node("Identity", ["shift"], ["shift_echo"]),
        ],
        "two-inputs",
        [helper.make_tensor_value_info("shift", TensorProto.INT64, [1, 1]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
        [helper.make_tensor_value_info("best", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("positive", TensorProto.BOOL, [1, 5]),
         helper.make_tensor_value_info("shifted", TensorProto.FLOAT, [1, 5]),
         helper.make_tensor_value_info("shift_echo", TensorProto.INT64, [1, 1])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    os.makedirs(os.path.join(dst, "golden"))
    onnx.save(model, os.path.join(dst, "model.onnx"))
    x = np.array([[0.5, -1.0, 2.5, 0.0, 1.0]], dtype=np.float32)
    shift = np.array([[3]], dtype=np.int64)
    arrays = {
        "golden/x.npy": x,
        "golden/shift.npy": shift,
        "golden/best.npy": np.argmax(x, axis=1).astype(np.int64),
        "golden/positive.npy": x > 0,
        "golden/shifted.npy": x + shift.astype(np.float32),
        "golden/shift_echo.npy": shift,
    }
    for rel, a in arrays.items():
        np.save(os.path.join(dst, rel), a)
    files = "".join(f'"{rel}" = "{sha256(os.path.join(dst, rel))}"\n' for rel in ["model.onnx", *arrays])
    open(os.path.join(dst, "manifest.toml"), "w").write(f"""name = "two-inputs"
version = "1.0.0"
description = "stock-client test: two inputs, INT64 and BOOL tensors"

[model]
file = "model.onnx"
format = "onnx"
precision = "fp32"

[[inputs]]
name = "x"
shape = [1, 5]
dtype = "float32"

[[inputs]]
name = "shift"
shape = [1, 1]
dtype = "int64"

[[outputs]]
name = "best"
shape = [1]
dtype = "int64"
task = "raw"

[[outputs]]
name = "positive"
shape = [1, 5]
dtype = "bool"
task = "raw"

[[outputs]]
name = "shifted"
shape = [1, 5]
dtype = "float32"
task = "raw"

[[outputs]]
name = "shift_echo"
shape = [1, 1]
dtype = "int64"
task = "raw"

[budgets]
ram_mib = 64
p95_ms = 50

[golden]

[[golden.samples]]
inputs = ["golden/x.npy", "golden/shift.npy"]
outputs = ["golden/best.npy", "golden/positive.npy", "golden/shifted.npy", "golden/shift_echo.npy"]

[files]
{files}""")


def two_inputs(binary, tmp):
    pkg = os.path.join(tmp, "two-inputs")
    two_input_package(pkg)
    proc, url = start(binary, "--model", pkg)
    try:
        c = httpclient.InferenceServerClient(url=url)
        meta = c.get_model_metadata("two-inputs")
        check([(i["name"], i["datatype"]) for i in meta["inputs"]] == [("x", "FP32"), ("shift", "INT64")],
              "metadata lists both inputs with their datatypes")
        check([o["datatype"] for o in meta["outputs"]] == ["INT64", "BOOL", "FP32", "INT64"],
              "metadata: INT64/BOOL/FP32 outputs")
        x = np.array([[-2.0, -0.25, -3.0, 7.5, -0.5]], dtype=np.float32)
        # Above 2^53: an INT64 sent as JSON must arrive exactly, not through a double.
        shift = np.array([[-(2**53) - 1]], dtype=np.int64)
        for binary_data in (False, True):
            ins = [httpclient.InferInput("shift", [1, 1], "INT64"), httpclient.InferInput("x", [1, 5], "FP32")]
            ins[0].set_data_from_numpy(shift, binary_data=binary_data)
            ins[1].set_data_from_numpy(x, binary_data=binary_data)
            outs = [httpclient.InferRequestedOutput(n, binary_data=binary_data) for n in ("best", "positive", "shifted", "shift_echo")]
            r = c.infer("two-inputs", ins, outputs=outs)
            how = "binary" if binary_data else "JSON"
            check(r.as_numpy("best").tolist() == [3], f"{how}: INT64 ArgMax output is 3")
            check(r.as_numpy("positive").tolist() == (x > 0).tolist(), f"{how}: BOOL output")
            check(np.array_equal(r.as_numpy("shifted"), x + np.float32(shift[0, 0])), f"{how}: two inputs by name (x + shift)")
            check(r.as_numpy("shift_echo").tolist() == shift.tolist(), f"{how}: INT64 below -2^53 arrives and returns exactly")
        only_x = httpclient.InferInput("x", [1, 5], "FP32")
        only_x.set_data_from_numpy(x)
        try:
            c.infer("two-inputs", [only_x])
            check(False, "a request missing an input is refused")
        except InferenceServerException as e:
            check("2 inputs named" in str(e) and "shift" in str(e), f"a request missing an input is refused: {e}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def detector(binary, tmp):
    src = os.path.join(REPO, ".cache/real-models/packages/layout-cdla-fp32")
    if not os.path.isdir(src):
        print(f"skip detection: {src} missing (tests/real_models/fetch.sh builds it)")
        return
    sys.path.insert(0, os.path.join(REPO, "tests/real_models"))
    from detections import with_detection
    from pathlib import Path

    outputs = [f"transpose_{i}.tmp_0" for i in (0, 2, 4, 6, 1, 3, 5, 7)]
    pkg = os.path.join(tmp, "layout")
    with_detection(Path(src), Path(pkg), f"""[detection]
head = "picodet"
outputs = {outputs!r}
classes = 10
strides = [8, 16, 32, 64]
score_threshold = 0.05
iou_threshold = 0.5
""".replace("'", '"'), outputs)
    proc, url = start(binary, "--model", pkg, "--budget", "1GiB")
    try:
        c = httpclient.InferenceServerClient(url=url)
        image = np.load(os.path.join(pkg, "golden/000.in.npy"))
        t = httpclient.InferInput("image", list(image.shape), "FP32")
        t.set_data_from_numpy(image, binary_data=True)
        r = c.infer("layout-cdla-fp32", [t], outputs=[httpclient.InferRequestedOutput(outputs[0], binary_data=True)])
        params = r.get_response()["parameters"]
        import json
        dets = json.loads(params["detections"])
        check(params["detection_count"] == len(dets) > 0, f"detections in the response parameters ({len(dets)})")
        check(all(d["score"] >= 0.05 and len(d["bbox"]) == 4 and 0 <= d["class"] < 10 for d in dets),
              "each detection has class, score >= threshold and a box")
        check([d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True), "best first")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


if __name__ == "__main__":
    main()
    import tempfile

    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "target/debug/beltbox")
    with tempfile.TemporaryDirectory() as tmp:
        two_inputs(binary, tmp)
        detector(binary, tmp)
