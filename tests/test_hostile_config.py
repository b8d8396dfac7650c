"""Hostile inputs to the training commands: every ranged config key out of range, run folders
that hold a run, resumes onto other inputs or damaged checkpoints, damaged weights. Each case
must end in one line naming the key or file, a non-zero exit, and leave the disk as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from engine_fixtures import DEMO, TINY
from hostile import assert_refused, run_here
from mocobench.transfer.datasets.synth import write_synthetic
from pretrain_tiny import write_images, write_labelled, write_tiny_config


# (key, value) pairs each outside what the key allows; the refusal must name the key
PRETRAIN_BAD = [
    ("SOLVER.BASE_LR", "-1.0"), ("SOLVER.BASE_LR", "0.0"), ("SOLVER.BATCH_SIZE", "0"), ("SOLVER.BATCH_SIZE", "-8"),
    ("SOLVER.EPOCHS", "0"), ("SOLVER.REFERENCE_BATCH_SIZE", "0"), ("SOLVER.MOMENTUM", "1.0"),
    ("SOLVER.MOMENTUM", "-0.5"), ("SOLVER.WEIGHT_DECAY", "-0.0001"), ("SOLVER.GAMMA", "0.0"),
    ("SOLVER.STEPS", "(5, 3)"), ("SOLVER.STEPS", "(0,)"), ("SOLVER.SCHEDULE", "linear"),
    ("MOCO.T", "0.0"), ("MOCO.T", "-0.07"), ("MOCO.K", "0"), ("MOCO.DIM", "0"), ("MOCO.M", "1.5"),
    ("MOCO.M", "-0.1"), ("MOCO.BANK_MOMENTUM", "1.0"), ("MOCO.SPLIT_BN_GROUPS", "0"),
    ("MODEL.RESIDUAL_BN_GAMMA", "-1.0"), ("AUG.CROP_SCALE", "(0.0, 1.0)"), ("AUG.CROP_SCALE", "(0.8, 0.2)"),
    ("AUG.CROP_SCALE", "(0.2, 1.5)"), ("AUG.CROP_SCALE", "(0.2,)"), ("AUG.COLOR_JITTER", "(0.4, 0.4, 0.4, 0.9)"),
    ("AUG.COLOR_JITTER", "(-0.1, 0.4, 0.4, 0.1)"), ("AUG.COLOR_JITTER_P", "-1.0"), ("AUG.GRAYSCALE_P", "1.5"),
    ("AUG.BLUR_P", "2.0"), ("AUG.FLIP_P", "-0.1"), ("AUG.BLUR_SIGMA", "(2.0, 0.1)"), ("AUG.BLUR_SIGMA", "(0.0, 1.0)"),
    ("INPUT.CROP_SIZE", "0"), ("INPUT.RESIZE_SIZE", "0"), ("INPUT.PIXEL_STD", "(0.0, 0.2, 0.2)"),
    ("INPUT.PIXEL_STD", "(0.2, 0.2)"), ("INPUT.PIXEL_MEAN", "(1.5, 0.4, 0.4)"), ("DATA.NUM_WORKERS", "-1"),
    ("TRAIN.LOG_PERIOD", "0"), ("TRAIN.DEVICE", "tpu"), ("CHECKPOINT.PERIOD_EPOCHS", "0"),
    ("CHECKPOINT.PERIOD_ITERS", "-1"), ("KNN.K", "(0,)"), ("KNN.K", "()"), ("KNN.T", "0.0"),
    ("KNN.PERIOD_EPOCHS", "-1"),
]

DETECTION_BAD = [
    ("SOLVER.BASE_LR", "-1.0"), ("SOLVER.BASE_LR", "0.0"), ("SOLVER.IMS_PER_BATCH", "0"),
    ("SOLVER.IMS_PER_BATCH", "-2"), ("SOLVER.MAX_ITER", "-5"), ("SOLVER.STEPS", "(3, 2)"), ("SOLVER.STEPS", "(0,)"),
    ("SOLVER.STEPS", "(10,)"), ("SOLVER.GAMMA", "0.0"), ("SOLVER.MOMENTUM", "1.0"), ("SOLVER.WEIGHT_DECAY", "-1.0"),
    ("SOLVER.WARMUP_FACTOR", "2.0"), ("SOLVER.WARMUP_ITERS", "-1"), ("SOLVER.CHECKPOINT_PERIOD", "-1"),
    ("SOLVER.BASE_LR_END", "-0.1"), ("SOLVER.BIAS_LR_FACTOR", "0.0"), ("SOLVER.REFERENCE_WORLD_SIZE", "-8"),
    ("DATALOADER.NUM_WORKERS", "-1"), ("INPUT.MIN_SIZE_TRAIN", "(0,)"), ("INPUT.MIN_SIZE_TRAIN", "()"),
    ("INPUT.MAX_SIZE_TRAIN", "0"), ("INPUT.MIN_SIZE_TEST", "-1"), ("INPUT.MAX_SIZE_TEST", "0"),
    ("MODEL.PIXEL_STD", "(0.0, 1.0, 1.0)"), ("MODEL.PIXEL_STD", "(1.0, 1.0)"),
    ("MODEL.RPN.BATCH_SIZE_PER_IMAGE", "0"), ("MODEL.RPN.POSITIVE_FRACTION", "1.5"), ("MODEL.RPN.NMS_THRESH", "1.5"),
    ("MODEL.RPN.POST_NMS_TOPK_TRAIN", "0"), ("MODEL.RPN.PRE_NMS_TOPK_TEST", "0"),
    ("MODEL.RPN.IOU_THRESHOLDS", "(0.3, 1.7)"), ("MODEL.RPN.LOSS_WEIGHT", "-1.0"),
    ("MODEL.ROI_HEADS.NUM_CLASSES", "0"), ("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "0"),
    ("MODEL.ROI_HEADS.POSITIVE_FRACTION", "-0.25"), ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.5"),
    ("MODEL.ROI_HEADS.NMS_THRESH_TEST", "-0.5"), ("MODEL.ROI_HEADS.IOU_THRESHOLDS", "(1.5,)"),
    ("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "0"), ("MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "0"),
    ("MODEL.ANCHOR_GENERATOR.SIZES", "[[0, 64]]"), ("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[-1.0, 1.0]]"),
    ("MODEL.BACKBONE.FREEZE_AT", "7"), ("MODEL.RESNETS.DEPTH", "42"), ("MODEL.RESNETS.RES5_DILATION", "3"),
    ("TEST.DETECTIONS_PER_IMAGE", "0"), ("TEST.EVAL_PERIOD", "-1"), ("TEST.PRECISE_BN.NUM_ITER", "0"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Tiny detection data, unlabelled and labelled images, a tiny pretraining config and a
    finished 1-epoch pretraining run (to resume from)."""
    root = tmp_path_factory.mktemp("hostile_config")
    write_synthetic(root / "data", seed=0, scale="tiny")
    write_images(root / "images", 16, seed=0)
    write_labelled(root / "labelled", classes=2)
    config = write_tiny_config(root / "pre.yaml")
    run = root / "pretrained"
    argv = ["pretrain", "--config", config, "--data", root / "images", "--output-dir", run, "SOLVER.EPOCHS", "1"]
    from mocobench.cli import main
    assert main([str(a) for a in argv]) == 0
    return {"root": root, "data": root / "data", "images": root / "images", "labelled": root / "labelled",
            "config": config, "run": run}


