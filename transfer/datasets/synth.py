"""Write the synthetic benchmark data: pretraining images, a classification set, VOC2007,
VOC2012 and COCO, each in its real on-disk layout, and on request COCO person keypoints.

Why synthetic: the whole pipeline (pretrain -> convert -> detect -> tables) must run
end to end, in tests and in a CPU demo, with no download. Why deterministic: every
image is drawn from its own numpy Generator seeded by (seed, part, index) and saved as
JPEG at a fixed quality, so the same seed gives byte-identical files on any run, and
results computed on the data are reproducible.

Speed: images are independent, so a pool of processes (one per core by default; none for
data too small to repay starting it) draws and saves them in contiguous blocks, each with its
per-image XML; what the dataset-wide files need (VOC labels, COCO sizes and objects) comes back
to this process, which writes ImageSets, the COCO JSON and the marker, so the files are the same
bytes whatever the number of workers.

Safety: ``DIR/SYNTH.json`` marks a folder as ours. It is written first with
``"complete": false`` and rewritten (atomically) with ``"complete": true`` only when every
file is in place, so a killed or failed run is recognised and rewritten by the next one; a
complete folder with the same seed and scale is left as it is; anything else is refused.
Keypoints are added to such a folder when asked (``"keypoints"`` in the marker records them),
so the demo, which does not ask, spends no time on them; so are VOC2012's segmentation label maps
(``"semseg"``, synth_semseg), the LVIS files and the Cityscapes frames.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import threading
import zlib
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from mocobench import UserError
from mocobench.atomic import write_json
from mocobench.progress import Progress
from mocobench.transfer.datasets import synth_cityscapes, synth_layouts, synth_lvis, synth_people, synth_semseg
from mocobench.transfer.datasets.scene import SceneObject, render_scene
from mocobench.transfer.datasets.synth_scales import Scale, SceneSpec, Splits, SynthSpec, load_synth_spec

MARKER = "SYNTH.json"
FORMAT = "mocobench-synth"
GENERATOR_VERSION = 2  # bump when the same seed and scale would draw different images
PARTS = ("unlabeled", "classify", "VOC2007", "VOC2012", "coco", "lvis", "cityscapes")
CLASS_LIST = "classes.txt"  # in VOC2007/ and VOC2012/: the dataset's class names, one a line
PROGRESS_STEPS = 4          # report each part at quarters of its images
VOC_ID_FORMATS = {"VOC2007": "{:06d}", "VOC2012": "2012_{:06d}"}  # the real datasets' image ids
IMAGES_PER_WORKER = 250     # default: at most a worker per this many images, as a pool's start (~0.25 s) outweighs
                            # its gain below ~150-200 images (~2.6 ms each; 2-core EPYC, idle)
KEYPOINT_IMAGE_IDS = 900_000  # the stick figures' image ids start here, clear of the instances images in coco/<split>/


def write_synthetic(out: str | Path, seed: int, scale: str = "demo", *, progress: bool = False,
                    spec: SynthSpec | None = None, workers: int | None = None, keypoints: bool = False,
                    lvis: bool = False, cityscapes: bool = False, semseg: bool = False) -> dict:
    """``_write_synthetic``; with ``cityscapes`` the cityscapes/ frames (synth_cityscapes), with ``semseg``
    VOC2012's segmentation label maps and ImageSets/Segmentation (synth_semseg), and with
    ``lvis`` lvis/lvis_v0.5_{train,val}.json (synth_lvis: federated labels over the COCO images, no
    image drawn), each added to a complete folder as the keypoints are."""
    manifest = _write_synthetic(out, seed, scale, progress=progress, spec=spec, workers=workers, keypoints=keypoints)
    spec = spec or load_synth_spec()
    out = Path(out)
    for part, wanted, digest, left in (
            ("cityscapes", cityscapes, _cityscapes_digest(spec, scale), "no Cityscapes frames, and a rerun writes them"),
            ("semseg", semseg, _semseg_digest(spec, scale), "no VOC segmentation, and a rerun writes it")):
        if wanted and manifest.get(part) != digest:
            manifest = _add_part(out, seed, spec, scale, progress, workers, manifest, part, digest, left)
    if not lvis or manifest.get("lvis") == synth_lvis.FINGERPRINT:
        return manifest
    try:
        counts = synth_lvis.write_lvis(out, seed)
    except OSError as e:
        raise UserError(f"{out}: writing the synthetic LVIS files failed ({e.filename or ''} {e.strerror or e}); "
                        f"its {MARKER} records no LVIS files, and a rerun writes them") from None
    return _record_part(out, manifest, "lvis", synth_lvis.FINGERPRINT, counts)


def _record_part(out: Path, manifest: dict, part: str, digest: str, counts: dict[str, int]) -> dict:
    """``manifest`` with ``part`` written (its fingerprint and image counts), saved as out's marker."""
    manifest = {**manifest, "counts": {**manifest.get("counts", {}), **counts}, part: digest}
    write_json(out / MARKER, manifest)
    return manifest


