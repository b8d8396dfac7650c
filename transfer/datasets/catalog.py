"""Dataset names -> dataset dicts and metadata, as detectron2's builtin catalog names them.

``voc_<year>_<split>`` reads ``<root>/VOC<year>`` with any ``ImageSets/Main/<split>.txt``
(voc_2007_trainval, voc_2012_trainval, voc_2007_test, ...); the COCO names read
``<root>/coco/{<split><year>,annotations/instances_<split><year>.json}``. The root is the
``data_root`` argument, else ``$DETECTRON2_DATASETS``, else ``datasets`` (detectron2's rule),
so a tree prepared for detectron2 works unchanged with both engines.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from mocobench import UserError
from mocobench.transfer.datasets.coco import coco_metadata, coco_records, read_coco_api
from mocobench.transfer.datasets.voc import load_voc_instances, voc_class_names

VOC_BUILTIN = ("voc_2007_trainval", "voc_2007_train", "voc_2007_val", "voc_2007_test",
               "voc_2012_trainval", "voc_2012_train", "voc_2012_val")
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


def dataset_names() -> list[str]:
    """The builtin names; ``voc_<year>_<split>`` is accepted for any other split too."""
    return [*VOC_BUILTIN, *COCO_BUILTIN]


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    return Path(data_root or os.environ.get("DETECTRON2_DATASETS") or "datasets")


def _resolve(name: str, data_root: str | os.PathLike | None
             ) -> tuple[dict[str, Any], Callable[[], list[dict[str, Any]]]]:
    """(metadata, a loader of the records): metadata alone stays cheap."""
    root = resolve_data_root(data_root)
    voc = VOC_NAME.match(name)
    if voc:
        year, split = int(voc.group(1)), voc.group(2)
        dirname = (root / f"VOC{year}").resolve()
        if not dirname.is_dir():
            raise UserError(f"{dirname}: VOC folder for dataset {name!r} not found")
        classes = voc_class_names(dirname)
        meta = {"thing_classes": classes, "evaluator_type": "pascal_voc",
                "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(classes))},
                "dirname": str(dirname), "year": year, "split": split}
        return meta, lambda: load_voc_instances(dirname, split, classes)
    if name in COCO_BUILTIN:
        image_root, json_file = (str((root / p).resolve()) for p in COCO_BUILTIN[name])
        api = read_coco_api(json_file)
        meta = {**coco_metadata(api), "evaluator_type": "coco", "json_file": json_file,
                "image_root": image_root}
        return meta, lambda: coco_records(api, json_file, image_root)
    raise UserError(f"unknown dataset {name!r}: expected voc_<year>_<split> or one of "
                    f"{', '.join(COCO_BUILTIN)}")


def get_metadata(name: str, data_root: str | os.PathLike | None = None) -> dict[str, Any]:
    return _resolve(name, data_root)[0]


def get_dataset(name: str, data_root: str | os.PathLike | None = None
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    meta, load = _resolve(name, data_root)
    return load(), meta


def check_images(name: str, data_root: str | os.PathLike | None = None) -> None:
    """Every image of the dataset exists and has a readable header (cheap: no pixels are
    decoded), so a damaged file stops a job before training rather than after it."""
    from PIL import Image

    for record in get_dataset(name, data_root)[0]:
        path = record["file_name"]
        try:
            with Image.open(path):
                pass
        except (OSError, ValueError, SyntaxError) as e:
            reason = str(e).replace(f"'{path}'", "").replace(str(path), "").strip() or type(e).__name__
            raise UserError(f"{path}: cannot read image ({name}: {reason})") from None


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
    for name, (meta, _) in zip(names, resolved):
        if meta["thing_classes"] != first["thing_classes"]:
            raise UserError(f"dataset {name!r} has classes {meta['thing_classes']} but {names[0]!r} "
                            f"has {first['thing_classes']}: they cannot be trained together")
    return [r for _, load in resolved for r in load()], {**first, "names": list(names)}
