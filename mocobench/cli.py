"""The ``mocobench`` command: one subcommand per stage of the suite.

Each subcommand lives in the module of its stage, which provides ``add_arguments(parser)``
and ``run(args) -> int``; this file only lists them. A ``UserError`` (bad file, bad config)
is printed as one line naming the problem and exits with status 2; any other exception is a
bug, also told in one line (exit 70), its traceback kept in a log file the line names
(and printed as well when MOCOBENCH_DEBUG is set).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Sequence

from mocobench import UserError, __version__, one_line

# name -> (module providing add_arguments/run, one-line help). Order = order of the flow.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "data": ("mocobench.transfer.datasets.cli", "write synthetic datasets in real VOC/COCO/ImageFolder layouts"),
    "pretrain": ("mocobench.pretrain.cli", "MoCo v1/v2 self-supervised pretraining -> checkpoint (MoCo repo layout)"),
    "knn": ("mocobench.pretrain.knn", "weighted kNN top-1 of frozen features (monitor self-supervised encoders)"),
    "lincls": ("mocobench.pretrain.lincls", "linear classification protocol on a frozen pretrained trunk"),
    "supervised": ("mocobench.pretrain.supervised", "train the same ResNet with labels -> torchvision .pth (supervised init)"),
    "convert": ("mocobench.transfer.convert_cli", "convert a backbone checkpoint to detectron2 weights (.pkl)"),
    "evaluate": ("mocobench.transfer.evaluation.cli", "evaluate detections or segmentations on a VOC, COCO, LVIS or Cityscapes split"),
    "transfer": ("mocobench.transfer.cli", "run a detection, keypoint or segmentation job (config + init weights + seed) into a run dir"),
    "run-all": ("mocobench.results.run_all", "run every job of the paper's tables (local | torchrun | slurm), skipping finished ones"),
    "sweep": ("mocobench.results.sweep_run", "run a sweep of pretraining ablations (mechanism x K, m, shuffle-BN) -> evaluations -> Table 3, Figure 3"),
    "collate": ("mocobench.results.collate", "run folders -> paper-format tables (md/csv/html/png) with deltas vs supervised"),
    "audit": ("mocobench.results.audit", "is a candidate's delta over a baseline better, worse or within noise?"),
    "demo": ("mocobench.results.demo", "the whole flow end to end at demo scale on the CPU: data -> pretrain -> convert -> detect -> tables"),
}


class OneLineParser(argparse.ArgumentParser):
    """A bad flag is one line too (argparse would print the whole usage above it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; only the chosen subcommand's module is imported (each pulls in torch,
    pycocotools, pandas ...), so ``mocobench --help`` and every subprocess start fast."""
    parser = OneLineParser(
        prog="mocobench",
        description="MoCo pretraining and detection-transfer benchmarks: pretrain -> convert -> "
                    "detect (VOC / COCO) -> paper-format tables.",
        epilog="Run 'mocobench COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"mocobench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if name != chosen:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"mocobench {args.command}: error: {' '.join(one_line(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mocobench {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not the user's input: one line here, the traceback in a log
        log = _keep_traceback(args)
        if os.environ.get(DEBUG_VARIABLE):
            traceback.print_exc()
        print(f"mocobench {args.command}: internal error: {type(e).__name__}: {one_line(e)[:300]} "
              f"(traceback in {log}; set {DEBUG_VARIABLE}=1 to print it)", file=sys.stderr)
        return INTERNAL_ERROR


INTERNAL_ERROR = 70  # EX_SOFTWARE: not 1, which audit uses for "worse"
DEBUG_VARIABLE = "MOCOBENCH_DEBUG"
ERROR_LOG = "error.log"


def _keep_traceback(args: argparse.Namespace) -> Path:
    """Append the current traceback to the run folder's error.log when the run has a folder,
    else to a file in the temporary folder; returns where it went."""
    folder = getattr(args, "output_dir", None)
    text = f"{time.strftime('%Y-%m-%d %H:%M:%S')} mocobench {' '.join(sys.argv[1:])}\n{traceback.format_exc()}\n"
    if folder and Path(folder).is_dir():
        try:
            with open(Path(folder) / ERROR_LOG, "a") as f:
                f.write(text)
            return Path(folder) / ERROR_LOG
        except OSError:
            pass
    fd, path = tempfile.mkstemp(prefix=f"mocobench-{args.command}-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return Path(path)


if __name__ == "__main__":
    sys.exit(main())
