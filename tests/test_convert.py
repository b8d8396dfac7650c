"""convert: MoCo / torchvision / detectron2 checkpoints -> detectron2 .pkl, and back into a trunk."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from engine_fixtures import move_bn_off_init
from mocobench import UserError
from mocobench.atomic import write_pickle
from mocobench.resnet import ResNetShape, build_resnet
from mocobench.transfer.convert import BGR_CAFFE, RGB_IMAGENET, convert_checkpoint, load_detectron2_weights, load_into_trunk

torch.set_num_threads(1)

MODELS = {
    "tv_r50": (lambda: torchvision.models.resnet50(), ResNetShape(50)),
    "r50_narrow": (lambda: build_resnet(ResNetShape(50, 16, 64, 16)), ResNetShape(50, 16, 64, 16)),
    "tv_r18": (lambda: torchvision.models.resnet18(), ResNetShape(18, 64, 64, 64)),
    "r34_narrow": (lambda: build_resnet(ResNetShape(34, 8, 16, 16)), ResNetShape(34, 8, 16, 16)),
}


def trained_like(make) -> nn.Module:
    """A model whose BN statistics are not the init's 0/1, so equality means something."""
    torch.manual_seed(0)
    return move_bn_off_init(make()).eval()


def moco_checkpoint(model: nn.Module, head: str) -> dict:
    """The MoCo repo's checkpoint layout around a torchvision trunk (v1 fc or v2 MLP head)."""
    dim = model.fc.in_features
    trunk = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    heads = ({"fc.0.weight": torch.randn(dim, dim), "fc.0.bias": torch.randn(dim),
              "fc.2.weight": torch.randn(128, dim), "fc.2.bias": torch.randn(128)} if head == "v2"
             else {"fc.weight": torch.randn(128, dim), "fc.bias": torch.randn(128)})
    encoder = {**trunk, **heads}
    state = {f"module.encoder_q.{k}": v for k, v in encoder.items()}
    state |= {f"module.encoder_k.{k}": v + 1 for k, v in encoder.items()}
    state |= {"module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}


def authors_converter(checkpoint: dict) -> dict:
    """The mapping of the MoCo authors' detection/convert-pretrain-to-detectron2.py (the spec)."""
    out = {}
    for k, v in checkpoint["state_dict"].items():
        if not k.startswith("module.encoder_q."):
            continue
        k = k.replace("module.encoder_q.", "")
        if "layer" not in k:
            k = "stem." + k
        for t in [1, 2, 3, 4]:
            k = k.replace(f"layer{t}", f"res{t + 1}")
        for t in [1, 2, 3]:
            k = k.replace(f"bn{t}", f"conv{t}.norm")
        k = k.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        out[k] = v.numpy()
    return {"model": out, "__author__": "MOCO", "matching_heuristics": True}


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return nn.Sequential(*list(model.children())[:-1])(x)


def assert_same_arrays(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("name", list(MODELS))
def test_moco_checkpoint_converts_like_the_authors_and_loads_back(name, tmp_path, cli):
    make, shape = MODELS[name]
    model = trained_like(make)
    ckpt = moco_checkpoint(model, head="v1" if name == "tv_r18" else "v2")
    src = tmp_path / "checkpoint_0199.pth.tar"
    torch.save(ckpt, src)

    refused = cli("convert", src, tmp_path / "moco.pkl")  # query and key: one must be chosen
    assert refused.returncode == 2 and "MoCo's own converter" in refused.stderr
    assert "add --encoder query" in refused.stderr
    out = cli("convert", src, tmp_path / "moco.pkl", "--encoder", "query")  # what the authors' converter keeps
    assert out.returncode == 0, out.stderr
    assert "format: moco (auto-detected)" in out.stdout and "fc." in out.stdout
    with open(tmp_path / "moco.pkl", "rb") as f:
        written = pickle.load(f)

    reference = authors_converter(ckpt)["model"]
    heads = {k for k in reference if k.startswith("stem.fc")}
    assert heads  # the authors keep the head; we drop it
    assert_same_arrays(written["model"], {k: v for k, v in reference.items() if k not in heads})
    assert written["__author__"] and written["matching_heuristics"] is True
    assert written["__mocobench__"] == {"source_format": "moco", **RGB_IMAGENET, **shape.as_dict()}

    trunk = build_resnet(shape).eval()
    trunk.fc = nn.Identity()
    missing, unexpected = load_into_trunk(trunk, written["model"])
    assert missing == [] and unexpected == []
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(features(trunk, x), features(model, x))


def test_torchvision_state_dict_ddp_wrapped(tmp_path):
    model = trained_like(MODELS["r50_narrow"][0])
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "sup.pth")
    converted = convert_checkpoint(tmp_path / "sup.pth")
    assert converted.notes[0] == "format: torchvision (auto-detected)"
    assert sorted(converted.dropped) == ["fc.bias", "fc.weight"]
    assert_same_arrays(converted.model, reference_without_head(model))


def test_detectron2_pkl_passes_through_and_keeps_conventions(tmp_path):
    model = trained_like(MODELS["r34_narrow"][0])
    ckpt = moco_checkpoint(model, head="v2")
    ours = convert_checkpoint(_save(tmp_path / "m.pth.tar", ckpt), encoder="query")
    path = tmp_path / "ours.pkl"
    write_pickle(path, ours.file_contents())  # as the CLI writes it
    again = convert_checkpoint(path)
    assert again.notes[0] == "format: detectron2 (auto-detected)"
    assert_same_arrays(again.model, ours.model)
    assert again.meta == ours.meta

    # The authors' own .pkl (head kept as stem.fc.*, __author__ MOCO) means torchvision conventions.
    theirs = tmp_path / "theirs.pkl"
    theirs.write_bytes(pickle.dumps(authors_converter(ckpt)))
    from_theirs = convert_checkpoint(theirs)
    assert_same_arrays(from_theirs.model, ours.model)
    assert from_theirs.meta == {**ours.meta, "source_format": "detectron2"}
    assert all(k.startswith("stem.fc") for k in from_theirs.dropped)

    # Without metadata or a torchvision author: MSRA's BGR caffe convention, said out loud.
    msra = tmp_path / "msra.pkl"
    msra.write_bytes(pickle.dumps({"model": ours.model, "__author__": "MSRA"}))
    model_dict, meta = load_detectron2_weights(msra)
    assert_same_arrays(model_dict, ours.model)
    assert {k: meta[k] for k in BGR_CAFFE} == BGR_CAFFE
    assert any("assuming MSRA" in n for n in convert_checkpoint(msra).notes)


def test_caffe2_blob_names(tmp_path):
    """A Caffe2-named MSRA file (res2_0_branch2a_w ...) without running statistics."""
    shape = ResNetShape(50, 16, 64, 16)
    model = trained_like(MODELS["r50_narrow"][0])
    blobs = {"fc1000_w": np.zeros((1000, 512), np.float32), "conv1_w": model.conv1.weight.detach().numpy(),
             "res_conv1_bn_s": model.bn1.weight.detach().numpy(), "res_conv1_bn_b": model.bn1.bias.detach().numpy()}
    for s, layer in enumerate([model.layer1, model.layer2, model.layer3, model.layer4], start=2):
        for b, block in enumerate(layer):
            parts = [("2a", block.conv1, block.bn1), ("2b", block.conv2, block.bn2), ("2c", block.conv3, block.bn3)]
            if block.downsample is not None:
                parts.append(("1", block.downsample[0], block.downsample[1]))
            for branch, conv, bn in parts:
                blobs[f"res{s}_{b}_branch{branch}_w"] = conv.weight.detach().numpy()
                blobs[f"res{s}_{b}_branch{branch}_bn_s"] = bn.weight.detach().numpy()
                blobs[f"res{s}_{b}_branch{branch}_bn_b"] = bn.bias.detach().numpy()
                blobs[f"res{s}_{b}_branch{branch}_bn_s_momentum"] = bn.weight.detach().numpy()
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"blobs": blobs}))
    converted = convert_checkpoint(path)
    assert converted.meta["input_format"] == "BGR" and converted.meta["stride_in_1x1"] is True
    assert converted.model["res3.0.shortcut.norm.running_var"].tolist() == [1.0] * 128
    trunk = build_resnet(shape)
    trunk.fc = nn.Identity()
    missing, unexpected = load_into_trunk(trunk, converted.model)
    assert missing == [] and unexpected == []
    assert torch.equal(trunk.layer4[2].conv3.weight, model.layer4[2].conv3.weight)


