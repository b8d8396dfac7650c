"""The synthetic data writer: real layouts, readable by the real tools, deterministic, safe."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from mocobench import UserError
from mocobench.transfer.datasets.synth import MARKER, write_synthetic
from mocobench.transfer.datasets.synth_scales import SCALES_FILE, load_synth_spec

# pycocotools' Cython decode (annToMask) warns under numpy 2; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SPEC = load_synth_spec()
TINY = SPEC.scales["tiny"]
CLASSES = SPEC.classes[: TINY.classes]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic(out, seed=3, scale="tiny", workers=1)  # the in-process path, the reference for the pool
    return out


def test_layouts_and_counts(data):
    manifest = json.loads((data / MARKER).read_text())
    assert manifest["complete"] and manifest["classes"] == [c.name for c in CLASSES]
    assert len(list((data / "unlabeled").glob("*.jpg"))) == TINY.unlabeled.count
    for split, per_class in TINY.classify.splits.items():
        for c in CLASSES:
            assert len(list((data / "classify" / split / c.name).glob("*.jpg"))) == per_class
    for folder, part in (("VOC2007", TINY.voc2007), ("VOC2012", TINY.voc2012)):
        main = data / folder / "ImageSets" / "Main"
        ids = {s: (main / f"{s}.txt").read_text().split() for s in part.splits}
        assert {s: len(v) for s, v in ids.items()} == part.splits
        assert sorted(ids["train"] + ids["val"]) == (main / "trainval.txt").read_text().split()
        assert len(list((data / folder / "JPEGImages").glob("*.jpg"))) == sum(part.splits.values())
        assert (data / folder / "classes.txt").read_text().split() == [c.name for c in CLASSES]
    assert (data / "VOC2007/ImageSets/Main/test.txt").is_file()
    assert not (data / "VOC2012/ImageSets/Main/test.txt").exists()  # as in the real VOC2012
    for split in TINY.coco.splits:
        assert len(list((data / "coco" / split).glob("*.jpg"))) == TINY.coco.splits[split]


@pytest.mark.parametrize("split", ["train2017", "val2017"])
def test_coco_loads_with_pycocotools(data, split):
    coco = COCO(str(data / "coco" / "annotations" / f"instances_{split}.json"))
    assert sorted(coco.getCatIds()) == [c.coco_id for c in CLASSES]
    assert coco.getCatIds() != list(range(1, len(CLASSES) + 1))  # ids are not contiguous
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) >= len(coco.getImgIds())
    for ann in anns:
        img = coco.loadImgs(ann["image_id"])[0]
        with Image.open(data / "coco" / split / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"])
        assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"], list)
        mask = coco.annToMask(ann)
        assert abs(mask.sum() - ann["area"]) <= 0.15 * ann["area"] + 4
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert x - 1 <= xs.min() and xs.max() <= x + w and y - 1 <= ys.min() and ys.max() <= y + h
        assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"]


def test_voc_annotations_parse_with_1_based_boxes(data):
    seen = {"truncated": 0, "difficult": 0}
    for folder in ("VOC2007", "VOC2012"):
        names = (data / folder / "classes.txt").read_text().split()
        for xml in sorted((data / folder / "Annotations").glob("*.xml")):
            root = ET.parse(xml).getroot()
            assert root.findtext("folder") == folder and root.findtext("filename") == xml.stem + ".jpg"
            width, height = int(root.findtext("size/width")), int(root.findtext("size/height"))
            with Image.open(data / folder / "JPEGImages" / root.findtext("filename")) as im:
                assert im.size == (width, height)
            objects = root.findall("object")
            assert objects
            for obj in objects:
                assert obj.findtext("name") in names
                box = [int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
                assert 1 <= box[0] <= box[2] <= width and 1 <= box[1] <= box[3] <= height
                for flag in seen:
                    seen[flag] += int(obj.findtext(flag))
    assert seen["truncated"] > 0 and seen["difficult"] > 0


def test_same_seed_gives_byte_identical_files(data, tmp_path, cli):
    out = cli("data", "synth", "--out", tmp_path / "again", "--seed", 3, "--scale", "tiny", "--quiet")
    assert out.returncode == 0, out.stderr
    first, second = _files(data), _files(tmp_path / "again")
    assert list(first) == list(second)
    assert [k for k in first if first[k] != second[k]] == []
    other = tmp_path / "other"
    write_synthetic(other, seed=4, scale="tiny")
    assert (other / "unlabeled/000001.jpg").read_bytes() != first["unlabeled/000001.jpg"]


def test_a_pool_of_workers_writes_the_same_bytes(data, tmp_path):
    write_synthetic(tmp_path / "pooled", seed=3, scale="tiny", workers=2)
    first, second = _files(data), _files(tmp_path / "pooled")
    assert list(first) == list(second)
    assert [k for k in first if first[k] != second[k]] == []


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_write_is_one_line_and_leaves_the_folder_incomplete(tmp_path, cli, workers):
    out = tmp_path / "data"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"format": "mocobench-synth", "complete": False}))
    (out / "VOC2012").write_text("in the way")  # VOC2012/JPEGImages cannot be made: fails mid-run
    result = cli("data", "synth", "--out", out, "--seed", 0, "--scale", "tiny", "--quiet", "--workers", workers)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "VOC2012" in result.stderr and "incomplete" in result.stderr
    assert json.loads((out / MARKER).read_text())["complete"] is False
    assert not (out / "coco" / "annotations").exists()
    with pytest.raises(UserError, match="--workers"):
        write_synthetic(out, seed=0, scale="tiny", workers=0)


def test_refuses_a_foreign_folder_and_leaves_it_unchanged(tmp_path, cli):
    foreign = tmp_path / "mine"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "notes.txt").write_text("keep me")
    before = _files(foreign)
    out = cli("data", "synth", "--out", foreign, "--seed", 0, "--scale", "tiny")
    assert out.returncode == 2
    assert "not empty" in out.stderr and str(foreign) in out.stderr
    assert _files(foreign) == before and sorted(p.name for p in foreign.iterdir()) == ["notes.txt", "sub"]


def test_rerun_skips_complete_refuses_other_seed_and_rewrites_incomplete(data, tmp_path):
    reference = _files(data)
    write_synthetic(data, seed=3, scale="tiny")  # complete: nothing to do
    assert _files(data) == reference
    with pytest.raises(UserError, match="refusing"):
        write_synthetic(data, seed=5, scale="tiny")
    killed = tmp_path / "killed"
    write_synthetic(killed, seed=3, scale="tiny")
    marker = json.loads((killed / MARKER).read_text())
    (killed / MARKER).write_text(json.dumps({**marker, "complete": False}))
    for p in list((killed / "coco").rglob("*.json")) + [killed / "VOC2012/Annotations/2012_000001.xml"]:
        p.unlink()
    write_synthetic(killed, seed=3, scale="tiny")
    assert _files(killed) == reference


def test_scales_file_is_strict(tmp_path):
    bad = tmp_path / "scales.yaml"
    bad.write_text(SCALES_FILE.read_text().replace("truncate_prob: 0.15", "truncate_prob: 0.15\n    truncate_prb: 1"))
    with pytest.raises(UserError, match=r"scales.yaml: unknown key '.*truncate_prb'"):
        load_synth_spec(bad)


def test_cli_help(cli):
    for args in (("data", "--help"), ("data", "synth", "--help")):
        out = cli(*args)
        assert out.returncode == 0, out.stderr
    assert "--seed" in out.stdout and "--scale" in out.stdout and "tiny" in out.stdout
