"""LVIS box and mask AP with the ``lvis`` package's LVISEval (federated evaluation), reported as
detectron2's LVISEvaluator does: AP, AP50, AP75, APs, APm, APl, APr, APc, APf in percent, at
most 300 detections per image (LVIS's limit), and for masks the detections' boxes dropped so
the size ranges use mask areas.

Federated: a detection of a category that its image neither annotates nor lists in
``neg_category_ids`` is not scored, and an unmatched detection of a category in
``not_exhaustive_category_ids`` is not a false positive. Where LVISEval gives -1 (no ground
truth in a size range or frequency group) detectron2 reports -100; the number here is NaN, as
our COCO evaluator gives, and so is every metric when there are no detections.

The ``lvis`` release on PyPI (0.5.3) still calls ``np.float``, which NumPy 2 removed: the
evaluation runs with that alias restored for its duration only (``lvis_numpy``). Importing
``lvis`` configures the root logger; that is undone (``import_lvis``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from mocobench import UserError
from mocobench.transfer.evaluation.coco import check_masks
from mocobench.transfer.evaluation.detections import detection_arrays

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
MAX_DETS = 300  # LVIS's limit per image (detectron2's default for LVISEvaluator)
INSTALL = "pip install lvis (a mocobench dependency)"


def import_lvis() -> Any:
    """The ``lvis`` module, leaving the root logger as it was (its import calls basicConfig)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        import lvis
    except ImportError as e:
        raise UserError(f"LVIS evaluation needs the lvis package ({e}): {INSTALL}") from None
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    return lvis


@contextlib.contextmanager
def lvis_numpy() -> Iterator[None]:
    """``np.float`` (float) for the lvis package's accumulate(), removed afterwards; its
    per-run warnings ("Assuming user provided the results in correct format") quieted."""
    added = "float" not in np.__dict__
    if added:
        np.float = float  # type: ignore[attr-defined]
    quiet = logging.getLogger("lvis")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # its logger.warn calls are deprecated
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lvis\.")
            yield
    finally:
        quiet.setLevel(level)
        if added:
            del np.float  # type: ignore[attr-defined]


def to_percent(results: Mapping[str, float]) -> dict[str, float]:
    """LVISEval's fractions in percent; -1 (not computable) as NaN."""
    return {m: float(results[m] * 100) if results[m] >= 0 else float("nan") for m in METRICS}


def _lvis_metrics(gt: Any, results: list[dict[str, Any]], iou_type: str, max_dets: int) -> dict[str, float]:
    if not results:
        return {m: float("nan") for m in METRICS}
    lvis = import_lvis()
    with lvis_numpy():
        evaluation = lvis.LVISEval(gt, lvis.LVISResults(gt, results, max_dets=max_dets), iou_type)
        evaluation.run()
    return to_percent(evaluation.get_results())


def evaluate_lvis(json_file: str, detections: Sequence[Mapping[str, Any]], source: str = "detections",
                  max_dets: int = MAX_DETS) -> dict[str, dict[str, float]]:
    """{"bbox": {...}} plus {"segm": {...}} when the detections carry masks; ``json_file`` is
    an LVIS file that transfer.datasets.lvis.read_lvis has checked."""
    lvis = import_lvis()
    gt = lvis.LVIS(json_file)
    detection_arrays(detections, {i: i for i in gt.imgs}, {c: c for c in gt.cats}, source)
    with_masks = check_masks(detections, source)
    # LVISResults adds fields to (and for boxes, a polygon to) the dicts it gets: give it copies
    results = {"bbox": copy.deepcopy([dict(d) for d in detections])}
    if with_masks:
        results["segm"] = copy.deepcopy([{k: v for k, v in d.items() if k != "bbox"} for d in detections])
    return {iou_type: _lvis_metrics(gt, res, iou_type, max_dets) for iou_type, res in results.items()}
