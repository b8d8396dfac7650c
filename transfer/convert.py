"""Backbone checkpoints <-> detectron2-layout weights, checked against a real ResNet.

Every init (MoCo pretraining output or the authors' release, torchvision / timm supervised
weights, any self-supervised framework in ``checkpoint_layouts``, MSRA / detectron2 ``.pkl``)
becomes one detectron2-named file, so both detection engines read the same thing.
Alongside the weights, ``__mocobench__`` records what they expect
(channel order, pixel mean/std, STRIDE_IN_1X1, depth and width) so a job can check its
config against its init. The name mapping is ``mocobench.resnet``'s; the check builds that
module's ResNet at the inferred shape and demands every key and shape, so a checkpoint
that converts is one the detection trunk can load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch
import torch.nn as nn

from mocobench import UserError
from mocobench.resnet import D2_BLOCK, ResNetShape, build_resnet, d2_to_tv, infer_shape, tv_to_d2
from mocobench.transfer.caffe2_names import caffe2_to_d2, looks_like_caffe2
from mocobench.checkpoints import check_weights, read_checkpoint, weights_dict
from mocobench.conventions import BGR_CAFFE, DDP_PREFIX, INPUT_FORMATS, RGB_IMAGENET
from mocobench.transfer.checkpoint_layouts import LAYOUTS
from mocobench.transfer.trunk_select import EncoderChoiceNeeded, select_trunk
from mocobench.transfer.untrained import untrained_reason

log = logging.getLogger(__name__)

FORMATS = ("detectron2", *(layout.name for layout in LAYOUTS))
AUTHOR = "mocobench"
META_KEY = "__mocobench__"
# __author__ values of detectron2 files converted from torchvision-trained weights
# (the MoCo authors' converter, detectron2's convert-torchvision-to-d2.py).
RGB_AUTHORS = {"MOCO", "torchvision", AUTHOR}
SHAPE_KEYS = tuple(ResNetShape().as_dict())


@dataclass
class Converted:
    """detectron2-named backbone weights plus what they expect, and how we got them."""

    model: dict[str, np.ndarray]
    meta: dict
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def file_contents(self) -> dict:
        return {"model": self.model, "__author__": AUTHOR, "matching_heuristics": True, META_KEY: self.meta}


def convert_checkpoint(path: str | Path, fmt: str = "auto", *, key: Optional[str] = None,
                       encoder: Optional[str] = None, allow_untrained: bool = True) -> Converted:
    """Read any supported backbone checkpoint and return validated detectron2 weights.

    ``fmt`` forces a layout (``FORMATS``), ``key`` ('a/b') the nested dict holding the state
    dict, ``encoder`` one of a layout's candidate encoders: a file holding two different encoders
    (MoCo's query / key, DINO's teacher / student, ...) is an ``EncoderChoiceNeeded`` error naming
    them unless ``encoder`` or ``key`` chooses (the suite's own MoCo checkpoints: encoder="query").
    An untrained-looking trunk is an error unless ``allow_untrained`` (the convert command's
    default is False; jobs reading weights only note it).
    """
    path = Path(path)
    if fmt != "auto" and fmt not in FORMATS:
        raise UserError(f"{path}: unknown format {fmt!r} (choose auto or one of {', '.join(FORMATS)})")
    obj = read_checkpoint(path)
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: expected a dict of weights, found {type(obj).__name__}")
    d2 = key is None and encoder is None and _is_detectron2(obj)
    if fmt == "detectron2" and not d2:
        if key is not None or encoder is not None:
            raise UserError(f"{path}: --key / --encoder do not apply to detectron2 files")
        raise UserError(f"{path}: --format detectron2 given, but the file looks like "
                        f"{select_trunk(path, obj).chosen.layout.name} weights")
    if d2 and fmt not in ("auto", "detectron2"):
        raise UserError(f"{path}: --format {fmt} given, but the file looks like detectron2 weights")
    if d2:
        notes = [f"format: detectron2 ({'auto-detected' if fmt == 'auto' else 'as given'})"]
        model, dropped, conventions = _from_detectron2(path, obj, notes)
    else:
        selection = select_trunk(path, obj, fmt, key, encoder)
        notes = selection.notes
        model, fc = _rename(selection.chosen.trunk, tv_to_d2)
        dropped = fc + selection.dropped
        conventions = {"source_format": selection.chosen.layout.name, **selection.chosen.layout.conventions}
    model = {k: _as_array(path, k, v) for k, v in model.items()}
    check_weights(model, path)
    shape = infer_shape(path, model)
    check_against_resnet(path, model, shape)
    conflicts = [f"{k} {conventions[k]} (weights: {getattr(shape, k)})" for k in SHAPE_KEYS
                 if k in conventions and conventions[k] != getattr(shape, k)]
    if conflicts:
        raise UserError(f"{path}: {META_KEY} metadata contradicts the weights: {', '.join(conflicts)}")
    untrained = untrained_reason(model)
    if untrained and not allow_untrained:
        raise UserError(f"{path}: {untrained}")
    if untrained:
        notes.append("warning: " + untrained.split(";")[0])
    meta = {**conventions, **shape.as_dict()}
    notes.append(f"shape: R{shape.depth}, stem {shape.stem_out_channels}, res2 {shape.res2_out_channels}, "
                 f"{shape.num_groups}x{shape.width_per_group} per group; all {len(model)} trunk tensors matched once")
    notes.append(f"expects: {meta['input_format']}, mean {meta['pixel_mean']}, std {meta['pixel_std']}, "
                 f"STRIDE_IN_1X1 {meta['stride_in_1x1']}")
    return Converted(model, meta, dropped, notes)


def load_detectron2_weights(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(detectron2-named backbone arrays, ``__mocobench__`` metadata) of any supported file.

    A converted .pkl passes straight through; a checkpoint of any layout is converted on the
    fly (auto-detected; an untrained-looking trunk is a warning here, not an error), so
    MODEL.WEIGHTS may name either. A file holding two different encoders (a MoCo checkpoint's
    query and key) is an error here too, saying how to convert it choosing one: a job has no
    --encoder.
    """
    try:
        converted = convert_checkpoint(path)
    except EncoderChoiceNeeded as e:
        raise UserError(f"{e.found}; {e.taken + '; ' if e.taken else ''}convert it first: mocobench convert "
                        f"{path} OUT.pkl --encoder {e.hint or '|'.join(e.choices)}") from None
    for line in converted.notes:
        log.log(logging.WARNING if line.startswith("warning: ") else logging.INFO, "%s: %s", path, line)
    return converted.model, converted.meta


def _is_detectron2(obj: Mapping) -> bool:
    """A detectron2 / MSRA file: Caffe2 blobs, or detectron2 backbone names (stem.*, res2.0.*)."""
    if "blobs" in obj:
        return True
    names = [str(k).removeprefix(DDP_PREFIX) for k in weights_dict(obj)]
    return any(n.startswith("stem.") or D2_BLOCK.match(n) for n in names) or looks_like_caffe2(names)


def _rename(weights: Mapping, rename: Callable[[str], Optional[str]]) -> tuple[dict, list[str]]:
    """(renamed weights, names ``rename`` maps to None: classifier, projection head, momenta)."""
    model, dropped = {}, []
    for name, value in weights.items():
        new = rename(str(name))
        if new is None:
            dropped.append(str(name))
        else:
            model[new] = value
    return model, dropped


def _from_detectron2(path: Path, obj: Mapping, notes: list[str]) -> tuple[dict, list[str], dict]:
    weights = obj["blobs"] if "blobs" in obj else weights_dict(obj)
    names = [str(k) for k in weights]
    if looks_like_caffe2(names):
        model, dropped = _rename(weights, caffe2_to_d2)
        _fill_frozen_bn_statistics(model)
        notes.append("Caffe2 blob names renamed; frozen-BN running mean 0 / var 1 filled in")
    else:
        model, dropped = _rename(weights, _unless_head)
    if isinstance(obj.get(META_KEY), Mapping):
        conventions = _checked_meta(path, obj[META_KEY])
        notes.append("conventions: from the file's own metadata")
    else:
        author = str(obj.get("__author__", "unknown"))
        conventions = dict(RGB_IMAGENET if author in RGB_AUTHORS else BGR_CAFFE)
        which = "torchvision (RGB)" if author in RGB_AUTHORS else "MSRA/Caffe2 (BGR, caffe mean)"
        notes.append(f"conventions: no {META_KEY} metadata; __author__ is {author!r}, so assuming {which}")
        conventions = {"source_format": "detectron2", **conventions}
    return model, dropped, conventions


def _unless_head(name: str) -> Optional[str]:
    """The MoCo authors' converter keeps the projection head, as stem.fc.*."""
    return None if (d2_to_tv(name) or "").startswith("fc.") else name


def _fill_frozen_bn_statistics(model: dict) -> None:
    """Caffe2 frozen BN is a bare affine: mean 0, var 1, as detectron2's FrozenBatchNorm2d assumes."""
    for name in [n for n in model if n.endswith(".norm.weight")]:
        stem = name[: -len("weight")]
        n = np.asarray(model[name]).shape[0]
        model.setdefault(stem + "running_mean", np.zeros(n, np.float32))
        model.setdefault(stem + "running_var", np.ones(n, np.float32))


def _checked_meta(path: Path, meta: Mapping) -> dict:
    wanted = ("source_format", "input_format", "pixel_mean", "pixel_std", "stride_in_1x1")
    lacking = [k for k in wanted if k not in meta]
    if lacking:
        raise UserError(f"{path}: {META_KEY} metadata lacks {', '.join(lacking)}")
    if meta["input_format"] not in INPUT_FORMATS or meta["source_format"] not in FORMATS:
        raise UserError(f"{path}: {META_KEY} metadata has input_format {meta['input_format']!r}, "
                        f"source_format {meta['source_format']!r}")
    return {k: meta[k] for k in wanted} | {k: meta[k] for k in SHAPE_KEYS if k in meta}


def _as_array(path: Path, name: str, value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise UserError(f"{path}: {name} is a {type(value).__name__}, not an array")


def expected_shapes(shape: ResNetShape) -> dict[str, tuple]:
    """detectron2 name -> array shape of the backbone of a ResNet of this shape."""
    with torch.device("meta"):
        net = build_resnet(shape)
    return {d2: tuple(v.shape) for k, v in net.state_dict().items() if (d2 := tv_to_d2(k))}


def check_against_resnet(path: Path, model: Mapping[str, np.ndarray], shape: ResNetShape) -> None:
    """Every key and shape of the ResNet, nothing else (num_batches_tracked optional)."""
    expected = expected_shapes(shape)
    problems = []
    unexpected = sorted(set(model) - set(expected))
    if unexpected:
        problems.append(f"{len(unexpected)} keys that are not in R{shape.depth}: {_listing(unexpected)}")
    missing = sorted(k for k in set(expected) - set(model) if not k.endswith("num_batches_tracked"))
    if missing:
        problems.append(f"{len(missing)} R{shape.depth} keys missing: {_listing(missing)}")
    wrong = [f"{k} {tuple(model[k].shape)} != {expected[k]}" for k in sorted(set(model) & set(expected))
             if tuple(model[k].shape) != expected[k]]
    if wrong:
        problems.append(f"{len(wrong)} shapes do not fit: {_listing(wrong)}")
    if problems:
        raise UserError(f"{path}: " + "; ".join(problems))


def group_keys(keys: list[str]) -> list[str]:
    """detectron2's grouping: 'res2.0.conv1.norm.{bias, weight}' instead of two lines."""
    groups: dict[str, list[str]] = {}
    for key in sorted(keys):
        head, _, leaf = key.rpartition(".")
        groups.setdefault(head, []).append(leaf)
    return [f"{head}.{leaves[0]}" if len(leaves) == 1 else f"{head}.{{{', '.join(leaves)}}}"
            for head, leaves in groups.items()]


def _listing(keys: list[str], limit: int = 8) -> str:
    grouped = group_keys(keys) if " " not in keys[0] else keys
    return ", ".join(grouped[:limit]) + (f" ... (+{len(grouped) - limit} more)" if len(grouped) > limit else "")


def load_into_trunk(trunk: nn.Module, d2_model: Mapping[str, np.ndarray]) -> tuple[list[str], list[str]]:
    """Load detectron2-named weights into a torchvision-named trunk (ConfigurableResNet or
    any module with its submodule names, e.g. a C4 trunk without layer4 and fc).

    Returns (missing: trunk keys the weights lack, unexpected: weight keys the trunk lacks),
    logged grouped as detectron2 does. num_batches_tracked is never reported missing: it is
    a counter, not a weight (MSRA files have none). A shape mismatch is a UserError.
    """
    own = trunk.state_dict()
    loadable, unexpected, wrong = {}, [], []
    for name, value in d2_model.items():
        tv = d2_to_tv(name)
        if tv is None or tv not in own:
            unexpected.append(name)
        elif tuple(own[tv].shape) != tuple(np.shape(value)):
            wrong.append(f"{name} {tuple(np.shape(value))} != {tuple(own[tv].shape)}")
        else:
            loadable[tv] = torch.tensor(value, dtype=own[tv].dtype)
    if wrong:
        raise UserError(f"weights do not fit the trunk: {_listing(wrong)}")
    trunk.load_state_dict(loadable, strict=False)
    missing = sorted(k for k in own if k not in loadable and not k.endswith("num_batches_tracked"))
    if missing:
        log.warning("Some model parameters or buffers are not found in the checkpoint:\n%s",
                    "\n".join(group_keys(missing)))
    if unexpected:
        log.warning("The checkpoint contains keys that are not used by the model:\n%s",
                    "\n".join(group_keys(unexpected)))
    return missing, sorted(unexpected)
