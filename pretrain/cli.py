"""MoCo v1/v2 self-supervised pretraining of a torchvision ResNet (MOCO.MECHANISM: moco, or
the paper's end_to_end and memory_bank baselines; MOCO.SHUFFLE_BN on or off).

Reads a config (configs/pretrain/*.yaml, merged onto pretrain/defaults.yaml; KEY VALUE
pairs after the options override it) and an image folder (DATA.PATH or --data: an
ImageFolder tree such as ImageNet's train/, labels ignored, or a flat folder of images).
Writes into the output directory: config.yaml, metrics.jsonl (iter, epoch, loss, acc1 =
instance-discrimination top-1 of the positive among 1+K, acc1_batch = its top-1 among
the batch's keys (blind to recency), key_cos = mean cosine of the dictionary's keys (near 1:
collapse), lr, images_per_s; kNN top-1 lines if KNN.DATA is set), checkpoint_EEEE.pth.tar every CHECKPOINT.PERIOD_EPOCHS epochs
and at the end (MoCo repository layout: {'epoch', 'arch', 'state_dict' with
'module.encoder_q.*' keys, 'optimizer', ...}), checkpoint_last.pth.tar every
CHECKPOINT.PERIOD_ITERS iterations, and last_checkpoint naming the newest one.

Distributed: launch with torchrun (gloo on CPU, NCCL on GPU); SOLVER.BATCH_SIZE is the
global batch. One process emulates shuffle-BN with MOCO.SPLIT_BN_GROUPS sub-batches.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mocobench import UserError
from mocobench import dist as mdist
from mocobench.pretrain.config import load_pretrain_config, validate_mechanism
from mocobench.pretrain.train import pretrain
from mocobench.run_lock import add_overwrite_argument, run_folder


def add_run_arguments(parser: argparse.ArgumentParser, data_help: str) -> None:
    """Options shared by the training commands of this stage (pretrain, lincls, supervised)."""
    parser.add_argument("--config", required=True, help="config file (configs/pretrain/*.yaml)")
    parser.add_argument("--data", help=data_help + " (overrides DATA.PATH)")
    parser.add_argument("--output-dir", help="where checkpoints and logs go (overrides OUTPUT_DIR)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in the output directory "
                             "(named by its last_checkpoint file); starts fresh if there is none")
    add_overwrite_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, e.g. SOLVER.EPOCHS 10")


def config_from_args(args: argparse.Namespace):
    """The merged config with --data/--output-dir applied, and the output directory."""
    opts = list(args.opts)
    if args.data:
        opts += ["DATA.PATH", args.data]
    if args.output_dir:
        opts += ["OUTPUT_DIR", args.output_dir]
    cfg = load_pretrain_config(args.config, opts)
    if not cfg.OUTPUT_DIR:
        raise UserError(f"{args.config}: no output directory (give --output-dir or OUTPUT_DIR)")
    if not cfg.DATA.PATH:
        raise UserError(f"{args.config}: no data folder (give --data or DATA.PATH)")
    return cfg, Path(cfg.OUTPUT_DIR)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "image folder: ImageFolder tree or flat folder of images")


def run(args: argparse.Namespace) -> int:
    cfg, out_dir = config_from_args(args)
    validate_mechanism(cfg, args.config)
    try:
        with run_folder(out_dir, "pretrain", fresh=not args.resume, overwrite=args.overwrite):
            final = pretrain(cfg, out_dir, args.resume)
        if mdist.is_main():
            print(final)
    finally:
        mdist.cleanup()
    return 0
