"""Datasets validated where they are loaded: a VOC or COCO file that would quietly change AP,
or training that could not form one batch, is refused in one line naming the file and the
problem, before anything trains, leaving the data and the output folder untouched."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

from engine_fixtures import DEMO, TINY
from hostile import assert_refused, run_here
from mocobench.transfer.datasets.catalog import check_images
from mocobench.transfer.datasets.synth import write_synthetic

COCO_TRAIN_TEST = ("DATASETS.TRAIN", "('coco_2017_train',)", "DATASETS.TEST", "('coco_2017_val',)")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    write_synthetic(out, seed=0, scale="tiny")
    return out


# ---- where things are in the synthetic tree -----------------------------------------------
def split_file(root: Path, year: int, split: str) -> Path:
    return root / f"VOC{year}" / "ImageSets" / "Main" / f"{split}.txt"


def voc_ids(root: Path, year: int, split: str) -> list[str]:
    return split_file(root, year, split).read_text().split()


def voc_xml(root: Path, year: int, split: str, k: int = 0) -> Path:
    return root / f"VOC{year}" / "Annotations" / f"{voc_ids(root, year, split)[k]}.xml"


def voc_jpeg(root: Path, year: int, split: str, k: int = 0) -> Path:
    return root / f"VOC{year}" / "JPEGImages" / f"{voc_ids(root, year, split)[k]}.jpg"


def coco_json(root: Path, split: str) -> Path:
    return root / "coco" / "annotations" / f"instances_{split}2017.json"


def coco_jpeg(root: Path, split: str, k: int = 0) -> Path:
    return root / "coco" / f"{split}2017" / json.loads(coco_json(root, split).read_text())["images"][k]["file_name"]


# ---- corruptions: each changes one thing ----------------------------------------------------
def set_tag(xml: Path, tag: str, value: str, nth: int = 0) -> None:
    """The nth <tag>'s text becomes value."""
    matches = list(re.finditer(rf"<{tag}>[^<]*</{tag}>", xml.read_text()))
    m, text = matches[nth], xml.read_text()
    xml.write_text(text[:m.start()] + f"<{tag}>{value}</{tag}>" + text[m.end():])


def edit_coco(root: Path, split: str, change: Callable[[dict], None]) -> None:
    path = coco_json(root, split)
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))  # NaN and Infinity written as JSON's extension, as Python reads it


def list_twice(root: Path, year: int, split: str) -> None:
    path = split_file(root, year, split)
    ids = path.read_text().split()
    path.write_text("\n".join([*ids, ids[1]]) + "\n")


def resize_image(path: Path, dw: int, dh: int) -> None:
    with Image.open(path) as im:
        im.load()
        im.resize((im.width + dw, im.height + dh)).save(path)


def transpose_image(path: Path) -> None:
    with Image.open(path) as im:
        im.load()
        assert im.width != im.height, path
        im.transpose(Image.Transpose.TRANSPOSE).save(path)


def empty_voc_images(root: Path, count: int) -> None:
    """The first ``count`` training images of voc_2007_trainval lose all their objects."""
    for k in range(count):
        xml = voc_xml(root, 2007, "trainval", k)
        xml.write_text(re.sub(r"<object>.*?</object>", "", xml.read_text(), flags=re.S))


def first_image_size(root: Path, split: str) -> tuple[int, int]:
    image = json.loads(coco_json(root, split).read_text())["images"][0]
    return image["width"], image["height"]


def box_outside(d: dict) -> None:
    image = next(i for i in d["images"] if i["id"] == d["annotations"][0]["image_id"])
    d["annotations"][0]["bbox"] = [image["width"] + 5, 3, 10, 10]


