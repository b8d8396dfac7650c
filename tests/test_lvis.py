"""LVIS v0.5: the synthetic layout (federated labels over the COCO images), the loader (against
detectron2's load_lvis_json), federated AP through the lvis package's LVISEval (against
detectron2's LVISEvaluator), the engines' handling of LVIS and the LVIS table."""

from __future__ import annotations

import json
import logging
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_util

from conftest import one_line_refusals, run_cli_at_once
from detection_fixtures import same_records_but_boxes
from engine_fixtures import TINY, needs_d2, synth_fixture
from mocobench import UserError
from mocobench.transfer.datasets import synth_lvis
from mocobench.transfer.datasets.catalog import get_dataset, get_metadata
from mocobench.transfer.datasets.synth import MARKER, write_synthetic
from mocobench.transfer.evaluation import evaluate
from mocobench.transfer.evaluation.lvis import METRICS, import_lvis

ROOT = Path(__file__).resolve().parents[1]
VAL, TRAIN = "lvis_v0.5_val", "lvis_v0.5_train"


data = synth_fixture("lvis", lvis=True)


def lvis_json(root: Path, split: str = "val") -> Path:
    return root / "lvis" / f"lvis_v0.5_{split}.json"


def load(root: Path, split: str = "val") -> dict:
    return json.loads(lvis_json(root, split).read_text())


# ---- synthetic layout --------------------------------------------------------------------

def test_lvis_files_are_written_only_when_asked_and_added_to_a_complete_folder(data, tmp_path):
    plain = tmp_path / "plain"
    write_synthetic(plain, seed=1, scale="tiny", workers=1)
    assert not (plain / "lvis").exists() and "lvis" not in json.loads((plain / MARKER).read_text())
    before = (plain / "coco" / "annotations" / "instances_val2017.json").read_bytes()
    write_synthetic(plain, seed=1, scale="tiny", workers=1, lvis=True)  # added, the rest untouched
    assert (plain / "coco" / "annotations" / "instances_val2017.json").read_bytes() == before
    for split in ("train", "val"):
        assert lvis_json(plain, split).read_bytes() == lvis_json(data, split).read_bytes()  # same seed: same bytes
    marker = json.loads((plain / MARKER).read_text())
    assert marker["lvis"] == synth_lvis.FINGERPRINT and marker["counts"]["lvis/val"] == len(load(data)["images"])


def test_federated_labels_tell_the_truth_about_each_image(data):
    coco, categories = {}, []
    for split in ("train2017", "val2017"):
        doc = json.loads((data / "coco/annotations" / f"instances_{split}.json").read_text())
        categories = sorted(doc["categories"], key=lambda c: c["id"])
        for a in doc["annotations"]:
            coco.setdefault(a["image_id"], []).append(a)
    lvis_id = {c["id"]: i + 1 for i, c in enumerate(categories)}  # COCO's ids in order -> 1..N
    docs = {split: load(data, split) for split in ("train", "val")}
    assert {i["id"] for i in docs["train"]["images"]}.isdisjoint(i["id"] for i in docs["val"]["images"])
    unverified = not_exhaustive = negative = 0
    for doc in docs.values():
        assert [(c["id"], c["name"]) for c in doc["categories"]] == [(lvis_id[c["id"]], c["name"]) for c in categories]
        for img in doc["images"]:
            present = {lvis_id[a["category_id"]] for a in coco.get(img["id"], [])}
            mine = [a for a in doc["annotations"] if a["image_id"] == img["id"]]
            annotated = {a["category_id"] for a in mine}
            assert annotated <= present and set(img["not_exhaustive_category_ids"]) <= annotated
            assert not set(img["neg_category_ids"]) & present  # verified absent means absent
            for a in mine:  # every annotation is one of the image's COCO instances, unchanged
                assert any(a["bbox"] == c["bbox"] and a["segmentation"] == c["segmentation"]
                           and lvis_id[c["category_id"]] == a["category_id"] for c in coco[img["id"]])
            unverified += len(present - annotated)
            not_exhaustive += len(img["not_exhaustive_category_ids"])
            negative += len(img["neg_category_ids"])
    assert unverified and not_exhaustive and negative


def test_val_takes_images_from_both_coco_folders_and_only_coco_url_names_the_file(data):
    doc = load(data)
    folders = {img["coco_url"].rsplit("/", 2)[-2] for img in doc["images"]}
    assert folders == {"train2017", "val2017"}
    for img in doc["images"]:
        assert (data / "coco" / "/".join(img["coco_url"].rsplit("/", 2)[-2:])).is_file()
        assert not list(data.rglob(img["file_name"]))
    assert {c["frequency"] for c in doc["categories"]} == {"r", "c", "f"}


