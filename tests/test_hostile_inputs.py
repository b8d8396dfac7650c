"""Bad inputs a careless or hostile user gives: each ends in one line naming the file and the
problem, a non-zero exit, no traceback, and no half-made output."""

from __future__ import annotations

import pickle
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, one_line_refusals, run_cli_at_once
from engine_fixtures import DEMO, HAVE_D2, TINY
from mocobench.resnet import ResNetShape, build_resnet
from mocobench.transfer.datasets.synth import write_synthetic
from pretrain_tiny import write_images, write_labelled, write_tiny_config

TINY_SHAPE = ResNetShape(50, 8, 16, 4)  # the trunk of engine_fixtures.TINY


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    write_synthetic(out, seed=0, scale="tiny")
    return out


def copy_data(data: Path, to: Path) -> Path:
    shutil.copytree(data, to)
    return to


def voc_image(root: Path, split: str, year: int = 2007) -> Path:
    first = (root / f"VOC{year}" / "ImageSets" / "Main" / f"{split}.txt").read_text().split()[0]
    return root / f"VOC{year}" / "JPEGImages" / f"{first}.jpg"


def detect(out: Path, data: Path, *extra, opts=()) -> list:
    return ["transfer", "--config", DEMO / "demo_voc_C4.yaml", "--output-dir", out, "--data-root", data,
            "--seed", "1", *extra, *TINY, *opts]


def bad_input_cases(tmp_path: Path, data: Path) -> dict[str, tuple[list, str]]:
    """label -> (argv, text its one-line refusal must hold)."""
    labelled = write_labelled(tmp_path / "labelled", classes=3)
    shutil.rmtree(labelled / "val" / "class2")
    write_images(labelled / "val" / "class9", 2, seed=9)
    pre_cfg = write_tiny_config(tmp_path / "pre.yaml")
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder\n")
    random_bytes = tmp_path / "x.pth"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(5000))
    odd = tmp_path / "odd.pkl"
    odd.write_bytes(pickle.dumps({"model": {"stem.conv1.weight": np.zeros((8, 3, 7, 7), np.float32),
                                            "res2.0.conv1.weight": np.zeros((3, 3, 3, 3), np.float32)}}))
    nan = tmp_path / "nan.pth.tar"
    state = build_resnet(TINY_SHAPE).state_dict()
    state["layer1.0.conv1.weight"][0, 0] = float("nan")
    torch.save(state, nan)
    empty_split = copy_data(data, tmp_path / "empty_split")
    (empty_split / "VOC2007" / "ImageSets" / "Main" / "test.txt").write_text("")
    bad_test = copy_data(data, tmp_path / "bad_test")
    voc_image(bad_test, "val", 2012).write_bytes(b"not a jpeg")  # the demo VOC config tests on VOC12 val
    dets = tmp_path / "dets.json"
    first = voc_image(data, "test").stem
    dets.write_text(f'[{{"image_id": "{first}", "category_id": 1, "bbox": [1, 2, -3, 4], "score": 0.5}}]')
    nan_dets = tmp_path / "nan_dets.json"
    nan_dets.write_text(f'[{{"image_id": "{first}", "category_id": 1, "bbox": [1, 2, 3, 4], "score": NaN}}]')
    runs = tmp_path / "runs"
    (runs / "demo_voc_R50_C4").mkdir(parents=True)
    evaluate = ["evaluate", "--dataset", "voc_2007_test", "--data-root", data]
    cases = {
        "knn: val has other classes": (["knn", "--random-init", "--data", labelled, "--config", pre_cfg],
                                       "extra ['class9'], missing ['class2']"),
        "supervised: val has other classes": (["supervised", "--config", pre_cfg, "--data", labelled,
                                               "--output-dir", tmp_path / "sup"], "class folders differ"),
        "evaluate: empty split file": (["evaluate", "--dataset", "voc_2007_test", "--data-root", empty_split,
                                        "--detections", dets], "test.txt: split file lists no images"),
        "evaluate: negative box": ([*evaluate, "--detections", dets], "detection 0 has a box of negative size"),
        "evaluate: NaN score": ([*evaluate, "--detections", nan_dets], "detection 0 has a non-finite score"),
        "evaluate --output folder": ([*evaluate, "--detections", dets, "--output", tmp_path],
                                     "is a folder; give a file name"),
        "knn --output folder": (["knn", "--random-init", "--data", labelled, "--config", pre_cfg,
                                 "--output", tmp_path], "is a folder; give a file name"),
        "transfer --output-dir a file": (detect(a_file, data), "a_file: is a file, not a folder"),
        "pretrain --output-dir under a file": (["pretrain", "--config", pre_cfg, "--data", labelled / "train",
                                                "--output-dir", a_file / "run"], "a_file is a file"),
        "convert --output under a file": (["convert", nan, a_file / "x.pkl"], "a_file is a file"),
        "transfer --weights random bytes": (detect(tmp_path / "t_rand", data, "--weights", random_bytes),
                                            "x.pth: not a readable checkpoint"),
        "convert: res2.0.conv1 3x3x3x3": (["convert", odd, tmp_path / "odd_out.pkl"], "odd.pkl"),
        "transfer --weights NaN": (detect(tmp_path / "t_nan", data, "--weights", nan), "nan.pth.tar: res2.0.conv1.weight holds NaN"),
        "transfer: corrupt test image": (detect(tmp_path / "t_bad", bad_test), "cannot read image"),
        "collate: a table folder without runs": (["collate", runs, "--out", tmp_path / "report", "--tables",
                                                  "demo_voc_R50_C4"], "nothing to collate"),
        "collate --out is a file": (["collate", runs, "--out", a_file, "--tables", "demo_voc_R50_C4"],
                                    "a_file is a file"),
    }
    if not HAVE_D2:  # with detectron2 installed this is no refusal but a whole demo
        cases["demo --engine detectron2"] = (["demo", "--engine", "detectron2", "--output-dir", tmp_path / "demo"],
                                             "detectron2 is not importable")
    return cases


