"""convert: every framework layout of transfer/checkpoint_layouts.py, built around one set of random
trunk weights, converts to exactly those tensors; ambiguity, missing / twice-reached / misshapen
trunk keys and untrained trunks are refused naming why."""

from __future__ import annotations

import argparse
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn

from engine_fixtures import move_bn_off_init
from mocobench import UserError
from mocobench.cli import main
from mocobench.conventions import RGB_IMAGENET
from mocobench.resnet import ResNetShape, build_resnet, tv_to_d2
from mocobench.transfer.checkpoint_layouts import LAYOUTS
from mocobench.transfer.convert import convert_checkpoint

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


# name -> (checkpoint as its framework saves it (see the layout table's sources), options to convert it)
def layouts() -> dict[str, tuple[dict, dict]]:
    fc = {"fc.weight": torch.randn(10, 128), "fc.bias": torch.randn(10)}
    return {
        "torchvision": ({**TRUNK, **fc}, {}),
        "timm": ({"epoch": 3, "arch": "resnet50", "version": 2, "state_dict": {**TRUNK, **fc}, "metric": 1.0}, {}),
        "moco": ({"epoch": 200, "arch": "resnet50", "state_dict": {
            **under("module.encoder_q.", TRUNK), **under("module.encoder_q.fc.", HEAD),
            **under("module.encoder_k.", OTHER), **under("module.encoder_k.fc.", HEAD),
            "module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}}, {}),
        "mocov3": ({"epoch": 100, "arch": "resnet50", "state_dict": {
            **under("module.base_encoder.", TRUNK), **under("module.base_encoder.fc.", HEAD),
            **under("module.momentum_encoder.", OTHER), **under("module.predictor.", HEAD)}}, {}),
        "dino": ({"student": {**under("module.backbone.", OTHER), **under("module.head.mlp.", HEAD)},
                  "teacher": {**under("module.backbone.", TRUNK), **under("module.head.mlp.", HEAD)},
                  "epoch": 100, "args": argparse.Namespace(arch="resnet50"),
                  "dino_loss": {"center": torch.zeros(1, 64)}}, {"encoder": "teacher"}),
        "vissl": ({"phase_idx": 3, "iteration": 500, "classy_state_dict": {"base_model": {"model": {
            "trunk": under("_feature_blocks.", TRUNK), "heads": under("0.clf.", HEAD)}, "meta": {}}}}, {}),
        "mmselfsup": ({"meta": {"epoch": 200}, "message_hub": {}, "state_dict": {
            **under("backbone.", TRUNK), **under("neck.mlp.", HEAD),
            **under("momentum_encoder.module.0.", OTHER), **under("momentum_encoder.module.1.mlp.", HEAD),
            "momentum_encoder.steps": torch.tensor(5), "queue": torch.randn(128, 64)}}, {}),
        "lightning": (lightning({**under("backbone.", TRUNK), **under("projector.", HEAD),
                                 **under("momentum_backbone.", OTHER), **under("momentum_projector.", HEAD),
                                 **under("predictor.", HEAD), "classifier.weight": torch.randn(10, 128)}), {}),
        "lightly": (lightning({**under("backbone.", children(TRUNK)), **under("projection_head.layers.", HEAD),
                               **under("backbone_momentum.", children(OTHER)),
                               **under("prediction_head.layers.", HEAD)}), {}),
        "byol": ({**under("net.", {**TRUNK, **fc}), **under("online_encoder.net.", {**TRUNK, **fc}),
                  **under("online_encoder.projector.net.", HEAD), **under("target_encoder.net.", {**OTHER, **fc}),
                  **under("target_encoder.projector.net.", HEAD), **under("online_predictor.net.", HEAD)}, {}),
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
            "queue2": torch.randn(128, 64), "queue2_ptr": torch.zeros(1)}}, {}),
        "pixpro": ({"opt": argparse.Namespace(arch="resnet50"), "epoch": 100, "model": {
            **under("module.encoder.", TRUNK), **under("module.encoder_k.", OTHER),
            **under("module.projector.linear1.", HEAD), **under("module.value_transform.conv.", HEAD)}}, {}),
    }


def assert_is(converted, source: dict) -> None:
    """Every trunk tensor of ``source`` converted once, to an equal array, and nothing else."""
    assert set(converted.model) == {tv_to_d2(k) for k in source}
    for k, v in source.items():
        assert np.array_equal(converted.model[tv_to_d2(k)], v.numpy()), k


def test_the_table_and_the_tests_name_the_same_layouts():
    assert {layout.name for layout in LAYOUTS} == set(layouts())


@pytest.mark.parametrize("name", list(layouts()))
def test_every_layout_converts_to_its_trunk(name, tmp_path):
    ckpt, options = layouts()[name]
    path = tmp_path / f"{name}.pth"
    torch.save(ckpt, path)
    converted = convert_checkpoint(path, allow_untrained=False, **options)
    assert converted.notes[0] == f"format: {name} (auto-detected)", converted.notes
    assert_is(converted, TRUNK)
    assert converted.meta == {"source_format": name, **RGB_IMAGENET, **SHAPE.as_dict()}
    assert not any("neither trunk nor a known head" in n for n in converted.notes), converted.notes
    assert convert_checkpoint(path, name, **options).notes[0] == f"format: {name} (as given)"


def test_default_encoder_is_said_and_the_other_can_be_chosen(tmp_path):
    path = tmp_path / "moco.pth.tar"
    torch.save(layouts()["moco"][0], path)
    converted = convert_checkpoint(path)
    assert any(n.startswith("encoder: query (state_dict/module.encoder_q.*; what moco's own export takes")
               for n in converted.notes), converted.notes
    assert any("module.encoder_k." in k for k in converted.dropped)
    assert_is(convert_checkpoint(path, encoder="key"), OTHER)
    with pytest.raises(UserError, match=r"--encoder student: moco checkpoints hold query / key"):
        convert_checkpoint(path, encoder="student")


def test_student_and_teacher_must_be_chosen(tmp_path):
    path = tmp_path / "dino.pth"
    torch.save(layouts()["dino"][0], path)
    with pytest.raises(UserError) as e:
        convert_checkpoint(path)
    assert "2 candidate encoders: teacher (teacher/module.backbone.*, 318 tensors)" in str(e.value)
    assert "student (student/module.backbone.*" in str(e.value) and "--encoder teacher|student" in str(e.value)
    assert_is(convert_checkpoint(path, encoder="student"), OTHER)
    assert_is(convert_checkpoint(path, key="teacher"), TRUNK)


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
    assert "--encoder teacher|student" in capsys.readouterr().err
    assert main(["convert", str(path), str(tmp_path / "dino.pkl"), "--encoder", "teacher"]) == 0
    printed = capsys.readouterr().out
    assert "format: dino (auto-detected)" in printed
    assert "encoder: teacher (teacher/module.backbone.*; as given)" in printed
    assert "expects: RGB" in printed
    with open(tmp_path / "dino.pkl", "rb") as f:
        written = pickle.load(f)
    assert written["__mocobench__"] == {"source_format": "dino", **RGB_IMAGENET, **SHAPE.as_dict()}
    assert written["model"].keys() == {tv_to_d2(k) for k in TRUNK}


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
