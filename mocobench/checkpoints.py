"""Checkpoint files: the one safe reader, the trunk inside them, the last-checkpoint pointer.

Weights come from the internet (the MoCo authors' releases, model zoos), so a pickle must
not be able to call arbitrary functions: torch files load with ``weights_only=True`` and
plain pickles (detectron2 / MSRA ``.pkl``) through an unpickler that only builds numpy
arrays and dicts. Every failure becomes a one-line ``UserError`` naming the file.
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mocobench import UserError
from mocobench.atomic import write_text
from mocobench.conventions import DDP_PREFIX, LAST_CHECKPOINT, MOCO_QUERY_PREFIX

# What a numpy-array pickle needs, under numpy 1.x and 2.x module names.
_PICKLE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    *((mod, name) for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
      for name in ("_reconstruct", "scalar")),
    *((mod, "_frombuffer") for mod in ("numpy.core.numeric", "numpy._core.numeric")),  # pickle protocol 5
    *((mod, name) for mod in ("numpy.dtypes",) for name in (
        "Float16DType", "Float32DType", "Float64DType", "Int64DType", "Int32DType", "UInt8DType",
        "Int8DType", "BoolDType")),
}


_TORCH_ADVICE = ("Weights only load failed", "Check the doc", "Please file an issue")


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays and dicts)")
        return super().find_class(module, name)


def read_checkpoint(path: str | Path) -> Any:
    """The object stored in ``path``: a torch file (zip or legacy) or a plain pickle."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        if zipfile.is_zipfile(path) or path.suffix != ".pkl":
            import torch  # here, not at the top: run-all and collate read .pkl inits without it (~1 s a process)

            # argparse.Namespace: training scripts often save their args beside the weights.
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as e:  # torch and pickle raise many types for bad bytes; all mean the same
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}: {_reason(e)})") from None


def _reason(error: Exception) -> str:
    """Torch's diagnosis without its advice (which suggests loading the file unsafely)."""
    paragraphs = [p for p in re.split(r"\n\s*\n", str(error).replace("WeightsUnpickler error:", "\n\n"))
                  if p.strip() and not p.lstrip().startswith(_TORCH_ADVICE)]
    return " ".join(" ".join(paragraphs).split())[:200] or type(error).__name__


_FLOAT_SUFFIXES = ("weight", "bias", "running_mean", "running_var")


def check_weights(weights: Mapping[str, Any], path: str | Path) -> None:
    """A damaged weight named here, not as a NaN loss (or a silent cast) at the first iteration
    of a run that then blames nothing: parameters and BN statistics must be floating point and
    finite, and a BN running variance cannot be negative."""
    for name, value in weights.items():
        if hasattr(value, "is_floating_point"):  # a torch tensor (torch is not imported here for .pkl weights)
            value = value.detach().cpu().float().numpy() if value.is_floating_point() else value.numpy()
        array = np.asarray(value)
        if array.dtype.kind != "f":
            if str(name).endswith(_FLOAT_SUFFIXES):
                raise UserError(f"{path}: {name} is of type {array.dtype}, not floating point (a damaged checkpoint)")
            continue
        if not bool(np.isfinite(array).all()):
            raise UserError(f"{path}: {name} holds NaN or infinite values (a diverged or damaged checkpoint)")
        if str(name).endswith("running_var") and bool((array < 0).any()):
            raise UserError(f"{path}: {name} holds a negative BN running variance (a damaged checkpoint)")


def weights_dict(obj: Mapping) -> Mapping:
    """The name -> tensor mapping inside a checkpoint ({'model': ...}, {'state_dict': ...} or bare)."""
    for wrapper in ("model", "state_dict"):
        if isinstance(obj.get(wrapper), Mapping):
            return obj[wrapper]
    return obj


def is_moco(obj: Mapping) -> bool:
    state = obj.get("state_dict")
    return isinstance(state, Mapping) and any(str(k).startswith(MOCO_QUERY_PREFIX) for k in state)


def trunk_weights(obj: Mapping) -> tuple[dict[str, Any], list[str]]:
    """(torchvision-named weights, names left out): the query encoder of a MoCo checkpoint (the
    key encoder and queue left out), else the state dict with DDP's prefix removed."""
    if is_moco(obj):
        state = obj["state_dict"]
        query = {k[len(MOCO_QUERY_PREFIX):]: v for k, v in state.items() if k.startswith(MOCO_QUERY_PREFIX)}
        return query, [k for k in state if not k.startswith(MOCO_QUERY_PREFIX)]
    return {str(k).removeprefix(DDP_PREFIX): v for k, v in weights_dict(obj).items()}, []


def point_to(out_dir: Path, name: str) -> None:
    """Name ``name`` as the folder's newest checkpoint (after the checkpoint itself is written)."""
    write_text(out_dir / LAST_CHECKPOINT, name + "\n")


def last_checkpoint(out_dir: Path) -> Path | None:
    """The checkpoint the folder's pointer names; None without a pointer."""
    pointer = out_dir / LAST_CHECKPOINT
    if not pointer.is_file():
        return None
    path = out_dir / pointer.read_text().strip()
    if not path.is_file():
        raise UserError(f"{pointer}: names {path.name}, which does not exist")
    return path
