"""detectron2's own config: get_cfg(), plus mocobench's extension keys, then the same file
and KEY VALUE overrides the torchvision engine reads (transfer/defaults.yaml lists the
extensions at its end; they are registered here with the same defaults)."""

from __future__ import annotations

from typing import Sequence

from detectron2.config import CfgNode, get_cfg

from mocobench import UserError
from mocobench.transfer.config import detection_defaults

# mocobench keys detectron2's get_cfg() does not have (see transfer/defaults.yaml)
EXTENSION_KEYS = ("MODEL.DC5", "INPUT.RANDOM_SCALE")


def _node(cfg: CfgNode, dotted: str) -> tuple[CfgNode, str]:
    *parents, leaf = dotted.split(".")
    for p in parents:
        cfg = cfg[p]
    return cfg, leaf


def add_extension_keys(cfg: CfgNode) -> CfgNode:
    """Registers EXTENSION_KEYS on ``cfg`` with the defaults transfer/defaults.yaml gives them."""
    ours = detection_defaults()
    for key in EXTENSION_KEYS:
        parent, leaf = _node(cfg, key)
        if leaf not in parent:
            source, _ = _node(ours, key)
            value = source[leaf]
            parent[leaf] = CfgNode(value) if isinstance(value, dict) else value
    return cfg


def load_d2_config(path: str, overrides: Sequence[str] = ()) -> CfgNode:
    """defaults (+ extensions) <- file (detectron2 resolves its _BASE_ chain) <- overrides."""
    cfg = add_extension_keys(get_cfg())
    try:
        cfg.merge_from_file(path)
    except (KeyError, ValueError, AssertionError, OSError) as e:
        raise UserError(f"{path}: {e}") from None
    if len(overrides) % 2:
        raise UserError(f"config overrides must be KEY VALUE pairs, got {list(overrides)}")
    try:
        cfg.merge_from_list(list(overrides))
    except (KeyError, ValueError, AssertionError) as e:
        raise UserError(f"{path}: override {list(overrides)}: {e}") from None
    return cfg