def test_demo_sized_coco_gives_a_long_tail_and_every_frequency_group():
    rng = np.random.default_rng(0)
    cats = [{"id": i, "name": f"c{i}"} for i in (1, 2, 3, 5, 7, 8)]

    def doc(first: int, n: int) -> dict:
        images = [{"id": first + j, "file_name": f"{first + j:012d}.jpg", "width": 100, "height": 80}
                  for j in range(n)]
        anns = [{"id": 0, "image_id": im["id"], "category_id": int(rng.choice([1, 2, 3, 5, 7, 8])),
                 "bbox": [1, 1, 9, 9], "area": 81.0, "segmentation": [[1, 1, 10, 1, 10, 10, 1, 10]], "iscrowd": 0}
                for im in images for _ in range(int(rng.integers(1, 5)))]
        return {"images": images, "annotations": anns, "categories": cats}

    docs = synth_lvis.lvis_docs(0, {"train2017": doc(1, 300), "val2017": doc(301, 100)})
    counts = [c["image_count"] for c in docs["train"]["categories"]]
    assert counts[0] > 1.5 * counts[-1]  # later classes are labelled in fewer images
    assert sorted(c["frequency"] for c in docs["train"]["categories"]) == ["c", "c", "f", "f", "r", "r"]
    assert len(docs["train"]["images"]) == 225 and len(docs["val"]["images"]) == 175


# ---- loader --------------------------------------------------------------------------------

def test_records_carry_the_federated_lists_and_0_based_classes(data):
    records, meta = get_dataset(VAL, data)
    doc = load(data)
    assert meta["evaluator_type"] == "lvis" and meta["thing_classes"] == [c["name"] for c in doc["categories"]]
    by_id = {img["id"]: img for img in doc["images"]}
    assert [r["image_id"] for r in records] == sorted(by_id)
    for r in records:
        img = by_id[r["image_id"]]
        assert r["file_name"] == str(data.resolve() / "coco" / "/".join(img["coco_url"].rsplit("/", 2)[-2:]))
        assert (r["neg_category_ids"], r["not_exhaustive_category_ids"]) == (
            img["neg_category_ids"], img["not_exhaustive_category_ids"])
        ids = sorted(a["category_id"] for a in doc["annotations"] if a["image_id"] == r["image_id"])
        assert sorted(a["category_id"] for a in r["annotations"]) == [i - 1 for i in ids]