# ---- the commands -------------------------------------------------------------------------
def command(kind: str, root: Path, tmp_path: Path, opts: tuple = ()) -> list:
    dets = tmp_path / "dets.json"
    dets.write_text("[]")
    if kind == "eval_voc":
        return ["evaluate", "--dataset", "voc_2007_test", "--data-root", root, "--detections", dets]
    if kind == "eval_coco":
        return ["evaluate", "--dataset", "coco_2017_val", "--data-root", root, "--detections", dets]
    extra = COCO_TRAIN_TEST if kind == "train_coco" else ()
    return ["transfer", "--config", DEMO / "demo_voc_C4.yaml", "--output-dir", tmp_path / "run",
            "--data-root", root, "--seed", "1", *TINY, *extra, *opts]


# label -> (command kind, corruption, text of the problem, file the message must name (relative to the root))
Case = tuple[str, Callable[[Path], None], str, Callable[[Path], Path]]
CASES: dict[str, Case] = {
    # COCO, evaluation (coco_2017_val through `evaluate`)
    "coco eval: image id twice": (
        "eval_coco", lambda r: edit_coco(r, "val", lambda d: d["images"][1].update(id=d["images"][0]["id"])),
        "repeats image id", lambda r: coco_json(r, "val")),
    "coco eval: annotation id twice": (
        "eval_coco", lambda r: edit_coco(r, "val", lambda d: d["annotations"][2].update(id=d["annotations"][0]["id"])),
        "annotations[2] repeats annotation id", lambda r: coco_json(r, "val")),
    "coco eval: category id twice": (
        "eval_coco", lambda r: edit_coco(r, "val", lambda d: d["categories"][1].update(id=d["categories"][0]["id"])),
        "categories[1] repeats category id", lambda r: coco_json(r, "val")),
    "coco eval: category name twice": (
        "eval_coco", lambda r: edit_coco(r, "val", lambda d: d["categories"][2].update(name=d["categories"][0]["name"])),
        "categories[2] repeats category name", lambda r: coco_json(r, "val")),
    "coco eval: width 0": (
        "eval_coco", lambda r: edit_coco(r, "val", lambda d: d["images"][0].update(width=0)),
        "images[0] has width 0", lambda r: coco_json(r, "val")),
    "coco eval: height a string": (
        "eval_coco", lambda r: edit_coco(r, "val", lambda d: d["images"][1].update(height="64")),
        "images[1] has height '64'", lambda r: coco_json(r, "val")),
    "coco eval: height NaN": (
        "eval_coco", lambda r: edit_coco(r, "val", lambda d: d["images"][0].update(height=float("nan"))),
        "images[0] has height nan", lambda r: coco_json(r, "val")),
    "coco eval: width fractional": (
        "eval_coco", lambda r: edit_coco(r, "val", lambda d: d["images"][0].update(width=64.5)),
        "images[0] has width 64.5", lambda r: coco_json(r, "val")),
    "coco eval: image not an object": (
        "eval_coco", lambda r: edit_coco(r, "val", lambda d: d["images"].append(7)),
        "is not an object", lambda r: coco_json(r, "val")),
    "coco eval: bbox of 3 numbers": (
        "eval_coco", lambda r: edit_coco(r, "val", lambda d: d["annotations"][1].update(bbox=[1, 2, 3])),
        "annotations[1] has an invalid bbox", lambda r: coco_json(r, "val")),
    "coco eval: bbox NaN": (
        "eval_coco", lambda r: edit_coco(r, "val", lambda d: d["annotations"][1]["bbox"].__setitem__(0, float("nan"))),
        "annotations[1] has an invalid bbox [nan", lambda r: coco_json(r, "val")),
    "coco eval: bbox a string": (
        "eval_coco", lambda r: edit_coco(r, "val", lambda d: d["annotations"][1]["bbox"].__setitem__(2, "9")),
        "annotations[1] has an invalid bbox", lambda r: coco_json(r, "val")),
    "coco eval: bbox not a list": (
        "eval_coco", lambda r: edit_coco(r, "val", lambda d: d["annotations"][1].update(bbox=5)),
        "annotations[1] has an invalid bbox 5", lambda r: coco_json(r, "val")),
    "coco eval: negative width": (
        "eval_coco", lambda r: edit_coco(r, "val", lambda d: d["annotations"][0]["bbox"].__setitem__(2, -1)),
        "annotations[0] has an invalid bbox", lambda r: coco_json(r, "val")),
    "coco eval: box outside its image": (
        "eval_coco", lambda r: edit_coco(r, "val", box_outside),
        "annotations[0] lies outside its", lambda r: coco_json(r, "val")),
    "coco eval: polygon NaN": (
        "eval_coco", lambda r: edit_coco(r, "val", lambda d: d["annotations"][0]["segmentation"][0].__setitem__(3, float("nan"))),
        "annotations[0] has a segmentation polygon with a value that is not a finite number",
        lambda r: coco_json(r, "val")),
    "coco eval: polygon string": (
        "eval_coco", lambda r: edit_coco(r, "val", lambda d: d["annotations"][0]["segmentation"][0].__setitem__(0, "x")),
        "annotations[0] has a segmentation polygon with a value that is not a finite number",
        lambda r: coco_json(r, "val")),
    # COCO, training (coco_2017_train and the test set through `transfer`)
    "coco train: annotation id twice": (
        "train_coco", lambda r: edit_coco(r, "train", lambda d: d["annotations"][5].update(id=d["annotations"][4]["id"])),
        "annotations[5] repeats annotation id", lambda r: coco_json(r, "train")),
    "coco train: image id twice": (
        "train_coco", lambda r: edit_coco(r, "train", lambda d: d["images"][3].update(id=d["images"][2]["id"])),
        "images[3] repeats image id", lambda r: coco_json(r, "train")),
    "coco train: bbox Infinity": (
        "train_coco", lambda r: edit_coco(r, "train", lambda d: d["annotations"][0]["bbox"].__setitem__(3, float("inf"))),
        "annotations[0] has an invalid bbox", lambda r: coco_json(r, "train")),
    "coco train: box outside its image": (
        "train_coco", lambda r: edit_coco(r, "train", box_outside),
        "annotations[0] lies outside its", lambda r: coco_json(r, "train")),
    "coco train: JSON size is not the file's": (
        "train_coco", lambda r: edit_coco(r, "train", lambda d: d["images"][0].update(width=d["images"][0]["width"] + 3)),
        "but the annotation file gives", lambda r: coco_jpeg(r, "train")),
    "coco test: file size is not the JSON's": (
        "train_coco", lambda r: resize_image(coco_jpeg(r, "val", 2), 0, -2),
        "but the annotation file gives", lambda r: coco_jpeg(r, "val", 2)),
    "coco test: file transposed": (
        "train_coco", lambda r: transpose_image(coco_jpeg(r, "val", 0)),
        "but the annotation file gives", lambda r: coco_jpeg(r, "val", 0)),
    "coco train: batch larger than the data": (
        "train_coco", lambda r: None, "12 images give no full batch of SOLVER.IMS_PER_BATCH 1000",
        lambda r: Path("demo_voc_C4.yaml")),
    # VOC, evaluation (voc_2007_test through `evaluate`)
    "voc eval: image id listed twice": (
        "eval_voc", lambda r: list_twice(r, 2007, "test"), "is listed twice (lines 2 and 9)",
        lambda r: split_file(r, 2007, "test")),
    "voc eval: xmin NaN": (
        "eval_voc", lambda r: set_tag(voc_xml(r, 2007, "test", 1), "xmin", "nan"),
        "<xmin> is not a finite number: 'nan'", lambda r: voc_xml(r, 2007, "test", 1)),
    "voc eval: ymax inf": (
        "eval_voc", lambda r: set_tag(voc_xml(r, 2007, "test", 2), "ymax", "inf"),
        "<ymax> is not a finite number: 'inf'", lambda r: voc_xml(r, 2007, "test", 2)),
    "voc eval: width NaN": (
        "eval_voc", lambda r: set_tag(voc_xml(r, 2007, "test", 0), "width", "NaN"),
        "<width> is not a finite number: 'NaN'", lambda r: voc_xml(r, 2007, "test", 0)),
    "voc eval: width fractional": (
        "eval_voc", lambda r: set_tag(voc_xml(r, 2007, "test", 0), "width", "64.5"),
        "image size 64.5x", lambda r: voc_xml(r, 2007, "test", 0)),
    "voc eval: xmax < xmin": (
        "eval_voc", lambda r: set_tag(voc_xml(r, 2007, "test", 0), "xmax", "0"),
        "has xmax < xmin", lambda r: voc_xml(r, 2007, "test", 0)),
    "voc eval: box outside its image": (
        "eval_voc", lambda r: (set_tag(voc_xml(r, 2007, "test", 0), "xmin", "500"),
                               set_tag(voc_xml(r, 2007, "test", 0), "xmax", "510")),
        "lies outside the", lambda r: voc_xml(r, 2007, "test", 0)),
    # VOC, training (voc_2007_trainval + voc_2012_train, tested on voc_2012_val, through `transfer`)
    "voc train: image id listed twice": (
        "train_voc", lambda r: list_twice(r, 2007, "trainval"), "is listed twice (lines 2 and 13)",
        lambda r: split_file(r, 2007, "trainval")),
    "voc test: image id listed twice": (
        "train_voc", lambda r: list_twice(r, 2012, "val"), "is listed twice (lines 2 and 7)",
        lambda r: split_file(r, 2012, "val")),
    "voc train: ymin NaN": (
        "train_voc", lambda r: set_tag(voc_xml(r, 2012, "train", 3), "ymin", "nan"),
        "<ymin> is not a finite number", lambda r: voc_xml(r, 2012, "train", 3)),
    "voc train: XML size is not the file's": (
        "train_voc", lambda r: resize_image(voc_jpeg(r, 2007, "trainval", 4), 5, 0),
        "but the annotation file gives", lambda r: voc_jpeg(r, 2007, "trainval", 4)),
    "voc test: file transposed": (
        "train_voc", lambda r: transpose_image(next(voc_jpeg(r, 2012, "val", k) for k in range(6)
                                                    if len(set(Image.open(voc_jpeg(r, 2012, "val", k)).size)) == 2)),
        "but the annotation file gives", lambda r: r / "VOC2012" / "JPEGImages"),
    "voc test: XML height is not the file's": (
        "train_voc", lambda r: set_tag(voc_xml(r, 2012, "val", 1), "height", "200"),
        "but the annotation file gives", lambda r: voc_jpeg(r, 2012, "val", 1)),
    "voc train: batch larger than the data": (
        "train_voc", lambda r: None, "18 images give no full batch of SOLVER.IMS_PER_BATCH 1000",
        lambda r: Path("demo_voc_C4.yaml")),
    "voc train: batch larger than the annotated images": (
        "train_voc", lambda r: empty_voc_images(r, 5), "13 images give no full batch of SOLVER.IMS_PER_BATCH 16",
        lambda r: Path("demo_voc_C4.yaml")),
}
BATCH = {"coco train: batch larger than the data": 1000, "voc train: batch larger than the data": 1000,
         "voc train: batch larger than the annotated images": 16}


