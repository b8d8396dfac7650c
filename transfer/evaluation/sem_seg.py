"""Semantic segmentation metrics as detectron2's SemSegEvaluator computes them: one confusion matrix
over every pixel of the split (rows the predicted class, columns the ground truth, the ignore label
as an extra column that no metric reads), then in percent

* mIoU: the mean over classes present in the ground truth of TP / (TP + FP + FN);
* fwIoU: those IoUs weighted by each class's share of the ground-truth pixels;
* mACC: the mean over those classes of TP / ground-truth pixels; pACC: all TPs / all labelled pixels;
* IoU-<class> and ACC-<class>: per class, NaN for a class absent from the ground truth.

Its boundary IoU (computed only where OpenCV is installed) is not.

Predictions come as label maps (the engines: one HxW array of class indices per image, at the
label map's size), or as detectron2's ``sem_seg_predictions.json`` (COCO stuff results: per image
and predicted class, ``{"file_name", "category_id", "segmentation": RLE}``), which must cover
each image's pixels exactly once. The ground truth is each record's label map, read by its
indices (transfer/datasets/sem_seg.py). Every problem (a file or class the dataset does not have,
a size that differs from the label map's, an image without prediction) is one line.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from mocobench import UserError
from mocobench.transfer.datasets.sem_seg import read_label_map


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_label: int) -> np.ndarray:
    """(K + 1) x (K + 1) counts, [predicted, true], the ignore label as true class K."""
    gt = np.where(gt == ignore_label, num_classes, gt)
    return np.bincount((num_classes + 1) * pred.reshape(-1).astype(np.int64) + gt.reshape(-1),
                       minlength=(num_classes + 1) ** 2).reshape(num_classes + 1, num_classes + 1)


def metrics_from_confusion(matrix: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """SemSegEvaluator's numbers (see the module docstring), in its key order."""
    k = len(class_names)
    acc, iou = np.full(k, np.nan), np.full(k, np.nan)
    tp = matrix.diagonal()[:-1].astype(float)
    pos_gt = matrix[:-1, :-1].sum(axis=0).astype(float)
    pos_pred = matrix[:-1, :-1].sum(axis=1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        weights = pos_gt / pos_gt.sum()
    acc_valid = pos_gt > 0
    acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
    union = pos_gt + pos_pred - tp
    iou_valid = acc_valid & (union > 0)
    iou[iou_valid] = tp[iou_valid] / union[iou_valid]
    with np.errstate(invalid="ignore", divide="ignore"):  # no labelled pixel at all: NaN, as detectron2
        results = {"mIoU": 100 * iou[iou_valid].sum() / iou_valid.sum(),
                   "fwIoU": 100 * (iou[iou_valid] * weights[iou_valid]).sum()}
        results.update({f"IoU-{name}": 100 * iou[i] for i, name in enumerate(class_names)})
        results["mACC"] = 100 * acc[acc_valid].sum() / acc_valid.sum()
        results["pACC"] = 100 * tp.sum() / pos_gt.sum()
    results.update({f"ACC-{name}": 100 * acc[i] for i, name in enumerate(class_names)})
    return {key: float(value) for key, value in results.items()}


def evaluate_label_maps(records: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any],
                        predictions: Mapping[str, np.ndarray], source: str = "predictions") -> dict[str, Any]:
    """``{"sem_seg": metrics}`` of one label map per record (by its file_name)."""
    classes, ignore = list(metadata["stuff_classes"]), metadata["ignore_label"]
    k = len(classes)
    missing = [r["file_name"] for r in records if r["file_name"] not in predictions]
    if missing:
        raise UserError(f"{source}: no prediction for {len(missing)} of {len(records)} images "
                        f"(first: {missing[0]})")
    known = {r["file_name"] for r in records}
    extra = [name for name in predictions if name not in known]
    if extra:
        raise UserError(f"{source}: a prediction names file {extra[0]!r}, which is not an image of the dataset")
    matrix = np.zeros((k + 1, k + 1), np.int64)
    for record in records:
        pred = np.asarray(predictions[record["file_name"]])
        gt = read_label_map(record["sem_seg_file_name"])
        if pred.shape != gt.shape:
            raise UserError(f"{source}: the prediction for {record['file_name']} is {pred.shape[1::-1]} "
                            f"(width x height) but its label map {record['sem_seg_file_name']} is {gt.shape[::-1]}")
        if pred.size and (pred.min() < 0 or pred.max() >= k):
            raise UserError(f"{source}: the prediction for {record['file_name']} has class {int(pred.max())}"
                            f"{'' if pred.min() >= 0 else f' or {int(pred.min())}'}; classes are 0..{k - 1}")
        labelled = gt[gt != ignore]
        if labelled.size and (labelled.min() < 0 or labelled.max() >= k):
            bad = int(labelled.max() if labelled.max() >= k else labelled.min())
            raise UserError(f"{record['sem_seg_file_name']}: label {bad} is neither a class (0..{k - 1}) nor "
                            f"the ignore label {ignore}")
        matrix += confusion(pred, gt, k, ignore)
    return {"sem_seg": metrics_from_confusion(matrix, classes)}


