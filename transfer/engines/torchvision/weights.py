"""Init weights: a converted backbone (.pkl, or any checkpoint transfer/convert.py reads),
checked against the config before anything trains.

A config whose input convention disagrees with its weights' (RGB + ImageNet mean/std +
STRIDE_IN_1X1 False for torchvision-layout weights, BGR + caffe mean + True for MSRA) runs
fine and loses many AP points silently, so it is refused with the setting to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from fvcore.common.config import CfgNode

from mocobench import UserError
from mocobench.resnet import ConfigurableResNet

SHAPE_KEYS = {"depth": "DEPTH", "stem_out_channels": "STEM_OUT_CHANNELS", "res2_out_channels": "RES2_OUT_CHANNELS",
              "width_per_group": "WIDTH_PER_GROUP", "num_groups": "NUM_GROUPS"}


def check_conventions(cfg: CfgNode, meta: dict, path: str) -> None:
    """UserError naming the config setting that disagrees with the weights' metadata."""
    wrong = []
    fmt = meta.get("input_format")
    if fmt is not None and fmt != cfg.INPUT.FORMAT:
        wrong.append(f"INPUT.FORMAT {fmt}")
    for key, cfg_key in (("pixel_mean", "PIXEL_MEAN"), ("pixel_std", "PIXEL_STD")):
        if key in meta and not np.allclose(meta[key], list(cfg.MODEL[cfg_key]), atol=1e-2):
            wrong.append(f"MODEL.{cfg_key} {list(meta[key])}")
    if "stride_in_1x1" in meta and bool(meta["stride_in_1x1"]) != bool(cfg.MODEL.RESNETS.STRIDE_IN_1X1):
        wrong.append(f"MODEL.RESNETS.STRIDE_IN_1X1 {meta['stride_in_1x1']}")
    if wrong:
        raise UserError(f"{path}: these weights expect {fmt} input; set " + ", ".join(wrong)
                        + " in the config (or use a config variant made for these weights)")
    shape = [f"MODEL.RESNETS.{k} {meta[m]}" for m, k in SHAPE_KEYS.items()
             if m in meta and meta[m] != cfg.MODEL.RESNETS[k]]
    if shape:
        raise UserError(f"{path}: weights of another architecture; they need " + ", ".join(shape))


class BackboneInit:
    """Loads the weights up front (so a bad file fails before any model is built) and acts
    as build_model's trunk hook; afterwards ``report`` says what was loaded."""

    def __init__(self, cfg: CfgNode, path: str) -> None:
        if not Path(path).is_file():
            raise UserError(f"{path}: weights file not found (MODEL.WEIGHTS / --weights)")
        try:
            from mocobench.transfer.convert import load_detectron2_weights
        except ImportError as e:
            raise UserError(f"loading {path} needs transfer/convert.py ({e})") from None
        self.path = path
        self.model, self.meta = load_detectron2_weights(path)
        if self.meta:
            check_conventions(cfg, self.meta, path)
        self.missing: Optional[list[str]] = None
        self.unexpected: list[str] = []

    def __call__(self, trunk: ConfigurableResNet) -> None:
        from mocobench.transfer.convert import load_into_trunk

        self.missing, self.unexpected = load_into_trunk(trunk, self.model)

    def report(self) -> str:
        note = "" if self.meta else " (no __mocobench__ metadata: input format not checked)"
        return (f"weights: {self.path}: loaded {len(self.model) - len(self.unexpected)} backbone tensors, "
                f"{len(self.missing or [])} missing backbone keys, {len(self.unexpected)} unused{note}; "
                "RPN and box/mask predictors start from random init")
