"""Shared bits of the engine tests: a tiny-width demo config and tiny synthetic data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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


# tiny width (ResNet-50 layout), tiny images, a handful of iterations, 4 classes (tiny synth)
TINY = ["MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
        "MODEL.RESNETS.WIDTH_PER_GROUP", "4", "MODEL.ROI_HEADS.NUM_CLASSES", "4",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
        "MODEL.RPN.POST_NMS_TOPK_TEST", "100", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(3,)", "SOLVER.WARMUP_ITERS", "2",
        "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.PRECISE_BN.NUM_ITER", "2", "DATALOADER.NUM_WORKERS", "0"]


def write_tiny_config(path: Path, base: Path = DEMO / "demo_voc_C4.yaml") -> Path:
    """A config file: ``base`` with the TINY overrides, for commands that take no overrides."""
    import yaml

    tree: dict = {}
    for key, value in zip(TINY[0::2], TINY[1::2]):
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value) if not value.startswith("(") else value
    path.write_text(yaml.safe_dump({"_BASE_": str(base), **tree}))
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