def _write_synthetic(out: str | Path, seed: int, scale: str = "demo", *, progress: bool = False,
                     spec: SynthSpec | None = None, workers: int | None = None, keypoints: bool = False) -> dict:
    """Write (or find already written) the synthetic data under ``out``; returns the manifest.
    ``workers``: processes drawing the images (1: this one alone); None: one per core, fewer
    for small data (``IMAGES_PER_WORKER``). The files are the same whatever the number. More
    than one are spawned, so a script calling this needs the ``if __name__ == "__main__":`` guard.
    ``keypoints``: also write coco/annotations/person_keypoints_<split>.json and their images."""
    spec = spec or load_synth_spec()
    if scale not in spec.scales:
        raise UserError(f"unknown scale '{scale}' (choose from {sorted(spec.scales)})")
    if seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be a positive integer, got {workers}")
    out = Path(out)
    manifest = {"format": FORMAT, "generator_version": GENERATOR_VERSION, "seed": seed, "scale": scale,
                "parameters_sha256": _digest(spec, scale)}
    existing = _existing_manifest(out, manifest)
    wanted_keypoints = _keypoints_digest(spec, scale) if keypoints else None
    if existing is not None and wanted_keypoints and existing.get("keypoints") != wanted_keypoints:
        return _add_part(out, seed, spec, scale, progress, workers, existing, "keypoints", wanted_keypoints,
                         "no keypoints, and a rerun writes them")
    if existing is not None:
        if progress:
            print(f"synth: {out} already holds the complete data for seed {seed}, scale {scale}; "
                  "nothing to do", file=sys.stderr)
        return existing
    for part in PARTS:  # leftovers of a killed run of ours
        shutil.rmtree(out / part, ignore_errors=True)
    write_json(out / MARKER, {**manifest, "complete": False})
    chosen = spec.scales[scale]
    writer = _Writer(out, seed, spec, chosen, progress, keypoints=keypoints)
    counts = _write_parts(writer, workers, out, f"{MARKER} marks the folder incomplete, and a rerun rewrites it")
    manifest.update(complete=True, classes=[c.name for c in writer.classes], counts=counts)
    if wanted_keypoints:
        manifest["keypoints"] = wanted_keypoints
    write_json(out / MARKER, manifest)
    return manifest


def _write_parts(writer: _Writer, workers: int | None, out: Path, left: str) -> dict[str, int]:
    """The writer's parts, a failure turned into one line saying what is left behind."""
    try:
        return writer.all_parts(workers)
    except OSError as e:  # a full disk, a file in the way: here or in a worker, one line, not a traceback
        where = f"{e.filename}: " if e.filename else ""
        raise UserError(f"{out}: writing the synthetic data failed ({where}{e.strerror or e}); {left}") from None
    except BrokenProcessPool as e:  # a worker killed (out of memory, a signal)
        raise UserError(f"{out}: a worker process died while writing the synthetic data ({e}); {left}") from None


def _add_part(out: Path, seed: int, spec: SynthSpec, scale: str, progress: bool, workers: int | None,
              manifest: dict, part: str, digest: str, left: str) -> dict:
    """A drawn part ("keypoints", "cityscapes", "semseg": the _Writer flag) added to a complete folder;
    recorded in the marker only once written, so a killed run leaves the rest complete and the next
    one writes the part again (``left``: what a failure says the marker records)."""
    writer = _Writer(out, seed, spec, spec.scales[scale], progress, base=False, **{part: True})
    counts = _write_parts(writer, workers, out, f"its {MARKER} records {left}")
    return _record_part(out, manifest, part, digest, counts)


def _keypoints_digest(spec: SynthSpec, scale: str) -> str:
    """Fingerprint of what shapes the keypoint files (a changed one rewrites them)."""
    used = {"keypoints": spec.scales[scale].coco_keypoints, "render": spec.render,
            "jpeg_quality": spec.jpeg_quality, "generator": GENERATOR_VERSION}
    return hashlib.sha256(json.dumps(used, default=dataclasses.asdict, sort_keys=True).encode()).hexdigest()


