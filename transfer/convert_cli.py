"""Convert a ResNet backbone checkpoint to detectron2 weights (.pkl) for detection transfer.

Reads, by auto-detection or --format:
  moco         MoCo repository layout: {'state_dict': {'module.encoder_q.*': ...}, ...}
               (our pretraining output and the MoCo authors' releases). The v1 fc / v2 MLP
               projection head is dropped; encoder_k, queue and optimizer state are ignored.
  torchvision  a torchvision ResNet state dict, bare or under 'state_dict' / 'model',
               with or without DDP's 'module.' prefix (supervised ImageNet weights, our
               supervised trainer's output). The fc classifier is dropped.
  detectron2   a detectron2 .pkl/.pth ({'model': {...}}, numpy arrays or tensors), or a
               Caffe2/MSRA .pkl (res2_0_branch2a_w names, e.g. ImageNetPretrained/MSRA/R-50.pkl),
               validated and passed through.

Depth and width are inferred from the tensor shapes and checked against mocobench's
ResNet of that shape: any key that does not map, a missing key or a wrong shape is an
error and nothing is written. The output records what the weights expect under
'__mocobench__': RGB + ImageNet mean/std + STRIDE_IN_1X1 False for moco/torchvision
sources; a detectron2 file keeps its own record, else RGB if its __author__ is MOCO or
torchvision, otherwise (MSRA, Caffe2, unknown) BGR + caffe mean, std 1, STRIDE_IN_1X1 True.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mocobench import UserError
from mocobench.atomic import check_file_target, write_pickle
from mocobench.transfer.convert import FORMATS, convert_checkpoint, group_keys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT", type=Path,
                        help="backbone checkpoint (.pth, .pth.tar, .pkl)")
    parser.add_argument("output", metavar="OUTPUT.pkl", type=Path,
                        help="where to write the detectron2 weights (written atomically; must end in .pkl, "
                             "which detectron2 reads with pickle)")
    parser.add_argument("--format", choices=("auto", *FORMATS), default="auto",
                        help="layout of INPUT (default: auto, detected from its keys; a given format "
                             "that does not match the file is an error)")


def run(args: argparse.Namespace) -> int:
    if args.output.suffix != ".pkl":
        raise UserError(f"{args.output}: output must end in .pkl (detectron2 reads .pkl with pickle)")
    check_file_target(args.output)
    converted = convert_checkpoint(args.input, args.format)
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
        lines += group_keys(members) if len(members) <= 4 else [f"{head}.* ({len(members)} keys)"]
    return lines[:limit] + ([f"... (+{len(lines) - limit} more)"] if len(lines) > limit else [])