BROKEN = {
    "id gap": (lambda d: d["categories"][-1].update(id=99), "category ids must be 1..4"),
    "frequency": (lambda d: d["categories"][0].update(frequency="x"), "frequency 'x'"),
    "negative": (lambda d: d["images"][0].update(neg_category_ids=[77]), "[77] in neg_category_ids"),
    "no lists": (lambda d: d["images"][0].pop("not_exhaustive_category_ids"), "not_exhaustive_category_ids"),
    "polygon": (lambda d: d["annotations"][0].update(segmentation=[[1.0, 2.0, 3.0, 4.0]]), "fewer than 3 points"),
    "no image": (lambda d: [d["images"][0].pop(k) for k in ("coco_url", "file_name")], "neither a coco_url"),
    "no mask": (lambda d: d["annotations"][0].update(segmentation=[]), "non-empty list of polygons"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_bad_lvis_file_is_one_line_naming_file_and_problem(data, tmp_path, case):
    root = tmp_path / "root"
    (root / "lvis").mkdir(parents=True)
    (root / "coco").symlink_to(data / "coco")
    doc = load(data)
    BROKEN[case][0](doc)
    lvis_json(root).write_text(json.dumps(doc))
    with pytest.raises(UserError) as e:
        get_metadata(VAL, root)
    message = str(e.value)
    assert "\n" not in message and str(lvis_json(root)) in message and BROKEN[case][1] in message


def test_an_image_without_coco_url_is_its_file_name_under_coco(data, tmp_path):
    root = tmp_path / "root"
    (root / "lvis").mkdir(parents=True)
    (root / "coco").symlink_to(data / "coco")
    doc = load(data)
    url = doc["images"][0].pop("coco_url")
    doc["images"][0]["file_name"] = "/".join(url.rsplit("/", 2)[-2:])
    lvis_json(root).write_text(json.dumps(doc))
    records, _ = get_dataset(VAL, root)
    mine = next(r for r in records if r["image_id"] == doc["images"][0]["id"])
    assert Path(mine["file_name"]).is_file()


@needs_d2
@pytest.mark.parametrize("name", [TRAIN, VAL])
def test_records_equal_detectron2_load_lvis_json(data, name):
    from detectron2.data.datasets.lvis import load_lvis_json
    from detectron2.structures import BoxMode

    meta = get_metadata(name, data)
    theirs = load_lvis_json(meta["json_file"], meta["image_root"] + "/")  # detectron2's builtin root "coco/"
    ours, _ = get_dataset(name, data)
    for a, b in same_records_but_boxes(ours, theirs):
        assert a["bbox"] == pytest.approx(BoxMode.convert(b["bbox"], b["bbox_mode"], BoxMode.XYXY_ABS))


# ---- evaluator -----------------------------------------------------------------------------

def ground_truth_detections(root: Path, masks: bool = True) -> list[dict]:
    doc = load(root)
    images = {img["id"]: img for img in doc["images"]}
    dets = []
    for a in doc["annotations"]:
        det = {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        if masks:
            img = images[a["image_id"]]
            rle = mask_util.merge(mask_util.frPyObjects(a["segmentation"], img["height"], img["width"]))
            det["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        dets.append(det)
    return dets


def test_ground_truth_as_detections_scores_100(data):
    metrics = evaluate(VAL, data, ground_truth_detections(data))
    for task in ("bbox", "segm"):
        assert set(metrics[task]) == set(METRICS)
        assert metrics[task]["AP"] == pytest.approx(100.0) and metrics[task]["AP50"] == pytest.approx(100.0)
    assert all(np.isnan(v) for v in evaluate(VAL, data, [])["bbox"].values())
    assert "float" not in np.__dict__  # the lvis package's alias is gone again


def test_only_verified_categories_score_a_false_positive(data):
    """Federated: a detection of an unverified category is not scored, an unmatched one of a
    not-exhaustive category is no false positive; one of a category verified absent is."""
    doc = load(data)
    dets = ground_truth_detections(data, masks=False)
    base = evaluate(VAL, data, dets)["bbox"]["AP"]
    assert base == pytest.approx(100.0)
    cats = {c["id"] for c in doc["categories"]}
    annotated = {img["id"]: {a["category_id"] for a in doc["annotations"] if a["image_id"] == img["id"]}
                 for img in doc["images"]}
    # a category annotated somewhere in val, so that its AP exists and a false positive can lower it
    scored = set().union(*annotated.values())

    def with_false_positive(image_id: int, category_id: int) -> float:
        fp = {"image_id": image_id, "category_id": category_id, "bbox": [0.0, 0.0, 2.0, 2.0], "score": 2.0}
        return evaluate(VAL, data, [*dets, fp])["bbox"]["AP"]

    kinds = {"unverified": [], "not_exhaustive": [], "negative": []}
    for img in doc["images"]:
        for c in scored:
            if c in img["neg_category_ids"]:
                kinds["negative"].append((img["id"], c))
            elif c in img["not_exhaustive_category_ids"]:
                kinds["not_exhaustive"].append((img["id"], c))
            elif c not in annotated[img["id"]] and c in cats:
                kinds["unverified"].append((img["id"], c))
    assert all(kinds.values()), {k: len(v) for k, v in kinds.items()}
    assert with_false_positive(*kinds["unverified"][0]) == pytest.approx(100.0)
    assert with_false_positive(*kinds["not_exhaustive"][0]) == pytest.approx(100.0)
    assert with_false_positive(*kinds["negative"][0]) < 100.0


def test_lvis_detections_are_checked_in_one_line(data):
    dets = ground_truth_detections(data)
    with pytest.raises(UserError, match="detection 0 names category_id 99"):
        evaluate(VAL, data, [{**dets[0], "category_id": 99}, *dets[1:]])
    with pytest.raises(UserError, match="1 of .* detections have a segmentation"):
        evaluate(VAL, data, [dets[0], {k: v for k, v in dets[1].items() if k != "segmentation"}])


def test_importing_lvis_leaves_the_root_logger_alone():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    import_lvis()
    assert root.handlers == handlers and root.level == level


def _predictions(data: Path) -> tuple[list[dict], list[dict]]:
    """(detectron2 inputs, outputs) for every val image: ground truth moved and rescored, plus
    spurious instances of every class, with masks."""
    import torch
    from detectron2.structures import Boxes, Instances

    records, _ = get_dataset(VAL, data)
    rng = np.random.default_rng(3)
    inputs, outputs = [], []
    for r in records:
        h, w = r["height"], r["width"]
        boxes, classes, masks = [], [], []
        for a in r["annotations"]:
            m = mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w)))
            shift = rng.integers(-2, 3, 2)
            m = np.roll(m, tuple(shift), axis=(0, 1))
            boxes.append(np.array(a["bbox"]) + np.tile(shift[::-1], 2))
            classes.append(a["category_id"])
            masks.append(m)
        for _ in range(3):
            x0, y0 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
            x1, y1 = x0 + rng.uniform(4, w / 2), y0 + rng.uniform(4, h / 2)
            m = np.zeros((h, w), np.uint8)
            m[int(y0):int(y1), int(x0):int(x1)] = 1
            boxes.append(np.array([x0, y0, x1, y1]))
            classes.append(int(rng.integers(0, 4)))
            masks.append(m)
        inst = Instances((h, w))
        inst.pred_boxes = Boxes(torch.tensor(np.array(boxes), dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.tensor(rng.uniform(0.05, 1, len(boxes)), dtype=torch.float32)
        inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
        inst.pred_masks = torch.tensor(np.array(masks, dtype=bool)).reshape(-1, h, w)
        inputs.append({"image_id": r["image_id"], "height": h, "width": w})
        outputs.append({"instances": inst})
    return inputs, outputs


@needs_d2
def test_metrics_equal_detectron2_lvis_evaluator_on_the_same_predictions(data):
    from detectron2.evaluation import LVISEvaluator as Theirs
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json

    from mocobench.transfer.engines.detectron2.datasets import register_datasets
    from mocobench.transfer.engines.detectron2.lvis import LVISEvaluator as Engine
    from mocobench.transfer.evaluation.lvis import lvis_numpy

    register_datasets([VAL], str(data))
    inputs, outputs = _predictions(data)
    results = {}
    for label, cls in (("detectron2", Theirs), ("engine", Engine)):
        evaluator = cls(VAL, distributed=False)
        evaluator.reset()
        evaluator.process(inputs, outputs)
        with lvis_numpy():  # detectron2's own evaluator needs the alias too on NumPy 2
            results[label] = evaluator.evaluate()
    dets = [{**d, "category_id": d["category_id"] + 1}  # detectron2 maps class c back to LVIS id c + 1
            for i, o in zip(inputs, outputs) for d in instances_to_coco_json(o["instances"], i["image_id"])]
    ours = evaluate(VAL, data, dets)
    assert 0 < ours["segm"]["AP"] < 100 and 0 < ours["bbox"]["AP"] < 100
    for task in ("bbox", "segm"):
        for m in METRICS:
            theirs, engine = results["detectron2"][task][m], results["engine"][task][m]
            if np.isnan(ours[task][m]):
                assert theirs == -100.0 and np.isnan(engine), (task, m)  # LVISEval's -1, x 100
            else:
                assert ours[task][m] == pytest.approx(theirs, abs=1e-9) == engine, (task, m)


# ---- engines, tables -----------------------------------------------------------------------

def test_lvis_configs_load_with_detectron2s_recipe():
    from mocobench.transfer.config import load_detection_config

    schedules = {"1x": (90000, (60000, 80000)), "2x": (180000, (120000, 160000))}  # detectron2's 1x and 2x
    for (schedule, solver), (suffix, fmt) in product(schedules.items(), (("", "BGR"), ("_rgb", "RGB"))):
        cfg = load_detection_config(ROOT / "configs/detection" / f"lvis_R_50_FPN_{schedule}{suffix}.yaml")
        assert cfg.INPUT.FORMAT == fmt and cfg.MODEL.MASK_ON and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1230
        assert cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler" and cfg.DATALOADER.REPEAT_THRESHOLD == 0.001
        assert cfg.TEST.DETECTIONS_PER_IMAGE == 300 and cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.0001
        assert cfg.MODEL.RESNETS.NORM == "SyncBN" and (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS)) == solver
        assert list(cfg.DATASETS.TRAIN) == [TRAIN] and list(cfg.DATASETS.TEST) == [VAL]


def test_torchvision_engine_refuses_lvis_in_one_line():
    from mocobench.transfer.config import detection_defaults, load_detection_config
    from mocobench.transfer.engines.torchvision.supported import check_supported

    path = ROOT / "configs/detection/lvis_R_50_FPN_1x_rgb.yaml"
    with pytest.raises(UserError) as e:
        check_supported(load_detection_config(path), detection_defaults(), str(path))
    assert "\n" not in str(e.value) and "--engine detectron2" in str(e.value) and "lvis_v0.5_train" in str(e.value)


def test_lvis_tables_load_with_their_schedules_published_rows_and_refuse_the_torchvision_engine(tmp_path):
    from mocobench.results.collate import published_stats, with_deltas
    from mocobench.results.paper import paper_rows
    from mocobench.results.tables import resolve_tables

    one, two = resolve_tables(["lvis_R50_FPN_1x", "lvis_R50_FPN_2x"])
    for table, schedule in ((one, "1x"), (two, "2x")):
        assert table.cfg.ENGINE == "detectron2" and table.metrics == ["segm/AP", "segm/AP50", "segm/AP75"]
        assert table.cfg.TRIALS == 5 and f"_FPN_{schedule}" in str(table.config_for("RGB"))
        assert f"schedule={schedule}" in table.cfg.PAPER.FILTER
    ap = {t.name: paper_rows(t).set_index("label")["segm/AP"].to_dict() for t in (one, two)}
    # appendix A.4's 1x column; Table 6 (= A.4's 2x column, with its random init.) and A.4's 2x tuned supervised
    assert ap["lvis_R50_FPN_1x"] == {"supervised IN-1M BN frozen": 24.1, "supervised IN-1M BN tuned": 23.5,
                                     "MoCo IN-1M BN tuned": 23.2, "MoCo IG-1B BN tuned": 24.3}
    assert ap["lvis_R50_FPN_2x"] == {"random init.": 22.5, "supervised IN-1M BN frozen": 24.4,
                                     "MoCo IN-1M BN tuned": 24.1, "MoCo IG-1B BN tuned": 24.9,
                                     "supervised IN-1M BN tuned": 23.2}
    for table, tables in ((one, ["appendix A.4's LVIS table, 1x"]),
                          (two, ["Table 6", "appendix A.4's LVIS table, 2x"])):
        rows = paper_rows(table)
        assert rows.loc[rows["label"] == "supervised IN-1M BN frozen", "baseline"].all()
        assert not rows[table.metrics].isna().any().any()
        # each row's source names the paper's table it was checked against, in the paper's PDF
        assert all(any(f"He et al. 2020, {t}" in s for t in tables) and "checked against" in s
                   and "PDF" in s and "to be checked" not in s for s in rows["source"]), rows["source"]
    stats = with_deltas(published_stats(two))  # Table 6's deltas over its supervised row (BN frozen)
    deltas = stats[stats["source"].str.startswith("He et al. 2020, Table 6") & (stats["metric"] == "segm/AP")]
    assert dict(zip(deltas["row"].str.rpartition(": ")[2], deltas["delta"].round(1).fillna(0))) == {
        "random init.": -1.9, "supervised IN-1M BN frozen": 0.0,  # the baseline: no delta
        "MoCo IN-1M BN tuned": -0.3, "MoCo IG-1B BN tuned": 0.5}
    inits = tmp_path / "inits.yaml"
    inits.write_text("random: {weights: '', format: RGB}\n")
    common = ["--inits", inits, "--output", tmp_path / "out", "--dry-run"]
    done = run_cli_at_once({"named": ["run-all", "--tables", "lvis_R50_FPN_1x", "lvis_R50_FPN_2x", *common],
                            "all": ["run-all", *common]})
    assert one_line_refusals({"named": done["named"]}, {"named": "runs on --engine detectron2 only"}) == []
    assert done["all"].returncode == 0, done["all"].stderr
    for name in ("lvis_R50_FPN_1x", "lvis_R50_FPN_2x"):
        assert f"skipped   table {name}" in done["all"].stdout and f"{name}/" not in done["all"].stdout


@needs_d2
def test_detectron2_lvis_mask_rcnn_runs_end_to_end_on_synthetic_lvis(data, tmp_path, cli):
    tiny = [*TINY, "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
            "MODEL.ROI_MASK_HEAD.CONV_DIM", "16", "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()",
            "SOLVER.WARMUP_ITERS", "1", "TEST.PRECISE_BN.ENABLED", "False", "MODEL.RESNETS.NORM", "BN",
            "MODEL.FPN.NORM", "BN"]
    out = tmp_path / "run"
    done = cli("transfer", "--engine", "detectron2", "--config", ROOT / "configs/detection/lvis_R_50_FPN_1x_rgb.yaml",
               "--weights", "", "--seed", 0, "--data-root", data, "--output-dir", out, *tiny)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RepeatFactorTrainingSampler" in done.stdout + done.stderr  # detectron2 logs the sampler it uses
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["segm"]) == set(METRICS) and set(metrics["bbox"]) == set(METRICS)
    assert all(isinstance(v, float) and (np.isnan(v) or 0 <= v <= 100) for v in metrics["segm"].values())
    assert metrics["meta"]["engine"] == "detectron2" and metrics["meta"]["dataset"] == VAL
