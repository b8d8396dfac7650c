"""Supervised init: train the same torchvision ResNet (shape from the config's MODEL keys)
with labels on a labelled ImageFolder (DATA.PATH or --data: train/<class>/*, val/<class>/*)
using cross-entropy, SGD and standard augmentation (random resized crop, flip).

Writes model_final.pth, a torchvision-layout state dict (conv1.weight ... fc.bias) saved
atomically with torch.save: the "supervised" init of the transfer tables at small scale,
read by `mocobench convert` like torchvision's own ImageNet weights. Also config.yaml,
metrics.jsonl, checkpoint_last.pth.tar (per epoch, for --resume) and metrics.json
({"top1": the last epoch's, the model exported; "top1_best", "best_epoch" ...}). Under torchrun, BN layers become SyncBatchNorm on GPU.
"""

from __future__ import annotations

import argparse

import torch

from mocobench import dist as mdist
from mocobench.atomic import torch_save
from mocobench.resnet import build_resnet
from mocobench.run_lock import run_folder
from mocobench.pretrain.classifier import train_classifier
from mocobench.pretrain.cli import add_run_arguments, config_from_args
from mocobench.pretrain.config import resnet_shape
from mocobench.pretrain.data import labelled_splits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "labelled root holding train/<class>/* and val/<class>/*")


def run(args: argparse.Namespace) -> int:
    cfg, out_dir = config_from_args(args)
    _, _, classes = labelled_splits(cfg.DATA.PATH)  # refused before any folder or model exists
    torch.manual_seed(cfg.TRAIN.SEED)
    net = build_resnet(resnet_shape(cfg), num_classes=len(classes), residual_bn_gamma=cfg.MODEL.RESIDUAL_BN_GAMMA)
    try:
        device = mdist.init_from_env(cfg.TRAIN.DEVICE)
        if mdist.world_size() > 1 and device.type == "cuda":
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = net.to(device)
        with run_folder(out_dir, "supervised", fresh=not args.resume, overwrite=args.overwrite):
            result = train_classifier(cfg, net, net.parameters(), out_dir, args.resume,
                                      frozen_trunk=False, label="supervised", device=device)
            path = out_dir / "model_final.pth"
            if mdist.is_main():
                torch_save(path, {k: v.cpu() for k, v in net.state_dict().items()})
        if mdist.is_main():
            print(f"supervised top-1 {result['top1']:.2f}%: {path}")
    finally:
        mdist.cleanup()
    return 0
