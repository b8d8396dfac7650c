"""Semantic segmentation datasets: PASCAL VOC (SegmentationClass PNGs) and Cityscapes (gtFine
labelTrainIds PNGs), as records detectron2's loaders give and the metadata its SemSegEvaluator reads.

VOC: ``voc_<year>_sem_seg_<split>`` reads ``VOC<year>/ImageSets/Segmentation/<split>.txt``; each id's
image is ``JPEGImages/<id>.jpg`` and its label map ``SegmentationClass/<id>.png``, except for a split
whose name ends in ``_aug`` (``train_aug``: VOC's train set augmented by SBD, 10582 images), whose
label maps are ``SegmentationClassAug/<id>.png``, the folder the usual SBD conversion writes. A
record is ``{"file_name", "sem_seg_file_name"}``, what detectron2's ``load_sem_seg`` gives for the
folder pair (JPEGImages, the label folder) restricted to the split's ids, in its order (sorted by
id). Pixel values are class indices: 0 background, 1..N the classes of ``classes.txt`` (VOC's 20
without it), 255 void (object borders, difficult regions), ignored in training and evaluation.
VOC's own PNGs are palette images: the index is the label, never the colour, so they are read with
``read_label_map`` (as SemSegEvaluator reads them), never converted to grey.

Cityscapes: ``cityscapes_fine_sem_seg_<split>`` (detectron2's builtin names) reads
``cityscapes/{leftImg8bit,gtFine}/<split>``; a record is detectron2's ``load_cityscapes_semantic``:
``file_name``, ``sem_seg_file_name`` (the frame's ``*_gtFine_labelTrainIds.png``, which
cityscapesscripts' createTrainIdLabelImgs.py writes), and ``height``/``width`` from its polygons json.
Classes are the 19 train ids in order (detectron2's stuff_classes), 255 ignored.

Both are scored by SemSegEvaluator's confusion matrix (transfer/evaluation/sem_seg.py), so both
carry ``evaluator_type`` ``sem_seg``; detectron2 registers Cityscapes as ``cityscapes_sem_seg``,
scored by cityscapesscripts' pixel-level script, which is not used here.

A problem (a missing split file, image or label map, an id listed twice, a label map that is not a
single-channel image) is one line naming the file; detectron2 asserts or loads the pair silently.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from mocobench import UserError
from mocobench.transfer.datasets.voc import read_image_ids, voc_class_names, voc_folder

IGNORE_LABEL = 255
EVALUATOR_TYPE = "sem_seg"
VOC_SEM_SEG_NAME = re.compile(r"^voc_(\d{4})_sem_seg_([\w.-]+)$")
VOC_LABELS, VOC_AUG_LABELS = "SegmentationClass", "SegmentationClassAug"
CITYSCAPES_SEM_SEG_BUILTIN = {
    "cityscapes_fine_sem_seg_train": ("cityscapes/leftImg8bit/train", "cityscapes/gtFine/train"),
    "cityscapes_fine_sem_seg_val": ("cityscapes/leftImg8bit/val", "cityscapes/gtFine/val"),
}
TRAIN_IDS_SUFFIX = "gtFine_labelTrainIds.png"
LABEL_MODES = ("L", "P")  # a single channel of class indices (grey, or a palette: VOC's own PNGs)


def is_sem_seg_name(name: str) -> bool:
    return bool(VOC_SEM_SEG_NAME.match(name)) or name in CITYSCAPES_SEM_SEG_BUILTIN


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """A label PNG's class indices (HxW int64), as SemSegEvaluator reads them; one line if unreadable
    or not single-channel (an RGB colour map would give colours, not classes)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in LABEL_MODES:
                raise UserError(f"{path}: label map is a {im.mode} image; want one channel of class indices "
                                f"(mode {' or '.join(LABEL_MODES)}), e.g. VOC's palette PNGs")
            return np.asarray(im, dtype=np.int64)
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{path}: cannot read label map ({e})") from None


# ---- VOC --------------------------------------------------------------------------------------

def voc_label_folder(split: str) -> str:
    return VOC_AUG_LABELS if split.endswith("_aug") else VOC_LABELS


