"""deepmind/byol's JAX / haiku ResNet checkpoints -> torchvision-named state dicts (OIHW kernels).

Read from google-deepmind/deepmind-research, byol/ (the BYOL authors' JAX code):
- byol/utils/checkpointing.py: ``Checkpointer.maybe_save_checkpoint`` dill-dumps (protocol 2)
  ``{'experiment_state': jax.tree_map(lambda x: jax.device_get(x[0]), state), 'step', 'rng'}``,
  so the leaves are numpy arrays; the README's released ``pretrain_res50x1.pkl`` (ResNet-50 1x)
  and ``pretrain_res200x2.pkl`` are such files (``<checkpoint_root>/pretrain.pkl``).
- byol/byol_experiment.py: ``_ByolExperimentState(online_params, target_params, online_state,
  target_state, opt_state)``, a NamedTuple; params and state are haiku's two-level mappings
  ``{module path: {name: array}}``; BN running statistics live in the *state*, not the params.
  byol/eval_experiment.py loads ``online_params`` / ``online_state``: the online encoder is
  what the authors evaluate, the target (EMA) encoder the other candidate.
- byol/utils/networks.py: ``ResNetTorso`` (module ``res_net50`` for ResNet50, ``res_net18`` ...)
  holds ``initial_conv`` (7x7, stride 2, padding SAME), ``initial_batchnorm`` and
  ``block_group_0..3`` of dm-haiku's ``hk.nets.ResNet.BlockGroup`` (haiku/_src/nets/resnet.py,
  read): ``block_N`` of ``BlockV1`` with ``conv_0..2`` / ``batchnorm_0..2`` and, when
  projecting, ``shortcut_conv`` / ``shortcut_batchnorm``; the bottleneck's stride is on
  ``conv_1`` (the 3x3), as torchvision's. Nested modules are joined with ``/~/``.
- haiku Conv2D keeps ``w`` as HWIO (kh, kw, in, out): transposed to OIHW here. BatchNorm keeps
  ``scale`` / ``offset`` shaped (1, 1, 1, C) and its state ``.../~/mean_ema`` and
  ``.../~/var_ema`` as ``{'average', 'hidden', 'counter'}``: the running statistics are the
  ``average`` (what haiku's BatchNorm normalises with at test time); ``hidden`` and ``counter``
  are not read (dropped quietly).
- The projector, predictor (``networks.MLP``) and the online classifier are heads: left out,
  listed.
- byol/utils/dataset.py ``normalize_images``: RGB in [0, 1] less (0.485, 0.456, 0.406), over
  (0.229, 0.224, 0.225): the ImageNet mean / std of the other layouts.

Not read, said precisely: the pickle is read by ``mocobench.checkpoints`` with a restricted
unpickler, never by dill or with jax: it builds the named tuple above (as a dict), haiku's
``FlatMapping`` / ``FlatMap`` / ``frozendict`` (as dicts), optax's / byol's optimizer-state
tuples (dropped), numpy arrays, and jax arrays as numpy arrays (2020's DeviceArray, e.g. the
``rng``, pickles as a numpy array; later jax's ``_reconstruct_array`` /
``reconstruct_device_array`` are rebuilt by numpy alone); it refuses every other class in one
line naming it, so a file that dill saved with a class by value (a class defined in
``__main__``), or with other jax / optax types, is refused. The released files themselves were
not at hand: the classes above are those the saving code pickles (read), not a listing of the
files' own globals. The
plain form ``{'online_params', 'online_state'[, 'target_params', 'target_state']}`` (a dict, e.g.
``state._asdict()`` after ``jax.device_get``), in a pickle or a torch file, reads the same.
BYOL's own ResNet-18/34 project in every group (``use_projection`` True), so their layer1.0 has a
shortcut torchvision's has not: such a file is refused naming the extra keys. Haiku pads SAME
(asymmetrically on a stride-2 conv / max-pool), torchvision symmetrically: the weights are
exact, the features of a converted trunk differ slightly from the JAX ones at stride-2 layers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from mocobench import UserError

BYOL_EXPORT = "deepmind/byol's eval_experiment.py"
ENCODERS = ("online", "target")
_BLOCK = re.compile(r"block_group_(\d+)/block_(\d+)/(conv|batchnorm)_([0-2])")
_SHORTCUT = re.compile(r"block_group_(\d+)/block_(\d+)/shortcut_(conv|batchnorm)")
_STEM = re.compile(r"initial_(conv|batchnorm)(_\d+)?")
_EMA = re.compile(r"(.+)/~/(mean|var)_ema")
_HEADS = ("projector", "predictor", "classifier")


def read_byol_jax(path: Path, root: Any) -> Optional[dict[str, dict[str, Any]]]:
    """{'online_params': torchvision-named trunk + other keys by haiku path, 'target_params': ...}
    of a deepmind/byol checkpoint (or of its experiment_state), None for any other file."""
    state = root.get("experiment_state", root) if isinstance(root, Mapping) else None
    if not isinstance(state, Mapping) or not any(isinstance(state.get(f"{e}_params"), Mapping) for e in ENCODERS):
        return None
    out = {}
    for encoder in ENCODERS:
        params, bn_state = state.get(f"{encoder}_params"), state.get(f"{encoder}_state")
        if isinstance(params, Mapping):
            out[f"{encoder}_params"] = haiku_to_torchvision(path, params,
                                                            bn_state if isinstance(bn_state, Mapping) else {})
    return out


def haiku_to_torchvision(path: Path, params: Mapping, state: Mapping) -> dict[str, Any]:
    """One encoder's haiku params and state as a torchvision-named trunk (OIHW kernels, (C,) BN
    vectors); keys that are not trunk (heads, unknown modules) keep their haiku path
    ('projector/~/linear/w'). A torchvision name reached from two haiku keys is an error."""
    out: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def put(name: str, value: Any, key: str) -> None:
        if name in sources:
            raise UserError(f"{path}: {name} is reached twice, from {sources[name]} and {key} (byol_jax layout)")
        out[name], sources[name] = value, key

    for module, leaves in params.items():
        module = str(module)
        if not isinstance(leaves, Mapping):
            out[module] = leaves
            continue
        trunk = _torchvision_module(module)
        for leaf, value in leaves.items():
            key = f"{module}/{leaf}"
            if trunk is None:
                out[key] = value
            elif trunk[1] == "conv" and leaf == "w":
                put(f"{trunk[0]}.weight", _oihw(path, key, value), key)
            elif trunk[1] == "bn" and leaf in ("scale", "offset"):
                put(f"{trunk[0]}.{'weight' if leaf == 'scale' else 'bias'}", _vector(path, key, value), key)
            else:
                out[key] = value  # a conv bias or other leaf torchvision's trunk has not: listed
    for module, leaves in state.items():
        module = str(module)
        ema = _EMA.fullmatch(module)
        trunk = _torchvision_module(ema.group(1)) if ema else None
        if not isinstance(leaves, Mapping) or trunk is None or trunk[1] != "bn" or "average" not in leaves:
            if isinstance(leaves, Mapping):
                out.update({f"{module}/{leaf}": v for leaf, v in leaves.items()})
            else:
                out[module] = leaves
            continue
        stat = "running_mean" if ema.group(2) == "mean" else "running_var"
        put(f"{trunk[0]}.{stat}", _vector(path, f"{module}/average", leaves["average"]), f"{module}/average")
    return out


def _torchvision_module(module: str) -> Optional[tuple[str, str]]:
    """('layer2.0.conv2', 'conv') / ('bn1', 'bn') for a haiku trunk module path, None otherwise.
    '/~/' (nesting in __init__) and '/' (in __call__) read alike; a trailing unnamed
    'conv2_d' / 'batch_norm' and a '_1' suffix on the stem (older haiku naming) are accepted."""
    parts = [p for p in module.split("/") if p and p != "~"]
    if not parts or parts[0].startswith(_HEADS):
        return None
    if parts[-1] in ("conv2_d", "batch_norm"):
        parts = parts[:-1]
    if not parts:
        return None
    stem = _STEM.fullmatch(parts[-1])
    if stem:
        return ("conv1", "conv") if stem.group(1) == "conv" else ("bn1", "bn")
    tail = "/".join(parts[-3:])
    m = _BLOCK.fullmatch(tail)
    if m:
        layer, block, kind, i = int(m.group(1)) + 1, int(m.group(2)), m.group(3), int(m.group(4)) + 1
        return (f"layer{layer}.{block}.{'conv' if kind == 'conv' else 'bn'}{i}",
                "conv" if kind == "conv" else "bn")
    m = _SHORTCUT.fullmatch(tail)
    if m:
        layer, block, kind = int(m.group(1)) + 1, int(m.group(2)), m.group(3)
        return (f"layer{layer}.{block}.downsample.{0 if kind == 'conv' else 1}", "conv" if kind == "conv" else "bn")
    return None


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (the plain form saved with torch.save)
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _oihw(path: Path, key: str, value: Any) -> np.ndarray:
    w = _array(value)
    if w.ndim != 4:
        raise UserError(f"{path}: {key} has shape {tuple(w.shape)}, not a 4-d HWIO conv kernel (byol_jax layout)")
    return np.ascontiguousarray(w.transpose(3, 2, 0, 1))


def _vector(path: Path, key: str, value: Any) -> np.ndarray:
    v = _array(value)
    if v.ndim == 0 or any(n != 1 for n in v.shape[:-1]):
        raise UserError(f"{path}: {key} has shape {tuple(v.shape)}, not a per-channel (1, ..., 1, C) vector "
                        "(byol_jax layout)")
    return np.ascontiguousarray(v.reshape(-1))
