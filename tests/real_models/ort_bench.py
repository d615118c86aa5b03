#!/usr/bin/env python3
"""Reference-runtime latency and peak RSS of beltbox model packages.

    .cache/ort-venv/bin/python tests/real_models/ort_bench.py PACKAGE_DIR... [--json] [--runs 50] [--warmup 5]

Each package is measured in its own child process: ONNX packages with ONNX Runtime (CPU EP,
intra/inter-op threads 1) at the reference mode its goldens were written with (GOLDEN_MODE in
make_packages.py, by precision), TFLite packages with the ai-edge-litert interpreter (1 thread)
at its golden mode (reference kernels). Input: the package's first golden input. Reported: p50
(and p90) wall time of `runs` runs after `warmup` warm-up runs, the child's peak RSS (VmHWM) and
its RSS just before the model was loaded (Python + numpy + runtime libraries).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent


def status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(pkg: Path, runs: int, warmup: int, mode_override: str | None = None) -> dict:
    import numpy as np

    sys.dont_write_bytecode = True
    sys.path.insert(0, str(HERE))
    import make_packages as mp

    manifest = tomllib.loads((pkg / "manifest.toml").read_text())
    model = pkg / manifest["model"]["file"]
    fmt = manifest["model"]["format"]
    sample = manifest["golden"]["samples"][0]
    feeds = [np.load(pkg / f) for f in sample["inputs"]]
    names = [i["name"] for i in manifest["inputs"]]
    if fmt == "onnx":
        import onnxruntime  # noqa: F401  (load the library before the baseline)

        mode = mode_override or mp.GOLDEN_MODE[manifest["model"]["precision"]]
        baseline = status_kib("VmRSS")
        sess = mp.ort_session(model, mode)
        feed = dict(zip(names, feeds))

        def run():
            sess.run(None, feed)

        runtime = f"onnxruntime {mp.versions()['onnxruntime']} {mode}"
    elif fmt == "tflite":
        from ai_edge_litert import interpreter  # noqa: F401

        mode = mp.TFLITE_GOLDEN_MODE
        baseline = status_kib("VmRSS")
        it = mp.tflite_interpreter(model, mode)
        details = {d["name"]: d["index"] for d in it.get_input_details()}

        def run():
            for n, x in zip(names, feeds):
                it.set_tensor(details[n], x)
            it.invoke()
            for d in it.get_output_details():
                it.get_tensor(d["index"])

        runtime = f"ai-edge-litert {mp.versions()['ai-edge-litert']} {mode}"
    else:
        raise SystemExit(f"unknown format {fmt}")
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1000.0)
    times.sort()
    return {
        "package": manifest["name"],
        "runtime": runtime,
        "runs": runs,
        "warmup": warmup,
        "p50_ms": times[len(times) // 2] if len(times) % 2 else 0.5 * (times[len(times) // 2 - 1] + times[len(times) // 2]),
        "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
        "peak_rss_mib": status_kib("VmHWM") / 1024.0,
        "baseline_rss_mib": baseline / 1024.0,
        "ram_mib_budget": manifest["budgets"]["ram_mib"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description="ORT / LiteRT p50 latency and peak RSS per package")
    ap.add_argument("packages", nargs="+", type=Path)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--mode", help="ORT mode instead of the golden one (e.g. ALL: ORT's default, "
                    "its fastest; on AVX2 without VNNI its INT8 kernels saturate)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.packages[0], args.runs, args.warmup, args.mode)))
        return 0
    rows = []
    for pkg in args.packages:
        if not (pkg / "manifest.toml").exists():
            print(f"ort_bench: skipping {pkg} (no manifest.toml)", file=sys.stderr)
            continue
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(pkg), "--runs", str(args.runs), "--warmup", str(args.warmup)]
            + (["--mode", args.mode] if args.mode else []),
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            print(f"ort_bench: {pkg} failed:\n{out.stderr}", file=sys.stderr)
            return 1
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        if not args.json:
            print(f"ort_bench: {rows[-1]['package']} done", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'package':36s} {'runtime / mode':40s} {'p50 ms':>8s} {'p90 ms':>8s} {'peak MiB':>9s} {'base MiB':>9s} {'budget':>7s}")
    for r in rows:
        print(
            f"{r['package']:36s} {r['runtime']:40s} {r['p50_ms']:8.2f} {r['p90_ms']:8.2f} "
            f"{r['peak_rss_mib']:9.1f} {r['baseline_rss_mib']:9.1f} {r['ram_mib_budget']:7d}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
