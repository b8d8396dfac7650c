"""MOCO.MECHANISM -> the contrastive model pretraining trains: MoCo, EndToEnd or MemoryBank.

All three share the encoder, augmentation, InfoNCE loss and temperature, and differ only
in how the dictionary of keys is built, so a comparison between them isolates that.
"""

from __future__ import annotations

from fvcore.common.config import CfgNode

from mocobench.pretrain.end_to_end import EndToEnd
from mocobench.pretrain.memory_bank import MemoryBank
from mocobench.pretrain.moco import Contrastive, build_moco, cfg_encoder
from mocobench.resnet import ResNetShape


def build_model(cfg: CfgNode, shape: ResNetShape, num_images: int) -> Contrastive:
    """The mechanism's model; ``num_images`` sizes the memory bank (one entry per image)."""
    c = cfg.MOCO
    if c.MECHANISM == "end_to_end":
        return EndToEnd(cfg_encoder(cfg, shape), T=c.T, shuffle_bn=c.SHUFFLE_BN)
    if c.MECHANISM == "memory_bank":
        return MemoryBank(cfg_encoder(cfg, shape), num_images, dim=c.DIM, K=c.K, T=c.T, m=c.BANK_MOMENTUM)
    return build_moco(cfg, shape)
