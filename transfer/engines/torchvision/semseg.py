"""Semantic segmentation on the torchvision engine: the MoCo paper's FCN (appendix A.5) over the
suite's ResNet trunk, its training input, inference and job, as the detectron2 engine runs them
(detectron2's SemanticSegmentor with the head of transfer/engines/detectron2/semseg.py).

Model: the trunk with res5 dilated (MODEL.RESNETS.RES5_DILATION 2: stride 16), then two 3x3 convs of
SEM_SEG_HEAD.CONVS_DIM channels at dilation 6 (the DeepLab "large field of view"), each with
SEM_SEG_HEAD.NORM and ReLU, then a 1x1 conv to SEM_SEG_HEAD.NUM_CLASSES logits. Training upsamples
the logits bilinearly (align_corners False, as torchvision's segmentation models and detectron2's
sem_seg_postprocess) to the targets' size and takes the cross-entropy over the pixels not labelled
SEM_SEG_HEAD.IGNORE_VALUE, times LOSS_WEIGHT; inference upsamples them to the original image.
Parameter names are detectron2's (backbone.body.* -> backbone.*, sem_seg_head.* as is), so
transfer/engines/export.py maps one engine's weights onto the other's.

Training input (``SemSegTrainMapper``): the image scaled by a factor drawn from INPUT.RANDOM_SCALE
(a mocobench extension key: [0.5, 2.0] in the paper), padded at the bottom and right to at least
INPUT.CROP.SIZE (the image with MODEL.PIXEL_MEAN, 0 once normalised; the label map with the ignore
value), a random INPUT.CROP.SIZE crop, then the flip of INPUT.RANDOM_FLIP with probability 0.5; the
image bilinear, the label map nearest. MIN_SIZE_TRAIN / MAX_SIZE_TRAIN do not apply. Inference reads
the image at INPUT.MIN_SIZE_TEST (0: its original size, as detectron2's ResizeShortestEdge).
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from PIL import Image
from torch import Tensor

from mocobench import UserError
from mocobench import dist as mdist
from mocobench.transfer.datasets.catalog import get_dataset, get_datasets
from mocobench.transfer.datasets.sem_seg import read_label_map
from mocobench.transfer.engines.torchvision.backbone import TrunkHook, build_backbone
from mocobench.transfer.engines.torchvision.build import Normalizer
from mocobench.transfer.engines.torchvision.input import FLIPS, read_image, resize, shortest_edge_size, to_tensor
from mocobench.transfer.engines.torchvision.norm import get_norm
from mocobench.transfer.engines.torchvision.train import DetectionTrainer
from mocobench.transfer.evaluation.sem_seg import evaluate_label_maps

META_ARCHITECTURE = "SemanticSegmentor"
HEAD_NAME = "MoCoFCNHead"
NUM_CONVS, DILATION = 2, 6  # the paper's head (appendix A.5)


def is_semantic(cfg: CfgNode) -> bool:
    return cfg.MODEL.META_ARCHITECTURE == META_ARCHITECTURE


class ConvNorm(nn.Conv2d):
    """A conv with its norm as a child, then ReLU: named as detectron2's Conv2d(norm=...) names it."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        layer = get_norm(norm, out_channels)
        super().__init__(in_channels, out_channels, 3, padding=DILATION, dilation=DILATION, bias=layer is None)
        self.norm = layer
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")  # detectron2's c2_msra_fill
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        return F.relu(self.norm(x) if self.norm is not None else x)


class FCNHead(nn.Module):
    def __init__(self, in_channels: int, channels: int, num_classes: int, norm: str) -> None:
        super().__init__()
        self.convs = nn.ModuleList(ConvNorm(in_channels if i == 0 else channels, channels, norm)
                                   for i in range(NUM_CONVS))
        self.predictor = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = conv(x)
        return self.predictor(x)


def sem_seg_loss(logits: Tensor, targets: Tensor, ignore_value: int) -> Tensor:
    """Cross-entropy of the logits upsampled to the targets, over the labelled pixels (0 with none)."""
    logits = F.interpolate(logits.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False)
    if not (targets != ignore_value).any():  # nothing labelled in the batch: no signal, not NaN
        return logits.sum() * 0.0
    return F.cross_entropy(logits, targets, reduction="mean", ignore_index=ignore_value)