def read_segmentation_split(dirname: Path, split: str) -> list[str]:
    """Image ids of ``ImageSets/Segmentation/<split>.txt`` (each once)."""
    path = dirname / "ImageSets" / "Segmentation" / f"{split}.txt"
    return sorted(read_image_ids(path, sorted(p.stem for p in path.parent.glob("*.txt"))))


def voc_sem_seg_metadata(dirname: Path, year: int, split: str) -> dict[str, Any]:
    return {"stuff_classes": ["background", *voc_class_names(dirname)], "ignore_label": IGNORE_LABEL,
            "evaluator_type": EVALUATOR_TYPE, "dirname": str(dirname), "year": year, "split": split,
            "image_root": str(dirname / "JPEGImages"), "sem_seg_root": str(dirname / voc_label_folder(split))}


def load_voc_sem_seg(dirname: Path, split: str) -> list[dict[str, Any]]:
    labels = voc_label_folder(split)
    records = []
    for image_id in read_segmentation_split(dirname, split):
        image, label = dirname / "JPEGImages" / f"{image_id}.jpg", dirname / labels / f"{image_id}.png"
        for path, what in ((image, "image"), (label, "label map")):
            if not path.is_file():
                raise UserError(f"{path}: {what} of {image_id!r} (ImageSets/Segmentation/{split}.txt) not found")
        records.append({"file_name": str(image), "sem_seg_file_name": str(label)})
    return records


# ---- Cityscapes -------------------------------------------------------------------------------

def cityscapes_train_ids() -> list[Any]:
    """The 19 evaluated classes in train-id order (detectron2's stuff_classes)."""
    from mocobench.transfer.datasets.cityscapes import cityscapes_labels

    labels = [label for label in cityscapes_labels().labels if label.trainId not in (-1, IGNORE_LABEL)]
    return sorted(labels, key=lambda label: label.trainId)


def cityscapes_sem_seg_metadata(image_dir: str, gt_dir: str) -> dict[str, Any]:
    return {"stuff_classes": [label.name for label in cityscapes_train_ids()], "ignore_label": IGNORE_LABEL,
            "evaluator_type": EVALUATOR_TYPE, "image_dir": image_dir, "gt_dir": gt_dir}


def load_cityscapes_sem_seg(image_dir: str, gt_dir: str) -> list[dict[str, Any]]:
    from mocobench.transfer.datasets.cityscapes import _read, cityscapes_files

    records = []
    for image, json_file in cityscapes_files(image_dir, gt_dir):
        label = json_file.with_name(json_file.name.replace("gtFine_polygons.json", TRAIN_IDS_SUFFIX))
        if not label.is_file():
            raise UserError(f"{label}: not found; write the labelTrainIds PNGs with cityscapesscripts' "
                            "preparation/createTrainIdLabelImgs.py")
        doc = _read(json_file)
        records.append({"file_name": str(image), "sem_seg_file_name": str(label),
                        "height": doc["imgHeight"], "width": doc["imgWidth"]})
    return records


# ---- catalog ----------------------------------------------------------------------------------

def resolve_sem_seg(name: str, root: Path):
    """(metadata, a loader of (records, counts)) of a semantic-segmentation name, for the catalog."""
    voc = VOC_SEM_SEG_NAME.match(name)
    if voc:
        year, split = int(voc.group(1)), voc.group(2)
        dirname = voc_folder(root, year, name)
        return voc_sem_seg_metadata(dirname, year, split), lambda: (load_voc_sem_seg(dirname, split), {})
    image_dir, gt_dir = (str((root / p).resolve()) for p in CITYSCAPES_SEM_SEG_BUILTIN[name])
    return cityscapes_sem_seg_metadata(image_dir, gt_dir), lambda: (load_cityscapes_sem_seg(image_dir, gt_dir), {})


def label_size(record: dict[str, Any]) -> tuple[int, int]:
    """(width, height) of the record's label map, from its header; one line if unreadable."""
    from PIL import Image

    path = record["sem_seg_file_name"]
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{path}: cannot read label map ({e})") from None
