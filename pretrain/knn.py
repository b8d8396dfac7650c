"""Weighted kNN top-1 of frozen features on a labelled train/val ImageFolder.

The protocol of InstDisc (Wu et al. 2018), used as a cheap monitor of self-supervised
features: L2-normalised pooled features of the frozen trunk (BN in eval); each val image
votes with its k nearest train images by cosine similarity s, weighted exp(s / T). Reads
a MoCo checkpoint (ours or the authors'), a torchvision state dict, or --random-init
(the same ResNet shape untrained, from the config's MODEL keys) for comparison. The
random-init baseline's BN statistics are estimated on the train split by default: with
its initial (0, 1) statistics BN is the identity, and such an unnormalised random net
scores differently from the same weights normalised as every trained encoder is
(--random-bn init gives that number too; the README quotes both).
Prints {"top1@k": percent, ...} as JSON; --output writes it to a file as well.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch.utils.data import SequentialSampler

from mocobench import UserError
from mocobench import dist as mdist
from mocobench.atomic import check_file_target, write_json
from mocobench.resnet import build_resnet
from mocobench.pretrain import checkpoint
from mocobench.pretrain.augment import eval_transform
from mocobench.pretrain.config import load_pretrain_config, resnet_shape
from mocobench.pretrain.data import ImageDataset, labelled_splits, make_loader
from mocobench.pretrain.features import estimate_bn_stats, extract, load_trunk


def knn_top1(train_feats: torch.Tensor, train_labels: torch.Tensor, val_feats: torch.Tensor,
             val_labels: torch.Tensor, ks: list[int], T: float, chunk: int = 256) -> dict[str, float]:
    """Top-1 (percent) for each k of a similarity-weighted kNN vote."""
    train_feats, val_feats = F.normalize(train_feats, dim=1), F.normalize(val_feats, dim=1)
    num_classes = int(max(train_labels.max(), val_labels.max())) + 1
    k_max = min(max(ks), train_feats.shape[0])
    correct = {k: 0 for k in ks}
    for start in range(0, val_feats.shape[0], chunk):
        sims, idx = (val_feats[start:start + chunk] @ train_feats.T).topk(k_max, dim=1)
        votes = F.one_hot(train_labels[idx], num_classes).float() * (sims / T).exp().unsqueeze(-1)
        truth = val_labels[start:start + chunk]
        for k in ks:
            pred = votes[:, :min(k, k_max)].sum(dim=1).argmax(dim=1)
            correct[k] += int((pred == truth).sum())
    return {f"top1@{k}": 100.0 * correct[k] / val_feats.shape[0] for k in ks}


def check_ks(ks: list, n_train: int, train_dir: Path) -> None:
    """Refuse a k the vote cannot honour: more neighbours than train images would be
    clamped silently and reported under the wrong k."""
    if not ks:
        raise UserError(f"KNN.K is empty: give at least one k in 1..{n_train} ({n_train} train images in {train_dir})")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int):
            raise UserError(f"KNN.K {k!r} is not a whole number: each k must be in 1..{n_train} "
                            f"({n_train} train images in {train_dir})")
        if k < 1:
            raise UserError(f"KNN.K {k} < 1: each k must be in 1..{n_train} ({n_train} train images in {train_dir})")
        if k > n_train:
            raise UserError(f"KNN.K {k} > {n_train} train images in {train_dir}: each k must be in 1..{n_train}")


def evaluate(net: torch.nn.Module, cfg: CfgNode, data_root: str, device: torch.device,
             bn_stats_from_data: bool = False) -> dict[str, float]:
    """kNN top-1 of ``net``'s trunk on ``data_root``/{train,val} (eval transforms), all
    in this process (under DDP, rank 0 runs it while the others wait). With
    ``bn_stats_from_data`` the BN running statistics are first set from the train split."""
    feats = {}
    train, val, _ = labelled_splits(data_root)
    check_ks(list(cfg.KNN.K), len(train), Path(data_root) / "train")
    for split, samples in (("train", train), ("val", val)):
        dataset = ImageDataset(samples, eval_transform(cfg), seed=cfg.TRAIN.SEED)
        loader = make_loader(dataset, batch_size=cfg.SOLVER.BATCH_SIZE,
                             sampler=SequentialSampler(dataset),
                             num_workers=cfg.DATA.NUM_WORKERS, drop_last=False)
        if split == "train" and bn_stats_from_data:
            estimate_bn_stats(net, loader, device)
        feats[split] = extract(net, loader, device)
    return knn_top1(*feats["train"], *feats["val"], ks=list(cfg.KNN.K), T=cfg.KNN.T)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="MoCo checkpoint (.pth.tar) or torchvision state dict (.pth)")
    src.add_argument("--random-init", action="store_true",
                     help="evaluate an untrained ResNet of the config's MODEL shape (seed TRAIN.SEED)")
    parser.add_argument("--random-bn", choices=("data", "init"), default="data",
                        help="with --random-init: BN running statistics estimated on the train split, "
                             "weights untouched (data: default, the baseline comparable to a trained "
                             "encoder, whose statistics come from images) or left at their (0, 1) "
                             "initial values (init: BN is then the identity in eval mode)")
    parser.add_argument("--bn-from-data", action="store_true",
                        help="with --weights: re-estimate BN running statistics on the train split "
                             "instead of using the checkpoint's, as the random-init baseline does by "
                             "default (like-for-like when pretraining saw other images or grey views)")
    parser.add_argument("--data", required=True, help="labelled root holding train/<class>/* and val/<class>/*")
    parser.add_argument("--config", help="pretrain-stage config (INPUT sizes, KNN.K/T, MODEL shape for "
                                         "--random-init; default: pretrain/defaults.yaml)")
    parser.add_argument("--output", help="also write the result JSON to this file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")


def run(args: argparse.Namespace) -> int:
    if args.output:
        check_file_target(args.output)  # before the minutes of feature extraction, not after
    cfg = load_pretrain_config(args.config, args.opts)
    torch.manual_seed(cfg.TRAIN.SEED)
    if args.random_init:
        shape, trunk = resnet_shape(cfg), None
    else:
        trunk = checkpoint.backbone_state(args.weights)
        shape = checkpoint.trunk_shape(trunk, args.weights)
    # the random-init baseline starts where pretraining starts (same shape and init)
    net = build_resnet(shape, residual_bn_gamma=cfg.MODEL.RESIDUAL_BN_GAMMA if args.random_init else 1.0)
    if trunk is not None:
        try:
            load_trunk(net, trunk, args.weights)
        except ValueError as e:
            raise UserError(str(e)) from None
    device = mdist.init_from_env(cfg.TRAIN.DEVICE)
    from_data = args.random_bn == "data" if args.random_init else args.bn_from_data
    result = evaluate(net.to(device), cfg, args.data, device, bn_stats_from_data=from_data)
    result.update(weights=args.weights or "random-init", resnet_shape=shape.as_dict())
    result["bn_stats"] = "data" if from_data else ("init" if args.random_init else "checkpoint")
    print(json.dumps(result, sort_keys=True))
    if args.output:
        write_json(Path(args.output), result)
    return 0
