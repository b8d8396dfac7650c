"""COCO box and mask AP with pycocotools' COCOeval, reported as detectron2's COCOEvaluator does.

AP, AP50, AP75, APs, APm, APl in percent; a metric COCOeval cannot compute (-1, e.g. no
small objects) is NaN, and so is every metric when there are no detections. Mask AP uses
mask areas for the size ranges: the detections' boxes are dropped before ``loadRes`` for
segm, as detectron2 does.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Mapping, Sequence

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mocobench import UserError
from mocobench.transfer.evaluation.detections import detection_arrays

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _coco_metrics(gt: COCO, results: list[dict[str, Any]], iou_type: str) -> dict[str, float]:
    if not results:
        return {m: float("nan") for m in METRICS}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(gt, gt.loadRes(results), iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return {m: float(coco_eval.stats[i] * 100) if coco_eval.stats[i] >= 0 else float("nan")
            for i, m in enumerate(METRICS)}


def check_masks(detections: Sequence[Mapping[str, Any]], source: str) -> bool:
    """Whether the detections carry masks: all of them RLEs, or none."""
    with_masks = sum("segmentation" in d for d in detections)
    if with_masks not in (0, len(detections)):
        raise UserError(f"{source}: {with_masks} of {len(detections)} detections have a "
                        f"segmentation; give it for all or none")
    for i, det in enumerate(detections if with_masks else ()):
        segm = det["segmentation"]
        if not isinstance(segm, Mapping) or not {"size", "counts"} <= set(segm):
            raise UserError(f"{source}: detection {i} has a segmentation that is not an RLE "
                            f"{{'size': [h, w], 'counts': str}}")
    return bool(with_masks)


def evaluate_coco(gt: COCO, detections: Sequence[Mapping[str, Any]],
                  source: str = "detections") -> dict[str, dict[str, float]]:
    """{"bbox": {...}} plus {"segm": {...}} when the detections carry masks."""
    detection_arrays(detections, {i: i for i in gt.imgs}, {c: c for c in gt.cats}, source)
    with_masks = check_masks(detections, source)
    # loadRes adds fields to the dicts it gets: give it copies.
    results = {"bbox": [dict(d) for d in detections]}
    if with_masks:
        if any("segmentation" not in a for a in gt.anns.values()):
            raise UserError(f"{source}: detections have masks but the ground truth has annotations "
                            f"without a segmentation")
        results["segm"] = [{k: v for k, v in d.items() if k != "bbox"} for d in detections]
    return {iou_type: _coco_metrics(gt, res, iou_type) for iou_type, res in results.items()}
