"""Run one detection job -- a detectron2-format config, init weights and a seed -- into a run
dir: config.yaml (merged config), metrics.jsonl (training log), checkpoints
(model_XXXXXXX.pth, model_final.pth, last_checkpoint) and, only at the end, metrics.json.

Distributed: launch with torchrun (gloo on CPU, NCCL on GPU); SOLVER.IMS_PER_BATCH is the
global batch, split over the processes. A run dir with checkpoints needs --resume, which
continues exactly where the last checkpoint left off. KEY VALUE pairs after the options
override config keys, as in detectron2's train_net.py.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mocobench import UserError
from mocobench import dist as mdist
from mocobench.digests import write_digests
from mocobench.run_lock import add_overwrite_argument, run_folder
from mocobench.transfer.config import detection_defaults, load_detection_config, validate_detection_config
from mocobench.transfer.run_digests import job_digests, refuse_changed_resume

ENGINES = ("torchvision", "detectron2")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="detection config (detectron2 YAML, _BASE_ chains allowed)")
    parser.add_argument("--weights", help="init weights: a converted backbone .pkl (mocobench convert) or any "
                        "checkpoint it reads, or a run's model_*.pth; overrides MODEL.WEIGHTS ('' = random init)")
    parser.add_argument("--output-dir", help="run dir (default: the config's OUTPUT_DIR)")
    parser.add_argument("--engine", choices=ENGINES, default="torchvision",
                        help="torchvision: the embedded engine (default); detectron2: the reference, if installed")
    parser.add_argument("--seed", type=int, help="overrides SEED; -1 draws one and records it in config.yaml")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run dir's last checkpoint (start fresh if it has none)")
    add_overwrite_argument(parser)
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate without training: the run dir's last checkpoint with --resume, else the "
                        "weights (an init .pkl gives the before-training numbers)")
    parser.add_argument("--data-root", help="dataset root (default: $DETECTRON2_DATASETS, else 'datasets')")
    parser.add_argument("--check-parity", action="store_true",
                        help="train nothing: compare the torchvision engine with detectron2 on this config (same "
                        "weights, synthetic images and targets, every anchor and proposal sampled) and print each "
                        "loss, gradient, precise-BN and detection difference; exit 1 above tolerance (needs detectron2)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, e.g. SOLVER.MAX_ITER 100")


def load_job_config(args: argparse.Namespace):
    overrides = list(args.opts)
    if overrides[:1] == ["--"]:
        overrides = overrides[1:]
    cfg = load_detection_config(args.config, overrides)
    if args.weights is not None:
        cfg.MODEL.WEIGHTS = args.weights
    if args.seed is not None:
        cfg.SEED = args.seed
        validate_detection_config(cfg, f"{args.config} + --seed")
    return cfg


def record_digests(args: argparse.Namespace, cfg, out_dir: Path) -> None:
    """digests.json of this run; a resume whose inputs changed is refused (rank 0 only)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    current = job_digests(cfg, args.engine)
    if args.resume:
        refuse_changed_resume(out_dir, cfg, current)
    write_digests(out_dir, current)


def run(args: argparse.Namespace) -> int:
    if args.check_parity:
        from mocobench.transfer.parity_cli import run_parity_check

        return run_parity_check(args)
    cfg = load_job_config(args)
    if not args.eval_only and cfg.SOLVER.MAX_ITER < 1:
        raise UserError(f"{args.config}: SOLVER.MAX_ITER {cfg.SOLVER.MAX_ITER} trains nothing: give >= 1 "
                        "(or --eval-only to evaluate the weights as they are)")
    out_dir = Path(args.output_dir or cfg.OUTPUT_DIR)
    # an eval-only run without --resume evaluates the init weights: never over a trained run's numbers
    held = dict(fresh=not args.resume, overwrite=args.overwrite)
    cfg.OUTPUT_DIR = str(out_dir)
    data_root = args.data_root or os.environ.get("DETECTRON2_DATASETS") or "datasets"
    if args.engine == "detectron2":
        from mocobench.transfer.engines.detectron2 import require_detectron2

        require_detectron2()
        from mocobench.transfer.engines.detectron2.job import run_detectron2_job

        with run_folder(out_dir, "transfer", **held):
            record_digests(args, cfg, out_dir)
            metrics = run_detectron2_job(args, cfg, out_dir, data_root)
    else:
        from mocobench.transfer.engines.torchvision.supported import check_supported
        from mocobench.transfer.engines.torchvision.train import run_job

        check_supported(cfg, detection_defaults(), args.config)
        try:
            with run_folder(out_dir, "transfer", **held):
                record_digests(args, cfg, out_dir)
                metrics = run_job(cfg, out_dir, data_root, args.config, args.resume, args.eval_only)
        finally:
            mdist.cleanup()
    if metrics is not None and "sem_seg" in metrics:
        seg = metrics["sem_seg"]
        print(f"transfer: {out_dir}/metrics.json: mIoU {seg.get('mIoU', float('nan')):.2f}, "
              f"pACC {seg.get('pACC', float('nan')):.2f}", flush=True)
    elif metrics is not None:
        boxes = metrics.get("bbox", {})
        line = f"transfer: {out_dir}/metrics.json: bbox AP {boxes.get('AP', float('nan')):.2f} AP50 {boxes.get('AP50', float('nan')):.2f}"
        if "segm" in metrics:
            line += f", segm AP {metrics['segm'].get('AP', float('nan')):.2f}"
        print(line, flush=True)
    return 0
