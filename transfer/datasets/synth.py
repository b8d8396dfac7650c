"""Write the synthetic benchmark data: pretraining images, a classification set, VOC2007,
VOC2012 and COCO, each in its real on-disk layout.

Why synthetic: the whole pipeline (pretrain -> convert -> detect -> tables) must run
end to end, in tests and in a CPU demo, with no download. Why deterministic: every
image is drawn from its own numpy Generator seeded by (seed, part, index) and saved as
JPEG at a fixed quality, so the same seed gives byte-identical files on any run, and
results computed on the data are reproducible.

Safety: ``DIR/SYNTH.json`` marks a folder as ours. It is written first with
``"complete": false`` and rewritten (atomically) with ``"complete": true`` only when every
file is in place, so a killed run is recognised and rewritten by the next one; a complete
folder with the same seed and scale is left as it is; anything else is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from mocobench import UserError
from mocobench.atomic import write_json
from mocobench.progress import Progress
from mocobench.transfer.datasets import synth_layouts
from mocobench.transfer.datasets.scene import SceneObject, render_scene
from mocobench.transfer.datasets.synth_scales import Scale, SceneSpec, SynthSpec, load_synth_spec

MARKER = "SYNTH.json"
FORMAT = "mocobench-synth"
GENERATOR_VERSION = 2  # bump when the same seed and scale would draw different images
PARTS = ("unlabeled", "classify", "VOC2007", "VOC2012", "coco")
CLASS_LIST = "classes.txt"  # in VOC2007/ and VOC2012/: the dataset's class names, one a line
PROGRESS_EVERY = 0.25       # report each part at quarters of its images


def write_synthetic(out: str | Path, seed: int, scale: str = "demo", *, progress: bool = False,
                    spec: SynthSpec | None = None) -> dict:
    """Write (or find already written) the synthetic data under ``out``; returns the manifest."""
    spec = spec or load_synth_spec()
    if scale not in spec.scales:
        raise UserError(f"unknown scale '{scale}' (choose from {sorted(spec.scales)})")
    if seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed}")
    out = Path(out)
    manifest = {"format": FORMAT, "generator_version": GENERATOR_VERSION, "seed": seed, "scale": scale,
                "parameters_sha256": _digest(spec, scale)}
    existing = _existing_manifest(out, manifest)
    if existing is not None:
        if progress:
            print(f"synth: {out} already holds the complete data for seed {seed}, scale {scale}; "
                  "nothing to do", file=sys.stderr)
        return existing
    for part in PARTS:  # leftovers of a killed run of ours
        shutil.rmtree(out / part, ignore_errors=True)
    write_json(out / MARKER, {**manifest, "complete": False})
    chosen = spec.scales[scale]
    writer = _Writer(out, seed, spec, chosen, progress)
    counts = writer.all_parts()
    manifest.update(complete=True, classes=[c.name for c in writer.classes], counts=counts)
    write_json(out / MARKER, manifest)
    return manifest


def _digest(spec: SynthSpec, scale: str) -> str:
    """Fingerprint of everything in synth_scales.yaml that shapes this scale's files, so data
    written before an edit of the YAML is not mistaken for data written after it."""
    used = {"scale": spec.scales[scale], "render": spec.render, "jpeg_quality": spec.jpeg_quality,
            "classes": spec.classes[: spec.scales[scale].classes]}
    text = json.dumps(used, default=lambda d: dataclasses.asdict(d), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _existing_manifest(out: Path, wanted: dict) -> dict | None:
    """The manifest of a complete matching folder, None for one to (re)write; refuses the rest."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return None
    marker = out / MARKER
    if not marker.is_file():
        raise UserError(f"{out}: folder is not empty and has no {MARKER}, so it is not synthetic data "
                        "written by mocobench; refusing to write into it (give a new or empty folder)")
    try:
        found = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        found = None
    if not isinstance(found, dict) or found.get("format") != FORMAT:
        raise UserError(f"{marker}: not a mocobench synthetic-data marker; refusing to write into {out}")
    if not found.get("complete"):
        return None
    same = {k: found.get(k) for k in wanted} == wanted
    if not same:
        differ = ", ".join("other synth_scales.yaml parameters" if k == "parameters_sha256" else
                           f"{k} {found.get(k)} (asked: {wanted[k]})" for k in wanted if found.get(k) != wanted[k])
        raise UserError(f"{out}: holds complete synthetic data written with {differ}; refusing to "
                        "overwrite it (delete it or give another --out)")
    return found