def assert_one_line_refusals(tmp_path: Path, data: Path, labels: tuple[str, ...] | None = None) -> None:
    cases = bad_input_cases(tmp_path, data)
    cases = {k: v for k, v in cases.items() if labels is None or k in labels}
    assert cases, "no case selected"
    results = run_cli_at_once({label: argv for label, (argv, _) in cases.items()})
    bad = one_line_refusals(results, {label: text for label, (_, text) in cases.items()})
    assert not bad, "\n".join(bad)
    for leftover in ("sup", "t_rand", "t_nan", "t_bad", "demo", "odd_out.pkl", "report"):
        assert not (tmp_path / leftover).exists(), leftover


FAST = ("knn: val has other classes", "evaluate: empty split file", "evaluate: negative box", "evaluate: NaN score",
        "transfer --output-dir a file", "demo --engine detectron2", "collate: a table folder without runs")


def test_bad_inputs_are_one_line(tmp_path, data):
    assert_one_line_refusals(tmp_path, data, FAST)


@pytest.mark.slow
def test_every_bad_input_is_one_line(tmp_path, data):
    assert_one_line_refusals(tmp_path, data)


def test_corrupt_training_image_with_a_loader_worker_is_one_line(cli, tmp_path, data):
    root = copy_data(data, tmp_path / "data")
    for year in ("VOC2007", "VOC2012"):  # truncated: the header passes the check before training
        for image in (root / year / "JPEGImages").glob("*.jpg"):
            if image != voc_image(root, "test"):
                image.write_bytes(image.read_bytes()[:300])
    r = cli(*detect(tmp_path / "run", root, opts=("DATALOADER.NUM_WORKERS", "1")))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "cannot read image" in lines[-1] and "JPEGImages" in lines[-1]


def test_full_disk_during_a_checkpoint_write_is_one_line(tmp_path):
    """A file-size limit stands in for a full disk: the write fails with EFBIG as with ENOSPC."""
    images = tmp_path / "images"
    write_images(images, 16, seed=0)
    out = tmp_path / "run"

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    r = subprocess.run([sys.executable, "-m", "mocobench", "pretrain", "--config",
                        write_tiny_config(tmp_path / "c.yaml"), "--data", images, "--output-dir", out],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "checkpoint" in lines[-1] and "write failed" in lines[-1]
    assert not list(out.glob(".*.tmp"))
