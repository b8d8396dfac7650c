"""Cityscapes instance segmentation: the synthetic frames (real folder layout, polygons json
conventions, instanceIds PNGs), the loader (against detectron2's load_cityscapes_instances),
cityscapesscripts' instance-level AP (against detectron2's CityscapesInstanceEvaluator), the
engines' handling of Cityscapes and the Cityscapes table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from conftest import one_line_refusals, run_cli_at_once
from detection_fixtures import same_records_but_boxes
from engine_fixtures import TINY, needs_d2, synth_fixture
from mocobench import UserError
from mocobench.transfer.datasets import synth_cityscapes
from mocobench.transfer.datasets.catalog import check_images, get_dataset, get_metadata
from mocobench.transfer.datasets.synth import MARKER, write_synthetic
from mocobench.transfer.evaluation import evaluate

ROOT = Path(__file__).resolve().parents[1]
VAL, TRAIN = "cityscapes_fine_instance_seg_val", "cityscapes_fine_instance_seg_train"


data = synth_fixture("cityscapes", cityscapes=True)


def polygon_files(root: Path, split: str = "*") -> list[Path]:
    return sorted((root / "cityscapes" / "gtFine").glob(f"{split}/*/*_gtFine_polygons.json"))


# ---- synthetic layout --------------------------------------------------------------------

def test_frames_are_written_only_when_asked_and_added_to_a_complete_folder(data, tmp_path):
    plain = tmp_path / "plain"
    write_synthetic(plain, seed=1, scale="tiny", workers=1)
    assert not (plain / "cityscapes").exists() and "cityscapes" not in json.loads((plain / MARKER).read_text())
    write_synthetic(plain, seed=1, scale="tiny", workers=1, cityscapes=True)
    ours = sorted(p.relative_to(plain) for p in (plain / "cityscapes").rglob("*") if p.is_file())
    assert ours == sorted(p.relative_to(data) for p in (data / "cityscapes").rglob("*") if p.is_file())
    assert all((plain / p).read_bytes() == (data / p).read_bytes() for p in ours)  # same seed: same bytes
    marker = json.loads((plain / MARKER).read_text())
    assert marker["cityscapes"] and marker["counts"]["cityscapes/val"] == 4 and marker["counts"]["cityscapes/train"] == 8


def test_frames_follow_cityscapes_layout_and_json_conventions(data):
    from cityscapesscripts.helpers.labels import name2label

    for name, label_id in {**synth_cityscapes.THINGS, **synth_cityscapes.STUFF}.items():
        assert name2label[name].id == label_id  # the writer's ids are Cityscapes' own
    assert name2label[synth_cityscapes.PLATE].id < 0
    labels = []
    for json_file in polygon_files(data):
        stem = json_file.name[: -len("gtFine_polygons.json")]
        city = json_file.parent.name
        assert city in synth_cityscapes.CITIES[json_file.parent.parent.name] and stem.startswith(f"{city}_")
        split = json_file.parent.parent.name
        image = data / "cityscapes" / "leftImg8bit" / split / city / f"{stem}leftImg8bit.png"
        doc = json.loads(json_file.read_text())
        assert Image.open(image).size == (doc["imgWidth"], doc["imgHeight"])
        instance_ids = np.asarray(Image.open(json_file.parent / f"{stem}gtFine_instanceIds.png"))
        label_ids = np.asarray(Image.open(json_file.parent / f"{stem}gtFine_labelIds.png"))
        assert instance_ids.shape == label_ids.shape == (doc["imgHeight"], doc["imgWidth"])
        # an instance pixel is label id x 1000 + index; its labelIds pixel is the label id
        things = instance_ids >= 1000
        assert (instance_ids[things] // 1000 == label_ids[things]).all()
        assert (instance_ids[~things] == label_ids[~things]).all()
        assert [o["label"] for o in doc["objects"][:2]] == ["sky", "road"]
        labels += [o["label"] + ("(deleted)" if o.get("deleted") else "") for o in doc["objects"]]
    assert "pole" in labels and synth_cityscapes.PLATE in labels and "car(deleted)" in labels
    assert any(label.endswith("group") for label in labels)


# ---- loader --------------------------------------------------------------------------------

def test_records_cut_instances_by_what_lies_above_and_mark_crowds(data):
    records, meta = get_dataset(TRAIN, data)
    assert meta["thing_classes"] == ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    assert meta["evaluator_type"] == "cityscapes_instance" and meta["thing_dataset_id_to_contiguous_id"][26] == 2
    annotations = [a for r in records for a in r["annotations"]]
    assert any(len(a["segmentation"]) > 1 for a in annotations)  # cut in two by a pole
    assert any(a["iscrowd"] for a in annotations) and not all(a["iscrowd"] for a in annotations)
    assert [r["image_id"] for r in records] == [Path(r["file_name"]).name for r in records]
    assert check_images(TRAIN, data) == {}


def _broken_root(data: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    shutil.copytree(data / "cityscapes", root / "cityscapes")
    return root, polygon_files(root, "val")[0]


BROKEN = {
    "label": (lambda d: d["objects"][2].update(label="spaceship"), "label 'spaceship'"),
    "polygon": (lambda d: d["objects"][2].update(polygon=[[1, 1], [5, 5]]), "not 3 or more [x, y] points"),
    "size": (lambda d: d.update(imgHeight=0), "imgHeight is 0"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_bad_polygons_file_is_one_line_naming_file_and_problem(data, tmp_path, case):
    root, json_file = _broken_root(data, tmp_path)
    doc = json.loads(json_file.read_text())
    BROKEN[case][0](doc)
    json_file.write_text(json.dumps(doc))
    with pytest.raises(UserError) as e:
        get_dataset(VAL, root)
    assert "\n" not in str(e.value) and str(json_file) in str(e.value) and BROKEN[case][1] in str(e.value)


def test_a_frame_without_its_gtfine_files_is_one_line(data, tmp_path):
    root, json_file = _broken_root(data, tmp_path)
    missing = json_file.with_name(json_file.name.replace("polygons.json", "instanceIds.png"))
    missing.unlink()
    with pytest.raises(UserError, match=f"{missing}.* not found"):
        get_dataset(VAL, root)


@needs_d2
@pytest.mark.parametrize("name", [TRAIN, VAL])
def test_records_equal_detectron2_load_cityscapes_instances(data, name):
    from detectron2.data.datasets.cityscapes import load_cityscapes_instances
    from detectron2.structures import BoxMode

    from mocobench.transfer.engines.detectron2.cityscapes import alias_cityscapesscripts

    alias_cityscapesscripts()  # detectron2 imports cityscapesscripts under an internal path
    meta = get_metadata(name, data)
    # detectron2's builtin registration: from the polygons json, as polygons
    theirs = sorted(load_cityscapes_instances(meta["image_dir"] + "/", meta["gt_dir"] + "/", from_json=True,
                                              to_polygons=True), key=lambda r: r["file_name"])
    ours, _ = get_dataset(name, data)
    for a, b in same_records_but_boxes(ours, theirs):
        assert b["bbox_mode"] == BoxMode.XYXY_ABS and a["bbox"] == list(b["bbox"])


# ---- evaluator -----------------------------------------------------------------------------

def _rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def ground_truth_detections(root: Path) -> list[dict]:
    """Every instance of the val instanceIds PNGs as a detection of its class, score 1."""
    dets = []
    for png in sorted((root / "cityscapes/gtFine/val").glob("*/*_gtFine_instanceIds.png")):
        ids = np.asarray(Image.open(png))
        image_id = png.name.replace("gtFine_instanceIds.png", "leftImg8bit.png")
        for value in np.unique(ids[ids >= 1000]):
            mask = ids == value
            ys, xs = np.nonzero(mask)
            dets.append({"image_id": image_id, "category_id": int(value // 1000), "score": 1.0,
                         "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)],
                         "segmentation": _rle(mask)})
    return dets


def test_ground_truth_as_detections_scores_100(data):
    metrics = evaluate(VAL, data, ground_truth_detections(data))
    assert metrics == {"segm": {"AP": pytest.approx(100.0), "AP50": pytest.approx(100.0)}}


def test_cityscapes_detections_are_checked_in_one_line(data):
    dets = ground_truth_detections(data)
    with pytest.raises(UserError, match="detection 0 names category_id 7,"):
        evaluate(VAL, data, [{**dets[0], "category_id": 7}, *dets[1:]])  # road: not an instance class
    with pytest.raises(UserError, match="detection 1 has no RLE segmentation"):
        evaluate(VAL, data, [dets[0], {k: v for k, v in dets[1].items() if k != "segmentation"}])
    with pytest.raises(UserError, match="names image_id 'nowhere_000000_000019_leftImg8bit.png'"):
        evaluate(VAL, data, [{**dets[0], "image_id": "nowhere_000000_000019_leftImg8bit.png"}])


@needs_d2
def test_metrics_equal_detectron2_cityscapes_instance_evaluator_on_the_same_predictions(data):
    import torch
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json
    from detectron2.structures import Boxes, Instances

    from mocobench.transfer.engines.detectron2.cityscapes import CityscapesInstanceEvaluator
    from mocobench.transfer.engines.detectron2.datasets import register_datasets

    register_datasets([VAL], str(data))
    records, meta = get_dataset(VAL, data)
    ids = {i: c for c, i in meta["thing_dataset_id_to_contiguous_id"].items()}
    rng = np.random.default_rng(5)
    inputs, outputs = [], []
    for r in records:
        h, w = r["height"], r["width"]
        masks, classes = [], []
        for a in r["annotations"]:
            m = mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w)))
            masks.append(np.roll(m, tuple(rng.integers(-2, 3, 2)), axis=(0, 1)))
            classes.append(a["category_id"] if rng.random() < 0.8 else int(rng.integers(0, 8)))
        for _ in range(2):
            m = np.zeros((h, w), np.uint8)
            y, x = int(rng.integers(0, h - 12)), int(rng.integers(0, w - 12))
            m[y:y + 12, x:x + 12] = 1
            masks.append(m)
            classes.append(int(rng.integers(0, 8)))
        inst = Instances((h, w))
        inst.pred_masks = torch.tensor(np.array(masks, dtype=bool))
        inst.pred_boxes = Boxes(torch.zeros(len(masks), 4))
        inst.scores = torch.tensor(rng.uniform(0.05, 1, len(masks)), dtype=torch.float32)
        inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
        inputs.append({"file_name": r["file_name"], "image_id": r["image_id"], "height": h, "width": w})
        outputs.append({"instances": inst})
    evaluator = CityscapesInstanceEvaluator(VAL)  # detectron2's, only its cityscapesscripts import path aliased
    evaluator.reset()
    evaluator.process(inputs, outputs)
    theirs = evaluator.evaluate()
    dets = [{**d, "category_id": ids[d["category_id"]]}  # the class's Cityscapes label id
            for i, o in zip(inputs, outputs) for d in instances_to_coco_json(o["instances"], i["image_id"])]
    ours = evaluate(VAL, data, dets)
    assert 0 < ours["segm"]["AP"] < 100
    assert ours["segm"] == {k: pytest.approx(v, abs=1e-9) for k, v in theirs["segm"].items()}


# ---- engines, tables -----------------------------------------------------------------------

def test_cityscapes_configs_load_with_detectron2s_recipe():
    from mocobench.transfer.config import load_detection_config

    for name, fmt in (("cityscapes_R_50_FPN", "BGR"), ("cityscapes_R_50_FPN_rgb", "RGB")):
        cfg = load_detection_config(ROOT / "configs/detection" / f"{name}.yaml")
        assert cfg.INPUT.FORMAT == fmt and cfg.MODEL.MASK_ON and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 8
        assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == tuple(range(800, 1025, 32)) and cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice"
        assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TEST) == (1024, 2048, 2048)
        assert (cfg.SOLVER.BASE_LR, tuple(cfg.SOLVER.STEPS), cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH) == (
            0.01, (18000,), 24000, 8)
        assert cfg.MODEL.RESNETS.NORM == "SyncBN" and not cfg.MODEL.WEIGHTS
        assert list(cfg.DATASETS.TRAIN) == [TRAIN] and list(cfg.DATASETS.TEST) == [VAL]


def test_torchvision_engine_refuses_cityscapes_in_one_line():
    from mocobench.transfer.config import detection_defaults, load_detection_config
    from mocobench.transfer.engines.torchvision.supported import check_supported

    path = ROOT / "configs/detection/cityscapes_R_50_FPN_rgb.yaml"
    with pytest.raises(UserError) as e:
        check_supported(load_detection_config(path), detection_defaults(), str(path))
    assert "\n" not in str(e.value) and "--engine detectron2" in str(e.value) and TRAIN in str(e.value)


def test_cityscapes_table_loads_with_published_rows_and_refuses_the_torchvision_engine(tmp_path):
    from mocobench.results.paper import paper_rows
    from mocobench.results.tables import resolve_tables

    (table,) = resolve_tables(["cityscapes_R50_FPN"])
    assert table.cfg.ENGINE == "detectron2" and table.metrics == ["segm/AP", "segm/AP50"]
    rows = paper_rows(table).set_index("label")
    assert rows.loc["supervised IN-1M", "baseline"] and not rows[table.metrics].isna().any().any()
    # each row's source names the paper's table it was checked against, in the paper's PDF
    assert all(s.startswith("He et al. 2020, Table 6") and "checked against Table 6 in the paper's PDF" in s
               and "to be checked" not in s for s in rows["source"]), rows["source"]
    inits = tmp_path / "inits.yaml"
    inits.write_text("random: {weights: '', format: RGB}\n")
    common = ["--inits", inits, "--output", tmp_path / "out", "--dry-run"]
    done = run_cli_at_once({"named": ["run-all", "--tables", "cityscapes_R50_FPN", *common],
                            "all": ["run-all", *common]})
    assert one_line_refusals({"named": done["named"]}, {"named": "runs on --engine detectron2 only"}) == []
    assert done["all"].returncode == 0, done["all"].stderr
    assert "skipped   table cityscapes_R50_FPN" in done["all"].stdout


@needs_d2
def test_detectron2_cityscapes_mask_rcnn_runs_end_to_end_on_synthetic_frames(data, tmp_path, cli):
    tiny = [*TINY, "MODEL.ROI_HEADS.NUM_CLASSES", "8", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM",
            "32", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16", "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "2",
            "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1", "TEST.PRECISE_BN.ENABLED", "False",
            "TEST.EVAL_PERIOD", "0", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MAX_SIZE_TEST", "128",
            "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN"]
    out = tmp_path / "run"
    done = cli("transfer", "--engine", "detectron2", "--config", ROOT / "configs/detection/cityscapes_R_50_FPN_rgb.yaml",
               "--weights", "", "--seed", 0, "--data-root", data, "--output-dir", out, *tiny)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["segm"]) == {"AP", "AP50"} and metrics["meta"]["engine"] == "detectron2"
    assert all(np.isnan(v) or 0 <= v <= 100 for v in metrics["segm"].values())
