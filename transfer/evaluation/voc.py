"""PASCAL VOC detection AP, equivalent to detectron2's PascalVOCDetectionEvaluator.

Same algorithm as the devkit port detectron2 uses (py-faster-rcnn's ``voc_eval``): per class,
detections sorted by score greedily take the ground-truth box they overlap most (IoU with
the devkit's +1 pixel widths, strictly above the threshold); a box already taken makes a
false positive, a difficult box makes neither; AP is the 11-point metric for VOC2007
(thresholds ``np.arange(0, 1.1, 0.1)``, as the devkit port) and the area under the
precision envelope otherwise. AP is the mean over IoU 0.50:0.05:0.95 of the class mean.

Differences from detectron2, none of which changes a result on real data: ground truth
comes from the loaded dataset (so a box clipped by the loader is evaluated clipped);
scores and coordinates are not rounded to the 3 and 1 decimals of detectron2's text files;
equal scores keep input order (a stable sort); a class without non-difficult ground truth
has no AP and is left out of the mean, with a warning, as COCO's evaluation leaves out a
category without ground truth (detectron2 averages in a 0 with the 2007 metric and gets NaN
with the other; scored 0, such a class capped perfect detections at 75 on a 4-class split).

Instead of a Python loop per detection, every detection's best-overlap ground truth is
found once for all thresholds (IoU on (detection, same-image same-class box) pairs), and
the greedy "first detection to claim a box wins" is a first-occurrence lookup per threshold.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from mocobench.transfer.evaluation.detections import detection_arrays

IOU_THRESHOLDS = tuple(range(50, 100, 5))  # percent, as detectron2


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool) -> float:
    """Average precision of one ranked list; ``rec`` is non-decreasing."""
    if use_07_metric:
        # max precision at recall >= t is the suffix maximum from the first such rank
        envelope = np.maximum.accumulate(prec[::-1])[::-1]
        first = np.searchsorted(rec, np.arange(0.0, 1.1, 0.1), side="left")
        return sum((envelope[k] if k < len(rec) else 0.0) / 11.0 for k in first)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.maximum.accumulate(np.concatenate(([0.0], prec, [0.0]))[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _ground_truth(records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, ...]:
    """(class, image index, devkit boxes, difficult) of every annotation."""
    rows = [(a["category_id"], i, *a["bbox"], bool(a.get("difficult", False)))
            for i, r in enumerate(records) for a in r["annotations"]]
    table = np.array(rows, dtype=np.float64).reshape(-1, 7)
    boxes = table[:, 2:6].copy()
    boxes[:, :2] += 1.0  # the inverse of the loader's (xmin - 1, ymin - 1): devkit pixels
    return table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), boxes, table[:, 6].astype(bool)


def _best_overlaps(det_key: np.ndarray, det_boxes: np.ndarray, gt_key: np.ndarray,
                   gt_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per detection: max IoU with the boxes of its (class, image) and the first box at it.

    ``gt_key`` is sorted; a detection with no such box gets (-inf, -1), like the devkit.
    """
    lo = np.searchsorted(gt_key, det_key, side="left")
    counts = np.searchsorted(gt_key, det_key, side="right") - lo
    offsets = np.cumsum(counts) - counts
    det_of_pair = np.repeat(np.arange(len(det_key)), counts)
    gt_of_pair = lo[det_of_pair] + np.arange(len(det_of_pair)) - offsets[det_of_pair]
    d, g = det_boxes[det_of_pair], gt_boxes[gt_of_pair]
    iw = np.maximum(np.minimum(d[:, 2], g[:, 2]) - np.maximum(d[:, 0], g[:, 0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(d[:, 3], g[:, 3]) - np.maximum(d[:, 1], g[:, 1]) + 1.0, 0.0)
    inters = iw * ih
    union = ((d[:, 2] - d[:, 0] + 1.0) * (d[:, 3] - d[:, 1] + 1.0)
             + (g[:, 2] - g[:, 0] + 1.0) * (g[:, 3] - g[:, 1] + 1.0) - inters)
    iou = inters / union
    ovmax = np.full(len(det_key), -np.inf)
    jmax = np.full(len(det_key), -1, np.int64)
    has = counts > 0
    if has.any():
        ovmax[has] = np.maximum.reduceat(iou, offsets[has])
        at_max = np.flatnonzero(iou == ovmax[det_of_pair])
        dets, first = np.unique(det_of_pair[at_max], return_index=True)
        jmax[dets] = gt_of_pair[at_max[first]]
    return ovmax, jmax


def evaluate_voc(records: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any],
                 detections: Sequence[Mapping[str, Any]], source: str = "detections") -> dict[str, Any]:
    """{"bbox": {"AP", "AP50", "AP75"}, "per_class_AP50": {class: AP50}}, in percent."""
    classes = list(metadata["thing_classes"])
    n_images, n_classes = len(records), len(classes)
    image_index = {r["image_id"]: i for i, r in enumerate(records)}
    det_image, det_class, xywh, scores = detection_arrays(
        detections, image_index, {i + 1: i for i in range(n_classes)}, source)
    # XYWH in loader coordinates -> devkit's 1-based (xmin + 1, ymin + 1, xmax, ymax)
    det_boxes = np.column_stack([xywh[:, 0] + 1.0, xywh[:, 1] + 1.0,
                                 xywh[:, 0] + xywh[:, 2], xywh[:, 1] + xywh[:, 3]])

    gt_class, gt_image, gt_boxes, gt_difficult = _ground_truth(records)
    gt_order = np.argsort(gt_class * n_images + gt_image, kind="stable")  # keeps file order
    gt_key = (gt_class * n_images + gt_image)[gt_order]
    gt_boxes, gt_difficult, gt_class = gt_boxes[gt_order], gt_difficult[gt_order], gt_class[gt_order]
    npos = np.bincount(gt_class[~gt_difficult], minlength=n_classes)

    order = np.lexsort((-scores, det_class))  # by class, then score descending, ties stable
    det_class, det_boxes = det_class[order], det_boxes[order]
    ovmax, jmax = _best_overlaps(det_class * n_images + det_image[order], det_boxes, gt_key, gt_boxes)
    class_start = np.searchsorted(det_class, np.arange(n_classes + 1))
    hits_difficult = np.zeros(len(jmax), bool)
    hits_difficult[jmax >= 0] = gt_difficult[jmax[jmax >= 0]]

    ap = np.zeros((len(IOU_THRESHOLDS), n_classes))
    for t, thresh in enumerate(IOU_THRESHOLDS):
        matched = ovmax > thresh / 100.0
        claims = np.flatnonzero(matched & ~hits_difficult)
        tp = np.zeros(len(jmax))
        tp[claims[np.unique(jmax[claims], return_index=True)[1]]] = 1.0  # first claim wins
        fp = (~matched | ((matched & ~hits_difficult) & (tp == 0))).astype(np.float64)
        for c in range(n_classes):
            if npos[c] == 0:
                continue
            s, e = class_start[c], class_start[c + 1]
            tp_c, fp_c = np.cumsum(tp[s:e]), np.cumsum(fp[s:e])
            prec = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
            ap[t, c] = voc_ap(tp_c / float(npos[c]), prec, use_07_metric=metadata["year"] == 2007) * 100
    # a class without ground truth has no AP (the devkit divides by npos): it is left out of the
    # mean, as COCO's evaluation leaves out a category without ground truth; none left: NaN
    scored = npos > 0
    mean_ap = ap[:, scored].mean(axis=1) if scored.any() else np.full(len(IOU_THRESHOLDS), np.nan)
    if not scored.all():
        absent = [name for c, name in enumerate(classes) if not scored[c]]
        warnings.warn(f"{source}: {len(absent)} class(es) without a ground-truth box (difficult ones aside) "
                      f"have no AP and are left out of the mean (detectron2's evaluator keeps them): "
                      f"{', '.join(absent)}", stacklevel=2)
    ap50 = IOU_THRESHOLDS.index(50)
    return {"bbox": {"AP": float(mean_ap.mean()), "AP50": float(mean_ap[ap50]),
                     "AP75": float(mean_ap[IOU_THRESHOLDS.index(75)])},
            "per_class_AP50": {name: float(ap[ap50, c]) for c, name in enumerate(classes) if scored[c]}}