class SemanticSegmentor(nn.Module):
    """images: CHW float tensors, 0-255, in INPUT.FORMAT order. Training (with targets, each
    {"sem_seg": HxW int64}) returns {"loss_sem_seg"}; inference returns each image's logits at the
    head's resolution (``upsample`` takes them to an output size)."""

    def __init__(self, backbone: nn.Module, head: FCNHead, normalizer: Normalizer, ignore_value: int,
                 loss_weight: float) -> None:
        super().__init__()
        self.backbone, self.sem_seg_head, self.transform = backbone, head, normalizer
        self.ignore_value, self.loss_weight = ignore_value, loss_weight

    def forward(self, images: list[Tensor], targets: Optional[list[dict[str, Tensor]]] = None):
        if self.training and targets is None:
            raise ValueError("training needs targets")
        batch = self.transform(images)
        features = self.backbone(batch.tensors)[self.backbone.out_feature]
        logits = self.sem_seg_head(features)
        if not self.training:
            return list(logits)
        h, w = batch.tensors.shape[-2:]
        labels = torch.full((len(targets), h, w), self.ignore_value, dtype=torch.int64, device=logits.device)
        for i, t in enumerate(targets):  # padded as the images are, with the ignore value
            labels[i, : t["sem_seg"].shape[-2], : t["sem_seg"].shape[-1]] = t["sem_seg"]
        return {"loss_sem_seg": sem_seg_loss(logits, labels, self.ignore_value) * self.loss_weight}


def upsample(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """One image's (K, h, w) logits at ``size``, as detectron2's sem_seg_postprocess (one image, no padding)."""
    return F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=False)[0]


def build_semseg_model(cfg: CfgNode, trunk_hook: Optional[TrunkHook] = None) -> SemanticSegmentor:
    h = cfg.MODEL.SEM_SEG_HEAD
    if not is_semantic(cfg) or h.NAME != HEAD_NAME:
        raise UserError(f"MODEL.META_ARCHITECTURE / SEM_SEG_HEAD.NAME: the torchvision engine builds "
                        f"{META_ARCHITECTURE} with {HEAD_NAME} (the paper's FCN)")
    out = list(cfg.MODEL.RESNETS.OUT_FEATURES)
    if cfg.MODEL.BACKBONE.NAME != "build_resnet_backbone" or len(out) != 1 or list(h.IN_FEATURES) != out:
        raise UserError(f"MODEL.SEM_SEG_HEAD.IN_FEATURES {list(h.IN_FEATURES)}: {HEAD_NAME} reads the one ResNet "
                        f"stage MODEL.RESNETS.OUT_FEATURES names ({out}) of build_resnet_backbone")
    if cfg.MODEL.DC5.CONV_DIM:
        raise UserError("MODEL.DC5.CONV_DIM: the detection head's res5 reduction has no place before the FCN head; "
                        "set 0")
    if len(cfg.MODEL.PIXEL_MEAN) != 3 or len(cfg.MODEL.PIXEL_STD) != 3:
        raise UserError("MODEL.PIXEL_MEAN / PIXEL_STD: give 3 values each")
    if h.NUM_CLASSES < 1:
        raise UserError(f"MODEL.SEM_SEG_HEAD.NUM_CLASSES must be >= 1, got {h.NUM_CLASSES}")
    backbone, _ = build_backbone(cfg, trunk_hook)
    head = FCNHead(backbone.out_channels, h.CONVS_DIM, h.NUM_CLASSES, h.NORM)
    normalizer = Normalizer(list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD), backbone.size_divisibility)
    return SemanticSegmentor(backbone, head, normalizer, h.IGNORE_VALUE, h.LOSS_WEIGHT)


# ---- input ------------------------------------------------------------------------------------