def _cityscapes_digest(spec: SynthSpec, scale: str) -> str:
    """Fingerprint of what shapes the Cityscapes frames (a changed one rewrites them)."""
    used = {"cityscapes": spec.scales[scale].cityscapes, "render": spec.render, "generator": GENERATOR_VERSION,
            "classes": spec.classes[: spec.scales[scale].classes], "frames": synth_cityscapes.VERSION}
    return hashlib.sha256(json.dumps(used, default=dataclasses.asdict, sort_keys=True).encode()).hexdigest()


def _semseg_digest(spec: SynthSpec, scale: str) -> str:
    """Fingerprint of what shapes VOC2012's label maps (a changed one rewrites them)."""
    used = {"voc2012": spec.scales[scale].voc2012, "render": spec.render, "generator": GENERATOR_VERSION,
            "classes": spec.classes[: spec.scales[scale].classes], "label_maps": synth_semseg.VERSION}
    return hashlib.sha256(json.dumps(used, default=dataclasses.asdict, sort_keys=True).encode()).hexdigest()


def _digest(spec: SynthSpec, scale: str) -> str:
    """Fingerprint of everything in synth_scales.yaml that shapes this scale's files, so data
    written before an edit of the YAML is not mistaken for data written after it."""
    # the keypoint and Cityscapes parts have their own fingerprints, so data written before they existed stays valid
    chosen = {k: v for k, v in dataclasses.asdict(spec.scales[scale]).items() if k not in ("coco_keypoints", "cityscapes")}
    used = {"scale": chosen, "render": spec.render, "jpeg_quality": spec.jpeg_quality,
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


@dataclasses.dataclass(frozen=True)
class _Run:
    """``total`` images, each drawn and saved by ``_Writer.<method>(key, index)``, which returns what
    ``_Writer.<finish>(key, results)`` (if any) needs for the run's dataset-wide files."""
    label: str           # progress label and counts key
    method: str
    key: str             # the folder or split
    total: int
    finish: str | None = None


class _Writer:
    """Draws and writes the parts of one scale; each image from its own seeded Generator."""

    def __init__(self, out: Path, seed: int, spec: SynthSpec, scale: Scale, progress: bool,
                 keypoints: bool = False, base: bool = True, cityscapes: bool = False, semseg: bool = False) -> None:
        self.out, self.seed, self.spec, self.scale, self.progress = out, seed, spec, scale, progress
        self.keypoints, self.base, self.cityscapes, self.semseg = keypoints, base, cityscapes, semseg
        self.classes = spec.classes[: scale.classes]
        self.counts: dict[str, int] = {}
        self.coco_annotations = 0  # COCO annotation ids run on across splits, as in the real files
        self.person_annotations = 0

    def runs(self) -> list[_Run]:
        people = [_Run(f"coco_keypoints/{split}", "person_image", split, count, "person_files")
                  for split, count in self.scale.coco_keypoints.splits.items()] if self.keypoints else []
        frames = [_Run(f"cityscapes/{split}", "cityscapes_image", split, count, "cityscapes_files")
                  for split, count in self.scale.cityscapes.splits.items()] if self.cityscapes else []
        segmentation = [_Run("VOC2012/segmentation", "voc_seg_image", "VOC2012",
                             sum(self.voc_part("VOC2012").splits.values()), "voc_seg_files")] if self.semseg else []
        return (self.base_runs() if self.base else []) + people + frames + segmentation

    def base_runs(self) -> list[_Run]:
        n = len(self.classes)
        return [_Run("unlabeled", "unlabeled_image", "unlabeled", self.scale.unlabeled.count),
                *(_Run(f"classify/{split}", "classify_image", split, per_class * n)
                  for split, per_class in self.scale.classify.splits.items()),
                *(_Run(folder, "voc_image", folder, sum(self.voc_part(folder).splits.values()), "voc_files")
                  for folder in VOC_ID_FORMATS),
                *(_Run(f"coco/{split}", "coco_image", split, count, "coco_files")
                  for split, count in self.scale.coco.splits.items())]

    def all_parts(self, workers: int | None) -> dict[str, int]:
        runs = self.runs()
        if workers is None:
            images = sum(run.total for run in runs)
            workers = max(1, min(os.cpu_count() or 1, images // IMAGES_PER_WORKER))
        with self._blocks(runs, workers) as blocks:
            for run in runs:
                results = self._collect(run, blocks)
                self.counts[run.label] = run.total
                if run.finish:
                    getattr(self, run.finish)(run.key, results)
        return self.counts

    def block(self, method: str, key: str, start: int, stop: int) -> list[Any]:
        """Draw and save images ``start:stop`` of one run; their per-image results."""
        draw = getattr(self, method)
        return [draw(key, i) for i in range(start, stop)]

    @contextlib.contextmanager
    def _blocks(self, runs: list[_Run], workers: int) -> Iterator[Iterator[list[Any]]]:
        """Every run's images in contiguous blocks, in order: drawn here as they are read for
        one worker, else all queued at once to a pool, so no core idles at a run's end."""
        blocks = [(run.method, run.key, start, min(start + size, run.total)) for run in runs
                  for size in [max(1, -(-run.total // (PROGRESS_STEPS * workers)))]
                  for start in range(0, run.total, size)]
        if workers == 1:
            yield (self.block(*b) for b in blocks)
            return
        # spawn, not fork: a caller (pytest, a training script) may hold torch/OpenMP threads a fork would deadlock on
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(self,))
        try:
            futures = [pool.submit(_draw_block, *b) for b in blocks]
            yield (f.result() for f in futures)
        finally:
            pool.shutdown(cancel_futures=True)

    def _collect(self, run: _Run, blocks: Iterator[list[Any]]) -> list[Any]:
        """The run's per-image results in index order, reporting progress on stderr at quarters."""
        bar = Progress(f"synth {run.label}", run.total, enabled=self.progress)
        results: list[Any] = []
        while len(results) < run.total:
            before = len(results)
            results += next(blocks)
            if len(results) * PROGRESS_STEPS // run.total > before * PROGRESS_STEPS // run.total:
                bar.report(len(results))
        return results

    def rng(self, stream: str, *index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(stream.encode()), *index])

    def scene(self, stream: str, index: int, spec: SceneSpec,
              class_index: int | None = None) -> tuple[np.ndarray, list[SceneObject]]:
        return render_scene(self.rng(stream, index), spec, self.classes, self.spec.render, class_index)

    def save(self, path: Path, image: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, format="JPEG", quality=self.spec.jpeg_quality)

    def voc_part(self, folder: str) -> Splits:
        return self.scale.voc2007 if folder == "VOC2007" else self.scale.voc2012

    def unlabeled_image(self, _: str, i: int) -> None:
        image = self.scene("unlabeled", i, self.scale.unlabeled.scene)[0]
        self.save(self.out / "unlabeled" / f"{i + 1:06d}.jpg", image)

    def classify_image(self, split: str, i: int) -> None:
        c, k = i % len(self.classes), i // len(self.classes)
        name = self.classes[c].name
        image = self.scene(f"classify/{split}", i, self.scale.classify.scene, class_index=c)[0]
        self.save(self.out / "classify" / split / name / f"{name}_{k + 1:04d}.jpg", image)

    def voc_image(self, folder: str, j: int) -> list[tuple[int, bool]]:
        """Writes the image and its XML; returns its objects' (class index, difficult) for ImageSets."""
        root, spec = self.out / folder, self.voc_part(folder).scene
        image_id = VOC_ID_FORMATS[folder].format(j + 1)
        image, objects = self.scene(folder, j, spec)
        self.save(root / "JPEGImages" / f"{image_id}.jpg", image)
        height, width = image.shape[:2]
        xml = synth_layouts.voc_xml(folder, f"{image_id}.jpg", width, height, objects, self.classes, spec)
        _write_text(root / "Annotations" / f"{image_id}.xml", xml)
        return [(o.class_index, synth_layouts.is_difficult(o, spec)) for o in objects]

    def voc_files(self, folder: str, labels_in_order: list[list[tuple[int, bool]]]) -> None:
        root, id_format, splits = self.out / folder, VOC_ID_FORMATS[folder], self.voc_part(folder).splits
        order = self.rng(f"{folder}/splits").permutation(len(labels_in_order))  # splits interleave, as in VOC
        assigned: dict[str, list[str]] = {}
        start = 0
        for split, n in splits.items():
            assigned[split] = sorted(id_format.format(j + 1) for j in order[start:start + n])
            start += n
        if "train" in assigned and "val" in assigned:
            assigned["trainval"] = sorted(assigned["train"] + assigned["val"])
        labels = {id_format.format(j + 1): image_labels for j, image_labels in enumerate(labels_in_order)}
        names = [c.name for c in self.classes]
        self.counts.update({f"{folder}/{s}": len(ids) for s, ids in assigned.items()})
        self.counts[f"{folder}/objects"] = sum(map(len, labels.values()))
        for name, text in synth_layouts.voc_image_sets(assigned, labels, names).items():
            _write_text(root / "ImageSets" / "Main" / name, text)
        _write_text(root / CLASS_LIST, "".join(f"{n}\n" for n in names))

    def coco_image(self, split: str, j: int) -> tuple[dict, list[SceneObject]]:
        """Writes the image; returns its COCO image entry and objects (annotation ids are the parent's)."""
        splits = list(self.scale.coco.splits)
        image_id = 1 + j + sum(self.scale.coco.splits[s] for s in splits[: splits.index(split)])
        image, objects = self.scene(f"coco/{split}", j, self.scale.coco.scene)
        file_name = f"{image_id:012d}.jpg"
        self.save(self.out / "coco" / split / file_name, image)
        entry = {"id": image_id, "file_name": file_name, "height": image.shape[0], "width": image.shape[1],
                 "license": 1}
        return entry, objects

    def coco_files(self, split: str, drawn: list[tuple[dict, list[SceneObject]]]) -> None:
        images, annotations = [], []
        for entry, objects in drawn:
            images.append(entry)
            for obj in objects:
                self.coco_annotations += 1
                annotations.append(synth_layouts.coco_annotation(self.coco_annotations, entry["id"], obj, self.classes))
        self.counts[f"coco/{split}/objects"] = len(annotations)
        text = synth_layouts.coco_json(images, annotations, self.classes, f"mocobench synthetic COCO {split}")
        _write_text(self.out / "coco" / "annotations" / f"instances_{split}.json", text)

    def person_image(self, split: str, j: int) -> tuple[dict, list[synth_people.Person]]:
        """Writes a stick-figure image into coco/<split>/; returns its image entry and people."""
        splits = list(self.scale.coco_keypoints.splits)
        before = sum(self.scale.coco_keypoints.splits[s] for s in splits[: splits.index(split)])
        image_id = KEYPOINT_IMAGE_IDS + 1 + j + before
        image, people = synth_people.render_people(self.rng(f"coco_keypoints/{split}", j),
                                                   self.scale.coco_keypoints.scene, self.spec.render)
        file_name = f"{image_id:012d}.jpg"
        self.save(self.out / "coco" / split / file_name, image)
        entry = {"id": image_id, "file_name": file_name, "height": image.shape[0], "width": image.shape[1],
                 "license": 1}
        return entry, people

    def person_files(self, split: str, drawn: list[tuple[dict, list[synth_people.Person]]]) -> None:
        annotations = []
        for entry, people in drawn:
            for person in people:
                self.person_annotations += 1
                annotations.append(synth_people.person_annotation(self.person_annotations, entry["id"], person))
        self.counts[f"coco_keypoints/{split}/people"] = len(annotations)
        text = synth_layouts.coco_json([e for e, _ in drawn], annotations, [], f"mocobench synthetic COCO person "
                                       f"keypoints {split}", categories=[synth_people.CATEGORY])
        _write_text(self.out / "coco" / "annotations" / f"person_keypoints_{split}.json", text)


    def cityscapes_image(self, split: str, j: int) -> int:
        """Writes a frame's image and gtFine files under cityscapes/; returns its instance count."""
        image, doc = synth_cityscapes.render_frame(self.rng(f"cityscapes/{split}", j), self.scale.cityscapes.scene,
                                                   self.classes, self.spec.render)
        return synth_cityscapes.write_frame(self.out / "cityscapes", split, j, image, doc)

    def cityscapes_files(self, split: str, instances: list[int]) -> None:
        self.counts[f"cityscapes/{split}/objects"] = sum(instances)

    def voc_seg_image(self, folder: str, j: int) -> None:
        """Redraws the VOC image's scene (its own generator: the same objects) and writes its label maps."""
        spec = self.voc_part(folder).scene
        image, objects = self.scene(folder, j, spec)
        labels = synth_semseg.label_map(objects, image.shape[1], image.shape[0], spec)
        synth_semseg.write_label_maps(self.out / folder, VOC_ID_FORMATS[folder].format(j + 1), labels)

    def voc_seg_files(self, folder: str, _: list[None]) -> None:
        self.counts.update(synth_semseg.write_split_files(self.out / folder))


_WORKER: _Writer | None = None  # a pool process's writer, set once by _start_worker


def _start_worker(writer: _Writer) -> None:
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool
    # a parent killed outright (SIGTERM, SIGKILL) would leave its workers waiting on the task queue forever
    threading.Thread(target=_exit_with, args=(multiprocessing.parent_process(),), daemon=True).start()
    _WORKER = writer


def _exit_with(parent: BaseProcess | None) -> None:
    """End this worker as soon as ``parent`` has ended."""
    if parent is not None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)


def _draw_block(method: str, key: str, start: int, stop: int) -> list[Any]:
    assert _WORKER is not None
    return _WORKER.block(method, key, start, stop)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
