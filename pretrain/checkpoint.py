"""Checkpoints of the pretrain stage and reading backbones from any supported file.

MoCo checkpoints use the authors' layout ({'epoch', 'arch', 'state_dict', 'optimizer'},
keys 'module.encoder_q.<torchvision name>' as a DDP-wrapped model saves them, even from
one process) so the authors' converter and lincls read ours. The extra entries make a
resume exact: iteration, position within the epoch, RNG states. Everything is stored
as tensors and plain Python types, so ``torch.load(..., weights_only=True)`` reads it.
A text file ``last_checkpoint`` names the newest checkpoint (written after it).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mocobench import UserError
from mocobench.atomic import torch_save, write_text
from mocobench.resnet import BLOCKS_PER_STAGE, ResNetShape

LAST = "last_checkpoint"
QUERY_PREFIX = "module.encoder_q."


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(out_dir: Path, name: str, state: dict[str, Any]) -> Path:
    path = out_dir / name
    torch_save(path, state)
    write_text(out_dir / LAST, name + "\n")
    return path


def latest(out_dir: Path) -> Path | None:
    pointer = out_dir / LAST
    if not pointer.is_file():
        return None
    path = out_dir / pointer.read_text().strip()
    if not path.is_file():
        raise UserError(f"{pointer}: names {path.name}, which does not exist")
    return path


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input problem
        raise UserError(f"{path}: cannot read as a torch checkpoint ({' '.join(str(e).split())[:200]})") from None


def backbone_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Torchvision-named trunk weights (no fc) from a MoCo checkpoint (ours or the
    authors'), a torchvision state dict (e.g. `mocobench supervised` output) or one
    saved from a DDP-wrapped torchvision model."""
    obj = load(path)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: neither a MoCo checkpoint nor a torchvision state dict")
    if any(k.startswith(QUERY_PREFIX) for k in state):
        state = {k[len(QUERY_PREFIX):]: v for k, v in state.items() if k.startswith(QUERY_PREFIX)}
    else:
        state = {k.removeprefix("module."): v for k, v in state.items()}
    trunk = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if "conv1.weight" not in trunk:
        raise UserError(f"{path}: no ResNet trunk found (no 'conv1.weight' key)")
    return trunk


def infer_shape(state: dict[str, torch.Tensor], source: str) -> ResNetShape:
    """The ResNetShape a torchvision-named trunk was built with, read off its tensors."""
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in state
    depths = [d for d, counts in BLOCKS_PER_STAGE.items() if counts == blocks and (d >= 50) == bottleneck]
    if not depths:
        raise UserError(f"{source}: blocks per stage {blocks} match no ResNet depth")
    stem = state["conv1.weight"].shape[0]
    if not bottleneck:
        width = state["layer1.0.conv1.weight"].shape[0]
        return ResNetShape(depths[0], stem, width, width, 1)
    width = state["layer1.0.conv1.weight"].shape[0]
    groups = width // state["layer1.0.conv2.weight"].shape[1]
    return ResNetShape(depths[0], stem, state["layer1.0.conv3.weight"].shape[0], width // groups, groups)
