"""Cityscapes instance-segmentation AP with cityscapesscripts' evalInstanceLevelSemanticLabeling,
run as detectron2's CityscapesInstanceEvaluator runs it: each detection's mask written as a
0/255 PNG with a ``<stem>_pred.txt`` line "<png> <label id> <score>" per frame, every gtFine
``*_instanceIds.png`` of the split scored, mask AP (IoU 0.5:0.95) and AP50 in percent.

The detections are in COCO results format: ``image_id`` is the frame's file name (as the
records give it, e.g. frankfurt_000000_000019_leftImg8bit.png), ``category_id`` its Cityscapes
label id (24 person ... 33 bicycle) and ``segmentation`` an RLE mask, which the evaluation needs.
The script keeps its settings in a module-level object; they are set as detectron2 sets them
for each evaluation, and its error exits (sys.exit) become one-line errors. It does not run on
NumPy 2.4 as released; ``cityscapes_compat`` mends that for the evaluation only.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from mocobench import UserError
from mocobench.transfer.datasets.cityscapes import GT_SUFFIXES, IMAGE_SUFFIX, INSTALL, thing_labels
from mocobench.transfer.evaluation.detections import detection_arrays

METRICS = ("AP", "AP50")


def _in1d(values: Any, test: Any, **kwargs: Any) -> np.ndarray:
    return np.isin(values, test, **kwargs).ravel()


def _json_value(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value.__dict__


@contextlib.contextmanager
def cityscapes_compat() -> Iterator[None]:
    """cityscapesscripts' instance evaluation made to run on NumPy 2.4, for its duration only:
    ``np.in1d`` (removed from NumPy) as a flattened ``np.isin``, and its ``writeDict2JSON`` able
    to write NumPy scalars (``np.count_nonzero`` returns one now), with the ``matches.json`` it
    writes to a relative path put in the prediction folder instead of the working directory.
    What it computes is untouched."""
    script = _script()
    added = "in1d" not in np.__dict__
    if added:
        np.in1d = _in1d  # type: ignore[attr-defined]
    original = script.writeDict2JSON

    def write(data: Any, file_name: str) -> None:
        if not os.path.isabs(file_name):
            file_name = os.path.join(script.args.predictionPath or tempfile.gettempdir(), file_name)
        with open(file_name, "w") as f:
            f.write(json.dumps(data, default=_json_value, sort_keys=True, indent=4))

    script.writeDict2JSON = write
    try:
        yield
    finally:
        script.writeDict2JSON = original
        if added:
            del np.in1d  # type: ignore[attr-defined]


def _script() -> Any:
    try:
        import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as script
    except ImportError as e:
        raise UserError(f"Cityscapes evaluation needs the cityscapesscripts package ({e}): {INSTALL}") from None
    return script


def ground_truth_files(gt_dir: str | os.PathLike) -> list[str]:
    """The split's instanceIds PNGs, found as detectron2's evaluator finds them."""
    return glob.glob(os.path.join(str(gt_dir), "*", "*_" + GT_SUFFIXES[0]))


def _frames(gt_files: list[str]) -> dict[str, str]:
    """image_id (the frame's leftImg8bit file name) -> its prediction-file stem."""
    stems = [os.path.basename(f)[: -len(GT_SUFFIXES[0])] for f in gt_files]
    return {stem + IMAGE_SUFFIX: stem + IMAGE_SUFFIX[: -len(".png")] for stem in stems}


def _write_predictions(folder: Path, detections: Sequence[Mapping[str, Any]], frames: dict[str, str],
                       names: dict[int, str]) -> None:
    lines: dict[str, list[str]] = {stem: [] for stem in frames.values()}
    for det in detections:
        stem = frames[det["image_id"]]
        mask = mask_util.decode(det["segmentation"]).astype(np.uint8)
        png = f"{stem}_{len(lines[stem])}_{names[det['category_id']]}.png"
        Image.fromarray(mask * 255).save(folder / png)
        lines[stem].append(f"{png} {det['category_id']} {det['score']}\n")
    for stem, text in lines.items():  # an empty file for a frame without detections, as detectron2 writes
        (folder / f"{stem}_pred.txt").write_text("".join(text))


def evaluate_cityscapes(gt_dir: str, detections: Sequence[Mapping[str, Any]],
                        source: str = "detections") -> dict[str, dict[str, float]]:
    """{"segm": {"AP", "AP50"}} over every frame of the split whose gtFine folder is ``gt_dir``."""
    gt_files = ground_truth_files(gt_dir)
    if not gt_files:
        raise UserError(f"{gt_dir}: no *_{GT_SUFFIXES[0]} to evaluate against")
    frames = _frames(gt_files)
    names = {t.id: t.name for t in thing_labels()}
    detection_arrays(detections, {f: i for i, f in enumerate(frames)}, {c: c for c in names}, source)
    for i, det in enumerate(detections):
        segm = det.get("segmentation")
        if not isinstance(segm, Mapping) or not {"size", "counts"} <= set(segm):
            raise UserError(f"{source}: detection {i} has no RLE segmentation {{'size': [h, w], 'counts': str}}; "
                            f"Cityscapes scores masks only")
    script = _script()
    with tempfile.TemporaryDirectory(prefix="cityscapes_eval_") as folder:
        _write_predictions(Path(folder), detections, frames, names)
        args = script.args
        args.predictionPath, args.predictionWalk = os.path.abspath(folder), None
        args.JSONOutput, args.colorized = False, False
        args.gtInstancesFile = os.path.join(folder, "gtInstances.json")
        try:
            with contextlib.redirect_stdout(io.StringIO()) as printed, cityscapes_compat():
                predictions = [script.getPrediction(gt, args) for gt in gt_files]
                results = script.evaluateImgLists(predictions, gt_files, args)["averages"]
        except SystemExit:
            lines = [line for line in printed.getvalue().splitlines() if line.startswith("ERROR")]
            raise UserError(f"{source}: cityscapesscripts' evaluation stopped: "
                            f"{lines[-1] if lines else 'no message'}") from None
    return {"segm": {"AP": float(results["allAp"] * 100), "AP50": float(results["allAp50%"] * 100)}}
