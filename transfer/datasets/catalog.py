"""Dataset names -> dataset dicts and metadata, as detectron2's builtin catalog names them.

``voc_<year>_<split>`` reads ``<root>/VOC<year>`` with any ``ImageSets/Main/<split>.txt``
(voc_2007_trainval, voc_2012_trainval, voc_2007_test, ...); the COCO names read
``<root>/coco/{<split><year>,annotations/instances_<split><year>.json}``. The root is the
``data_root`` argument, else ``$DETECTRON2_DATASETS``, else ``datasets`` (detectron2's rule); the ``keypoints_coco_<year>_<split>`` names read the same
images with ``annotations/person_keypoints_<split><year>.json``, and the ``lvis_v0.5_*`` names
``<root>/lvis/lvis_v0.5_<split>.json`` with COCO's images (transfer/datasets/lvis.py), and the
``cityscapes_fine_instance_seg_<split>`` names ``<root>/cityscapes/{leftImg8bit,gtFine}/<split>``
(transfer/datasets/cityscapes.py), and the semantic-segmentation names ``voc_<year>_sem_seg_<split>``
and ``cityscapes_fine_sem_seg_<split>`` the same trees' label maps (transfer/datasets/sem_seg.py),
so a tree prepared for detectron2 works unchanged with both engines. ``check_images`` also
holds each image's header to the size its annotation gives (as detectron2 does when it reads
the image) and returns what loading dropped or changed, for the run's metadata.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from mocobench import UserError
from mocobench.transfer.datasets.cityscapes import (CITYSCAPES_BUILTIN, cityscapes_metadata,
                                                    load_cityscapes_records, polygons_file)
from mocobench.transfer.datasets.coco import coco_metadata, load_coco_records, read_coco_api
from mocobench.transfer.datasets.coco_keypoints import keypoint_metadata
from mocobench.transfer.datasets.lvis import LVIS_BUILTIN, load_lvis_records, lvis_metadata, read_lvis
from mocobench.transfer.datasets.sem_seg import (CITYSCAPES_SEM_SEG_BUILTIN, is_sem_seg_name, label_size,
                                                 resolve_sem_seg)
from mocobench.transfer.datasets.voc import load_voc_split, voc_class_names, voc_folder

Records = list[dict[str, Any]]
Counts = dict[str, int]  # what loading dropped or changed, by kind (empty: nothing)

VOC_BUILTIN = ("voc_2007_trainval", "voc_2007_train", "voc_2007_val", "voc_2007_test",
               "voc_2012_trainval", "voc_2012_train", "voc_2012_val")
VOC_SEM_SEG_BUILTIN = ("voc_2012_sem_seg_train_aug", "voc_2012_sem_seg_train", "voc_2012_sem_seg_val")
VOC_NAME = re.compile(r"^voc_(\d{4})_([\w.-]+)$")
# name -> (image folder, instances json), relative to the data root (detectron2's builtin table)
COCO_BUILTIN = {
    "coco_2014_train": ("coco/train2014", "coco/annotations/instances_train2014.json"),
    "coco_2014_val": ("coco/val2014", "coco/annotations/instances_val2014.json"),
    "coco_2014_minival": ("coco/val2014", "coco/annotations/instances_minival2014.json"),
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    "coco_2017_val_100": ("coco/val2017", "coco/annotations/instances_val2017_100.json"),
}
KEYPOINTS_BUILTIN = {
    "keypoints_coco_2014_train": ("coco/train2014", "coco/annotations/person_keypoints_train2014.json"),
    "keypoints_coco_2014_val": ("coco/val2014", "coco/annotations/person_keypoints_val2014.json"),
    "keypoints_coco_2017_train": ("coco/train2017", "coco/annotations/person_keypoints_train2017.json"),
    "keypoints_coco_2017_val": ("coco/val2017", "coco/annotations/person_keypoints_val2017.json"),
}


def dataset_names() -> list[str]:
    """The builtin names; ``voc_<year>_<split>`` is accepted for any other split too."""
    return [*VOC_BUILTIN, *COCO_BUILTIN, *KEYPOINTS_BUILTIN, *LVIS_BUILTIN, *CITYSCAPES_BUILTIN,
            *VOC_SEM_SEG_BUILTIN, *CITYSCAPES_SEM_SEG_BUILTIN]


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    return Path(data_root or os.environ.get("DETECTRON2_DATASETS") or "datasets")


def _resolve(name: str, data_root: str | os.PathLike | None
             ) -> tuple[dict[str, Any], Callable[[], tuple[Records, Counts]]]:
    """(metadata, a loader of the records): metadata alone stays cheap."""
    root = resolve_data_root(data_root)
    if is_sem_seg_name(name):  # before VOC_NAME, which voc_<year>_sem_seg_<split> also matches
        return resolve_sem_seg(name, root)
    voc = VOC_NAME.match(name)
    if voc:
        year, split = int(voc.group(1)), voc.group(2)
        dirname = voc_folder(root, year, name)
        classes = voc_class_names(dirname)
        meta = {"thing_classes": classes, "evaluator_type": "pascal_voc",
                "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(classes))},
                "dirname": str(dirname), "year": year, "split": split}
        return meta, lambda: load_voc_split(dirname, split, classes)
    if name in COCO_BUILTIN or name in KEYPOINTS_BUILTIN:
        keypoints = name in KEYPOINTS_BUILTIN
        image_root, json_file = (str((root / p).resolve()) for p in {**COCO_BUILTIN, **KEYPOINTS_BUILTIN}[name])
        api = read_coco_api(json_file, keypoints=keypoints)
        meta = {**coco_metadata(api), "evaluator_type": "coco", "json_file": json_file,
                "image_root": image_root, **(keypoint_metadata(api, json_file) if keypoints else {})}
        return meta, lambda: load_coco_records(api, json_file, image_root)
    if name in LVIS_BUILTIN:
        image_root, json_file = (str((root / p).resolve()) for p in LVIS_BUILTIN[name])
        data = read_lvis(json_file)
        meta = {**lvis_metadata(data, name), "evaluator_type": "lvis", "json_file": json_file,
                "image_root": image_root}
        return meta, lambda: load_lvis_records(data, json_file, image_root)
    if name in CITYSCAPES_BUILTIN:
        image_dir, gt_dir = (str((root / p).resolve()) for p in CITYSCAPES_BUILTIN[name])
        return cityscapes_metadata(image_dir, gt_dir), lambda: load_cityscapes_records(image_dir, gt_dir)
    raise UserError(f"unknown dataset {name!r}: expected voc_<year>_<split> or one of "
                    f"{', '.join(dataset_names()[len(VOC_BUILTIN):])}")


def get_metadata(name: str, data_root: str | os.PathLike | None = None) -> dict[str, Any]:
    return _resolve(name, data_root)[0]


def get_dataset(name: str, data_root: str | os.PathLike | None = None
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    meta, load = _resolve(name, data_root)
    return load()[0], meta


def annotation_file(record: dict[str, Any], meta: dict[str, Any]) -> str:
    """The file that gave the record its size: its VOC XML, the COCO/LVIS JSON, its Cityscapes polygons or
    (semantic segmentation without a recorded size) its label map."""
    if "sem_seg_file_name" in record and "width" not in record:
        return record["sem_seg_file_name"]
    if meta["evaluator_type"] == "pascal_voc":
        return str(Path(meta["dirname"]) / "Annotations" / f"{record['image_id']}.xml")
    if meta["evaluator_type"] == "cityscapes_instance":
        return str(polygons_file(record["file_name"], meta["gt_dir"]))
    return meta["json_file"]


def check_images(name: str, data_root: str | os.PathLike | None = None) -> Counts:
    """Every image of the dataset exists, has a readable header (cheap: no pixels are
    decoded) and the size its annotation gives, so a damaged file stops a job before
    training rather than after it. Returns the dataset's counts of what loading changed."""
    from PIL import Image

    meta, load = _resolve(name, data_root)
    records, counts = load()
    for record in records:
        path = record["file_name"]
        try:
            with Image.open(path) as im:
                size = im.size
        except (OSError, ValueError, SyntaxError) as e:
            reason = str(e).replace(f"'{path}'", "").replace(str(path), "").strip() or type(e).__name__
            raise UserError(f"{path}: cannot read image ({name}: {reason})") from None
        # exact, as detectron2's check_image_size: boxes are in the annotation's pixel frame
        expected = (record["width"], record["height"]) if "width" in record else label_size(record)
        if size != expected:
            raise UserError(f"{path}: image is {size[0]}x{size[1]} (width x height) but the annotation file "
                            f"gives {expected[0]:g}x{expected[1]:g} ({annotation_file(record, meta)}); "
                            f"they must match")
    return counts


def get_datasets(names: Sequence[str], data_root: str | os.PathLike | None = None
                 ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Several datasets trained as one (detectron2's DATASETS.TRAIN tuple, e.g. 07+12).

    Their class lists must agree, or contiguous ids would mean different classes; this is
    checked before any annotation is read. The metadata is the first dataset's, with
    ``names`` listing all of them.
    """
    if not names:
        raise UserError("no dataset names given")
    resolved = [_resolve(name, data_root) for name in names]
    first = resolved[0][0]
    key = "thing_classes" if "thing_classes" in first else "stuff_classes"  # semantic segmentation: stuff
    for name, (meta, _) in zip(names, resolved):
        if meta.get(key) != first[key]:
            raise UserError(f"dataset {name!r} has classes {meta.get(key)} but {names[0]!r} "
                            f"has {first[key]}: they cannot be trained together")
    return [r for _, load in resolved for r in load()[0]], {**first, "names": list(names)}
