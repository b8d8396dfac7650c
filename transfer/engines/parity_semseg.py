"""The torchvision engine's semantic segmentor (torchvision/semseg.py) against detectron2's
SemanticSegmentor with the suite's MoCoFCNHead (detectron2/semseg.py), as parity.py holds the detectors:
both built from one config, detectron2's given ours' weights through the export table, both fed the
same images and label maps (noise images, random label maps with ignored pixels, through the suite's
training input: scaled, padded, cropped, flipped). Compared: the loss with BN on its batch statistics
and with BN on its running statistics, the gradients, and inference (logits at the original size and
the class maps). Needs detectron2; imported only when it is there.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from detectron2.utils.events import EventStorage
from PIL import Image
from torch import Tensor

from mocobench.transfer.config import load_detection_config
from mocobench.transfer.engines.detectron2.config import load_d2_config
from mocobench.transfer.engines.detectron2.trainer import Trainer
from mocobench.transfer.engines.export import export_to_detectron2, rename
from mocobench.transfer.engines.parity import Row, eval_norms, load_exported, relative
from mocobench.transfer.engines.torchvision.semseg import (SemanticSegmentor, SemSegTrainMapper, build_semseg_model,
                                                           upsample)

TOLERANCE = {"loss": 1e-6, "grad backbone": 1e-4, "grad heads": 1e-4, "logits": 1e-5, "pixels": 0.0}
SIZES = ((150, 200), (190, 150))  # (height, width): one wide, one tall


@dataclass
class SemSegPair:
    ours: SemanticSegmentor
    detectron2: nn.Module
    cfg: object
    exported: dict[str, str]

    def copy_weights(self) -> None:
        load_exported(self.detectron2, export_to_detectron2(self.ours.state_dict(), 0))


def build_semseg_pair(config: str, overrides: Sequence[str] = (), seed: int = 0) -> SemSegPair:
    """Both models of ``config``; the classifier is re-drawn wider than its init, so the logits are
    far apart and the class maps do not hinge on rounding."""
    opts = [*overrides, "MODEL.DEVICE", "cpu"]
    cfg = load_detection_config(config, opts)
    torch.manual_seed(seed)
    ours = build_semseg_model(cfg)
    with torch.no_grad():
        ours.sem_seg_head.predictor.weight.normal_(0, 0.3)
        ours.sem_seg_head.predictor.bias.normal_(0, 0.3)
    theirs = Trainer.build_model(load_d2_config(str(config), opts))
    names = {k: rename(k, []) for k in ours.state_dict()}
    pair = SemSegPair(ours, theirs, cfg, {k: v for k, v in names.items() if v is not None})
    pair.copy_weights()
    return pair


def semseg_batch(cfg, seed: int = 0) -> tuple[list[Tensor], list[dict[str, Tensor]], list[Tensor]]:
    """(training images, their targets, the test images at their original size): two noise images with
    random label maps (every class, some pixels ignored) through the suite's training input."""
    g = np.random.default_rng(seed)
    k, ignore = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    mapper = SemSegTrainMapper(cfg)
    images, targets, tests = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for i, (h, w) in enumerate(SIZES):
            image, labels = Path(folder) / f"{i}.png", Path(folder) / f"{i}_labels.png"
            pixels = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(image)
            blocks = g.integers(0, k, (h // 10 + 1, w // 10 + 1)).repeat(10, 0).repeat(10, 1)[:h, :w]
            blocks[g.random((h, w)) < 0.1] = ignore
            Image.fromarray(blocks.astype(np.uint8)).save(labels)
            record = {"file_name": str(image), "sem_seg_file_name": str(labels)}
            im, target = mapper(record, np.random.default_rng([seed, i]))
            images.append(im)
            targets.append(target)
            tests.append(torch.from_numpy(np.ascontiguousarray(
                (pixels[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else pixels).transpose(2, 0, 1))).float())
    return images, targets, tests


def detectron2_inputs(images: list[Tensor], targets: list[dict[str, Tensor]]) -> list[dict]:
    return [{"image": im, "sem_seg": t["sem_seg"]} for im, t in zip(images, targets)]


def compare_losses(pair: SemSegPair, images, targets) -> list[Row]:
    """The loss with BN on batch statistics (train mode; one process: plain BN on both), then with BN on
    its running statistics, and that loss's gradients."""
    rows = []
    for label, set_mode in (("batch-statistics BN", lambda m: m.train()), ("running-statistics BN", eval_norms)):
        for model in (pair.ours, pair.detectron2):
            set_mode(model)
            model.zero_grad(set_to_none=True)
        ours = pair.ours(images, targets)["loss_sem_seg"]
        with EventStorage():
            theirs = pair.detectron2(detectron2_inputs(images, targets))["loss_sem_seg"]
        rows.append(Row(f"loss_sem_seg ({label})", float(ours.detach()), float(theirs.detach()),
                        relative(ours.detach(), theirs.detach()), TOLERANCE["loss"]))
    ours.backward()
    theirs.backward()
    params = dict(pair.detectron2.named_parameters())
    worst: dict[str, tuple[float, str]] = {}
    for name, p in pair.ours.named_parameters():
        if p.grad is None:
            continue
        part = "grad backbone" if pair.exported[name].startswith("backbone.") else "grad heads"
        rel = relative(p.grad, params[pair.exported[name]].grad)
        if rel >= worst.get(part, (-1.0, ""))[0]:
            worst[part] = (rel, name)
    ours_params = dict(pair.ours.named_parameters())
    for part, (rel, name) in sorted(worst.items()):
        rows.append(Row(f"{part} (worst: {name})", float(ours_params[name].grad.norm()),
                        float(params[pair.exported[name]].grad.norm()), rel, TOLERANCE[part]))
    return rows


@torch.no_grad()
def compare_inference(pair: SemSegPair, tests: list[Tensor]) -> list[Row]:
    pair.ours.eval()
    pair.detectron2.eval()
    ours = [upsample(logits, tuple(im.shape[-2:])) for logits, im in zip(pair.ours(tests), tests)]
    theirs = [o["sem_seg"] for o in pair.detectron2(
        [{"image": im, "height": im.shape[-2], "width": im.shape[-1]} for im in tests])]
    a, b = torch.cat([o.flatten() for o in ours]), torch.cat([t.flatten() for t in theirs])
    rows = [Row("logits at the original size", float(a.norm()), float(b.norm()), relative(a, b), TOLERANCE["logits"])]
    a = torch.cat([o.argmax(0).flatten() for o in ours])
    b = torch.cat([t.argmax(0).flatten() for t in theirs])
    rows.append(Row("class map (pixels differing)", float(len(a)), float(len(b)), float((a != b).float().mean()),
                    TOLERANCE["pixels"]))
    return rows


def check_semseg_parity(config: str, overrides: Sequence[str] = (), seed: int = 0) -> list[Row]:
    pair = build_semseg_pair(config, overrides, seed)
    images, targets, tests = semseg_batch(pair.cfg, seed)
    return compare_losses(pair, images, targets) + compare_inference(pair, tests)
