"""COCO keypoint AP with pycocotools' COCOeval (iouType 'keypoints', matching by OKS), reported
as detectron2's COCOEvaluator does: AP, AP50, AP75, APm, APl in percent (COCO's keypoint
evaluation has no small range), NaN where COCOeval gives -1 or there are no detections.

The OKS sigmas are COCO's 17 person sigmas unless given (detectron2's TEST.KEYPOINT_OKS_SIGMAS);
their count must equal the ground truth's keypoint count, or OKS would pair the wrong joints.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mocobench import UserError
from mocobench.transfer.datasets.person_keypoints import COCO_PERSON_SIGMAS

METRICS = ("AP", "AP50", "AP75", "APm", "APl")
STATS = (0, 1, 2, 3, 4)  # COCOeval.stats indices of METRICS for keypoints


def _keypoint_count(gt: COCO, source: str) -> int:
    counts = {len(c["keypoints"]) for c in gt.cats.values() if "keypoints" in c}
    if len(counts) != 1:
        raise UserError(f"{source}: the ground truth names no keypoints (or several counts {sorted(counts)}); "
                        f"keypoint AP needs a person_keypoints file")
    return counts.pop()


def _check_detections(detections: Sequence[Mapping[str, Any]], count: int, source: str) -> None:
    for i, det in enumerate(detections):
        kps = det.get("keypoints")
        if not (isinstance(kps, (list, tuple)) and len(kps) == 3 * count):
            raise UserError(f"{source}: detection {i} has keypoints of length "
                            f"{len(kps) if isinstance(kps, (list, tuple)) else kps!r}, want 3 x {count}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in kps):
            raise UserError(f"{source}: detection {i} has a keypoint value that is not a finite number")


def evaluate_keypoints(gt: COCO, detections: Sequence[Mapping[str, Any]], sigmas: Sequence[float] = (),
                       source: str = "detections") -> dict[str, float]:
    """Keypoint AP of detections whose boxes were checked already (evaluate_coco)."""
    count = _keypoint_count(gt, source)
    sigmas = tuple(sigmas) or COCO_PERSON_SIGMAS
    if len(sigmas) != count:
        raise UserError(f"{source}: {len(sigmas)} OKS sigmas (TEST.KEYPOINT_OKS_SIGMAS) for {count} keypoints; "
                        f"give one per keypoint")
    _check_detections(detections, count, source)
    if not detections:
        return {m: float("nan") for m in METRICS}
    results = [{k: v for k, v in d.items() if k != "segmentation"} for d in detections]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(gt, gt.loadRes(results), "keypoints")
        coco_eval.params.kpt_oks_sigmas = np.array(sigmas, dtype=np.float64)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return {m: float(coco_eval.stats[i] * 100) if coco_eval.stats[i] >= 0 else float("nan")
            for m, i in zip(METRICS, STATS)}