class _Writer:
    """Draws and writes the parts of one scale; each image from its own seeded Generator."""

    def __init__(self, out: Path, seed: int, spec: SynthSpec, scale: Scale, progress: bool) -> None:
        self.out, self.seed, self.spec, self.scale, self.progress = out, seed, spec, scale, progress
        self.classes = spec.classes[: scale.classes]
        self.counts: dict[str, int] = {}

    def all_parts(self) -> dict[str, int]:
        self.unlabeled()
        self.classify()
        self.voc("VOC2007", self.scale.voc2007.splits, self.scale.voc2007.scene, "{:06d}")
        self.voc("VOC2012", self.scale.voc2012.splits, self.scale.voc2012.scene, "2012_{:06d}")
        self.coco()
        return self.counts

    def rng(self, stream: str, *index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(stream.encode()), *index])

    def scene(self, stream: str, index: int, spec: SceneSpec,
              class_index: int | None = None) -> tuple[np.ndarray, list[SceneObject]]:
        return render_scene(self.rng(stream, index), spec, self.classes, self.spec.render, class_index)

    def save(self, path: Path, image: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, format="JPEG", quality=self.spec.jpeg_quality)

    def _steps(self, label: str, total: int) -> Iterator[int]:
        """range(total), reporting progress on stderr at regular fractions."""
        bar = Progress(f"synth {label}", total, enabled=self.progress)
        every = max(1, int(total * PROGRESS_EVERY))
        for i in range(total):
            yield i
            if (i + 1) % every == 0 or i + 1 == total:
                bar.report(i + 1)
        self.counts[label] = total

    def unlabeled(self) -> None:
        part = self.scale.unlabeled
        for i in self._steps("unlabeled", part.count):
            self.save(self.out / "unlabeled" / f"{i + 1:06d}.jpg", self.scene("unlabeled", i, part.scene)[0])

    def classify(self) -> None:
        part = self.scale.classify
        for split, per_class in part.splits.items():
            n = len(self.classes)
            for i in self._steps(f"classify/{split}", per_class * n):
                c, k = i % n, i // n
                name = self.classes[c].name
                image = self.scene(f"classify/{split}", i, part.scene, class_index=c)[0]
                self.save(self.out / "classify" / split / name / f"{name}_{k + 1:04d}.jpg", image)

    def voc(self, folder: str, splits: dict[str, int], spec: SceneSpec, id_format: str) -> None:
        root = self.out / folder
        total = sum(splits.values())
        order = self.rng(f"{folder}/splits").permutation(total)  # splits interleave, as in VOC
        assigned: dict[str, list[str]] = {}
        start = 0
        for split, n in splits.items():
            assigned[split] = sorted(id_format.format(j + 1) for j in order[start:start + n])
            start += n
        if "train" in assigned and "val" in assigned:
            assigned["trainval"] = sorted(assigned["train"] + assigned["val"])
        labels: dict[str, list[tuple[int, bool]]] = {}
        for j in self._steps(folder, total):
            image_id = id_format.format(j + 1)
            image, objects = self.scene(folder, j, spec)
            self.save(root / "JPEGImages" / f"{image_id}.jpg", image)
            height, width = image.shape[:2]
            xml = synth_layouts.voc_xml(folder, f"{image_id}.jpg", width, height, objects, self.classes, spec)
            _write_text(root / "Annotations" / f"{image_id}.xml", xml)
            labels[image_id] = [(o.class_index, synth_layouts.is_difficult(o, spec)) for o in objects]
        names = [c.name for c in self.classes]
        self.counts.update({f"{folder}/{s}": len(ids) for s, ids in assigned.items()})
        self.counts[f"{folder}/objects"] = sum(map(len, labels.values()))
        for name, text in synth_layouts.voc_image_sets(assigned, labels, names).items():
            _write_text(root / "ImageSets" / "Main" / name, text)
        _write_text(root / CLASS_LIST, "".join(f"{n}\n" for n in names))

    def coco(self) -> None:
        part = self.scale.coco
        image_id = ann_id = 0
        for split, n in part.splits.items():
            images, annotations = [], []
            for j in self._steps(f"coco/{split}", n):
                image_id += 1
                image, objects = self.scene(f"coco/{split}", j, part.scene)
                file_name = f"{image_id:012d}.jpg"
                self.save(self.out / "coco" / split / file_name, image)
                images.append({"id": image_id, "file_name": file_name, "height": image.shape[0],
                               "width": image.shape[1], "license": 1})
                for obj in objects:
                    ann_id += 1
                    annotations.append(synth_layouts.coco_annotation(ann_id, image_id, obj, self.classes))
            self.counts[f"coco/{split}/objects"] = len(annotations)
            text = synth_layouts.coco_json(images, annotations, self.classes, f"mocobench synthetic COCO {split}")
            _write_text(self.out / "coco" / "annotations" / f"instances_{split}.json", text)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