def test_load_into_c4_trunk_and_shape_mismatch():
    shape = ResNetShape(50, 16, 64, 16)
    model = trained_like(MODELS["r50_narrow"][0])
    d2 = reference_without_head(model)
    trunk = build_resnet(shape)
    del trunk.layer4, trunk.fc  # a C4 trunk: res5 lives in the RoI head
    missing, unexpected = load_into_trunk(trunk, d2)
    assert missing == [] and unexpected and all(k.startswith("res5.") for k in unexpected)
    assert torch.equal(trunk.layer3[5].bn3.running_var, model.layer3[5].bn3.running_var)
    wider = build_resnet(ResNetShape(50, 32, 128, 32))
    with pytest.raises(UserError, match=r"stem\.conv1\.weight"):
        load_into_trunk(wider, d2)


def reference_without_head(model: nn.Module) -> dict:
    """The authors' mapping of a whole torchvision model, classifier dropped."""
    return {k: v for k, v in authors_converter(
        {"state_dict": {f"module.encoder_q.{k}": v for k, v in model.state_dict().items()}})["model"].items()
        if not k.startswith("stem.fc")}


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _small_resnet_state() -> dict:
    return trained_like(MODELS["r34_narrow"][0]).state_dict()


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a word the one-line error must contain)."""
    rng = np.random.default_rng(0)
    (tmp / "random.pth").write_bytes(rng.bytes(5000))
    (tmp / "random.pkl").write_bytes(rng.bytes(5000))
    whole = _save(tmp / "whole.pth", {"state_dict": _small_resnet_state()}).read_bytes()
    (tmp / "truncated.pth").write_bytes(whole[: len(whole) // 2])
    whole_pkl = pickle.dumps({"model": reference_without_head(trained_like(MODELS["r34_narrow"][0]))})
    (tmp / "truncated.pkl").write_bytes(whole_pkl[: len(whole_pkl) // 2])
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2,
                                               hidden_dim=16, mlp_dim=32)
    _save(tmp / "vit.pth", vit.state_dict())
    layer = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), num_layers=1)
    _save(tmp / "transformer.pth", {"state_dict": layer.state_dict()})
    state = _small_resnet_state()
    _save(tmp / "no_layer4.pth", {k: v for k, v in state.items() if not k.startswith("layer4.")})
    _save(tmp / "no_block.pth", {k: v for k, v in state.items() if not k.startswith("layer3.2.")})
    _save(tmp / "bad_shape.pth", {**state, "layer2.1.bn1.running_mean": torch.zeros(3)})
    _save(tmp / "extra_key.pth", {**state, "layer2.1.attn.weight": torch.zeros(3)})
    return {
        "missing": (tmp / "nothing_here.pth", "no such file"),
        "random_pth": (tmp / "random.pth", "not a readable checkpoint"),
        "random_pkl": (tmp / "random.pkl", "not a readable checkpoint"),
        "truncated_pth": (tmp / "truncated.pth", "not a readable checkpoint"),
        "truncated_pkl": (tmp / "truncated.pkl", "not a readable checkpoint"),
        "vit": (tmp / "vit.pth", "not a ResNet"),
        "transformer": (tmp / "transformer.pth", "not a ResNet"),
        "no_layer4": (tmp / "no_layer4.pth", "res5.0.conv1.weight"),
        "no_block": (tmp / "no_block.pth", "res4.2.conv1.weight"),
        "bad_shape": (tmp / "bad_shape.pth", "res3.1.conv1.norm.running_mean (3,) != (32,)"),
        "extra_key": (tmp / "extra_key.pth", "res3.1.attn.weight"),
    }


def test_bad_inputs_are_user_errors(tmp_path):
    for name, (path, words) in _bad_inputs(tmp_path).items():
        with pytest.raises(UserError) as e:
            convert_checkpoint(path)
        message = str(e.value)
        assert message.startswith(str(path)) and words in message and "\n" not in message, (name, message)


def test_forced_format_must_match(tmp_path):
    path = _save(tmp_path / "sup.pth", _small_resnet_state())
    with pytest.raises(UserError, match="--format moco given, but the file looks like torchvision"):
        convert_checkpoint(path, "moco")


@pytest.mark.parametrize("name", ["missing", "random_pkl", "truncated_pth", "vit", "no_block"])
def test_cli_bad_input_exits_2_without_output(name, tmp_path, cli):
    path, words = _bad_inputs(tmp_path)[name]
    out = cli("convert", path, tmp_path / "out.pkl")
    assert out.returncode == 2
    assert out.stderr.startswith("mocobench convert: error: ") and words in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*out.pkl*"))
