"""Checkpoint files: the one safe reader, the trunk inside them, the last-checkpoint pointer.

Weights come from the internet (the MoCo authors' releases, model zoos), so a pickle must
not be able to call arbitrary functions: torch files load with ``weights_only=True`` and
plain pickles (detectron2 / MSRA ``.pkl``, deepmind/byol's JAX ``.pkl``) through an unpickler
that only builds numpy arrays and dicts. Classes a known checkpoint pickles beside its weights
are read as plain containers by stand-ins of ours, never by importing them: deepmind/byol's
experiment-state named tuple and haiku's mappings (as dicts; its optimizer state is dropped), and
the omegaconf configs Lightning saves as ``hyper_parameters`` (solo-learn's cfg; as dicts and
lists). Any other class is refused. Every failure becomes a one-line ``UserError`` naming the file.
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


# ---- stand-ins: the classes of known checkpoints, rebuilt as plain containers ----------------
# deepmind/byol (byol/byol_experiment.py, byol/utils/checkpointing.py: dill protocol 2 of numpy
# arrays): the experiment state is a NamedTuple (pickled as NEWOBJ of the class with its fields),
# haiku's params / state are FlatMapping(dict) (haiku/_src/data_structures.py: FlatMap's
# __reduce__ names FlatMapping; older haiku frozendict(dict)).
_BYOL_FIELDS = ("online_params", "target_params", "online_state", "target_state", "opt_state")


class _ByolExperimentState:
    """byol_experiment._ByolExperimentState as the dict of its fields (the optimizer state dropped)."""

    def __new__(cls, *fields: Any) -> dict:  # type: ignore[misc]
        return {k: v for k, v in zip(_BYOL_FIELDS, fields) if k != "opt_state"}


class _Dropped:
    """An optimizer-state named tuple (optax's / byol's LARS): read, kept as nothing."""

    def __new__(cls, *fields: Any, **named: Any) -> None:  # type: ignore[misc]
        return None


def _mapping(*args: Any) -> dict:
    """haiku's FlatMapping / FlatMap / frozendict, rebuilt from the dict they pickle as."""
    if len(args) != 1 or not isinstance(args[0], dict):
        raise pickle.UnpicklingError("a haiku mapping that is not pickled as one dict")
    return dict(args[0])


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """_codecs.encode as protocol-2 pickles use it for bytes (str.encode, latin-1 only)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


def _jax_array(fun: Any, args: Any, arr_state: Any, aval_state: Any = None) -> np.ndarray:
    """A jax array as later jax pickles it (jax._src.array._reconstruct_array, older
    jax._src.device_array.reconstruct_device_array: numpy's own reconstruction, then the jax
    metadata): the numpy array alone. 2020's DeviceArray pickled as a numpy array already."""
    if fun is not np.empty(0).__reduce__()[0] or not isinstance(args, tuple):
        raise pickle.UnpicklingError("a jax array not rebuilt by numpy's _reconstruct")
    value = fun(*args)
    value.__setstate__(arr_state)
    return value


_PICKLE_STAND_INS = {
    ("_codecs", "encode"): _latin1,
    ("jax._src.array", "_reconstruct_array"): _jax_array,
    ("jax._src.device_array", "reconstruct_device_array"): _jax_array,
    ("byol.byol_experiment", "_ByolExperimentState"): _ByolExperimentState,
    **{("haiku._src.data_structures", name): _mapping for name in ("FlatMapping", "FlatMap", "frozendict")},
    **{(module, name): _Dropped for module, name in (
        ("byol.utils.optimizers", "ScaleByLarsState"), ("byol.utils.optimizers", "AddWeightDecayState"),
        ("optax._src.transform", "ScaleState"), ("optax._src.base", "EmptyState"),
        ("optax._src.transform", "TraceState"), ("optax._src.transform", "ScaleByScheduleState"))},
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_STAND_INS:
            return _PICKLE_STAND_INS[module, name]
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays and dicts, and "
                                         "deepmind/byol's state and haiku mappings as such)")
        return super().find_class(module, name)