@pytest.mark.parametrize("label", list(CASES))
def test_bad_data_is_refused_naming_file_and_problem(label, data, tmp_path, capsys):
    kind, corrupt, problem, named = CASES[label]
    root = tmp_path / "data"
    shutil.copytree(data, root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corrupt(root)
    opts = ("SOLVER.IMS_PER_BATCH", str(BATCH[label])) if label in BATCH else ()
    outcome = assert_refused(command(kind, root, tmp_path, opts), problem, capsys, untouched=[root])
    assert str(named(root)) in outcome.stderr or named(root).name in outcome.stderr, outcome.stderr
    assert not (tmp_path / "run").exists()


def ground_truth_voc(root: Path, year: int, split: str) -> list[dict]:
    """Every object of the split as a detection of score 1 (what scores AP 100)."""
    dets = []
    for image_id in dict.fromkeys(voc_ids(root, year, split)):
        xml = (root / f"VOC{year}" / "Annotations" / f"{image_id}.xml").read_text()
        classes = (root / f"VOC{year}" / "classes.txt").read_text().split()
        for obj in re.findall(r"<object>.*?</object>", xml, flags=re.S):
            name = re.search(r"<name>(.*?)</name>", obj).group(1)
            x0, y0, x1, y1 = (float(re.search(rf"<{t}>(.*?)</{t}>", obj).group(1)) for t in ("xmin", "ymin", "xmax", "ymax"))
            dets.append({"image_id": image_id, "category_id": classes.index(name) + 1,
                         "bbox": [x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1], "score": 1.0})
    return dets


def test_ground_truth_that_would_score_below_100_is_refused(data, tmp_path, capsys):
    """The two known ways a data file lowered the AP of perfect detections (to 83.5 and 67.3)."""
    root = tmp_path / "data"
    shutil.copytree(data, root)
    gt = json.loads(coco_json(root, "val").read_text())
    dets = tmp_path / "coco_dets.json"
    dets.write_text(json.dumps([{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                                 "score": 1.0} for a in gt["annotations"]]))
    edit_coco(root, "val", lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]))
    assert_refused(["evaluate", "--dataset", "coco_2017_val", "--data-root", root, "--detections", dets],
                   "repeats annotation id", capsys, untouched=[root])
    voc_dets = tmp_path / "voc_dets.json"
    voc_dets.write_text(json.dumps(ground_truth_voc(root, 2007, "test")))
    list_twice(root, 2007, "test")
    assert_refused(["evaluate", "--dataset", "voc_2007_test", "--data-root", root, "--detections", voc_dets],
                   "is listed twice", capsys, untouched=[root])


