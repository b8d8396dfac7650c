"""convert: every framework layout of transfer/checkpoint_layouts.py, built around one set of random
trunk weights, converts to exactly those tensors; ambiguity, missing / twice-reached / misshapen
trunk keys and untrained trunks are refused naming why."""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import pickle
import re
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn as nn

from engine_fixtures import move_bn_off_init
from mocobench import UserError
from mocobench.checkpoints import read_checkpoint
from mocobench.cli import main
from mocobench.conventions import RGB_IMAGENET
from mocobench.resnet import ResNetShape, build_resnet, tv_to_d2
from mocobench.transfer.checkpoint_layouts import LAYOUTS
from mocobench.transfer.convert import convert_checkpoint, load_detectron2_weights

torch.set_num_threads(1)
SHAPE = ResNetShape(50, 8, 16, 4)  # the ResNet-50 layout at the engine tests' tiny width


def trunk_weights(seed: int = 0, trained: bool = True) -> dict[str, torch.Tensor]:
    """torchvision-named trunk (no fc) of a tiny-width R50; BN statistics moved off their init."""
    torch.manual_seed(seed)
    net = build_resnet(SHAPE)
    if trained:
        move_bn_off_init(net)
    return {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("fc.")}


TRUNK = trunk_weights(0)
OTHER = trunk_weights(1)  # the second encoder of a file that holds two
HEAD = {"0.weight": torch.randn(32, 128), "0.bias": torch.randn(32)}
CHILD = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}


def under(prefix: str, weights: dict) -> dict:
    return {prefix + k: v for k, v in weights.items()}


def children(weights: dict) -> dict:
    """nn.Sequential(*resnet.children()[:-1]) names: 0.weight, 1.running_mean, 4.0.conv1.weight ..."""
    return {CHILD[k.split(".", 1)[0]] + "." + k.split(".", 1)[1]: v for k, v in weights.items()}


def lightning(state: dict) -> dict:
    return {"state_dict": state, "pytorch-lightning_version": "2.1.0", "epoch": 9, "global_step": 90,
            "optimizer_states": [], "lr_schedulers": []}


# deepmind/byol (JAX / haiku): byol/utils/checkpointing.py dill-dumps (protocol 2) {'experiment_state':
# byol_experiment._ByolExperimentState(online_params, target_params, online_state, target_state,
# opt_state), 'step', 'rng'} of numpy arrays (jax.device_get). Stand-ins of its classes, under their
# real module names, so the pickle names the same globals; haiku's FlatMapping pickles as
# FlatMapping(dict) (haiku/_src/data_structures.py).
BYOL_STATE = collections.namedtuple("_ByolExperimentState", "online_params target_params online_state target_state "
                                    "opt_state", module="byol.byol_experiment")
LARS_STATE = collections.namedtuple("ScaleByLarsState", "mu", module="byol.utils.optimizers")
DECAY_STATE = collections.namedtuple("AddWeightDecayState", "", module="byol.utils.optimizers")
SCALE_STATE = collections.namedtuple("ScaleState", "", module="optax._src.transform")


class FlatMapping(dict):
    def __reduce__(self):
        return type(self), (dict(self),)


def _reconstruct_array(fun, args, arr_state, aval_state):
    """Stands for later jax's jax._src.array._reconstruct_array, which jax arrays pickle through."""
    raise AssertionError("only pickled by name")


class JaxArray:
    """A jax array as later jax pickles it: numpy's reconstruction, then jax's metadata."""

    def __init__(self, value: np.ndarray) -> None:
        self.value = value

    def __reduce__(self):
        fun, args, state = self.value.__reduce__()
        return _reconstruct_array, (fun, args, state, {"weak_type": False})


FlatMapping.__module__ = "haiku._src.data_structures"
_reconstruct_array.__module__ = "jax._src.array"
JAX_CLASSES = (BYOL_STATE, LARS_STATE, DECAY_STATE, SCALE_STATE, FlatMapping, _reconstruct_array)


@contextlib.contextmanager
def jax_modules():
    """The modules of JAX_CLASSES in sys.modules while a pickle of them is written (then removed)."""
    added = []
    for cls in JAX_CLASSES:
        parts = cls.__module__.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                added.append(name)
        setattr(sys.modules[cls.__module__], cls.__qualname__, cls)
    try:
        yield
    finally:
        for name in added:
            del sys.modules[name]


