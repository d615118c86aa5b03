#!/usr/bin/env python3
"""beltbox vs ONNX Runtime on the same model files, side by side in one session.

For every model and thread count, alternates rounds of ONNX Runtime (a fresh Python child
per round, so its peak RSS is its own) and `beltbox bench --json` (a fresh process per
round), and prints one Markdown table: p50/p95 of each, the ratio beltbox / ORT, and peak
RSS of each. Medians over rounds; ratios are what to compare on a noisy machine.

    python3 tests/bench/vs-ort.py --beltbox target/release/beltbox [--runs 50] [--rounds 3]
        [--models mobilenetv2-bench-fp32,mobilenetv2-bench-int8-qdq,...] [--threads 1,2]

`bash tests/bench/vs-ort.sh` makes the virtualenv (onnxruntime and numpy as pinned in
models/requirements.txt) and builds the release binary first.

Inputs: ORT gets a fixed-seed random tensor of the model input's shape and dtype; beltbox
bench runs its package's first golden input through its full pipeline (preprocess +
inference + postprocess). Both numbers are reported as is; for these models preprocessing
and postprocessing are well under 1 % of a frame (see `stages` in `beltbox bench --json`).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ORT_CHILD = r"""
import json, resource, sys, time
def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
base = rss_kib()
import numpy as np, onnxruntime as ort
path, threads, runs, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
so = ort.SessionOptions()
so.intra_op_num_threads = threads
so.inter_op_num_threads = 1
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0]
dt = {"tensor(float)": np.float32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8}[inp.type]
shape = [d if isinstance(d, int) else 1 for d in inp.shape]
rng = np.random.default_rng(0)
x = (rng.standard_normal(shape) if dt == np.float32 else rng.integers(-100, 100, shape)).astype(dt)
feed = {inp.name: x}
for _ in range(warmup):
    sess.run(None, feed)
t = []
for _ in range(runs):
    t0 = time.perf_counter()
    sess.run(None, feed)
    t.append((time.perf_counter() - t0) * 1e3)
t.sort()
rank = lambda p: t[max(1, min(len(t), int(-(-p * len(t) // 1)))) - 1]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"p50_ms": rank(0.5), "p95_ms": rank(0.95), "peak_rss_kib": peak, "base_rss_kib": base,
                  "version": ort.__version__}))
"""


def ort_round(model_file, threads, runs, warmup):
    out = subprocess.run([sys.executable, "-c", ORT_CHILD, model_file, str(threads), str(runs), str(warmup)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def beltbox_round(binary, pkg, threads, runs, warmup):
    out = subprocess.run([binary, "bench", "--model", pkg, "--threads", str(threads), "--runs", str(runs),
                          "--warmup", str(warmup), "--json"], check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--beltbox", default=os.path.join(REPO, "target", "release", "beltbox"))
    ap.add_argument("--models", default="mobilenetv2-bench-fp32,mobilenetv2-bench-int8-qdq,mobilenetv2-bench-int8-qoperator")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    rows = []
    for pkg in a.models.split(","):
        pkg_dir = os.path.join(REPO, "models", pkg)
        manifest = open(os.path.join(pkg_dir, "manifest.toml")).read()
        model_file = os.path.join(pkg_dir, "model.onnx")
        fmt = next((l.split('"')[1] for l in manifest.splitlines() if l.startswith("precision")), "?")
        for threads in [int(t) for t in a.threads.split(",")]:
            o, b = [], []
            for r in range(a.rounds):
                o.append(ort_round(model_file, threads, a.runs, a.warmup))
                b.append(beltbox_round(a.beltbox, pkg, threads, a.runs, a.warmup))
                print(f"{pkg} threads={threads} round {r + 1}/{a.rounds}: ORT p50 {o[-1]['p50_ms']:.2f} ms, "
                      f"beltbox p50 {b[-1]['p50_ms']:.2f} ms", file=sys.stderr)
            med = lambda xs, k: statistics.median(x[k] for x in xs)
            rows.append({
                "model": pkg, "format": fmt, "threads": threads,
                "ort_p50": med(o, "p50_ms"), "ort_p95": med(o, "p95_ms"),
                "bb_p50": med(b, "p50_ms"), "bb_p95": med(b, "p95_ms"),
                "ort_rss": med(o, "peak_rss_kib") / 1024, "ort_rss_above_python": (med(o, "peak_rss_kib") - med(o, "base_rss_kib")) / 1024,
                "bb_rss": med(b, "peak_rss_bytes") / 2**20, "ort_version": o[0]["version"],
            })
    print(f"\nONNX Runtime {rows[0]['ort_version'] if rows else '?'} vs beltbox ({a.beltbox}), "
          f"{a.runs} runs after {a.warmup} warm-up, median of {a.rounds} alternating rounds\n")
    print("| model | format | threads | ORT p50 ms | ORT p95 ms | beltbox p50 ms | beltbox p95 ms | beltbox/ORT p50 | ORT peak RSS MiB (above Python) | beltbox peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['format']} | {r['threads']} | {r['ort_p50']:.2f} | {r['ort_p95']:.2f} | "
              f"{r['bb_p50']:.2f} | {r['bb_p95']:.2f} | {r['bb_p50'] / r['ort_p50']:.2f}x | "
              f"{r['ort_rss']:.1f} ({r['ort_rss_above_python']:.1f}) | {r['bb_rss']:.1f} |")
    by = {(r["model"], r["threads"]): r for r in rows}
    fp32 = [k for k in by if k[0].endswith("-fp32")]
    if fp32:
        print("\nINT8 vs FP32 (beltbox p50 ratio, same threads):")
        for (m, t), r in by.items():
            base = by.get((m.rsplit("-", 2)[0] + "-fp32" if "int8" in m else m, t))
            if base and "int8" in m:
                print(f"  {m} threads={t}: {r['bb_p50'] / base['bb_p50']:.2f}x FP32")


if __name__ == "__main__":
    main()
