"""Checkpoints of the pretrain stage and reading backbones from any supported file.

MoCo checkpoints use the authors' layout ({'epoch', 'arch', 'state_dict', 'optimizer'},
keys 'module.encoder_q.<torchvision name>' as a DDP-wrapped model saves them, even from
one process) so the authors' converter and lincls read ours. The extra entries make a
resume exact: iteration, position within the epoch, RNG states. Everything is stored
as tensors and plain Python types, so ``torch.load(..., weights_only=True)`` reads it.
A text file ``last_checkpoint`` names the newest checkpoint (written after it); files are
read by ``mocobench.checkpoints.read_checkpoint``, which runs no code from them.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml
from fvcore.common.config import CfgNode

from mocobench import UserError
from mocobench.atomic import torch_save
from mocobench.digests import file_digest, key_changes, read_digests, text_digest, write_digests
from mocobench.checkpoints import check_weights, point_to, read_checkpoint, trunk_weights
from mocobench.resnet import ResNetShape, infer_shape, tv_to_d2


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
    point_to(out_dir, name)
    return path


def read_resume_state(path: Path) -> dict[str, Any]:
    """A run's own checkpoint to resume from: a damaged or diverged one is named, tensor and all,
    instead of failing as a NaN loss (or a KeyError) after the resume."""
    state = read_checkpoint(path)
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise UserError(f"{path}: not a checkpoint of this kind of run (no state_dict); "
                        "give another --output-dir, or --overwrite")
    check_weights(state["state_dict"], path)
    return state


def refuse_divergence(loss: torch.Tensor, iteration: int, out_dir: Path, model: torch.nn.Module | None = None
                      ) -> None:
    """Stop at the first non-finite loss (or, before a save, non-finite ``model`` weights: the
    step after a finite loss can still blow them up), so no NaN checkpoint replaces a good one."""
    what = None
    if not bool(torch.isfinite(loss.detach())):
        what = f"loss {loss.item()}"
    elif model is not None:
        bad = next((k for k, v in model.state_dict().items()
                    if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
        what = bad and f"{bad} is not finite"
    if what:
        raise UserError(f"{out_dir}: training diverged at iteration {iteration} ({what}); "
                        "no checkpoint was written from it: lower SOLVER.BASE_LR or check the data, "
                        "then --resume from the last good checkpoint")


def backbone_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Torchvision-named trunk weights (no fc) from a MoCo checkpoint (ours or the
    authors'), a torchvision state dict (e.g. `mocobench supervised` output) or one
    saved from a DDP-wrapped torchvision model."""
    obj = read_checkpoint(path)
    if not isinstance(obj, dict):
        raise UserError(f"{path}: neither a MoCo checkpoint nor a torchvision state dict")
    state, _ = trunk_weights(obj)
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: neither a MoCo checkpoint nor a torchvision state dict")
    trunk = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if "conv1.weight" not in trunk:
        raise UserError(f"{path}: no ResNet trunk found (no 'conv1.weight' key)")
    check_weights(trunk, path)
    return trunk


def trunk_shape(state: dict[str, torch.Tensor], source: str | Path) -> ResNetShape:
    """The ResNetShape a torchvision-named trunk was built with, read off its tensors."""
    return infer_shape(source, {d2: v for k, v in state.items() if (d2 := tv_to_d2(k))})


# settings a resume may change: where the run is written, where the images are (their listing is
# digested instead), loader processes (augmentation is seeded per sample), logging, and the
# number of epochs (a resume that adds epochs extends the run)
_NEUTRAL = ("OUTPUT_DIR", "DATA.PATH", "DATA.NUM_WORKERS", "TRAIN.LOG_PERIOD", "SOLVER.EPOCHS")


def run_inputs(cfg: CfgNode, samples: Sequence[tuple[str, int]], weights: str | Path | None = None) -> dict:
    """What determines a pretraining or classifier run: its config, its images (names and labels)
    and, for a probe, the weights file's content."""
    tree = yaml.safe_load(cfg.dump())
    for key in _NEUTRAL:
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node[p]
        node.pop(leaf, None)
    root = Path(cfg.DATA.PATH)
    # names and labels, not sizes: a stat of each of ImageNet's 1.28M files would slow every start
    listing = "\n".join(f"{Path(p).relative_to(root) if Path(p).is_relative_to(root) else p} {label}"
                         for p, label in samples)
    return {"config": tree, "data": text_digest(listing), "weights": file_digest(weights) if weights else ""}


def claim_inputs(out_dir: Path, inputs: dict, resuming: bool) -> None:
    """Record the run's inputs; a resumed run must have the inputs it started with."""
    stored = read_digests(out_dir)
    if resuming and stored is not None and stored != inputs:
        details = key_changes(stored.get("config", {}), inputs["config"])[:3]
        details += [f"{name} content" for name in ("data", "weights") if stored.get(name) != inputs[name]]
        raise UserError(f"{out_dir}: --resume with other inputs than the run was started with "
                        f"({'; '.join(details) or 'config'}); give another --output-dir for a new run")
    write_digests(out_dir, inputs)
