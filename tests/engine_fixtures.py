"""Shared bits of the engine tests: a tiny-width demo config and tiny synthetic data."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "detection" / "demo"

HAVE_D2 = importlib.util.find_spec("detectron2") is not None
skip_without_d2 = pytest.mark.skipif(not HAVE_D2, reason="detectron2 is not importable (optional; README "
                                     "'Engines' says how to install it): this check runs its engine")
D2 = [pytest.mark.detectron2, skip_without_d2]  # the marks of a detectron2 test or parameter


def needs_d2(test):
    """Marked detectron2, and skipped saying why where it is not importable."""
    return pytest.mark.detectron2(skip_without_d2(test))


def synth_fixture(name: str, **parts: bool):
    """A module-scoped fixture (assign it to ``data``): the tiny synthetic data at seed 1, one worker,
    under a temporary folder named after ``name``, with ``parts`` (``keypoints=True``, ``lvis=True``, ...)."""
    @pytest.fixture(scope="module")
    def data(tmp_path_factory) -> Path:
        from mocobench.transfer.datasets.synth import write_synthetic

        out = tmp_path_factory.mktemp(name) / "synth"
        write_synthetic(out, seed=1, scale="tiny", workers=1, **parts)
        return out
    return data


@pytest.fixture(autouse=True)
def one_thread():
    """torch on one thread through each test of a module that imports this (autouse there), then as it was."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# tiny width (ResNet-50 layout), tiny images, a handful of iterations, 4 classes (tiny synth)
TINY = ["MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
        "MODEL.RESNETS.WIDTH_PER_GROUP", "4", "MODEL.ROI_HEADS.NUM_CLASSES", "4",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
        "MODEL.RPN.POST_NMS_TOPK_TEST", "100", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3,)", "SOLVER.WARMUP_ITERS", "2",
        "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.PRECISE_BN.NUM_ITER", "2", "DATALOADER.NUM_WORKERS", "0"]


def write_tiny_config(path: Path, base: Path = DEMO / "demo_voc_C4.yaml", overrides: Sequence[str] = TINY) -> Path:
    """A config file: ``base`` with ``overrides`` (KEY VALUE pairs; default the TINY ones), for commands
    that take no overrides."""
    import yaml

    tree: dict = {}
    for key, value in zip(overrides[0::2], overrides[1::2]):
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value) if not value.startswith("(") else value
    path.write_text(yaml.safe_dump({"_BASE_": str(base), **tree}))
    return path


def write_tiny_table(name: str, tmp_path: Path, overrides: Sequence[str], trials: int | None = None) -> Path:
    """configs/tables/<name>.yaml at tiny scale under ``tmp_path``: each of its configs with ``overrides``,
    one process (no scaling from the paper's 8 GPUs), ``trials`` trials where given, the rest as it is."""
    import yaml

    tables = ROOT / "configs" / "tables"
    table = yaml.safe_load((tables / f"{name}.yaml").read_text())
    for fmt, rel in table["CONFIG"].items():
        table["CONFIG"][fmt] = str(write_tiny_config(tmp_path / f"{name}_{fmt}.yaml", (tables / rel).resolve(),
                                                     overrides))
    if trials is not None:
        table["TRIALS"] = trials
    table["REFERENCE_WORLD_SIZE"] = 0
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(table))
    return path


def move_bn_off_init(model):
    """``model`` with every BN's statistics and affine moved off their initial 0 / 1 (as training
    leaves them), so a converted tensor equal to its source means something."""
    import torch.nn as nn

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.num_batches_tracked.fill_(7)
    return model
