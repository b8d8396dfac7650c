"""Convert a ResNet backbone checkpoint to detectron2 weights (.pkl) for detection transfer.

Reads, by auto-detection or --format, the layouts of transfer/checkpoint_layouts.py
(torchvision, timm, MoCo v1/v2/v3, DINO, VISSL, mmselfsup / mmpretrain, solo-learn and other
Lightning modules, lightly, BYOL (byol-pytorch, and deepmind/byol's JAX pickles), SwAV, VICReg,
Barlow Twins, SimSiam, DenseCL, PixPro) and detectron2 files (a detectron2 .pkl/.pth, or a
Caffe2/MSRA .pkl with res2_0_branch2a_w names). The layout whose trunk prefix matches the most
ResNet parameters wins; --key names the nested dict holding the state dict ('a/b'), --encoder
one of two encoders in one file. A file holding two different encoders (MoCo's query / key,
DINO's teacher / student, BYOL's online / target, a momentum encoder) is an error naming them,
where they sit and which one the framework's own export takes, until --encoder (or --key)
chooses; the suite's own MoCo checkpoints convert with --encoder query. Heads and projectors
are dropped; any other key left out is listed.

Depth and width are inferred from the tensor shapes and checked against mocobench's
ResNet of that shape: every trunk parameter must be matched exactly once with the right
shape, else it is an error naming what is missing and nothing is written. A trunk whose BN
layers are all at their initial state is refused as untrained unless --allow-untrained.
The output records what the weights expect under '__mocobench__': RGB + ImageNet mean/std +
STRIDE_IN_1X1 False for every framework layout; a detectron2 file keeps its own record, else
RGB if its __author__ is MOCO or torchvision, otherwise (MSRA, Caffe2, unknown) BGR + caffe
mean, std 1, STRIDE_IN_1X1 True. Every detection job checks its config against that record.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mocobench import UserError
from mocobench.atomic import check_file_target, write_pickle
from mocobench.transfer.convert import FORMATS, convert_checkpoint, group_keys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT", type=Path,
                        help="backbone checkpoint (.pth, .pth.tar, .ckpt, .torch, .pkl)")
    parser.add_argument("output", metavar="OUTPUT.pkl", type=Path,
                        help="where to write the detectron2 weights (written atomically; must end in .pkl, "
                             "which detectron2 reads with pickle)")
    parser.add_argument("--format", choices=("auto", *FORMATS), default="auto",
                        help="layout of INPUT (default: auto, detected from its keys; a given format "
                             "that does not match the file is an error)")
    parser.add_argument("--key", metavar="PATH",
                        help="the nested dict holding the state dict, keys joined by '/' "
                             "(e.g. teacher, state_dict_ema, classy_state_dict/base_model/model/trunk)")
    parser.add_argument("--encoder", metavar="NAME",
                        help="which encoder of a file holding two different ones (e.g. query / key, teacher / "
                             "student, online / target, model / ema), required for such a file: the error "
                             "for it names them and the one the framework's own export takes")
    parser.add_argument("--allow-untrained", action="store_true",
                        help="convert a trunk whose BN layers are all at their initial state (a random init)")


def run(args: argparse.Namespace) -> int:
    if args.output.suffix != ".pkl":
        raise UserError(f"{args.output}: output must end in .pkl (detectron2 reads .pkl with pickle)")
    check_file_target(args.output)
    converted = convert_checkpoint(args.input, args.format, key=args.key, encoder=args.encoder,
                                   allow_untrained=args.allow_untrained)
    for line in converted.notes:
        print(line)
    if converted.dropped:
        print(f"dropped {len(converted.dropped)} keys: {', '.join(_summary(converted.dropped))}")
    write_pickle(args.output, converted.file_contents())
    print(f"wrote {args.output} ({len(converted.model)} arrays)")
    return 0


def _summary(keys: list[str], limit: int = 12) -> list[str]:
    """Heads listed; a whole key encoder collapsed to 'module.encoder_k.* (N keys)'."""
    by_module: dict[str, list[str]] = {}
    for key in keys:
        head = key.split(".")
        by_module.setdefault(".".join(head[:2]) if len(head) > 3 else key, []).append(key)
    lines = []
    for head, members in by_module.items():
        if len(members) > 4:
            lines.append(f"{head}.* ({len(members)} keys)")
        else:
            lines += [k for k in members if "." not in k] + group_keys([k for k in members if "." in k])
    return lines[:limit] + ([f"... (+{len(lines) - limit} more)"] if len(lines) > limit else [])