def pretrain_argv(inputs: dict, out: Path, *opts: str) -> list:
    return ["pretrain", "--config", inputs["config"], "--data", inputs["images"], "--output-dir", out, *opts]


def transfer_argv(inputs: dict, out: Path, *extra) -> list:
    return ["transfer", "--config", DEMO / "demo_voc_C4.yaml", "--output-dir", out, "--data-root", inputs["data"],
            "--seed", "1", *extra, *TINY]


@pytest.mark.parametrize("key,value", PRETRAIN_BAD, ids=[f"{k}={v}" for k, v in PRETRAIN_BAD])
def test_pretrain_key_out_of_range(inputs, tmp_path, capsys, key, value):
    out = tmp_path / "run"
    assert_refused(pretrain_argv(inputs, out, key, value), key, capsys, untouched=[out])


@pytest.mark.parametrize("command", ["supervised", "lincls", "knn"])
@pytest.mark.parametrize("key,value", [("SOLVER.BASE_LR", "-0.1"), ("INPUT.CROP_SIZE", "0"), ("KNN.K", "(0,)")])
def test_classifier_commands_key_out_of_range(inputs, tmp_path, capsys, command, key, value):
    out = tmp_path / "run"
    argv = {"supervised": ["supervised", "--output-dir", out],
            "lincls": ["lincls", "--weights", inputs["run"] / "checkpoint_0001.pth.tar", "--output-dir", out],
            "knn": ["knn", "--random-init", "--output", out / "knn.json"]}[command]
    argv += ["--config", inputs["config"], "--data", inputs["labelled"], key, value]
    assert_refused(argv, key, capsys, untouched=[out])


@pytest.mark.parametrize("key,value", DETECTION_BAD, ids=[f"{k}={v}" for k, v in DETECTION_BAD])
def test_detection_key_out_of_range(inputs, tmp_path, capsys, key, value):
    out = tmp_path / "run"
    assert_refused([*transfer_argv(inputs, out), key, value], key, capsys, untouched=[out])


