"""Evaluators: the VOC evaluator versus a per-detection loop (devkit style), and COCOeval.

On a synthetic test set held in memory (random ground truth, detections that are jittered
ground-truth boxes plus random ones, 20 classes, some difficult objects), timed interleaved:
  voc       transfer.evaluation.voc.evaluate_voc (vectorised; AP at IoU .50:.95)
  loop      the devkit's voc_eval as detectron2 runs it, written plainly below: per class
            and threshold, a Python loop over detections sorted by score
  coco      transfer.evaluation.coco.evaluate_coco (pycocotools) on the same detections
Printed: loop/voc (target >= 5) after checking both give the same AP, and coco/voc.

Run from the checkout root: python -m benchmarks.bench_eval [--quick]
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO

from benchmarks import timing
from mocobench.transfer.evaluation.coco import evaluate_coco
from mocobench.transfer.evaluation.voc import IOU_THRESHOLDS, evaluate_voc, voc_ap

CLASSES = [f"class{i}" for i in range(20)]
SPEEDUP_TARGET = 5.0


def synthetic_set(n_images: int, dets_per_image: int, seed: int = 0) -> tuple[list[dict], dict, list[dict]]:
    """(dataset records, VOC metadata, detections in COCO results format)."""
    rng = np.random.default_rng(seed)
    records, detections = [], []
    for image_id in range(n_images):
        annotations = []
        for _ in range(rng.integers(1, 6)):
            x0, y0 = rng.uniform(0, 400, 2)
            w, h = rng.uniform(10, 100, 2)
            annotations.append({"bbox": [x0, y0, x0 + w, y0 + h], "category_id": int(rng.integers(20)),
                                "iscrowd": 0, "difficult": bool(rng.random() < 0.1)})
        records.append({"file_name": f"{image_id}.jpg", "image_id": image_id, "height": 500, "width": 500,
                        "annotations": annotations})
        for j in range(dets_per_image):
            if j < 2 * len(annotations):  # near a ground-truth box, right or wrong class
                a = annotations[j % len(annotations)]
                x0, y0, x1, y1 = np.asarray(a["bbox"]) + rng.normal(0, 5, 4)
                category = a["category_id"] if rng.random() < 0.7 else int(rng.integers(20))
            else:
                x0, y0 = rng.uniform(0, 400, 2)
                x1, y1 = x0 + rng.uniform(10, 100), y0 + rng.uniform(10, 100)
                category = int(rng.integers(20))
            detections.append({"image_id": image_id, "category_id": category + 1, "score": float(rng.random()),
                               "bbox": [float(x0), float(y0), float(max(x1 - x0, 1.0)), float(max(y1 - y0, 1.0))]})
    return records, {"thing_classes": CLASSES, "year": 2007}, detections


def devkit_loop(records: list[dict], detections: list[dict], use_07_metric: bool = True) -> float:
    """Mean AP over IoU .50:.95 the devkit way: per class and threshold, loop over detections."""
    aps = []
    for thresh in IOU_THRESHOLDS:
        class_aps = []
        for c in range(len(CLASSES)):
            gt, npos = {}, 0
            for r in records:
                objs = [a for a in r["annotations"] if a["category_id"] == c]
                boxes = np.array([[a["bbox"][0] + 1, a["bbox"][1] + 1, a["bbox"][2], a["bbox"][3]]
                                  for a in objs]).reshape(-1, 4)
                difficult = np.array([a["difficult"] for a in objs], dtype=bool)
                gt[r["image_id"]] = {"bbox": boxes, "difficult": difficult, "det": [False] * len(objs)}
                npos += int((~difficult).sum())
            dets = [d for d in detections if d["category_id"] == c + 1]
            order = np.argsort([-d["score"] for d in dets], kind="stable")
            tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
            for rank, i in enumerate(order):
                d = dets[i]
                R = gt[d["image_id"]]
                x, y, w, h = d["bbox"]
                bb = np.array([x + 1, y + 1, x + w, y + h])
                ovmax, jmax, BBGT = -np.inf, -1, R["bbox"]
                if BBGT.size > 0:
                    iw = np.maximum(np.minimum(BBGT[:, 2], bb[2]) - np.maximum(BBGT[:, 0], bb[0]) + 1.0, 0.0)
                    ih = np.maximum(np.minimum(BBGT[:, 3], bb[3]) - np.maximum(BBGT[:, 1], bb[1]) + 1.0, 0.0)
                    inters = iw * ih
                    uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                           + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0) - inters)
                    overlaps = inters / uni
                    ovmax, jmax = np.max(overlaps), int(np.argmax(overlaps))
                if ovmax > thresh / 100.0:
                    if not R["difficult"][jmax]:
                        if not R["det"][jmax]:
                            tp[rank], R["det"][jmax] = 1.0, True
                        else:
                            fp[rank] = 1.0
                else:
                    fp[rank] = 1.0
            if npos == 0:
                class_aps.append(0.0)
                continue
            fp, tp = np.cumsum(fp), np.cumsum(tp)
            prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
            class_aps.append(voc_ap(tp / float(npos), prec, use_07_metric) * 100)
        aps.append(np.mean(class_aps))
    return float(np.mean(aps))


def coco_ground_truth(records: list[dict]) -> COCO:
    """The same ground truth as a pycocotools COCO object (ids 1..20 as the detections')."""
    annotations = [{"id": len(records) * 10 + i * 10 + j, "image_id": r["image_id"], "category_id": a["category_id"] + 1,
                    "bbox": [a["bbox"][0], a["bbox"][1], a["bbox"][2] - a["bbox"][0], a["bbox"][3] - a["bbox"][1]],
                    "area": (a["bbox"][2] - a["bbox"][0]) * (a["bbox"][3] - a["bbox"][1]), "iscrowd": 0}
                   for i, r in enumerate(records) for j, a in enumerate(r["annotations"])]
    gt = COCO()
    gt.dataset = {"images": [{"id": r["image_id"], "height": r["height"], "width": r["width"]} for r in records],
                  "annotations": annotations, "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def measure(n_images: int, dets_per_image: int, repeats: int) -> dict[str, float]:
    """Check voc == loop, time the three interleaved; print and return the ratios."""
    records, metadata, detections = synthetic_set(n_images, dets_per_image)
    gt = coco_ground_truth(records)
    ours, reference = evaluate_voc(records, metadata, detections)["bbox"]["AP"], devkit_loop(records, detections)
    if abs(ours - reference) > 1e-6:
        raise AssertionError(f"VOC evaluator AP {ours} differs from the devkit loop's {reference}")
    print(f"{n_images} images, {len(detections)} detections: AP {ours:.3f} from both VOC implementations; "
          f"{repeats} interleaved repeats", flush=True)
    medians = timing.interleaved_medians({
        "voc": lambda: evaluate_voc(records, metadata, detections),
        "loop": lambda: devkit_loop(records, detections),
        "coco": lambda: evaluate_coco(gt, detections)}, repeats, warmup=0)  # the check above warmed up
    timing.report_times(medians)
    speedup = medians["loop"] / medians["voc"]
    timing.report_ratio("devkit loop / VOC evaluator", medians["loop"], medians["voc"],
                        f">= {SPEEDUP_TARGET:g}", speedup >= SPEEDUP_TARGET)
    coco = timing.report_ratio("COCOeval (bbox) / VOC evaluator, same detections", medians["coco"], medians["voc"])
    return {"loop_over_voc": speedup, "coco_over_voc": coco}


def main(argv: list[str] | None = None) -> int:
    args = timing.parser(__doc__.splitlines()[0]).parse_args(argv)
    repeats = timing.setup(args)
    measure(2000, 4 if args.quick else 20, repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
