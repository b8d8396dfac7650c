"""The torchvision engine's optimizer groups: detectron2's per-parameter LR and weight decay."""

from __future__ import annotations

import torch

from engine_fixtures import DEMO, TINY
from mocobench.transfer.config import load_detection_config
from mocobench.transfer.engines.torchvision.build import build_model
from mocobench.transfer.engines.torchvision.solver import build_optimizer

SOLVER = ["SOLVER.BASE_LR", "0.1", "SOLVER.WEIGHT_DECAY", "0.001", "SOLVER.WEIGHT_DECAY_NORM", "0.0",
          "SOLVER.BIAS_LR_FACTOR", "2.0"]


def hyperparams(*overrides: str) -> dict[str, tuple[float, float]]:
    cfg = load_detection_config(DEMO / "demo_coco_FPN_mask.yaml", [*TINY, *SOLVER, *overrides])
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters() if p.requires_grad}


def test_norm_biases_take_the_bias_lr_factor_and_bias_weight_decay():
    groups = hyperparams("SOLVER.WEIGHT_DECAY_BIAS", "0.0005")
    bn = "backbone.body.layer1.0.bn1"
    assert groups[f"{bn}.weight"] == (0.1, 0.0)
    assert groups[f"{bn}.bias"] == (0.2, 0.0005)
    assert groups["roi_heads.box_predictor.cls_score.bias"] == (0.2, 0.0005)
    assert groups["roi_heads.box_predictor.cls_score.weight"] == (0.1, 0.001)


def test_without_weight_decay_bias_norm_biases_keep_the_norm_decay():
    groups = hyperparams()
    assert groups["backbone.body.layer1.0.bn1.bias"] == (0.2, 0.0)
    assert groups["roi_heads.box_predictor.cls_score.bias"] == (0.2, 0.001)


def test_every_trainable_parameter_is_optimised_once():
    cfg = load_detection_config(DEMO / "demo_voc_C4.yaml", TINY)
    model = build_model(cfg)
    params = [p for g in build_optimizer(cfg, model).param_groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params})
    assert {id(p) for p in params} == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(isinstance(p, torch.nn.Parameter) for p in params)
