"""Linear classification protocol: a frozen pretrained trunk (BN in eval mode) and a
linear fc on its pooled features, trained on a labelled ImageFolder (DATA.PATH or --data:
a root with train/<class>/* and val/<class>/*); reports the best val top-1 over the epochs,
as the authors' main_lincls.py does (metrics.json also gives the last epoch's).

Paper hyper-parameters (configs/pretrain/lincls_r50.yaml): SGD lr 30, weight decay 0,
momentum 0.9, batch 256, 100 epochs, lr x0.1 at epochs 60 and 80; fc initialised
N(0, 0.01), bias 0. --weights reads a MoCo checkpoint (ours or the authors') or a
torchvision state dict; the trunk's shape is read off the weights. Writes config.yaml,
metrics.jsonl, checkpoint_last.pth.tar (per epoch, for --resume) and metrics.json
({"top1": the best epoch's, "reported": "best", "top1_best", "best_epoch", "top1_last",
"epochs", "classes"}) in the output directory.
"""

from __future__ import annotations

import argparse

import torch

from mocobench import UserError
from mocobench import dist as mdist
from mocobench.resnet import build_resnet
from mocobench.run_lock import run_folder
from mocobench.pretrain import checkpoint
from mocobench.pretrain.classifier import train_classifier
from mocobench.pretrain.cli import add_run_arguments, config_from_args
from mocobench.pretrain.data import labelled_splits
from mocobench.pretrain.features import load_trunk


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="MoCo checkpoint or torchvision state dict to probe")
    add_run_arguments(parser, "labelled root holding train/<class>/* and val/<class>/*")


def run(args: argparse.Namespace) -> int:
    cfg, out_dir = config_from_args(args)
    trunk = checkpoint.backbone_state(args.weights)
    shape = checkpoint.trunk_shape(trunk, args.weights)
    _, _, classes = labelled_splits(cfg.DATA.PATH)  # refused before any folder or model exists
    torch.manual_seed(cfg.TRAIN.SEED)
    net = build_resnet(shape, num_classes=len(classes))
    try:
        load_trunk(net, trunk, args.weights)
    except ValueError as e:
        raise UserError(str(e)) from None
    for name, p in net.named_parameters():
        p.requires_grad = name.startswith("fc.")
    torch.nn.init.normal_(net.fc.weight, 0.0, 0.01)
    torch.nn.init.zeros_(net.fc.bias)
    try:
        device = mdist.init_from_env(cfg.TRAIN.DEVICE)
        with run_folder(out_dir, "lincls", fresh=not args.resume, overwrite=args.overwrite):
            result = train_classifier(cfg, net.to(device), net.fc.parameters(), out_dir, args.resume,
                                      frozen_trunk=True, label="lincls", device=device, report="best",
                                      weights=args.weights)
        if mdist.is_main():
            print(f"lincls top-1 {result['top1']:.2f}% (best, epoch {result['best_epoch']}; "
                  f"last {result['top1_last']:.2f}%) ({args.weights})")
    finally:
        mdist.cleanup()
    return 0
