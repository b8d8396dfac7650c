"""Synthetic LVIS v0.5: ``lvis/lvis_v0.5_{train,val}.json`` with federated labels, over the
synthetic COCO images (``data synth --lvis``).

Why derived from the COCO part: LVIS annotates COCO's images, so its files point into
``coco/<split>2017/`` and no image is drawn (the data gains no drawing time). What LVIS adds is
federated labelling, which is made here from the COCO annotations, per image, from the seed:

- a class present in the image is left unverified (all its instances unannotated, and the class
  in neither list) with a chance that rises from the first class to the last, so later classes
  are labelled in fewer images: a long tail;
- a verified present class is marked not exhaustively annotated (``not_exhaustive_category_ids``)
  with a fixed chance, and then some of its instances (never all) are left unannotated;
- an absent class is verified absent (``neg_category_ids``) with a fixed chance.

So every list tells the truth about the image, as the evaluator assumes. Categories are
numbered 1..N in the COCO ids' order, with ``frequency`` r / c / f by thirds of the classes
ranked by training images (the real thresholds, 10 and 100 images, would make every synthetic
class one group). As in LVIS, val draws images from COCO's train2017 folder too (the last
quarter of it, which train then leaves out), so only ``coco_url`` gives an image's folder: the
``file_name`` is in COCO 2014's naming, not a file on disk.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from pathlib import Path

import numpy as np

from mocobench import UserError

LVIS_VERSION = 1            # bump when the same COCO files and seed would give different LVIS files
UNVERIFIED = (0.1, 0.6)     # chance a present class is unverified in an image: first class, last class
NOT_EXHAUSTIVE = 0.3        # chance a verified present class is marked (and left) not exhaustively annotated
NEGATIVE = 0.6              # chance an absent class is verified absent
VAL_FROM_TRAIN = 0.25       # the last fraction of COCO train2017's images that LVIS val takes
FILES = {"train": "lvis_v0.5_train.json", "val": "lvis_v0.5_val.json"}
URL = "http://images.cocodataset.org/{folder}/{file}"  # the real files' coco_url form: <host>/<folder>/<file>
FINGERPRINT = hashlib.sha256(json.dumps([LVIS_VERSION, UNVERIFIED, NOT_EXHAUSTIVE, NEGATIVE, VAL_FROM_TRAIN,
                                         FILES]).encode()).hexdigest()


def _rng(seed: int, image_id: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(b"lvis"), image_id])


def _federate(rng: np.random.Generator, anns: list[dict], classes: int) -> tuple[list[dict], list[int], list[int]]:
    """(kept annotations, neg_category_ids, not_exhaustive_category_ids) of one image; the
    annotations' category_id is already the LVIS id 1..classes."""
    present = sorted({a["category_id"] for a in anns})
    kept, not_exhaustive = [], []
    for c in present:
        mine = [a for a in anns if a["category_id"] == c]
        low, high = UNVERIFIED
        if rng.random() < low + (high - low) * (c - 1) / max(classes - 1, 1):
            continue
        if rng.random() < NOT_EXHAUSTIVE:
            not_exhaustive.append(c)
            if len(mine) > 1:
                keep = np.sort(rng.choice(len(mine), int(rng.integers(1, len(mine))), replace=False))
                mine = [mine[i] for i in keep]
        kept += mine
    negative = [c for c in range(1, classes + 1) if c not in present and rng.random() < NEGATIVE]
    return kept, negative, not_exhaustive


def lvis_docs(seed: int, coco: dict[str, dict]) -> dict[str, dict]:
    """The LVIS train and val documents (by FILES key) from the synthetic COCO instances
    documents of train2017 and val2017."""
    cats = sorted(coco["train2017"]["categories"], key=lambda c: c["id"])
    lvis_id = {c["id"]: i + 1 for i, c in enumerate(cats)}
    train_images = sorted(coco["train2017"]["images"], key=lambda im: im["id"])
    moved = math.ceil(VAL_FROM_TRAIN * len(train_images))
    splits = {"train": [("train2017", im) for im in train_images[: len(train_images) - moved]],
              "val": [("val2017", im) for im in sorted(coco["val2017"]["images"], key=lambda im: im["id"])]
              + [("train2017", im) for im in train_images[len(train_images) - moved:]]}
    by_image: dict[int, list[dict]] = {}
    for doc in coco.values():
        for a in doc["annotations"]:
            by_image.setdefault(a["image_id"], []).append({**a, "category_id": lvis_id[a["category_id"]]})
    docs, ann_id = {}, 0
    for split, images in splits.items():
        entries, annotations = [], []
        for folder, im in images:
            kept, negative, not_exhaustive = _federate(_rng(seed, im["id"]), by_image.get(im["id"], []), len(cats))
            entries.append({"id": im["id"], "width": im["width"], "height": im["height"], "license": 1,
                            "coco_url": URL.format(folder=folder, file=im["file_name"]),
                            "file_name": f"COCO_{folder[:-4]}2014_{im['id']:012d}.jpg",
                            "neg_category_ids": negative, "not_exhaustive_category_ids": not_exhaustive})
            for a in kept:  # ids run on across the splits, as in the real files
                ann_id += 1
                annotations.append({"id": ann_id, "image_id": im["id"], "category_id": a["category_id"],
                                    "bbox": a["bbox"], "area": a["area"], "segmentation": a["segmentation"]})
        docs[split] = {"info": {"description": f"mocobench synthetic LVIS v0.5 {split}", "version": "0.5",
                                "year": 2019, "contributor": "mocobench synthetic"},
                       "licenses": coco["train2017"].get("licenses", []),
                       "images": entries, "annotations": annotations, "categories": []}
    docs["train"]["categories"] = docs["val"]["categories"] = _categories(cats, docs["train"]["annotations"])
    return docs


def _categories(cats: list[dict], train_annotations: list[dict]) -> list[dict]:
    images = {i + 1: set() for i in range(len(cats))}
    instances = {i + 1: 0 for i in range(len(cats))}
    for a in train_annotations:
        images[a["category_id"]].add(a["image_id"])
        instances[a["category_id"]] += 1
    ranked = sorted(images, key=lambda c: (len(images[c]), c))
    frequency = {c: "rcf"[min(2, 3 * rank // len(ranked))] for rank, c in enumerate(ranked)}
    return [{"id": i + 1, "name": c["name"], "synonyms": [c["name"]], "synset": f"{c['name']}.n.01",
             "def": f"a synthetic {c['name']} shape", "frequency": frequency[i + 1],
             "image_count": len(images[i + 1]), "instance_count": instances[i + 1]} for i, c in enumerate(cats)]


def write_lvis(out: Path, seed: int) -> dict[str, int]:
    """Writes lvis/ from the folder's coco/annotations; returns counts for the manifest."""
    coco = {}
    for split in ("train2017", "val2017"):
        path = out / "coco" / "annotations" / f"instances_{split}.json"
        if not path.is_file():
            raise UserError(f"{path}: not found; the synthetic LVIS files are made from the COCO part")
        coco[split] = json.loads(path.read_text())
    counts = {}
    for split, doc in lvis_docs(seed, coco).items():
        path = out / "lvis" / FILES[split]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
        counts[f"lvis/{split}"] = len(doc["images"])
        counts[f"lvis/{split}/objects"] = len(doc["annotations"])
    return counts
