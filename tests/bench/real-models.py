#!/usr/bin/env python3
"""The real-model table: beltbox vs ONNX Runtime / LiteRT, INT8 vs FP32, RAM plan vs VmHWM.

    bash tests/real_models/fetch.sh && cargo build --release --features tflite
    .cache/ort-venv/bin/python tests/bench/real-models.py [--runs 20] [--json] [PACKAGE...]

For every package of the real-model suite (default: all of .cache/real-models/packages), one
after the other in the same run: `beltbox bench --json` (release binary, 1 thread: p50 of the
inference stage and of the whole frame, peak RSS, integer/float graph nodes), `beltbox plan
--json` (the planned total), then the reference runtime on the same golden input through
tests/real_models/ort_bench.py, twice for ONNX: at the golden mode and at ORT's default
(ORT_ENABLE_ALL, its fastest; on x86 without VNNI its INT8 kernels saturate, see
docs/model-package.md). Ratios are per family: INT8 p50 / beltbox FP32 p50, beltbox / ORT.
Prints numbers; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = REPO / ".cache/real-models/packages"


def run_json(cmd: list[str]) -> dict | list:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("packages", nargs="*", type=Path)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--beltbox", type=Path, default=REPO / "target/release/beltbox")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pkgs = args.packages or sorted(p for p in PACKAGES.iterdir() if (p / "manifest.toml").exists())
    lib = REPO / ".cache/litert" / os.uname().machine / "libLiteRt.so"
    if lib.exists():
        os.environ.setdefault("BELTBOX_LITERT_LIB", str(lib))
    rows = []
    for pkg in pkgs:
        bb = str(args.beltbox)
        bench = run_json([bb, "bench", "--model", str(pkg), "--runs", str(args.runs), "--json"])
        plan = run_json([bb, "plan", "--model", str(pkg), "--json"])
        ort_bench = [sys.executable, str(REPO / "tests/real_models/ort_bench.py"), str(pkg),
                     "--runs", str(args.runs), "--json"]
        ref = run_json(ort_bench)[0]
        fmt = "tflite" if (pkg / "model.tflite").exists() else "onnx"
        fast = run_json(ort_bench + ["--mode", "ALL"])[0] if fmt == "onnx" else ref
        oc = bench.get("op_counts") or {}
        total_plan = plan.get("total_bytes") if isinstance(plan, dict) else None
        rows.append({
            "package": pkg.name,
            "p50_ms": bench["stages"]["inference"]["p50_ms"],
            "total_p50_ms": bench["p50_ms"],
            "peak_rss_mib": bench["peak_rss_bytes"] / 2**20,
            "integer_nodes": oc.get("integer"),
            "float_nodes": oc.get("float"),
            "conversions": oc.get("conversions"),
            "plan_mib": total_plan / 2**20 if total_plan else None,
            "ref_p50_ms": ref["p50_ms"],
            "ref_runtime": ref["runtime"],
            "ort_default_p50_ms": fast["p50_ms"],
        })
        print(f"real-models: {pkg.name} done", file=sys.stderr)
    fp32 = {r["package"].rsplit("-fp32", 1)[0]: r["p50_ms"] for r in rows if r["package"].endswith("-fp32")}
    for r in rows:
        family = r["package"].split("-int8-")[0] if "-int8-" in r["package"] else None
        r["int8_vs_fp32"] = r["p50_ms"] / fp32[family] if family in fp32 else None
        r["vs_ort_default"] = r["p50_ms"] / r["ort_default_p50_ms"]
        r["plan_error"] = (r["plan_mib"] / r["peak_rss_mib"] - 1) if r["plan_mib"] else None
        # The target's share: integer nodes among computing nodes, conversions (quantise,
        # dequantise, cast) reported apart; "with conversions" counts them as float.
        n = (r["integer_nodes"] or 0) + (r["float_nodes"] or 0)
        r["integer_share"] = r["integer_nodes"] / n if n and r["integer_nodes"] is not None else None
        n_all = n + (r["conversions"] or 0)
        r["integer_share_with_conversions"] = r["integer_nodes"] / n_all if n_all and r["integer_nodes"] is not None else None
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    print(f"{'package':34s} {'p50 ms':>8s} {'ORT ref':>8s} {'ORT dflt':>8s} {'vs ORT':>7s} {'/FP32':>6s} "
          f"{'int/float/conv':>16s} {'int %':>6s} {'w/conv':>6s} {'RSS MiB':>8s} {'plan MiB':>9s} {'plan err':>8s}")
    for r in rows:
        nodes = "-" if r["integer_nodes"] is None else f"{r['integer_nodes']}/{r['float_nodes']}/{r['conversions']}"
        print(f"{r['package']:34s} {r['p50_ms']:8.2f} {r['ref_p50_ms']:8.2f} {r['ort_default_p50_ms']:8.2f} "
              f"{f(r['vs_ort_default'], '7.2f')} {f(r['int8_vs_fp32'], '6.2f')} {nodes:>16s} "
              f"{f(r['integer_share'] and 100 * r['integer_share'], '6.1f')} "
              f"{f(r['integer_share_with_conversions'] and 100 * r['integer_share_with_conversions'], '6.1f')} {r['peak_rss_mib']:8.1f} "
              f"{f(r['plan_mib'], '9.1f')} {f(r['plan_error'] and 100 * r['plan_error'], '+7.1f')}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
