"""Our catalog's datasets (transfer.datasets.catalog: real VOC/COCO layouts and the synthetic
ones, under the job's data root) in detectron2's DatasetCatalog / MetadataCatalog.

detectron2 registers the same builtin names on import, rooted at $DETECTRON2_DATASETS; those
entries are replaced, so both engines read the same files for the same name and root."""

from __future__ import annotations

from typing import Any, Iterable, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from mocobench.transfer.datasets.catalog import get_dataset, get_metadata


def detectron2_records(name: str, data_root: Optional[str]) -> list[dict[str, Any]]:
    """Contract-1 records with the one field detectron2 also needs: the box mode (XYXY_ABS)."""
    records, _ = get_dataset(name, data_root)
    return [{**r, "annotations": [{**a, "bbox_mode": BoxMode.XYXY_ABS} for a in r["annotations"]]}
            if "annotations" in r else r for r in records]  # semantic segmentation: none


def register_datasets(names: Iterable[str], data_root: Optional[str]) -> None:
    """(Re)registers each name; its metadata (evaluator_type, dirname/year/split or
    json_file/image_root, classes) is read now, so a missing dataset fails before training."""
    for name in dict.fromkeys(names):
        metadata = get_metadata(name, data_root)
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, lambda name=name: detectron2_records(name, data_root))
        MetadataCatalog.get(name).set(**metadata)
