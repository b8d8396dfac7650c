"""The detectron2 engine and the cross-engine checks. They need detectron2 (optional) and
skip, saying so, without it; then only the 'not installed' message is checked."""

from __future__ import annotations

import importlib.util
import json
import random

import pytest
import torch

from engine_fixtures import DEMO, TINY

torch.set_num_threads(1)
HAVE_D2 = importlib.util.find_spec("detectron2") is not None
needs_d2 = pytest.mark.skipif(not HAVE_D2, reason="detectron2 is not importable (optional; README 'Engines' "
                              "says how to install it): the detectron2 engine and cross-engine checks need it")
C4, DC5, FPN = DEMO / "demo_voc_C4.yaml", DEMO / "demo_voc_DC5.yaml", DEMO / "demo_coco_FPN_mask.yaml"


@pytest.mark.skipif(HAVE_D2, reason="detectron2 is installed: the 'not installed' message cannot be seen")
def test_engine_detectron2_without_it_says_how_to_install(cli, tmp_path):
    done = cli("transfer", "--engine", "detectron2", "--config", C4, "--output-dir", tmp_path / "run")
    assert done.returncode == 2, done.stderr
    assert "detectron2 is not importable" in done.stderr and "pip install" in done.stderr
    assert not (tmp_path / "run").exists()


def d2_model(config, overrides=()):
    from mocobench.transfer.engines.detectron2.config import load_d2_config
    from mocobench.transfer.engines.detectron2.trainer import Trainer

    cfg = load_d2_config(str(config), [*TINY, *overrides, "MODEL.DEVICE", "cpu"])
    return Trainer.build_model(cfg), cfg


@needs_d2
@pytest.mark.parametrize("config", [C4, FPN], ids=["C4", "FPN"])
def test_converted_pkl_loads_into_both_engines(tmp_path, config):
    from detectron2.checkpoint import DetectionCheckpointer

    from mocobench.atomic import write_pickle
    from mocobench.resnet import ResNetShape, build_resnet
    from mocobench.transfer.config import load_detection_config
    from mocobench.transfer.convert import convert_checkpoint
    from mocobench.transfer.engines.torchvision.build import build_model
    from mocobench.transfer.engines.torchvision.weights import BackboneInit

    torch.manual_seed(0)
    trunk = build_resnet(ResNetShape(50, 8, 16, 4))  # the TINY width
    torch.save(trunk.state_dict(), tmp_path / "r50.pth")
    pkl = tmp_path / "r50.pkl"
    write_pickle(pkl, convert_checkpoint(tmp_path / "r50.pth").file_contents())

    tv_cfg = load_detection_config(config, TINY)
    init = BackboneInit(tv_cfg, str(pkl))
    tv_model = build_model(tv_cfg, init)
    assert init.missing == [] and init.unexpected == []

    model, _ = d2_model(config)
    checkpointer = DetectionCheckpointer(model)
    incompatible = checkpointer._load_model(checkpointer._load_file(str(pkl)))
    trunk_missing = [k for k in incompatible.missing_keys if (k.startswith("backbone.") and "fpn_" not in k)
                     or (k.startswith("roi_heads.res5.") and not k.startswith("roi_heads.res5.norm."))]
    assert trunk_missing == []
    stem = model.state_dict()["backbone.stem.conv1.weight" if config == C4 else "backbone.bottom_up.stem.conv1.weight"]
    assert torch.equal(stem, trunk.conv1.weight)
    assert torch.equal(tv_model.backbone.body.conv1.weight, trunk.conv1.weight)


@needs_d2
@pytest.mark.parametrize("config", [C4, DC5, FPN], ids=["C4", "DC5", "FPN"])
def test_export_names_every_tensor_of_the_detectron2_model(config):
    """Name-for-name and shape-for-shape, nothing left over (num_batches_tracked aside)."""
    from mocobench.transfer.config import load_detection_config
    from mocobench.transfer.engines.export import export_to_detectron2
    from mocobench.transfer.engines.torchvision.build import build_model

    tv_cfg = load_detection_config(config, TINY)
    state = build_model(tv_cfg).state_dict()
    fpn = list(tv_cfg.MODEL.FPN.IN_FEATURES) if config == FPN else ()
    exported = export_to_detectron2(state, tv_cfg.MODEL.ROI_HEADS.NUM_CLASSES, fpn)
    model, _ = d2_model(config)
    target = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert {k: v.shape for k, v in exported.items()} == target


