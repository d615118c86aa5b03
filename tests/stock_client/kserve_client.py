#!/usr/bin/env python3
"""The service against a stock KServe v2 client (NVIDIA's tritonclient[http]), unchanged.

Starts `beltbox run` on a free loopback port, then uses only tritonclient's public API:
health, server/model metadata, inference with JSON and binary tensors, the classification
extension, and error reporting. Exits non-zero on the first mismatch.

    python3 tests/stock_client/kserve_client.py target/debug/beltbox

(`bash tests/stock_client/run.sh` creates the virtualenv with the pinned client first.)
"""
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = "digits-int8-qdq"


def start(binary):
    proc = subprocess.Popen(
        [binary, "run", "--listen", "127.0.0.1:0"],
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


if __name__ == "__main__":
    main()