# omegaconf (Lightning's hyper_parameters, e.g. solo-learn's cfg: DictConfig pickles as NEWOBJ +
# BUILD of {'_metadata', '_parent', '_content'}, its nodes' value under '_val'): registered with
# torch's weights-only loader under omegaconf's names, so torch builds these instead; they keep
# the state they are given and run nothing, and are replaced by plain dicts / lists after the load.
class _OmegaConf:
    built = 0  # stand-ins built in this process (a load that built none skips the replacing walk)

    def __new__(cls, *args: Any, **kwargs: Any) -> "_OmegaConf":
        _OmegaConf.built += 1
        return object.__new__(cls)

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def plain(self) -> Any:
        state = getattr(self, "state", None)
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = state[0]
        if not isinstance(state, dict):
            return None
        return _plain(state.get("_content", state.get("_val")), self.container)

    container: Any = None


class _DictConfig(_OmegaConf):
    container = dict


class _ListConfig(_OmegaConf):
    container = list


class _DefaultDict(dict):
    """collections.defaultdict (omegaconf's resolver cache) as a dict; the factory is not kept."""

    def __init__(self, factory: Any = None, *args: Any) -> None:
        super().__init__()


class _Typing:
    """typing.Any / Dict / List (omegaconf's ref_type / key_type): a name, never called."""


_OMEGACONF_NAMES = {
    "omegaconf.dictconfig.DictConfig": _DictConfig, "omegaconf.listconfig.ListConfig": _ListConfig,
    **{f"omegaconf.{name}": type(name.rsplit(".", 1)[1], (_OmegaConf,), {}) for name in (
        "base.ContainerMetadata", "base.Metadata", "nodes.AnyNode", "nodes.StringNode", "nodes.IntegerNode",
        "nodes.FloatNode", "nodes.BooleanNode", "nodes.BytesNode", "nodes.PathNode", "nodes.EnumNode",
        "nodes.InterpolationResultNode", "nodes.ValueNode")},
    "collections.defaultdict": _DefaultDict,
    **{f"typing.{name}": type(name, (_Typing,), {}) for name in ("Any", "Dict", "List")},
}
# omegaconf's metadata names builtin types as values (object_type dict, key_type str ...): the
# types themselves, whose construction runs nothing but the builtin's own.
_TORCH_STAND_INS = [*((cls, name) for name, cls in _OMEGACONF_NAMES.items()), dict, list, int, float, str, bool]


def _plain(obj: Any, container: Any = None) -> Any:
    """``obj`` with every omegaconf stand-in replaced by the dict / list / value it holds; a
    container holding none is returned as it is (a state dict keeps its type)."""
    if isinstance(obj, _OmegaConf):
        return obj.plain()
    if isinstance(obj, dict):
        items = {k: _plain(v) for k, v in obj.items()}
        if container is dict or type(obj) is _DefaultDict:
            return items
        return obj if all(items[k] is v for k, v in obj.items()) else items
    if isinstance(obj, (list, tuple)):
        values = [_plain(v) for v in obj]
        if container is not list and all(a is b for a, b in zip(values, obj)):
            return obj
        return tuple(values) if type(obj) is tuple and container is not list else values
    return obj


def read_checkpoint(path: str | Path) -> Any:
    """The object stored in ``path``: a torch file (zip or legacy) or a plain pickle."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        if zipfile.is_zipfile(path) or path.suffix != ".pkl":
            import torch  # here, not at the top: run-all and collate read .pkl inits without it (~1 s a process)

            # argparse.Namespace: training scripts often save their args beside the weights.
            built = _OmegaConf.built
            with torch.serialization.safe_globals([argparse.Namespace, *_TORCH_STAND_INS]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
            return _plain(obj) if _OmegaConf.built != built else obj
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