def haiku_names(weights: dict) -> tuple[dict, dict]:
    """(params, state) of deepmind/byol's haiku ResNet (byol/utils/networks.py ResNetTorso, dm-haiku's
    nets/resnet.py BlockV1) holding torchvision-named ``weights``: HWIO kernels, (1, 1, 1, C) BN scale /
    offset, BN statistics as the state's mean_ema / var_ema averages; plus the projector and classifier."""
    params, state = {}, {}
    for name, value in weights.items():
        module, leaf = name.rsplit(".", 1)
        if leaf == "num_batches_tracked":
            continue
        m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn|downsample\.)(\d)", module)
        if m:
            group, block, kind, i = int(m[1]) - 1, int(m[2]), m[3], int(m[4])
            tail = {"conv": f"conv_{i - 1}", "bn": f"batchnorm_{i - 1}",
                    "downsample.": "shortcut_conv" if i == 0 else "shortcut_batchnorm"}[kind]
            hk = f"res_net50/~/block_group_{group}/~/block_{block}/~/{tail}"
        else:
            hk = {"conv1": "res_net50/~/initial_conv", "bn1": "res_net50/~/initial_batchnorm"}[module]
        v = value.numpy()
        if leaf == "weight" and v.ndim == 4:
            params.setdefault(hk, {})["w"] = np.ascontiguousarray(v.transpose(2, 3, 1, 0))  # OIHW -> HWIO
        elif leaf in ("weight", "bias"):
            params.setdefault(hk, {})["scale" if leaf == "weight" else "offset"] = v.reshape(1, 1, 1, -1)
        else:
            ema = {"average": v.reshape(1, 1, 1, -1), "hidden": v.reshape(1, 1, 1, -1) * 0.9,
                   "counter": np.array(7, np.int32)}
            state[hk + ("/~/mean_ema" if leaf == "running_mean" else "/~/var_ema")] = ema
    params["projector/~/linear"] = {"w": np.ones((32, 16), np.float32), "b": np.zeros(16, np.float32)}
    params["projector/~/batch_norm"] = {"scale": np.ones((1, 16), np.float32), "offset": np.zeros((1, 16), np.float32)}
    state["projector/~/batch_norm/~/mean_ema"] = {"average": np.zeros((1, 16), np.float32),
                                                  "hidden": np.zeros((1, 16), np.float32),
                                                  "counter": np.array(7, np.int32)}
    params["classifier"] = {"w": np.ones((32, 10), np.float32), "b": np.zeros(10, np.float32)}
    return ({k: FlatMapping(v) for k, v in params.items()},
            {k: FlatMapping(v) for k, v in state.items()})


def byol_jax_checkpoint(online: dict, target: dict) -> dict:
    online_params, online_state = haiku_names(online)
    target_params, target_state = haiku_names(target)
    opt_state = [DECAY_STATE(), LARS_STATE(mu=FlatMapping({k: FlatMapping({n: np.zeros_like(v) for n, v in p.items()})
                                                           for k, p in online_params.items()})), SCALE_STATE()]
    return {"experiment_state": BYOL_STATE(FlatMapping(online_params), FlatMapping(target_params),
                                           FlatMapping(online_state), FlatMapping(target_state), opt_state),
            "step": 300000, "rng": np.array([0, 42], np.uint32)}


def write(tmp_path, name: str, ckpt) -> "os.PathLike":
    """``ckpt`` saved as its framework does: deepmind/byol's a protocol-2 pickle (.pkl), the rest torch.save."""
    if name == "byol_jax":
        path = tmp_path / "pretrain_res50x1.pkl"
        with jax_modules():
            path.write_bytes(pickle.dumps(ckpt, protocol=2))
        return path
    path = tmp_path / f"{name}.pth"
    torch.save(ckpt, path)
    return path