def crop_size(cfg: CfgNode) -> Optional[tuple[int, int]]:
    """INPUT.CROP.SIZE (height, width) when cropping is on; only absolute crops are implemented."""
    c = cfg.INPUT.CROP
    if not c.ENABLED:
        return None
    size = list(c.SIZE)
    if c.TYPE != "absolute" or len(size) != 2 or not all(float(v).is_integer() and v >= 1 for v in size):
        raise UserError(f"INPUT.CROP: TYPE {c.TYPE!r} SIZE {size}: semantic segmentation crops a fixed size; "
                        "set TYPE absolute and SIZE [height, width] in pixels")
    return int(size[0]), int(size[1])


def random_scale(cfg: CfgNode) -> tuple[float, float]:
    scale = [float(v) for v in cfg.INPUT.RANDOM_SCALE]
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise UserError(f"INPUT.RANDOM_SCALE {list(cfg.INPUT.RANDOM_SCALE)}: semantic segmentation training scales "
                        "each image by a factor drawn from [low, high]; give two numbers 0 < low <= high")
    return scale[0], scale[1]


class SemSegTrainMapper:
    """(record, generator) -> (image CHW 0-255, {"sem_seg": HxW int64}): scale, pad, crop, flip."""

    def __init__(self, cfg: CfgNode) -> None:
        i = cfg.INPUT
        if i.RANDOM_FLIP not in FLIPS:
            raise UserError(f"INPUT.RANDOM_FLIP {i.RANDOM_FLIP!r}: use one of {', '.join(FLIPS)}")
        if i.FORMAT not in ("RGB", "BGR"):
            raise UserError(f"INPUT.FORMAT {i.FORMAT!r}: the torchvision engine reads RGB or BGR")
        self.scale, self.crop, self.flip, self.fmt = random_scale(cfg), crop_size(cfg), i.RANDOM_FLIP, i.FORMAT
        self.fill = np.asarray(cfg.MODEL.PIXEL_MEAN, np.float32)
        self.ignore, self.num_classes = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES

    def check(self, records: list[dict]) -> None:
        """Nothing to check before training (each pair's sizes are checked as it is read)."""

    def __call__(self, record: dict, rng: np.random.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        image = read_image(record["file_name"], self.fmt)
        labels = read_label_map(record["sem_seg_file_name"])
        h0, w0 = image.shape[:2]
        if labels.shape != (h0, w0):
            raise UserError(f"{record['sem_seg_file_name']}: label map is {labels.shape[1]}x{labels.shape[0]} but its "
                            f"image {record['file_name']} is {w0}x{h0} (width x height)")
        labelled = labels[labels != self.ignore]
        if labelled.size and (labelled.min() < 0 or labelled.max() >= self.num_classes):
            bad = int(labelled.max() if labelled.max() >= self.num_classes else labelled.min())
            raise UserError(f"{record['sem_seg_file_name']}: label {bad} is neither a class "
                            f"(0..{self.num_classes - 1}, MODEL.SEM_SEG_HEAD.NUM_CLASSES) nor the ignore value "
                            f"{self.ignore}")
        s = rng.uniform(*self.scale)
        h, w = max(1, int(h0 * s + 0.5)), max(1, int(w0 * s + 0.5))
        image = resize(image, (h, w)).astype(np.float32)
        if (h, w) != (h0, w0):
            labels = np.asarray(Image.fromarray(labels.astype(np.uint8)).resize((w, h), Image.NEAREST), np.int64)
        if self.crop is not None:
            ch, cw = self.crop
            ph, pw = max(ch, h), max(cw, w)
            if (ph, pw) != (h, w):
                padded = np.empty((ph, pw, 3), np.float32)
                padded[:] = self.fill
                padded[:h, :w] = image
                padded_labels = np.full((ph, pw), self.ignore, np.int64)
                padded_labels[:h, :w] = labels
                image, labels = padded, padded_labels
            y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
            image, labels = image[y0:y0 + ch, x0:x0 + cw], labels[y0:y0 + ch, x0:x0 + cw]
        if self.flip != "none" and rng.random() < 0.5:
            axis = 1 if self.flip == "horizontal" else 0
            image, labels = np.flip(image, axis), np.flip(labels, axis)
        return to_tensor(image), {"sem_seg": torch.from_numpy(np.ascontiguousarray(labels))}


def test_image(record: dict, cfg: CfgNode) -> Tensor:
    """The image at INPUT.MIN_SIZE_TEST (0: as it is)."""
    image = read_image(record["file_name"], cfg.INPUT.FORMAT)
    if cfg.INPUT.MIN_SIZE_TEST > 0:
        image = resize(image, shortest_edge_size(*image.shape[:2], cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST))
    return to_tensor(image)


@torch.no_grad()
def run_semseg_inference(model: SemanticSegmentor, cfg: CfgNode, records: list[dict],
                         device: torch.device) -> Optional[dict[str, np.ndarray]]:
    """All ranks call this; rank 0 gets every image's class map at its label map's size, others None."""
    was_training = model.training
    model.eval()
    mine = {}
    for record in records[mdist.rank()::mdist.world_size()]:
        image = test_image(record, cfg)
        size = (record["height"], record["width"]) if "height" in record else read_label_map(
            record["sem_seg_file_name"]).shape
        logits = model([image.to(device)])[0]
        mine[record["file_name"]] = upsample(logits, tuple(size)).argmax(0).to(torch.uint8 if logits.shape[0] <= 256
                                                                             else torch.int64).cpu().numpy()
    model.train(was_training)
    if mdist.world_size() == 1:
        return mine
    gathered = [None] * mdist.world_size() if mdist.is_main() else None
    dist.gather_object(mine, gathered, dst=0)
    return {k: v for part in gathered for k, v in part.items()} if mdist.is_main() else None


# ---- job --------------------------------------------------------------------------------------

class SemSegTrainer(DetectionTrainer):
    """DetectionTrainer's training loop, checkpoints, resume and DDP, with the FCN, its input and mIoU."""

    model_builder = staticmethod(build_semseg_model)

    def check_classes(self, metadata: dict, names) -> None:
        classes = metadata.get("stuff_classes")
        if classes is None:
            raise UserError(f"{self.config_path}: {list(names)} is not a semantic-segmentation dataset "
                            "(voc_<year>_sem_seg_<split>, cityscapes_fine_sem_seg_<split>)")
        k = self.cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        if len(classes) != k:
            raise UserError(f"{self.config_path}: MODEL.SEM_SEG_HEAD.NUM_CLASSES is {k} but {list(names)} have "
                            f"{len(classes)} classes")
        if metadata["ignore_label"] != self.cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE:
            raise UserError(f"{self.config_path}: MODEL.SEM_SEG_HEAD.IGNORE_VALUE is "
                            f"{self.cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE} but {list(names)} ignore "
                            f"{metadata['ignore_label']}")

    def train_mapper(self) -> SemSegTrainMapper:
        if self.cfg.DATALOADER.ASPECT_RATIO_GROUPING:
            raise UserError(f"{self.config_path}: DATALOADER.ASPECT_RATIO_GROUPING: semantic segmentation trains on "
                            "INPUT.CROP.SIZE crops, with nothing to group by; set False")
        return SemSegTrainMapper(self.cfg)

    def training_records(self) -> list[dict]:
        cfg = self.cfg
        records, meta = get_datasets(list(cfg.DATASETS.TRAIN), self.data_root)
        self.check_classes(meta, cfg.DATASETS.TRAIN)
        if len(records) < cfg.SOLVER.IMS_PER_BATCH:
            raise UserError(f"{self.config_path}: DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)}: {len(records)} images "
                            f"give no full batch of SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH}; use at most "
                            f"{len(records)}")
        return records

    def evaluate(self, model: SemanticSegmentor) -> dict:
        results = {}
        for name in self.cfg.DATASETS.TEST:
            records, meta = get_dataset(name, self.data_root)
            self.check_classes(meta, [name])
            t0 = time.perf_counter()
            maps = run_semseg_inference(model, self.cfg, records, self.device)
            if self.main:
                results[name] = evaluate_label_maps(records, meta, maps, source=f"{name} predictions")
                print(f"transfer: {name}: {len(records)} images segmented in {time.perf_counter() - t0:.1f} s",
                      flush=True)
        return results