def _decode(rle: Any, i: int, source: str) -> np.ndarray:
    from pycocotools import mask as mask_util

    if not (isinstance(rle, Mapping) and isinstance(rle.get("size"), Sequence) and len(rle["size"]) == 2
            and isinstance(rle.get("counts"), (str, bytes))):
        raise UserError(f"{source}: prediction {i} has no RLE segmentation ({{'size': [h, w], 'counts': str}})")
    try:
        with warnings.catch_warnings():  # pycocotools' Cython decode predates numpy 2's copy keyword
            warnings.simplefilter("ignore", DeprecationWarning)
            return mask_util.decode({"size": list(rle["size"]), "counts": rle["counts"]}).astype(bool)
    except (ValueError, TypeError) as e:
        raise UserError(f"{source}: prediction {i}: cannot decode its RLE ({e})") from None


def evaluate_sem_seg(records: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any],
                     predictions: Sequence[Any], source: str = "predictions") -> dict[str, Any]:
    """``{"sem_seg": metrics}`` of predictions in detectron2's sem_seg_predictions.json format."""
    k = len(metadata["stuff_classes"])
    to_contiguous = metadata.get("stuff_dataset_id_to_contiguous_id") or {c: c for c in range(k)}
    names = {r["file_name"] for r in records}
    maps: dict[str, np.ndarray] = {}
    covered: dict[str, np.ndarray] = {}
    for i, p in enumerate(predictions):
        if not isinstance(p, Mapping) or not all(key in p for key in ("file_name", "category_id", "segmentation")):
            raise UserError(f"{source}: prediction {i} is not an object with file_name, category_id and segmentation")
        name, category = p["file_name"], p["category_id"]
        if name not in names:
            raise UserError(f"{source}: prediction {i} names file {name!r}, which is not an image of the dataset")
        if isinstance(category, bool) or not isinstance(category, int) or category not in to_contiguous:
            raise UserError(f"{source}: prediction {i} names category_id {category!r}, which is not a class of the "
                            f"dataset (0..{k - 1})")
        mask = _decode(p["segmentation"], i, source)
        if name not in maps:
            maps[name] = np.zeros(mask.shape, np.int64)
            covered[name] = np.zeros(mask.shape, bool)
        if mask.shape != maps[name].shape:
            raise UserError(f"{source}: prediction {i} is {mask.shape[::-1]} (width x height) but an earlier one "
                            f"for {name} is {maps[name].shape[::-1]}")
        if (covered[name] & mask).any():
            raise UserError(f"{source}: prediction {i} covers pixels of {name} an earlier prediction covers; give "
                            "each pixel one class")
        maps[name][mask] = to_contiguous[category]
        covered[name] |= mask
    for name, done in covered.items():
        if not done.all():
            raise UserError(f"{source}: the predictions for {name} leave {int((~done).sum())} of {done.size} pixels "
                            "without a class")
    return evaluate_label_maps(records, metadata, maps, source)
