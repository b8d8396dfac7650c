"""Synthetic VOC2012 semantic segmentation, in the real layout: ``VOC2012/ImageSets/Segmentation/
{train,val,trainval,train_aug}.txt``, ``SegmentationClass/<id>.png`` (palette PNGs, VOC's colour map)
for the segmentation train and val images and ``SegmentationClassAug/<id>.png`` (grey PNGs, as the
usual SBD conversion writes them) for train_aug and val; written on request (``data synth --semseg``)
into a complete folder, whose VOC2012 images and ImageSets/Main it reads.

Why these parts: VOC's segmentation subset is a part of its detection images (train: a part of
Main/train; val: Main/val), and train_aug (SBD's extra annotations) covers more of the train images
than train alone; readers must pick the label folder by split. A label map is drawn from the same
scene as the image (its generator re-seeded, so the objects are the image's own, pixel for pixel):
0 background, 1..N the classes of classes.txt, and 255 (void) where VOC puts it: a band on every
border between two labels, and the whole of an object VOC would flag difficult.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mocobench.transfer.datasets.scene import SceneObject, rasterize
from mocobench.transfer.datasets.synth_layouts import is_difficult
from mocobench.transfer.datasets.synth_scales import SceneSpec

VERSION = 1  # bump when the same seed would give different label maps
VOID = 255
LABELS, AUG_LABELS = "SegmentationClass", "SegmentationClassAug"


def voc_palette() -> list[int]:
    """VOC's colour map (the devkit's bit-interleaving rule), 256 RGB entries flattened; 255 is (224, 224, 192)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def label_map(objects: list[SceneObject], width: int, height: int, spec: SceneSpec) -> np.ndarray:
    """The scene's class map (uint8): objects painted in drawing order, as the image is, then void
    on every label border (both sides) and over difficult objects."""
    labels = np.zeros((height, width), np.uint8)
    difficult = np.zeros((height, width), bool)
    for obj in objects:
        mask = rasterize(obj.polygon, width, height)
        labels[mask] = obj.class_index + 1
        difficult[mask] = is_difficult(obj, spec)  # a later object covers an earlier one's flag too
    border = np.zeros_like(difficult)
    vertical, horizontal = labels[1:] != labels[:-1], labels[:, 1:] != labels[:, :-1]
    border[1:] |= vertical
    border[:-1] |= vertical
    border[:, 1:] |= horizontal
    border[:, :-1] |= horizontal
    labels[border | (difficult & (labels > 0))] = VOID
    return labels


def segmentation_splits(root: Path) -> dict[str, tuple[str, ...]]:
    """ImageSets/Segmentation's splits from ImageSets/Main: val = Main/val, train = every other
    Main/train id, train_aug = all of Main/train, trainval = train + val."""
    main = root / "ImageSets" / "Main"
    train_ids, val = (sorted(line.split()[0] for line in (main / f"{s}.txt").read_text().splitlines() if line.strip())
                      for s in ("train", "val"))
    train = train_ids[::2]
    return {"train": tuple(train), "val": tuple(val), "trainval": tuple(sorted(train + val)),
            "train_aug": tuple(train_ids)}


def write_label_maps(root: Path, image_id: str, labels: np.ndarray) -> None:
    """The image's SegmentationClass (palette) and SegmentationClassAug (grey) PNGs, each where VOC has one."""
    splits = segmentation_splits(root)
    if image_id in splits["trainval"]:
        (root / LABELS).mkdir(exist_ok=True)
        image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), np.ascontiguousarray(labels).tobytes())
        image.putpalette(voc_palette())
        image.save(root / LABELS / f"{image_id}.png")
    if image_id in splits["train_aug"] or image_id in splits["val"]:
        (root / AUG_LABELS).mkdir(exist_ok=True)
        Image.fromarray(labels).save(root / AUG_LABELS / f"{image_id}.png")


def write_split_files(root: Path) -> dict[str, int]:
    """ImageSets/Segmentation/<split>.txt; returns the count per split."""
    splits = segmentation_splits(root)
    folder = root / "ImageSets" / "Segmentation"
    folder.mkdir(parents=True, exist_ok=True)
    for split, ids in splits.items():
        (folder / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return {f"VOC2012/segmentation/{split}": len(ids) for split, ids in splits.items()}