def test_clean_ground_truth_still_scores_100(data, tmp_path, capsys):
    """The checks refuse nothing in clean data: perfect detections still score 100."""
    voc_dets = tmp_path / "voc_dets.json"
    voc_dets.write_text(json.dumps(ground_truth_voc(data, 2007, "test")))
    out = run_here(["evaluate", "--dataset", "voc_2007_test", "--data-root", data, "--detections", voc_dets], capsys)
    assert out.code == 0, out.stderr
    assert json.loads(out.stdout)["bbox"]["AP50"] == pytest.approx(100)


def test_boxes_past_the_border_are_kept_and_counted(data, tmp_path):
    """Partly outside: VOC boxes are clipped, COCO boxes kept as COCO scores them; both warned and counted."""
    root = tmp_path / "data"
    shutil.copytree(data, root)
    set_tag(voc_xml(root, 2007, "test", 0), "xmax", "500")
    edit_coco(root, "val", lambda d: d["annotations"][0]["bbox"].__setitem__(2, 500))
    with pytest.warns(UserWarning, match="clipped 1 box"):
        assert check_images("voc_2007_test", root) == {"boxes_clipped": 1}
    with pytest.warns(UserWarning, match=r"instances_val2017\.json: 1 box\(es\) reach outside"):
        assert check_images("coco_2017_val", root) == {"boxes_past_border": 1}
    assert check_images("voc_2007_trainval", root) == {}  # every class present, no box past a border


def test_counts_are_kept_in_the_run_metadata(data, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(data, root)
    set_tag(voc_xml(root, 2012, "val", 0), "xmax", "500")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = run_here(["transfer", "--eval-only", *command("train_voc", root, tmp_path)[1:]], capsys)
    assert out.code == 0, out.stderr
    meta = json.loads((tmp_path / "run" / "metrics.json").read_text())["meta"]
    # the tiny synthetic VOC12 val has no star: the count says its AP is left out of the mean
    assert meta["data_checks"] == {"voc_2012_val": {"boxes_clipped": 1, "classes_without_ground_truth": 1}}
