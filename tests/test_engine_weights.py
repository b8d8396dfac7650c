"""Init weights into the torchvision engine: a converted R50 fills the whole backbone, and
weights whose conventions or architecture disagree with the config are refused."""

from __future__ import annotations

import pytest
import torch

from engine_fixtures import DEMO, ROOT, TINY
from mocobench import UserError
from mocobench.atomic import write_pickle
from mocobench.resnet import ResNetShape, build_resnet
from mocobench.transfer.config import load_detection_config
from mocobench.transfer.convert import convert_checkpoint
from mocobench.transfer.datasets.synth import write_synthetic
from mocobench.transfer.engines.torchvision.build import build_model
from mocobench.transfer.engines.torchvision.weights import BackboneInit

CONFIGS = ROOT / "configs" / "detection"


def _converted(tmp_path, shape: ResNetShape):
    net = build_resnet(shape)
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    out = tmp_path / "tv.pkl"
    write_pickle(out, convert_checkpoint(tmp_path / "tv.pth").file_contents())
    return out, net


@pytest.mark.parametrize("config", ["voc_R_50_C4_24k_rgb", "coco_R_50_FPN_1x_rgb", "voc_R_50_DC5_24k_rgb"])
def test_converted_r50_leaves_no_backbone_key_missing(tmp_path, config):
    pkl, net = _converted(tmp_path, ResNetShape())
    cfg = load_detection_config(CONFIGS / f"{config}.yaml")
    init = BackboneInit(cfg, str(pkl))
    model = build_model(cfg, init)
    assert init.missing == [] and init.unexpected == []
    assert "0 missing backbone keys" in init.report()
    res5 = model.roi_heads.box_head.res5 if config.startswith("voc_R_50_C4") else model.backbone.body.layer4
    assert torch.equal(res5[0].conv2.weight, net.layer4[0].conv2.weight)


def test_wrong_input_format_names_the_setting(tmp_path):
    pkl, _ = _converted(tmp_path, ResNetShape())
    cfg = load_detection_config(CONFIGS / "voc_R_50_C4_24k.yaml")  # BGR / MSRA conventions
    with pytest.raises(UserError, match="INPUT.FORMAT RGB.*STRIDE_IN_1X1 False"):
        BackboneInit(cfg, str(pkl))


def test_other_architecture_exits_2(cli, tmp_path):
    pkl, _ = _converted(tmp_path, ResNetShape(50, 16, 64, 16))  # demo width; the job is tiny width
    write_synthetic(tmp_path / "data", seed=0, scale="tiny")
    r = cli("transfer", "--config", DEMO / "demo_voc_C4.yaml", "--output-dir", tmp_path / "run",
            "--weights", pkl, "--data-root", tmp_path / "data", *TINY)
    assert r.returncode == 2 and "another architecture" in r.stderr and "STEM_OUT_CHANNELS 16" in r.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