# name -> (checkpoint as its framework saves it (see the layout table's sources), options to convert it)
def layouts() -> dict[str, tuple[dict, dict]]:
    fc = {"fc.weight": torch.randn(10, 128), "fc.bias": torch.randn(10)}
    return {
        "torchvision": ({**TRUNK, **fc}, {}),
        "timm": ({"epoch": 3, "arch": "resnet50", "version": 2, "state_dict": {**TRUNK, **fc}, "metric": 1.0}, {}),
        "moco": ({"epoch": 200, "arch": "resnet50", "state_dict": {
            **under("module.encoder_q.", TRUNK), **under("module.encoder_q.fc.", HEAD),
            **under("module.encoder_k.", OTHER), **under("module.encoder_k.fc.", HEAD),
            "module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}},
            {"encoder": "query"}),
        "mocov3": ({"epoch": 100, "arch": "resnet50", "state_dict": {
            **under("module.base_encoder.", TRUNK), **under("module.base_encoder.fc.", HEAD),
            **under("module.momentum_encoder.", OTHER), **under("module.predictor.", HEAD)}}, {"encoder": "base"}),
        "dino": ({"student": {**under("module.backbone.", OTHER), **under("module.head.mlp.", HEAD)},
                  "teacher": {**under("module.backbone.", TRUNK), **under("module.head.mlp.", HEAD)},
                  "epoch": 100, "args": argparse.Namespace(arch="resnet50"),
                  "dino_loss": {"center": torch.zeros(1, 64)}}, {"encoder": "teacher"}),
        "vissl": ({"phase_idx": 3, "iteration": 500, "classy_state_dict": {"base_model": {"model": {
            "trunk": under("_feature_blocks.", TRUNK), "heads": under("0.clf.", HEAD)}, "meta": {}}}}, {}),
        "mmselfsup": ({"meta": {"epoch": 200}, "message_hub": {}, "state_dict": {
            **under("backbone.", TRUNK), **under("neck.mlp.", HEAD),
            **under("momentum_encoder.module.0.", OTHER), **under("momentum_encoder.module.1.mlp.", HEAD),
            "momentum_encoder.steps": torch.tensor(5), "queue": torch.randn(128, 64)}}, {"encoder": "backbone"}),
        "lightning": (lightning({**under("backbone.", TRUNK), **under("projector.", HEAD),
                                 **under("momentum_backbone.", OTHER), **under("momentum_projector.", HEAD),
                                 **under("predictor.", HEAD), "classifier.weight": torch.randn(10, 128)}),
                      {"encoder": "backbone"}),
        "lightly": (lightning({**under("backbone.", children(TRUNK)), **under("projection_head.layers.", HEAD),
                               **under("backbone_momentum.", children(OTHER)),
                               **under("prediction_head.layers.", HEAD)}), {"encoder": "backbone"}),
        "byol": ({**under("net.", {**TRUNK, **fc}), **under("online_encoder.net.", {**TRUNK, **fc}),
                  **under("online_encoder.projector.net.", HEAD), **under("target_encoder.net.", {**OTHER, **fc}),
                  **under("target_encoder.projector.net.", HEAD), **under("online_predictor.net.", HEAD)},
                 {"encoder": "online"}),
        "byol_jax": (byol_jax_checkpoint(TRUNK, OTHER), {"encoder": "online"}),
        "swav": ({"epoch": 800, "state_dict": {**under("module.", TRUNK), **under("module.projection_head.", HEAD),
                                               "module.prototypes.weight": torch.randn(30, 32)}}, {}),
        "vicreg": ({"epoch": 100, "model": {**under("module.backbone.", TRUNK),
                                            **under("module.projector.", HEAD)}, "optimizer": {}}, {}),
        "barlowtwins": ({"epoch": 100, "model": {**under("module.backbone.", TRUNK), **under("module.projector.", HEAD),
                                                 "module.bn.running_mean": torch.zeros(32),
                                                 "module.bn.running_var": torch.ones(32)}}, {}),
        "simsiam": ({"epoch": 100, "arch": "resnet50", "state_dict": {
            **under("module.encoder.", TRUNK), **under("module.encoder.fc.", HEAD),
            **under("module.predictor.", HEAD)}}, {}),
        "densecl": ({"meta": {}, "state_dict": {
            **under("backbone.", TRUNK), **under("encoder_q.0.", TRUNK), **under("encoder_q.1.mlp.", HEAD),
            **under("encoder_k.0.", OTHER), "queue": torch.randn(128, 64), "queue_ptr": torch.zeros(1),
            "queue2": torch.randn(128, 64), "queue2_ptr": torch.zeros(1)}}, {"encoder": "query"}),
        "pixpro": ({"opt": argparse.Namespace(arch="resnet50"), "epoch": 100, "model": {
            **under("module.encoder.", TRUNK), **under("module.encoder_k.", OTHER),
            **under("module.projector.linear1.", HEAD), **under("module.value_transform.conv.", HEAD)}},
            {"encoder": "encoder"}),
    }


def assert_is(converted, source: dict) -> None:
    """Every trunk tensor of ``source`` converted once, to an equal array, and nothing else."""
    assert set(converted.model) == {tv_to_d2(k) for k in source}
    for k, v in source.items():
        assert np.array_equal(converted.model[tv_to_d2(k)], v.numpy()), k


def without_counters(weights: dict) -> dict:
    """``weights`` less BN's num_batches_tracked (optional; haiku's BN keeps no such tensor)."""
    return {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}


def test_the_table_and_the_tests_name_the_same_layouts():
    assert {layout.name for layout in LAYOUTS} == set(layouts())


@pytest.mark.parametrize("name", list(layouts()))
def test_every_layout_converts_to_its_trunk(name, tmp_path):
    ckpt, options = layouts()[name]
    path = write(tmp_path, name, ckpt)
    converted = convert_checkpoint(path, allow_untrained=False, **options)
    assert converted.notes[0] == f"format: {name} (auto-detected)", converted.notes
    assert_is(converted, without_counters(TRUNK) if name == "byol_jax" else TRUNK)
    assert converted.meta == {"source_format": name, **RGB_IMAGENET, **SHAPE.as_dict()}
    assert not any("neither trunk nor a known head" in n for n in converted.notes), converted.notes
    assert convert_checkpoint(path, name, **options).notes[0] == f"format: {name} (as given)"


# A file holding two distinct encoders: (encoder chosen by the framework's own export / evaluation,
# words of the hint naming it, the other encoder)
TWO_ENCODERS = {
    "moco": ("query", "MoCo's own converter (detection/convert-pretrain-to-detectron2.py) takes query", "key"),
    "mocov3": ("base", "MoCo v3's main_lincls.py takes base", "momentum"),
    "dino": ("teacher", "DINO's eval_linear.py (--checkpoint_key teacher) takes teacher", "student"),
    "mmselfsup": ("backbone", "takes backbone", "momentum"),
    "lightning": ("backbone", "solo-learn's main_linear.py takes backbone", "momentum"),
    "lightly": ("backbone", "takes backbone", "momentum"),
    "byol": ("online", "takes online", "target"),
    "byol_jax": ("online", "deepmind/byol's eval_experiment.py takes online", "target"),
    "densecl": ("query", "takes query", "key"),
    "pixpro": ("encoder", "PixPro's convert_pretrain_to_d2.py takes encoder", "key"),
}


@pytest.mark.parametrize("name", list(TWO_ENCODERS))
def test_two_encoders_are_an_error_naming_them_unless_one_is_chosen(name, tmp_path):
    taken, hint, other = TWO_ENCODERS[name]
    path = write(tmp_path, name, layouts()[name][0])
    with pytest.raises(UserError) as e:
        convert_checkpoint(path)
    message = str(e.value)
    assert message.startswith(f"{path}: holds 2 candidate encoders: ") and "\n" not in message, message
    assert f"{taken} (" in message and f"{other} (" in message, message
    assert f"{hint}: add --encoder {taken}" in message, message
    expected = without_counters if name == "byol_jax" else dict
    assert_is(convert_checkpoint(path, encoder=taken), expected(TRUNK))
    assert_is(convert_checkpoint(path, encoder=other), expected(OTHER))


def test_the_error_says_where_each_encoder_sits_and_the_cli_exits_without_output(tmp_path, capsys):
    for name, words in [("moco", "query (state_dict/module.encoder_q.*, 318 tensors), key "
                                 "(state_dict/module.encoder_k.*, 318 tensors); MoCo's own converter"),
                        ("dino", "teacher (teacher/module.backbone.*, 318 tensors), student "
                                 "(student/module.backbone.*, 318 tensors); DINO's eval_linear.py")]:
        path = write(tmp_path, name, layouts()[name][0])
        out = tmp_path / f"{name}.pkl"
        assert main(["convert", str(path), str(out)]) == 2 and not out.exists()
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and words in err, err
        taken = TWO_ENCODERS[name][0]
        assert main(["convert", str(path), str(out), "--encoder", taken]) == 0 and out.exists()
        assert f"encoder: {taken} (" in capsys.readouterr().out


def test_encoders_holding_the_same_tensors_are_one(tmp_path):
    """A MoCo file saved before the key encoder moved (encoder_k == encoder_q), DenseCL's backbone ==
    encoder_q.0 with no key encoder: one candidate, converted without --encoder."""
    torch.save({"state_dict": {**under("module.encoder_q.", TRUNK), **under("module.encoder_k.", TRUNK),
                               "module.queue": torch.randn(128, 64)}}, tmp_path / "moco0.pth.tar")
    converted = convert_checkpoint(tmp_path / "moco0.pth.tar")
    assert_is(converted, TRUNK)
    assert any(n.startswith("encoder: query (state_dict/module.encoder_q.*; the only one)") for n in converted.notes)
    torch.save({"state_dict": {**under("backbone.", TRUNK), **under("encoder_q.0.", TRUNK),
                               "queue2": torch.randn(128, 64)}}, tmp_path / "densecl.pth")
    assert_is(convert_checkpoint(tmp_path / "densecl.pth"), TRUNK)


def test_a_wrong_encoder_name_is_refused(tmp_path):
    path = write(tmp_path, "moco", layouts()["moco"][0])
    with pytest.raises(UserError, match=r"--encoder student: moco checkpoints hold query / key"):
        convert_checkpoint(path, encoder="student")


def test_dino_key_chooses_too(tmp_path):
    path = write(tmp_path, "dino", layouts()["dino"][0])
    assert_is(convert_checkpoint(path, key="teacher"), TRUNK)
    assert_is(convert_checkpoint(path, key="student"), OTHER)


def test_a_job_reading_an_unconverted_two_encoder_file_says_how_to_convert_it(tmp_path):
    path = write(tmp_path, "moco", layouts()["moco"][0])
    with pytest.raises(UserError) as e:
        load_detectron2_weights(path)
    message = str(e.value)
    assert message.startswith(f"{path}: holds 2 candidate encoders: query (") and "\n" not in message
    assert message.endswith(f"convert it first: mocobench convert {path} OUT.pkl --encoder query"), message


def test_timm_ema_is_a_second_candidate(tmp_path):
    path = tmp_path / "timm.pth.tar"
    torch.save({"state_dict": TRUNK, "state_dict_ema": OTHER, "version": 2}, path)
    with pytest.raises(UserError, match=r"candidate encoders: model \(state_dict/\*.*ema \(state_dict_ema/\*"):
        convert_checkpoint(path)
    assert_is(convert_checkpoint(path, key="state_dict_ema"), OTHER)
    assert_is(convert_checkpoint(path, encoder="model"), TRUNK)
    with pytest.raises(UserError, match=r"--key ema: no such dict in the file \(its top-level dicts: state_dict, "
                                        r"state_dict_ema"):
        convert_checkpoint(path, key="ema")


def test_other_depths_convert_alike(tmp_path):
    torch.manual_seed(4)
    net = build_resnet(ResNetShape(18, 8, 8, 8))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
    trunk = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    torch.save({"state_dict": {**under("module.encoder.", trunk), **under("module.predictor.", HEAD)}},
               tmp_path / "simsiam_r18.pth")
    converted = convert_checkpoint(tmp_path / "simsiam_r18.pth", allow_untrained=False)
    assert converted.meta["depth"] == 18 and converted.meta["source_format"] == "simsiam"
    assert_is(converted, trunk)


def test_two_layouts_with_different_trunks_are_refused(tmp_path):
    path = tmp_path / "both.pth"
    torch.save({"state_dict": {**under("module.encoder_q.", TRUNK), **under("backbone.", OTHER)}}, path)
    with pytest.raises(UserError, match=r"layouts holding different trunks: .*moco \(state_dict/module\.encoder_q\.\*\)"
                                        r".*choose one with --format"):
        convert_checkpoint(path)
    assert_is(convert_checkpoint(path, "moco"), TRUNK)
    assert_is(convert_checkpoint(path, "lightning"), OTHER)


@pytest.mark.parametrize("damage, words", [
    ("missing", "1 R50 keys missing: res4.1.conv2.norm.running_var"),
    ("shape", "res2.0.conv1.weight (4, 8, 1, 1) != (4, 8, 1, 1)"),
    ("twice", "conv1.weight is reached twice, from conv1.weight and module.conv1.weight"),
    ("extra", "1 keys that are neither trunk nor a known head or projector, left out: attn_pool.weight"),
])
def test_nothing_is_silent(damage, words, tmp_path):
    trunk = dict(TRUNK)
    if damage == "missing":
        del trunk["layer3.1.bn2.running_var"]
    elif damage == "shape":
        trunk["layer1.0.conv1.weight"] = torch.randn(4, 8, 3, 3)
        words = "res2.0.conv1.weight (4, 8, 3, 3) != (4, 8, 1, 1)"
    elif damage == "twice":
        trunk["module.conv1.weight"] = trunk["conv1.weight"]
    else:
        trunk = {**under("module.backbone.", trunk), "module.backbone.attn_pool.weight": torch.zeros(3)}
    path = tmp_path / f"{damage}.pth"
    torch.save({"model": trunk} if damage == "extra" else trunk, path)
    if damage == "extra":
        converted = convert_checkpoint(path)
        assert words in converted.notes[-3] and "attn_pool.weight" in converted.dropped
        return
    with pytest.raises(UserError) as e:
        convert_checkpoint(path)
    assert str(e.value).startswith(str(path)) and words in str(e.value) and "\n" not in str(e.value)


def test_untrained_trunk_is_refused_unless_allowed(tmp_path, capsys):
    path = tmp_path / "init.pth"
    torch.save({"teacher": under("backbone.", trunk_weights(2, trained=False))}, path)
    out = tmp_path / "init.pkl"
    with pytest.raises(UserError, match=r"init.pth: its trunk looks untrained: all 53 BN layers hold their initial "
                                        r"state .* conv weights are 1\.\d\dx He init's scale; .*--allow-untrained"):
        convert_checkpoint(path, allow_untrained=False)
    assert main(["convert", str(path), str(out)]) == 2 and not out.exists()
    assert "looks untrained" in capsys.readouterr().err
    assert main(["convert", str(path), str(out), "--allow-untrained", "--format", "dino"]) == 0
    assert "warning: its trunk looks untrained" in capsys.readouterr().out
    # Frozen BN (mean 0, var 1, a learned affine, as MSRA weights) is not "untrained".
    frozen = {k: (torch.zeros_like(v) if k.endswith("running_mean") else torch.ones_like(v)
                  if k.endswith("running_var") else v) for k, v in TRUNK.items()}
    torch.save(frozen, tmp_path / "frozen.pth")
    assert_is(convert_checkpoint(tmp_path / "frozen.pth", allow_untrained=False), frozen)


def test_cli_writes_the_conventions_and_names_the_encoder(tmp_path, capsys):
    path = tmp_path / "dino.pth"
    torch.save(layouts()["dino"][0], path)
    assert main(["convert", str(path), str(tmp_path / "x.pkl")]) == 2
    assert "add --encoder teacher" in capsys.readouterr().err
    assert main(["convert", str(path), str(tmp_path / "dino.pkl"), "--encoder", "teacher"]) == 0
    printed = capsys.readouterr().out
    assert "format: dino (auto-detected)" in printed
    assert "encoder: teacher (teacher/module.backbone.*; as given)" in printed
    assert "expects: RGB" in printed
    with open(tmp_path / "dino.pkl", "rb") as f:
        written = pickle.load(f)
    assert written["__mocobench__"] == {"source_format": "dino", **RGB_IMAGENET, **SHAPE.as_dict()}
    assert written["model"].keys() == {tv_to_d2(k) for k in TRUNK}


def test_deepmind_byol_kernels_are_transposed_back_and_statistics_come_from_the_state(tmp_path):
    ckpt = byol_jax_checkpoint(TRUNK, OTHER)
    params, state = haiku_names(TRUNK)
    w = params["res_net50/~/initial_conv"]["w"]
    # jax arrays as later jax pickles them read as numpy arrays (2020's pickled as numpy arrays already)
    ckpt["experiment_state"].online_params["res_net50/~/initial_conv"]["w"] = JaxArray(w)
    ckpt["rng"] = JaxArray(np.array([0, 42], np.uint32))
    path = write(tmp_path, "byol_jax", ckpt)
    assert read_checkpoint(path)["rng"].tolist() == [0, 42]
    assert w.shape == (7, 7, 3, 8)  # HWIO
    converted = convert_checkpoint(path, encoder="online", allow_untrained=False)
    assert converted.model["stem.conv1.weight"].shape == (8, 3, 7, 7)
    assert np.array_equal(converted.model["stem.conv1.weight"], w.transpose(3, 2, 0, 1))
    ema = state["res_net50/~/block_group_3/~/block_0/~/shortcut_batchnorm/~/var_ema"]["average"]
    assert np.array_equal(converted.model["res5.0.shortcut.norm.running_var"], ema.reshape(-1))
    assert any(n.startswith("encoder: online (online_params/*; as given); left out: target") for n in converted.notes)
    assert {"projector/~/linear/w", "classifier/b"} <= set(converted.dropped), converted.dropped
    # The plain form (experiment_state as a dict, e.g. re-saved with _asdict()) and --key experiment_state read alike.
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({k: {m: dict(v) for m, v in getattr(layouts()["byol_jax"][0]["experiment_state"],
                                                                      k).items()}
                                    for k in ("online_params", "online_state")}))
    assert_is(convert_checkpoint(plain), without_counters(TRUNK))
    assert_is(convert_checkpoint(path, key="experiment_state", encoder="target"), without_counters(OTHER))


def test_deepmind_byol_without_bn_statistics_names_them_missing(tmp_path):
    params, _ = haiku_names(TRUNK)
    path = tmp_path / "params_only.pkl"
    path.write_bytes(pickle.dumps({"online_params": {k: dict(v) for k, v in params.items()}}))
    with pytest.raises(UserError, match=r"106 R50 keys missing: res2\.0\.conv1\.norm\.\{running_mean, running_var\}"):
        convert_checkpoint(path)


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_byol_pickle_with_any_other_class_is_refused_in_one_line(tmp_path, capsys):
    marker = tmp_path / "ran"
    ckpt = byol_jax_checkpoint(TRUNK, OTHER)
    ckpt["rng"] = Payload(marker)
    path = tmp_path / "evil_byol.pkl"
    with jax_modules():
        path.write_bytes(pickle.dumps(ckpt, protocol=2))
    with pytest.raises(UserError, match=r"evil_byol\.pkl: not a readable checkpoint \(UnpicklingError: refusing to "
                                        r"load (posix|os)\.system"):
        convert_checkpoint(path)
    assert main(["convert", str(path), str(tmp_path / "out.pkl"), "--encoder", "online"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "refusing to load" in err and not marker.exists()
    assert not (tmp_path / "out.pkl").exists()
    # A class of the right module but not among those read (here: haiku's transform) is refused alike.
    sneaky = tmp_path / "sneaky.pkl"
    sneaky.write_bytes(b"\x80\x02chaiku._src.transform\ntransform\nq\x00.")
    with pytest.raises(UserError, match=r"refusing to load haiku\._src\.transform\.transform"):
        convert_checkpoint(sneaky)


def _dict_config(content: dict):
    """An omegaconf DictConfig (solo-learn's cfg); where omegaconf is not installed, a stand-in pickled
    under the same global (omegaconf.dictconfig.DictConfig) with the same state keys."""
    try:
        from omegaconf import OmegaConf
    except ImportError:
        class DictConfig:
            def __init__(self, content):
                self.__dict__.update(_metadata=None, _parent=None, _content=content)

        DictConfig.__module__, DictConfig.__qualname__ = "omegaconf.dictconfig", "DictConfig"
        sys.modules.setdefault("omegaconf", types.ModuleType("omegaconf"))
        sys.modules.setdefault("omegaconf.dictconfig", types.ModuleType("omegaconf.dictconfig")).DictConfig = DictConfig
        return DictConfig(content)
    return OmegaConf.create(content)


def test_solo_learn_checkpoint_with_omegaconf_hyper_parameters_reads(tmp_path):
    """solo-learn saves its omegaconf cfg as the Lightning checkpoint's hyper_parameters: torch's
    weights-only load refuses the file; the suite's reader rebuilds the config as plain dicts."""
    cfg = _dict_config({"method": "byol", "backbone": {"name": "resnet50", "kwargs": {}},
                        "optimizer": {"lr": 1.0, "kwargs": {"eta": 0.02}}, "data": {"num_classes": None},
                        "augmentations": [{"crop_size": 224, "num_crops": 2}], "name": "byol-${method}"})
    ckpt = lightning({**under("backbone.", TRUNK), **under("projector.", HEAD), **under("momentum_backbone.", OTHER)})
    ckpt |= {"hyper_parameters": {"cfg": cfg}, "hparams_name": "kwargs"}
    path = tmp_path / "solo.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(pickle.UnpicklingError, match="omegaconf"):
        torch.load(path, weights_only=True)
    read = read_checkpoint(path)
    assert read["hyper_parameters"] == {"cfg": {
        "method": "byol", "backbone": {"name": "resnet50", "kwargs": {}},
        "optimizer": {"lr": 1.0, "kwargs": {"eta": 0.02}}, "data": {"num_classes": None}, "augmentations": [{"crop_size": 224, "num_crops": 2}], "name": "byol-${method}"}}
    assert_is(convert_checkpoint(path, encoder="backbone"), TRUNK)
    assert main(["convert", str(path), str(tmp_path / "solo.pkl"), "--encoder", "backbone"]) == 0


@pytest.mark.slow
def test_third_party_layout_end_to_end(tmp_path, cli):
    """A DINO checkpoint -> convert -> run-all (beside a supervised init) -> collate -> audit, tiny scale."""
    import json

    from engine_fixtures import write_tiny_config
    from mocobench.transfer.datasets.synth import write_synthetic

    torch.save(layouts()["dino"][0], tmp_path / "dino.pth")
    torch.save(trunk_weights(3), tmp_path / "sup.pth")
    assert main(["convert", str(tmp_path / "dino.pth"), str(tmp_path / "dino.pkl"), "--encoder", "teacher"]) == 0
    assert main(["convert", str(tmp_path / "sup.pth"), str(tmp_path / "sup.pkl")]) == 0
    write_synthetic(tmp_path / "data", 0, "tiny")
    write_tiny_config(tmp_path / "det.yaml")
    (tmp_path / "tiny.yaml").write_text("CONFIG: {RGB: det.yaml}\nTRIALS: 2\nMETRICS: [bbox/AP50]\n")
    inits = tmp_path / "inits.yaml"
    inits.write_text("supervised: {weights: sup.pkl}\ndino: {weights: dino.pkl}\n")  # format read from the .pkl
    out = tmp_path / "out"
    res = cli("run-all", "--tables", tmp_path / "tiny.yaml", "--inits", inits, "--output", out,
              "--data-root", tmp_path / "data")
    assert res.returncode == 0, res.stdout + res.stderr
    res = cli("collate", out, "--out", tmp_path / "report", "--inits", inits, "--tables", tmp_path / "tiny.yaml")
    assert res.returncode == 0 and "dino" in (tmp_path / "report" / "report.md").read_text(), res.stderr
    res = cli("audit", "--candidate", out / "tiny" / "dino", "--baseline", out / "tiny" / "supervised",
              "--json", tmp_path / "audit.json")
    assert res.returncode in (0, 1), res.stdout + res.stderr
    verdicts = {m["metric"]: m for m in json.loads((tmp_path / "audit.json").read_text())["metrics"]}
    assert verdicts["bbox/AP50"]["n_candidate"] == verdicts["bbox/AP50"]["n_baseline"] == 2
    assert verdicts["bbox/AP50"]["verdict"] in ("better", "worse", "within noise")