def detections_for(records, classes, rng):
    """Jittered ground truth, wrong classes and random boxes; scores distinct at 3 decimals
    and coordinates at 1 decimal, what detectron2's evaluator writes to its text files."""
    scores = iter(rng.sample(range(1, 1000), 999))
    out = []
    for r in records:
        boxes = [(a["bbox"], a["category_id"]) for a in r["annotations"]]
        boxes += [([rng.uniform(0, r["width"] / 2), rng.uniform(0, r["height"] / 2),
                    rng.uniform(r["width"] / 2, r["width"]), rng.uniform(r["height"] / 2, r["height"])],
                   rng.randrange(len(classes))) for _ in range(2)]
        for (x0, y0, x1, y1), c in boxes:
            j = [round(v + rng.uniform(-6, 6), 1) for v in (x0, y0, x1, y1)]
            if j[2] <= j[0] or j[3] <= j[1]:
                continue
            cls = c if rng.random() < 0.8 else rng.randrange(len(classes))
            out.append((r["image_id"], j, cls, next(scores) / 1000))
    return out


@needs_d2
def test_voc_evaluator_equals_detectron2s(tmp_path):
    from detectron2.evaluation import PascalVOCDetectionEvaluator
    from detectron2.structures import Boxes, Instances

    from detection_fixtures import random_voc
    from mocobench.transfer.datasets.catalog import get_dataset
    from mocobench.transfer.engines.detectron2.datasets import register_datasets
    from mocobench.transfer.evaluation import evaluate

    classes = ["cat", "dog", "boat", "tree"]
    random_voc(tmp_path, 2007, "test", classes, n_images=40, seed=3)
    records, meta = get_dataset("voc_2007_test", tmp_path)
    dets = detections_for(records, classes, random.Random(5))

    ours = evaluate("voc_2007_test", tmp_path, [
        {"image_id": i, "category_id": c + 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s}
        for i, b, c, s in dets])
    register_datasets(["voc_2007_test"], str(tmp_path))
    evaluator = PascalVOCDetectionEvaluator("voc_2007_test")
    evaluator.reset()
    for r in records:
        mine = [d for d in dets if d[0] == r["image_id"]]
        inst = Instances((r["height"], r["width"]))
        inst.pred_boxes = Boxes(torch.tensor([d[1] for d in mine], dtype=torch.float64).reshape(-1, 4))
        inst.scores = torch.tensor([d[3] for d in mine], dtype=torch.float64)
        inst.pred_classes = torch.tensor([d[2] for d in mine], dtype=torch.int64)
        evaluator.process([{"image_id": r["image_id"]}], [{"instances": inst}])
    theirs = evaluator.evaluate()
    assert 5 < theirs["bbox"]["AP50"] < 95  # neither trivial nor perfect
    for key in ("AP", "AP50", "AP75"):
        assert ours["bbox"][key] == pytest.approx(theirs["bbox"][key], abs=1e-6), key


@needs_d2
@pytest.mark.slow  # ~1.5 min on 2 loaded cores: 200 iterations, two evaluations
def test_torchvision_trained_model_scores_alike_in_detectron2(cli, tmp_path):
    """Train with the torchvision engine (tiny width), evaluate its model_final.pth with detectron2
    (exported to detectron2's names by --engine detectron2 --eval-only) on the synthetic VOC
    2007 test split (every class present): AP50 within 1.0 of the torchvision engine's own evaluation."""
    from mocobench.transfer.datasets.synth import write_synthetic

    data = tmp_path / "data"
    write_synthetic(data, 0, "tiny")
    longer = ["SOLVER.MAX_ITER", "200", "SOLVER.STEPS", "(170,)", "SOLVER.WARMUP_ITERS", "10",
              "SOLVER.CHECKPOINT_PERIOD", "0", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MIN_SIZE_TEST", "96",
              "DATASETS.TRAIN", "('voc_2007_trainval',)", "DATASETS.TEST", "('voc_2007_test',)",
              # precise BN over a few 2-image batches moves this tiny model's AP50 between 0 and 5:
              # the check is of the two evaluations, so the weights stay as trained
              "TEST.PRECISE_BN.ENABLED", "False"]
    common = ["--config", C4, "--data-root", data, "--seed", "0", *TINY, *longer]
    tv = cli("transfer", "--output-dir", tmp_path / "tv", *common)
    assert tv.returncode == 0, tv.stderr[-3000:]
    d2 = cli("transfer", "--engine", "detectron2", "--eval-only", "--weights", tmp_path / "tv" / "model_final.pth",
             "--output-dir", tmp_path / "d2", *common)
    assert d2.returncode == 0, d2.stderr[-3000:]
    tv_m = json.loads((tmp_path / "tv" / "metrics.json").read_text())
    d2_m = json.loads((tmp_path / "d2" / "metrics.json").read_text())
    print(f"AP50 torchvision engine {tv_m['bbox']['AP50']:.3f}, detectron2 {d2_m['bbox']['AP50']:.3f}")
    assert d2_m["meta"]["engine"] == "detectron2" and d2_m["meta"]["eval_only"]
    # true positives to agree on (1.9 on an AVX-512 Xeon: a short job's digits change with the CPU)
    assert tv_m["bbox"]["AP50"] > 0.5
    assert abs(tv_m["bbox"]["AP50"] - d2_m["bbox"]["AP50"]) <= 1.0
