"""VOC loading and the VOC evaluator against the devkit algorithm."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from detection_fixtures import random_voc, write_voc
from mocobench import UserError
from mocobench.transfer.datasets.catalog import check_images, get_dataset, get_datasets, get_metadata
from mocobench.transfer.datasets.voc import VOC_CLASSES
from mocobench.transfer.evaluation import evaluate

CLASSES = ("cat", "dog", "car", "person")


def ground_truth_detections(records):
    return [{"image_id": r["image_id"], "category_id": a["category_id"] + 1, "score": 1.0,
             "bbox": [a["bbox"][0], a["bbox"][1], a["bbox"][2] - a["bbox"][0], a["bbox"][3] - a["bbox"][1]]}
            for r in records for a in r["annotations"]]


# ---------------------------------------------------------------- loading

def test_boxes_difficult_and_metadata_follow_detectron2(tmp_path, monkeypatch):
    write_voc(tmp_path, 2007, "test", {"000001": (200, 100, [("dog", 1, 1, 200, 100, 0),
                                                              ("person", 10, 20, 30, 40, 1)])})
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))  # root from the environment
    records, meta = get_dataset("voc_2007_test")
    assert meta["thing_classes"] == list(VOC_CLASSES)  # no classes.txt: the 20 VOC classes
    assert (meta["evaluator_type"], meta["year"], meta["split"]) == ("pascal_voc", 2007, "test")
    assert meta["thing_dataset_id_to_contiguous_id"][1] == 0
    (r,) = records
    assert r["file_name"] == str((tmp_path / "VOC2007/JPEGImages/000001.jpg").resolve())
    assert (r["image_id"], r["width"], r["height"]) == ("000001", 200, 100)
    dog, person = r["annotations"]
    assert dog["bbox"] == [0.0, 0.0, 200.0, 100.0]  # (1, W) covers the whole image
    assert person["bbox"] == [9.0, 19.0, 30.0, 40.0]
    assert (dog["category_id"], person["category_id"]) == (VOC_CLASSES.index("dog"), VOC_CLASSES.index("person"))
    assert (dog["difficult"], person["difficult"]) == (False, True)  # kept, flagged


def test_classes_txt_and_07_plus_12(tmp_path):
    random_voc(tmp_path, 2007, "trainval", CLASSES, n_images=3, seed=1)
    random_voc(tmp_path, 2012, "trainval", CLASSES, n_images=4, seed=2)
    records, meta = get_datasets(["voc_2007_trainval", "voc_2012_trainval"], tmp_path)
    assert meta["thing_classes"] == list(CLASSES) and len(records) == 7
    assert meta["names"] == ["voc_2007_trainval", "voc_2012_trainval"]
    (tmp_path / "VOC2012/classes.txt").write_text("cat\ndog\n")
    with pytest.raises(UserError, match="cannot be trained together"):
        get_datasets(["voc_2007_trainval", "voc_2012_trainval"], tmp_path)


def test_box_outside_image_is_clipped_with_a_counted_warning(tmp_path):
    write_voc(tmp_path, 2007, "test", {"a": (50, 40, [("cat", 0, 1, 55, 40, 0), ("cat", 2, 2, 9, 9, 0)]),
                                       "b": (50, 40, [("dog", 1, 1, 50, 41, 0)])}, CLASSES)
    with pytest.warns(UserWarning, match=r"clipped 2 box\(es\).*a\.xml"):
        records, _ = get_dataset("voc_2007_test", tmp_path)
    assert records[0]["annotations"][0]["bbox"] == [0.0, 0.0, 50.0, 40.0]
    assert records[1]["annotations"][0]["bbox"] == [0.0, 0.0, 50.0, 40.0]


@pytest.mark.parametrize("damage, message", [
    ("no_folder", r"VOC2007: VOC folder .* not found"),
    ("no_split", r"test\.txt: split file not found"),
    ("no_jpeg", r"JPEGImages/b\.jpg: image 'b' \(listed in .*test\.txt\) not found"),
    ("no_xml", r"Annotations/b\.xml: annotation of image 'b'"),
    ("bad_xml", r"Annotations/b\.xml:3: malformed XML"),
    ("x2_lt_x1", r"b\.xml: object 0 \(dog\) has xmax < xmin"),
    ("outside", r"b\.xml: object 0 \(dog\) lies outside the 50x40 image"),
    ("unknown_class", r"b\.xml: object 0 has unknown category 'horse'"),
    ("no_size", r"b\.xml: no <size>"),
])
def test_bad_voc_data_names_the_file(tmp_path, damage, message):
    objects = {"x2_lt_x1": [("dog", 20, 5, 10, 9, 0)], "outside": [("dog", 60, 5, 70, 9, 0)],
               "unknown_class": [("horse", 1, 1, 5, 5, 0)]}.get(damage, [("dog", 1, 1, 5, 5, 0)])
    d = write_voc(tmp_path, 2007, "test", {"a": (50, 40, [("cat", 1, 1, 9, 9, 0)]), "b": (50, 40, objects)},
                  CLASSES)
    xml = d / "Annotations/b.xml"
    if damage == "no_folder":
        d.rename(tmp_path / "elsewhere")
    elif damage == "no_split":
        (d / "ImageSets/Main/test.txt").unlink()
    elif damage == "no_jpeg":
        (d / "JPEGImages/b.jpg").unlink()
    elif damage == "no_xml":
        xml.unlink()
    elif damage == "bad_xml":
        xml.write_text("<annotation>\n<size><width>5</width>\n<height>5</heigth></size>\n</annotation>\n")
    elif damage == "no_size":
        xml.write_text("<annotation><object><name>dog</name></object></annotation>")
    with pytest.raises(UserError, match=message):
        get_dataset("voc_2007_test", tmp_path)


def test_unknown_dataset_name():
    with pytest.raises(UserError, match="unknown dataset 'voc2007'"):
        get_metadata("voc2007", "anywhere")


# ---------------------------------------------------------------- evaluator

@pytest.mark.parametrize("year", [2007, 2012])
def test_ground_truth_as_detections_scores_100(tmp_path, year):
    random_voc(tmp_path, year, "test", CLASSES, seed=3)
    records, _ = get_dataset(f"voc_{year}_test", tmp_path)
    metrics = evaluate(f"voc_{year}_test", tmp_path, ground_truth_detections(records))
    # 11 x (1 / 11) sums to 1 + 2e-16, in the devkit as here
    assert metrics["bbox"] == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0}, abs=1e-9)
    assert metrics["per_class_AP50"] == pytest.approx({c: 100.0 for c in CLASSES}, abs=1e-9)


def test_a_class_without_ground_truth_is_left_out_of_the_mean_with_a_counted_warning(tmp_path):
    # scored 0 and averaged, a class the split never shows capped perfect detections at 75 (3 of 4
    # classes); detectron2's evaluator gives NaN; COCO's evaluation leaves such a category out
    write_voc(tmp_path, 2012, "val", {"a": (50, 40, [("cat", 1, 1, 20, 20, 0), ("dog", 21, 21, 40, 40, 0)]),
                                      "b": (50, 40, [("car", 5, 5, 30, 30, 0), ("person", 2, 2, 9, 9, 1)])},
                  CLASSES)
    records, _ = get_dataset("voc_2012_val", tmp_path)
    with pytest.warns(UserWarning, match=r"1 class\(es\) without a ground-truth box.*: person"):
        metrics = evaluate("voc_2012_val", tmp_path, ground_truth_detections(records))
    assert metrics["bbox"] == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0})
    assert set(metrics["per_class_AP50"]) == {"cat", "dog", "car"}
    assert check_images("voc_2012_val", tmp_path) == {"classes_without_ground_truth": 1}


def test_a_split_without_any_ground_truth_scores_nan(tmp_path):
    write_voc(tmp_path, 2012, "val", {"a": (50, 40, [("cat", 1, 1, 20, 20, 1)])}, CLASSES)
    with pytest.warns(UserWarning, match="4 class"):
        metrics = evaluate("voc_2012_val", tmp_path, [])
    assert all(np.isnan(v) for v in metrics["bbox"].values()) and metrics["per_class_AP50"] == {}


def eleven_point_ap(tp, fp, npos):
    """The VOC2007 definition: mean over t in 0, .1, ..., 1 of max precision at recall >= t."""
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec, prec = tp / npos, tp / (tp + fp)
    return sum(max([p for r, p in zip(rec, prec) if r >= t], default=0.0) for t in np.arange(0, 1.1, 0.1)) / 11


def test_hand_computed_eleven_point_case(tmp_path):
    write_voc(tmp_path, 2007, "test", {
        "img1": (200, 200, [("cat", 10, 10, 50, 50, 0), ("cat", 60, 60, 90, 90, 1), ("dog", 1, 1, 100, 100, 0)]),
        "img2": (200, 200, [("cat", 5, 5, 40, 40, 0)]),
    }, ["cat", "dog"])

    def det(image, cls, x0, y0, x1, y1, score):  # from 1-based devkit pixels to loader coordinates
        return {"image_id": image, "category_id": cls, "bbox": [x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1],
                "score": score}

    detections = [
        det("img1", 1, 10, 10, 50, 50, 0.9),     # cat TP
        det("img1", 1, 60, 60, 90, 90, 0.8),     # the difficult cat: neither TP nor FP
        det("img2", 1, 150, 150, 190, 190, 0.7),  # FP, nothing there
        det("img1", 1, 10, 10, 50, 50, 0.6),     # duplicate of the first: FP
        det("img2", 1, 5, 5, 40, 40, 0.5),       # TP
        det("img2", 2, 1, 1, 100, 100, 0.95),    # no dog in img2: FP
        det("img1", 2, 1, 1, 100, 72, 0.85),     # IoU 0.72 with the dog: TP up to 0.70, FP above
        det("img1", 2, 1, 1, 100, 100, 0.75),    # exact dog: FP (duplicate) up to 0.70, TP above
    ]
    cat = eleven_point_ap([1, 0, 0, 0, 1], [0, 0, 1, 1, 0], npos=2)  # recall .5 .5 .5 .5 1
    dog_low = eleven_point_ap([0, 1, 0], [1, 0, 1], npos=1)
    dog_high = eleven_point_ap([0, 0, 1], [1, 1, 0], npos=1)
    assert (cat, dog_low, dog_high) == pytest.approx((8.5 / 11, 0.5, 1 / 3), abs=1e-12)

    metrics = evaluate("voc_2007_test", tmp_path, detections)
    assert metrics["bbox"]["AP50"] == pytest.approx(100 * (cat + dog_low) / 2, abs=1e-9)
    assert metrics["bbox"]["AP75"] == pytest.approx(100 * (cat + dog_high) / 2, abs=1e-9)
    # thresholds .50-.70 see dog_low, .75-.95 dog_high
    assert metrics["bbox"]["AP"] == pytest.approx(100 * (cat + (dog_low + dog_high) / 2) / 2, abs=1e-9)
    assert metrics["per_class_AP50"] == pytest.approx({"cat": 100 * cat, "dog": 100 * dog_low}, abs=1e-9)


def test_overlap_exactly_at_the_threshold_is_no_match(tmp_path):
    write_voc(tmp_path, 2007, "test", {"a": (200, 200, [("dog", 1, 1, 100, 100, 0)])}, ["dog"])
    half = {"image_id": "a", "category_id": 1, "bbox": [0, 0, 100, 50], "score": 0.5}  # IoU 0.5
    assert evaluate("voc_2007_test", tmp_path, [half])["bbox"]["AP50"] == 0.0  # devkit: IoU > 0.5


def devkit_reference(voc_dir: Path, split: str, classes, detections, use_07_metric: bool) -> dict:
    """The devkit's voc_eval, per class and per detection, read straight from the XML files.

    Detections are in loader coordinates (XYWH); the devkit sees (x + 1, y + 1, x + w, y + h).
    Returns {"AP", "AP50", "AP75"} in percent.
    """
    ids = (voc_dir / "ImageSets/Main" / f"{split}.txt").read_text().split()
    objects = {}
    for i in ids:
        root = ET.parse(voc_dir / "Annotations" / f"{i}.xml").getroot()
        objects[i] = [(o.find("name").text, [float(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")],
                       o.find("difficult").text == "1") for o in root.findall("object")]

    def ap(rec, prec):
        if use_07_metric:
            return sum((max(prec[rec >= t]) if (rec >= t).any() else 0.0) / 11 for t in np.arange(0.0, 1.1, 0.1))
        mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
        for k in range(len(mpre) - 2, -1, -1):
            mpre[k] = max(mpre[k], mpre[k + 1])
        return sum((mrec[k + 1] - mrec[k]) * mpre[k + 1] for k in range(len(mrec) - 1) if mrec[k + 1] != mrec[k])

    per_threshold = {}
    for thresh in range(50, 100, 5):
        aps = []
        for c, name in enumerate(classes):
            gt = {i: [(box, diff) for n, box, diff in objects[i] if n == name] for i in ids}
            taken = {i: [False] * len(gt[i]) for i in ids}
            npos = sum(not diff for i in ids for _, diff in gt[i])
            dets = sorted((d for d in detections if d["category_id"] == c + 1), key=lambda d: -d["score"])
            tp, fp = [], []
            for d in dets:
                x, y, w, h = d["bbox"]
                bb = (x + 1, y + 1, x + w, y + h)
                best, jbest = -np.inf, -1
                for j, (g, _) in enumerate(gt[d["image_id"]]):
                    iw = max(min(bb[2], g[2]) - max(bb[0], g[0]) + 1.0, 0.0)
                    ih = max(min(bb[3], g[3]) - max(bb[1], g[1]) + 1.0, 0.0)
                    union = (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0) + (g[2] - g[0] + 1.0) * (g[3] - g[1] + 1.0) - iw * ih
                    if iw * ih / union > best:
                        best, jbest = iw * ih / union, j
                is_tp = is_fp = 0.0
                if best > thresh / 100.0:
                    if not gt[d["image_id"]][jbest][1]:
                        if taken[d["image_id"]][jbest]:
                            is_fp = 1.0
                        else:
                            is_tp, taken[d["image_id"]][jbest] = 1.0, True
                else:
                    is_fp = 1.0
                tp.append(is_tp)
                fp.append(is_fp)
            tp, fp = np.cumsum(tp), np.cumsum(fp)
            aps.append(100 * ap(tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)) if npos else 0.0)
        per_threshold[thresh] = np.mean(aps)
    return {"AP": np.mean(list(per_threshold.values())), "AP50": per_threshold[50], "AP75": per_threshold[75]}


def random_detections(records, n_classes, seed):
    """Jittered ground truth (many IoUs around the thresholds), wrong classes, and clutter."""
    rng = random.Random(seed)
    dets = []
    for r in records:
        for a in r["annotations"]:
            for _ in range(rng.randint(0, 3)):
                x0, y0, x1, y1 = (v + rng.gauss(0, 4) for v in a["bbox"])
                cls = a["category_id"] + 1 if rng.random() < 0.8 else rng.randint(1, n_classes)
                dets.append({"image_id": r["image_id"], "category_id": cls, "score": rng.random(),
                             "bbox": [x0, y0, max(x1 - x0, 1.0), max(y1 - y0, 1.0)]})
        for _ in range(rng.randint(0, 4)):
            x0, y0 = rng.uniform(0, r["width"] - 20), rng.uniform(0, r["height"] - 20)
            dets.append({"image_id": r["image_id"], "category_id": rng.randint(1, n_classes),
                         "score": rng.random(), "bbox": [x0, y0, rng.uniform(5, 60), rng.uniform(5, 60)]})
    return dets


@pytest.mark.parametrize("year", [2007, 2012])
def test_random_detections_match_devkit_reference(tmp_path, year):
    voc_dir = random_voc(tmp_path, year, "test", CLASSES, n_images=30, seed=year)
    records, meta = get_dataset(f"voc_{year}_test", tmp_path)
    assert sum(a["difficult"] for r in records for a in r["annotations"]) > 0
    detections = random_detections(records, len(CLASSES), seed=year)
    assert_matches_devkit(voc_dir, f"voc_{year}_test", tmp_path, detections)


def assert_matches_devkit(voc_dir: Path, dataset: str, data_root: Path, detections) -> None:
    """Usable on any VOC root (e.g. a synthetic one): evaluator == devkit reference to 1e-6."""
    meta = get_metadata(dataset, data_root)
    got = evaluate(dataset, data_root, detections)["bbox"]
    want = devkit_reference(voc_dir, meta["split"], meta["thing_classes"], detections, meta["year"] == 2007)
    assert 5 < want["AP"] < 95  # a meaningful case, neither empty nor perfect
    assert got == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("change, message", [
    ({"image_id": "nope"}, r"dets\.json: detection 1 names image_id 'nope', which is not in the dataset"),
    ({"category_id": 5}, r"dets\.json: detection 1 names category_id 5, which is not a category"),
    ({"category_id": 0}, r"names category_id 0"),
    ({"bbox": [1, 2, 3]}, r"detection 1 has bbox \[1, 2, 3\]"),
    ({"score": None}, r"detection 1 has score None"),
])
def test_bad_detections_are_named(tmp_path, change, message):
    random_voc(tmp_path, 2007, "test", CLASSES, n_images=2)
    records, _ = get_dataset("voc_2007_test", tmp_path)
    dets = ground_truth_detections(records)[:2]
    dets[1] = {**dets[1], **change}
    with pytest.raises(UserError, match=message):
        evaluate("voc_2007_test", tmp_path, dets, source="dets.json")


def test_synthetic_voc_test_split_matches_devkit_reference(tmp_path):
    """The evaluator's check on the suite's own data: the synthetic VOC2007 test split."""
    from mocobench.transfer.datasets.synth import write_synthetic

    write_synthetic(tmp_path, 0, "tiny")
    records, meta = get_dataset("voc_2007_test", tmp_path)
    detections = random_detections(records, len(meta["thing_classes"]), seed=7)
    assert_matches_devkit(tmp_path / "VOC2007", "voc_2007_test", tmp_path, detections)
