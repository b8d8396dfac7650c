"""Evaluation of detections (COCO results format) on a catalog dataset.

``evaluate`` dispatches on the dataset's ``evaluator_type`` so the engines, the CLI and the
job runner get the same numbers for the same detections, whichever dataset it is.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from mocobench import UserError
from mocobench.transfer.datasets.catalog import get_dataset, get_metadata
from mocobench.transfer.datasets.coco import read_coco_api
from mocobench.transfer.evaluation.cityscapes import evaluate_cityscapes
from mocobench.transfer.evaluation.coco import evaluate_coco
from mocobench.transfer.evaluation.keypoints import evaluate_keypoints
from mocobench.transfer.evaluation.lvis import evaluate_lvis
from mocobench.transfer.evaluation.sem_seg import evaluate_sem_seg
from mocobench.transfer.evaluation.voc import evaluate_voc


def evaluate(dataset_name: str, data_root: str | os.PathLike | None,
             detections: Sequence[Mapping[str, Any]], source: str = "detections",
             oks_sigmas: Sequence[float] = ()) -> dict[str, Any]:
    """detectron2's result dict, in percent; ``source`` names the detections in errors.
    Detections with keypoints add keypoint AP (OKS with ``oks_sigmas``, else COCO's)."""
    if not isinstance(detections, Sequence) or isinstance(detections, (str, bytes)):
        raise UserError(f"{source}: expected a list of detections (COCO results format)")
    metadata = get_metadata(dataset_name, data_root)
    if metadata["evaluator_type"] == "pascal_voc":
        records, metadata = get_dataset(dataset_name, data_root)
        return evaluate_voc(records, metadata, detections, source)
    if metadata["evaluator_type"] == "lvis":  # federated: the lvis package's LVISEval
        return evaluate_lvis(metadata["json_file"], detections, source)
    if metadata["evaluator_type"] == "cityscapes_instance":  # cityscapesscripts' instance-level AP
        return evaluate_cityscapes(metadata["gt_dir"], detections, source)
    if metadata["evaluator_type"] == "sem_seg":  # per-image class RLEs: SemSegEvaluator's mIoU and accuracies
        records, metadata = get_dataset(dataset_name, data_root)
        return evaluate_sem_seg(records, metadata, detections, source)
    with_keypoints = sum(isinstance(d, Mapping) and "keypoints" in d for d in detections)
    if with_keypoints not in (0, len(detections)):
        raise UserError(f"{source}: {with_keypoints} of {len(detections)} detections have keypoints; "
                        f"give them for all or none")
    gt = read_coco_api(metadata["json_file"])
    metrics = evaluate_coco(gt, detections, source)
    if with_keypoints or ("keypoint_names" in metadata and not detections):  # no detections: NaN, not absent
        metrics["keypoints"] = evaluate_keypoints(gt, detections, oks_sigmas, source)
    return metrics
