"""COCO person keypoints: the synthetic layout, the loader (against detectron2's), keypoint AP
through COCOeval, the detectron2 engine's keypoint R-CNN and the keypoint tables (the torchvision
engine's: tests/test_engine_keypoints.py)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import run_cli_at_once
from engine_fixtures import TINY, needs_d2, synth_fixture
from mocobench import UserError
from mocobench.transfer.datasets.catalog import get_dataset, get_metadata
from mocobench.transfer.datasets.person_keypoints import COCO_PERSON_SIGMAS, KEYPOINT_NAMES
from mocobench.transfer.datasets.synth import MARKER, write_synthetic
from mocobench.transfer.evaluation import evaluate

ROOT = Path(__file__).resolve().parents[1]
VAL, TRAIN = "keypoints_coco_2017_val", "keypoints_coco_2017_train"


data = synth_fixture("kp", keypoints=True)


def val_json(root: Path) -> Path:
    return root / "coco" / "annotations" / "person_keypoints_val2017.json"


# ---- synthetic layout --------------------------------------------------------------------

def test_keypoints_are_written_only_when_asked_and_added_to_a_complete_folder(data, tmp_path):
    plain = tmp_path / "plain"
    write_synthetic(plain, seed=1, scale="tiny", workers=1)
    assert not list((plain / "coco" / "annotations").glob("person_keypoints_*"))
    assert "keypoints" not in json.loads((plain / MARKER).read_text())
    before = (plain / "coco" / "annotations" / "instances_val2017.json").read_bytes()
    write_synthetic(plain, seed=1, scale="tiny", workers=1, keypoints=True)  # added, the rest untouched
    assert (plain / "coco" / "annotations" / "instances_val2017.json").read_bytes() == before
    for split in ("train2017", "val2017"):
        name = f"coco/annotations/person_keypoints_{split}.json"
        assert (plain / name).read_bytes() == (data / name).read_bytes()  # same seed: same bytes
    marker = json.loads((plain / MARKER).read_text())
    assert marker["keypoints"] and marker["counts"]["coco_keypoints/val2017"] == 4


def test_synthetic_people_have_17_keypoints_some_hidden_and_some_off_the_image(data):
    doc = json.loads(val_json(data).read_text())
    train = json.loads((data / "coco/annotations/person_keypoints_train2017.json").read_text())
    (cat,) = doc["categories"]
    assert cat["keypoints"] == list(KEYPOINT_NAMES) and len(cat["skeleton"]) == 19
    flags = [v for a in doc["annotations"] + train["annotations"] for v in a["keypoints"][2::3]]
    assert {0, 1, 2} <= set(flags)
    for a in doc["annotations"]:
        assert len(a["keypoints"]) == 51 and a["num_keypoints"] == sum(v > 0 for v in a["keypoints"][2::3])
        assert all(float(v).is_integer() for v in a["keypoints"])  # pixel indices, as COCO's
    ids = {i["id"] for i in doc["images"]}
    assert all((data / "coco/val2017" / i["file_name"]).is_file() for i in doc["images"])
    assert not ids & {i["id"] for i in json.loads((data / "coco/annotations/instances_val2017.json").read_text())["images"]}


# ---- loader --------------------------------------------------------------------------------

def test_records_shift_keypoints_by_half_a_pixel_and_metadata_has_the_flip_map(data):
    records, meta = get_dataset(VAL, data)
    doc = json.loads(val_json(data).read_text())
    first = next(a for a in doc["annotations"] if a["image_id"] == records[0]["image_id"])
    kps = records[0]["annotations"][0]["keypoints"]
    assert kps[0::3] == [x + 0.5 for x in first["keypoints"][0::3]] and kps[2::3] == first["keypoints"][2::3]
    assert meta["thing_classes"] == ["person"] and ("left_eye", "right_eye") in meta["keypoint_flip_map"]
    assert len(meta["keypoint_flip_map"]) == 8


BROKEN = {
    "length": (lambda d: d["annotations"][0].update(keypoints=d["annotations"][0]["keypoints"][:-3]),
               "want 3 x 17"),
    "non-finite": (lambda d: d["annotations"][0]["keypoints"].__setitem__(0, float("nan")), "not a finite number"),
    "visibility": (lambda d: d["annotations"][0]["keypoints"].__setitem__(2, 3), "not in {0, 1, 2}"),
    "count": (lambda d: d["annotations"][0].update(num_keypoints=99), "num_keypoints 99"),
    "skeleton": (lambda d: d["categories"][0].pop("skeleton"), "no valid 'skeleton'"),
    "names": (lambda d: d["categories"][0].pop("keypoints"), "no 'keypoints' list"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_bad_keypoints_file_is_one_line_naming_file_and_problem(data, tmp_path, case):
    root = tmp_path / "root"
    (root / "coco" / "annotations").mkdir(parents=True)
    (root / "coco" / "val2017").symlink_to(data / "coco" / "val2017")
    doc = json.loads(val_json(data).read_text())
    BROKEN[case][0](doc)
    val_json(root).write_text(json.dumps(doc))
    with pytest.raises(UserError) as e:
        get_metadata(VAL, root)
    message = str(e.value)
    assert "\n" not in message and str(val_json(root)) in message and BROKEN[case][1] in message


@needs_d2
@pytest.mark.parametrize("name", [TRAIN, VAL])
def test_records_equal_detectron2_load_coco_json(data, name):
    from detectron2.data.datasets.coco import load_coco_json
    from detectron2.structures import BoxMode

    meta = get_metadata(name, data)
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = load_coco_json(meta["json_file"], meta["image_root"], dataset_name=None)
    ours, _ = get_dataset(name, data)
    id_map = meta["thing_dataset_id_to_contiguous_id"]
    assert [r["file_name"] for r in ours] == [r["file_name"] for r in theirs]
    for mine, ref in zip(ours, theirs):
        assert {k: mine[k] for k in ("image_id", "height", "width")} == {k: ref[k] for k in ("image_id", "height", "width")}
        assert len(mine["annotations"]) == len(ref["annotations"])
        for a, b in zip(mine["annotations"], ref["annotations"]):
            assert a["bbox"] == pytest.approx(BoxMode.convert(b["bbox"], b["bbox_mode"], BoxMode.XYXY_ABS))
            assert a["keypoints"] == b["keypoints"]  # the same +0.5 shift, v untouched
            assert (a["category_id"], a["iscrowd"]) == (id_map[b["category_id"]], b.get("iscrowd", 0))


# ---- evaluator -----------------------------------------------------------------------------

def ground_truth_detections(root: Path) -> list[dict]:
    doc = json.loads(val_json(root).read_text())
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0,
             "keypoints": [float(v) for v in a["keypoints"]]} for a in doc["annotations"]]


def test_ground_truth_as_detections_scores_100(data):
    metrics = evaluate(VAL, data, ground_truth_detections(data))
    assert metrics["keypoints"]["AP"] == pytest.approx(100.0)
    assert metrics["keypoints"]["AP50"] == pytest.approx(100.0) and set(metrics["keypoints"]) == {
        "AP", "AP50", "AP75", "APm", "APl"}
    assert metrics["bbox"]["AP"] == pytest.approx(100.0)


@pytest.mark.parametrize("sigmas", [(), tuple(s * 2 for s in COCO_PERSON_SIGMAS)], ids=["coco", "given"])
def test_perturbed_keypoints_score_what_pycocotools_says(data, sigmas):
    rng = np.random.default_rng(0)
    dets = ground_truth_detections(data)
    for i, d in enumerate(dets):
        kps = np.array(d["keypoints"]).reshape(-1, 3)
        kps[:, :2] += rng.normal(0, 1.5 + i, kps[:, :2].shape)
        d["keypoints"], d["score"] = kps.ravel().tolist(), float(rng.random())
    ours = evaluate(VAL, data, dets, oks_sigmas=sigmas)["keypoints"]
    gt = COCO()
    gt.dataset = json.loads(val_json(data).read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        coco_eval = COCOeval(gt, gt.loadRes(copy.deepcopy(dets)), "keypoints")
        coco_eval.params.kpt_oks_sigmas = np.array(sigmas or COCO_PERSON_SIGMAS)
        coco_eval.evaluate(), coco_eval.accumulate(), coco_eval.summarize()
    assert 0 < ours["AP"] < 100
    for i, m in enumerate(("AP", "AP50", "AP75", "APm", "APl")):
        expected = coco_eval.stats[i] * 100
        assert ours[m] == pytest.approx(expected) if expected >= 0 else np.isnan(ours[m])


def test_keypoint_detections_are_checked_in_one_line(data):
    dets = ground_truth_detections(data)
    with pytest.raises(UserError, match="3 OKS sigmas .* for 17 keypoints"):
        evaluate(VAL, data, dets, oks_sigmas=(0.1, 0.1, 0.1))
    with pytest.raises(UserError, match="detection 0 has keypoints of length 6, want 3 x 17"):
        evaluate(VAL, data, [{**dets[0], "keypoints": [1.0] * 6}, *dets[1:]])
    with pytest.raises(UserError, match="1 of .* detections have keypoints"):
        evaluate(VAL, data, [{k: v for k, v in dets[0].items() if k != "keypoints"}, dets[1]])
    assert np.isnan(evaluate(VAL, data, [])["keypoints"]["AP"])


# ---- engines, tables -----------------------------------------------------------------------

def test_keypoint_tables_load_with_published_rows_for_either_engine(tmp_path):
    """The torchvision engine runs keypoint R-CNN too (tests/test_engine_keypoints.py)."""
    from mocobench.results.paper import paper_rows
    from mocobench.results.tables import resolve_tables

    (two,) = resolve_tables(["coco_kp_R50_FPN_2x"])
    assert two.cfg.ENGINE == ""
    assert two.metrics == ["keypoints/AP", "keypoints/AP50", "keypoints/AP75"]
    rows = paper_rows(two).set_index("label")
    assert rows.loc["MoCo IN-1M", "keypoints/AP"] == 66.8 and rows.loc["supervised IN-1M", "keypoints/AP75"] == 71.9
    # each row's source names the paper's table it was checked against, in the paper's PDF
    assert all(s.startswith("He et al. 2020, Table 6") and "checked against Table 6 in the paper's PDF" in s
               and "to be checked" not in s for s in rows["source"]), rows["source"]
    inits = tmp_path / "inits.yaml"
    inits.write_text("random: {weights: '', format: RGB}\n")
    common = ["--tables", "coco_kp_R50_FPN_2x", "--inits", inits, "--output", tmp_path / "out", "--dry-run"]
    done = run_cli_at_once({engine: ["run-all", "--engine", engine, *common]
                            for engine in ("torchvision", "detectron2")})
    for engine, result in done.items():
        assert result.returncode == 0, result.stderr
        assert "1 jobs in 1 tables" in result.stdout and f"--engine {engine}" in result.stdout, result.stdout


@needs_d2
def test_detectron2_keypoint_rcnn_runs_end_to_end_on_synthetic_keypoints(data, tmp_path, cli):
    tiny = [*TINY, "MODEL.ROI_HEADS.NUM_CLASSES", "1", "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", "(16, 16)",
            "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.DEVICE", "cpu",
            "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1",
            "TEST.PRECISE_BN.ENABLED", "False", "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN"]
    out = tmp_path / "run"
    done = cli("transfer", "--engine", "detectron2", "--config", ROOT / "configs/detection/coco_R_50_FPN_keypoint_1x_rgb.yaml",
               "--weights", "", "--seed", 0, "--data-root", data, "--output-dir", out, *tiny)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["keypoints"]) == {"AP", "AP50", "AP75", "APm", "APl"} and "bbox" in metrics
    assert metrics["meta"]["engine"] == "detectron2"