@pytest.mark.parametrize("text,key", [("SOLVER: {BASE_LR: .nan}", "SOLVER.BASE_LR"),
                                      ("SOLVER: {BASE_LR: .inf}", "SOLVER.BASE_LR"),
                                      ("MOCO: {T: .nan}", "MOCO.T"), ("SOLVER: {BATCH_SIZE: 2.5}", "SOLVER.BATCH_SIZE")])
def test_pretrain_file_with_non_finite_or_mistyped_value(inputs, tmp_path, capsys, text, key):
    config = tmp_path / "bad.yaml"
    config.write_text(f"_BASE_: {inputs['config']}\n{text}\n")
    out = tmp_path / "run"
    argv = ["pretrain", "--config", config, "--data", inputs["images"], "--output-dir", out]
    assert_refused(argv, key, capsys, untouched=[out])


def test_detection_training_without_iterations(inputs, tmp_path, capsys):
    out = tmp_path / "run"
    assert_refused([*transfer_argv(inputs, out), "SOLVER.MAX_ITER", "0", "SOLVER.STEPS", "()"], "SOLVER.MAX_ITER 0",
                   capsys, untouched=[out])


def test_drawn_seed_below_minus_one(inputs, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["transfer", "--config", DEMO / "demo_voc_C4.yaml", "--output-dir", out, "--data-root", inputs["data"],
            "--seed", "-5", *TINY]
    assert_refused(argv, "SEED", capsys, untouched=[out])


def fake_finished_run(folder: Path, kind: str) -> Path:
    """A folder as a finished run leaves it (the files the guard looks at, with stand-in content)."""
    folder.mkdir(parents=True)
    names = {"pretrain": ["checkpoint_0004.pth.tar", "metrics.jsonl", "config.yaml"],
             "transfer": ["model_final.pth", "metrics.json", "metrics.jsonl", "config.yaml"],
             "classifier": ["checkpoint_last.pth.tar", "metrics.json", "metrics.jsonl", "config.yaml"]}[kind]
    for name in names:
        (folder / name).write_text(f"{name} of an earlier run\n")
    (folder / "last_checkpoint").write_text(names[0] + "\n")
    (folder / ".lock").write_text("")  # a finished run leaves its (released) lock file
    return folder


def folder_cases(inputs: dict, folder: Path) -> dict[str, tuple[list, str]]:
    return {
        "pretrain": (pretrain_argv(inputs, folder), "pretrain"),
        "supervised": (["supervised", "--config", inputs["config"], "--data", inputs["labelled"],
                        "--output-dir", folder], "classifier"),
        "lincls": (["lincls", "--weights", inputs["run"] / "checkpoint_0001.pth.tar", "--config", inputs["config"],
                    "--data", inputs["labelled"], "--output-dir", folder], "classifier"),
        "transfer": (transfer_argv(inputs, folder), "transfer"),
        "transfer --eval-only": (transfer_argv(inputs, folder, "--eval-only"), "transfer"),
        "transfer --eval-only --weights": (transfer_argv(inputs, folder, "--eval-only", "--weights",
                                                         inputs["run"] / "checkpoint_0001.pth.tar"), "transfer"),
    }


@pytest.mark.parametrize("command", ["pretrain", "supervised", "lincls", "transfer", "transfer --eval-only",
                                     "transfer --eval-only --weights"])
def test_a_run_folder_is_not_replaced_without_resume(inputs, tmp_path, capsys, command):
    folder = tmp_path / "run"
    argv, kind = folder_cases(inputs, folder)[command]
    fake_finished_run(folder, kind)
    assert_refused(argv, "pass --resume to continue it, or --overwrite", capsys, untouched=[tmp_path])


def test_overwrite_moves_the_old_run_aside(inputs, tmp_path, capsys):
    folder = fake_finished_run(tmp_path / "run", "pretrain")
    before = sorted(p.name for p in folder.iterdir())
    outcome = run_here(pretrain_argv(inputs, folder, "--overwrite", "SOLVER.EPOCHS", "1"), capsys)
    assert outcome.code == 0, outcome.stderr
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == before
    assert (folder / "checkpoint_0001.pth.tar").is_file() and "moved to" in outcome.stdout


def copy_run(inputs: dict, to: Path) -> Path:
    shutil.copytree(inputs["run"], to)
    return to


def test_resume_onto_another_queue_size_names_the_key(inputs, tmp_path, capsys):
    run = copy_run(inputs, tmp_path / "run")
    argv = pretrain_argv(inputs, run, "--resume", "SOLVER.EPOCHS", "2", "MOCO.K", "32")
    assert_refused(argv, "MOCO.K", capsys, untouched=[run])


@pytest.mark.parametrize("damage,expected", [("nan", "holds NaN"), ("int", "not floating point"),
                                             ("negative variance", "negative BN running variance"),
                                             ("no state_dict", "no state_dict")])
def test_resume_from_a_damaged_checkpoint_names_it(inputs, tmp_path, capsys, damage, expected):
    run = copy_run(inputs, tmp_path / "run")
    path = run / "checkpoint_0001.pth.tar"
    state = torch.load(path, weights_only=False)
    sd = state["state_dict"]
    if damage == "nan":
        sd["module.encoder_q.layer1.0.conv1.weight"][0, 0] = float("nan")
    elif damage == "int":
        sd["module.encoder_q.conv1.weight"] = sd["module.encoder_q.conv1.weight"].long()
    elif damage == "negative variance":
        sd["module.encoder_q.bn1.running_var"][0] = -1.0
    else:
        state = {"model": sd}
    torch.save(state, path)
    argv = pretrain_argv(inputs, run, "--resume", "SOLVER.EPOCHS", "2")
    outcome = assert_refused(argv, expected, capsys, untouched=[run])
    assert str(path) in outcome.stderr


def trained_trunk(inputs: dict) -> dict[str, torch.Tensor]:
    """The query encoder of the fixture's pretraining run, as a torchvision state dict (trained:
    a fresh network's would be refused as untrained before any damage is looked at)."""
    state = torch.load(inputs["run"] / "checkpoint_0001.pth.tar", weights_only=False)["state_dict"]
    prefix = "module.encoder_q."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def damaged_trunk(path: Path, damage: str, inputs: dict) -> Path:
    state = trained_trunk(inputs)
    if damage == "nan":
        state["layer2.0.conv2.weight"][0, 0, 0, 0] = float("nan")
    elif damage == "inf":
        state["layer4.0.bn3.bias"][0] = float("inf")
    elif damage == "int":
        state["layer1.0.bn1.weight"] = state["layer1.0.bn1.weight"].long()
    else:
        state["layer3.0.bn2.running_var"][1] = -0.5
    torch.save(state, path)
    return path


DAMAGES = {"nan": "holds NaN", "inf": "holds NaN or infinite", "int": "not floating point",
           "negative variance": "negative BN running variance"}


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("command", ["convert", "transfer --weights", "lincls --weights"])
def test_damaged_weights_are_named(inputs, tmp_path, capsys, damage, command):
    weights = damaged_trunk(tmp_path / "w.pth.tar", damage, inputs)
    out = tmp_path / "out"
    argv = {"convert": ["convert", weights, out / "w.pkl"],
            "transfer --weights": transfer_argv(inputs, out, "--weights", weights),
            "lincls --weights": ["lincls", "--weights", weights, "--config", inputs["config"], "--data",
                                 inputs["labelled"], "--output-dir", out]}[command]
    assert_refused(argv, DAMAGES[damage], capsys, untouched=[out, weights])


def test_unwritable_folder_is_one_line(inputs, tmp_path, capsys):
    """/sys refuses new files even to root, as a read-only or foreign folder would."""
    weights = tmp_path / "w.pth"
    torch.save(trained_trunk(inputs), weights)
    assert_refused(["convert", weights, "/sys/mocobench-test.pkl"], "cannot be written", capsys)


def test_an_unexpected_error_is_one_line_with_its_traceback_kept(tmp_path, capsys, monkeypatch):
    import mocobench.results.audit as audit

    def broken(path):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(audit, "load_side", broken)
    outcome = run_here(["audit", "--candidate", tmp_path, "--baseline", tmp_path], capsys)
    lines = outcome.stderr.strip().splitlines()
    assert outcome.code == 70 and len(lines) == 1 and "internal error: ZeroDivisionError: a bug" in lines[0]
    log = Path(lines[0].split("traceback in ")[1].split(";")[0])
    assert "Traceback" in log.read_text() and "ZeroDivisionError" in log.read_text()
    log.unlink()


def test_pretrain_monitor_k_above_its_train_images_is_refused_before_training(inputs, tmp_path, capsys):
    out = tmp_path / "run"
    argv = pretrain_argv(inputs, out, "KNN.DATA", inputs["labelled"], "KNN.K", "(200,)")
    assert_refused(argv, "KNN.K 200 > 16 train images", capsys, untouched=[out])


def test_training_that_diverges_stops_before_a_checkpoint(inputs, tmp_path, capsys):
    """A learning rate of 1e30 blows the weights up within a step or two: the run stops, naming
    the iteration, and every checkpoint it left holds finite weights."""
    out = tmp_path / "run"
    outcome = run_here(pretrain_argv(inputs, out, "SOLVER.BASE_LR", "1e30", "SOLVER.EPOCHS", "1"), capsys)
    assert outcome.code == 2 and "training diverged at iteration" in outcome.stderr, outcome.stderr
    for path in out.glob("checkpoint_*"):
        state = torch.load(path, weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path
