"""``mocobench evaluate``: prints and writes the metrics, exits 2 naming the bad file."""

from __future__ import annotations

import json
import re

import pytest

from detection_fixtures import random_voc
from test_voc import CLASSES, ground_truth_detections
from mocobench.transfer.datasets.catalog import get_dataset


@pytest.fixture
def voc_root(tmp_path):
    random_voc(tmp_path / "data", 2007, "test", CLASSES, n_images=4)
    records, _ = get_dataset("voc_2007_test", tmp_path / "data")
    (tmp_path / "dets.json").write_text(json.dumps(ground_truth_detections(records)))
    return tmp_path


def test_evaluate_prints_and_writes_metrics(cli, voc_root):
    out = cli("evaluate", "--dataset", "voc_2007_test", "--detections", voc_root / "dets.json",
              "--output", voc_root / "out/metrics.json", env={"DETECTRON2_DATASETS": str(voc_root / "data")})
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert printed == json.loads((voc_root / "out/metrics.json").read_text())
    assert printed["bbox"] == pytest.approx({"AP": 100, "AP50": 100, "AP75": 100})
    assert set(printed["per_class_AP50"]) == set(CLASSES)


@pytest.mark.parametrize("damage, message", [
    ("unknown_image", r"dets\.json: detection 0 names image_id 'zzz'"),
    ("malformed", r"dets\.json:1: malformed JSON"),
    ("no_data", r"VOC2007: VOC folder for dataset 'voc_2007_test' not found"),
])
def test_bad_input_exits_2_with_one_line(cli, voc_root, damage, message):
    dets = voc_root / "dets.json"
    if damage == "unknown_image":
        dets.write_text(json.dumps([{"image_id": "zzz", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]))
    elif damage == "malformed":
        dets.write_text("[{]")
    data_root = voc_root / ("nowhere" if damage == "no_data" else "data")
    out = cli("evaluate", "--dataset", "voc_2007_test", "--data-root", data_root, "--detections", dets,
              "--output", voc_root / "metrics.json")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("mocobench evaluate: error: ")
    assert re.search(message, out.stderr), out.stderr
    assert not (voc_root / "metrics.json").exists()
