"""Image transforms: MoCo's two-crop views (v1 and v2 "aug+") and the standard
classification transforms used by the linear probe, kNN and the supervised trainer."""

from __future__ import annotations

from types import ModuleType
from typing import Callable

import torch
from fvcore.common.config import CfgNode
from PIL import Image, ImageFilter
from torchvision import transforms as T


class TwoCrops:
    """Two independent random views of one image: the query and its positive key."""

    def __init__(self, view: Callable) -> None:
        self.view = view

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view(image), self.view(image)


class RandomGaussianBlur:
    """PIL Gaussian blur with sigma drawn uniformly from a range (SimCLR's, used by aug+).
    Drawn from torch's RNG so per-sample seeding covers it."""

    def __init__(self, sigma: tuple[float, float]) -> None:
        self.sigma = sigma

    def __call__(self, image: Image.Image) -> Image.Image:
        lo, hi = self.sigma
        sigma = lo + (hi - lo) * torch.rand(()).item()
        return image.filter(ImageFilter.GaussianBlur(radius=sigma))


def _normalize(cfg: CfgNode) -> list:
    return [T.ToTensor(), T.Normalize(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)]


def moco_view_steps(cfg: CfgNode, tf: ModuleType = T, blur: Callable | None = None) -> list:
    """One view's random steps, from the transforms module ``tf`` (torchvision.transforms,
    or transforms.v2 for tensors on a GPU) and ``blur`` (default: the PIL blur). v1
    (InstDisc's): crop, grayscale, jitter, flip. v2 aug+: crop, jitter with probability,
    grayscale, blur with probability, flip (the authors' orders)."""
    a = cfg.AUG
    crop = tf.RandomResizedCrop(cfg.INPUT.CROP_SIZE, scale=tuple(a.CROP_SCALE))
    jitter = tf.RandomApply([tf.ColorJitter(*a.COLOR_JITTER)], p=a.COLOR_JITTER_P)
    gray = tf.RandomGrayscale(p=a.GRAYSCALE_P)
    blur = tf.RandomApply([blur or RandomGaussianBlur(tuple(a.BLUR_SIGMA))], p=a.BLUR_P)
    flip = tf.RandomHorizontalFlip(p=a.FLIP_P)
    return [crop, jitter, gray, blur, flip] if a.PLUS else [crop, gray, jitter, blur, flip]


def moco_view(cfg: CfgNode) -> T.Compose:
    """One view: the random steps on a PIL image, then tensor and normalisation."""
    return T.Compose(moco_view_steps(cfg) + _normalize(cfg))


def moco_transform(cfg: CfgNode) -> TwoCrops:
    return TwoCrops(moco_view(cfg))


def classify_train_transform(cfg: CfgNode) -> T.Compose:
    """Standard supervised/linear-probe training aug: random resized crop and flip."""
    return T.Compose([T.RandomResizedCrop(cfg.INPUT.CROP_SIZE, scale=tuple(cfg.AUG.CROP_SCALE)),
                      T.RandomHorizontalFlip(p=cfg.AUG.FLIP_P)] + _normalize(cfg))


def eval_transform(cfg: CfgNode) -> T.Compose:
    """Resize the shorter side to RESIZE_SIZE, centre-crop CROP_SIZE (256/224 at full scale)."""
    return T.Compose([T.Resize(cfg.INPUT.RESIZE_SIZE), T.CenterCrop(cfg.INPUT.CROP_SIZE)] + _normalize(cfg))
