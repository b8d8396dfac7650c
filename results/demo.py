"""Run the whole suite end to end at demo scale, on the CPU, in minutes:

  synthetic data -> MoCo v2 pretraining -> supervised init -> convert both to detectron2
  weights -> demo VOC table (Faster R-CNN R50-C4) and demo COCO table (Mask R-CNN R50-C4)
  with random / supervised / MoCo inits -> collated tables with deltas vs supervised.

Each stage is the suite's own command run as a subprocess, so the demo exercises exactly
what a researcher runs by hand. Every stage is resumable: run the demo again after a kill
and it skips what finished and continues what did not (pretraining and detection jobs
resume from their last checkpoint). One detection trial per init by default (under 10
minutes on 2 cores); `mocobench demo TRIALS 3` runs three and prints means and stds, since a
short job's AP50 moves by several points from seed to seed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml
from fvcore.common.config import CfgNode

from mocobench import UserError
from mocobench.atomic import write_json, write_text
from mocobench.config import load_config, load_defaults
from mocobench.digests import text_digest
from mocobench.machine import describe
from mocobench.progress import format_seconds
from mocobench.resources import config_path
from mocobench.threads import thread_env

DEFAULTS_FILE = Path(__file__).with_name("demo.yaml")
STAMP_FILE = "demo.json"  # in the output folder: the settings its results were made with
MACHINE_KEY = "machine"
# settings that change what the stages produce (threads, ETA seconds and TRIALS do not:
# more trials only add seeds)
RESULT_KEYS = ("SEED", "DATA_SCALE", "PRETRAIN_CONFIG", "SUPERVISED_CONFIG", "TABLES")


Command = list[str]


@dataclass
class Stage:
    """One step of the flow as lanes of commands: the commands of a lane run in turn, the
    lanes side by side (each on its share of the cores). Why lanes: the demo's jobs are
    small and use two cores poorly, so two one-thread processes finish sooner than the
    same work in turn; and random-init detection needs no backbone, so it runs beside
    pretraining instead of after it."""
    name: str
    title: str
    lanes: Callable[[], list[list[Command]]]
    done: Callable[[], bool] = lambda: False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="demo-output", metavar="D",
                        help="where data, checkpoints, runs and the report go (default: demo-output); "
                             "run again with the same folder to resume")
    parser.add_argument("--engine", default="torchvision", choices=("torchvision", "detectron2"),
                        help="detection engine (default: torchvision, the embedded one)")
    parser.add_argument("--config", metavar="FILE", help=f"demo settings overriding {DEFAULTS_FILE.name}")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, e.g. SEED 1")


def build_stages(cfg: CfgNode, out: Path, engine: str) -> list[Stage]:
    data, pre, sup, weights = out / "data", out / "pretrain", out / "supervised", out / "weights"
    runs, report = out / "runs", out / "report"
    moco_final = pre / f"checkpoint_{_pretrain_epochs(cfg):04d}.pth.tar"
    inits, random_inits = out / "inits.yaml", out / "inits_random.yaml"
    tables = list(cfg.TABLES)
    sup_final = sup / "model_final.pth"

    def run_all(inits_file: Path, parallel: int = 1) -> Command:
        return ["run-all", "--tables", *tables, "--trials", str(cfg.TRIALS), "--inits", str(inits_file),
                "--engine", engine, "--output", str(runs), "--data-root", str(data), "--parallel", str(parallel)]

    def backbones() -> list[list[Command]]:
        write_text(random_inits, yaml.safe_dump({"random": {"weights": ""}}))
        pretrain = ["pretrain", "--config", str(config_path(cfg.PRETRAIN_CONFIG)), "--data", str(data / "unlabeled"),
                    "--output-dir", str(pre), "--resume", "TRAIN.SEED", str(cfg.SEED)]
        supervised = ["supervised", "--config", str(config_path(cfg.SUPERVISED_CONFIG)), "--data",
                      str(data / "classify"), "--output-dir", str(sup), "--resume", "TRAIN.SEED", str(cfg.SEED)]
        return [[pretrain] if not moco_final.is_file() else [],
                ([supervised] if not sup_final.is_file() else []) + [run_all(random_inits)]]

    def convert() -> list[list[Command]]:
        write_text(inits, yaml.safe_dump({
            "random": {"weights": ""},
            "supervised": {"weights": str(weights / "supervised.pkl")},
            "moco": {"weights": str(weights / "moco.pkl")},
        }, sort_keys=False))
        return [[["convert", str(moco_final), str(weights / "moco.pkl")],
                 ["convert", str(sup_final), str(weights / "supervised.pkl")]]]

    return [
        Stage("data", "synthetic VOC / COCO / unlabeled / classify data",
              lambda: [[["data", "synth", "--out", str(data), "--seed", str(cfg.SEED), "--scale", cfg.DATA_SCALE]]]),
        Stage("backbones", "MoCo v2 pretraining on data/unlabeled | supervised init on data/classify, "
                           "then the random-init detection jobs", backbones,
              lambda: moco_final.is_file() and sup_final.is_file()),
        Stage("convert", "MoCo and supervised backbones -> detectron2 weights", convert,
              lambda: (weights / "moco.pkl").is_file() and (weights / "supervised.pkl").is_file() and inits.is_file()),
        Stage("detect", f"detection tables {', '.join(tables)} (random / supervised / MoCo inits)",
              lambda: [[run_all(inits, cfg.DETECT_PARALLEL)]]),
        Stage("collate", "tables with deltas vs supervised",
              lambda: [[["collate", str(runs), "--out", str(report), "--tables", *tables, "--trials", str(cfg.TRIALS),
                          "--inits", str(inits)]]]),
    ]


def _pretrain_epochs(cfg: CfgNode) -> int:
    from mocobench.pretrain.config import load_pretrain_config

    return int(load_pretrain_config(str(config_path(cfg.PRETRAIN_CONFIG))).SOLVER.EPOCHS)


def fingerprint(cfg: CfgNode) -> dict[str, str]:
    """The demo settings that shape its results, and digests of the backbone and detection
    configs as resolved (their _BASE_ chains and the defaults included), so an edit anywhere
    counts: the stages skip backbones on disk whatever their config now says."""
    from mocobench.pretrain.config import load_pretrain_config
    from mocobench.results.tables import resolve_tables
    from mocobench.transfer.config import load_detection_config

    out = {k: json.dumps(cfg[k]) for k in RESULT_KEYS}
    for key in ("PRETRAIN_CONFIG", "SUPERVISED_CONFIG"):
        out[f"{key} (resolved)"] = text_digest(load_pretrain_config(str(config_path(cfg[key]))).dump())[:16]
    for table in resolve_tables(list(cfg.TABLES)):
        for path in table.config_paths():
            out[f"{table.path.stem}: {path.name} (resolved)"] = text_digest(load_detection_config(path).dump())[:16]
    return out


def claim_output_dir(out: Path, stamp: dict[str, str], machine: dict | None = None) -> None:
    """Resume only into a folder made with the same settings. The stages skip what is on
    disk, so a rerun after a config edit would otherwise reuse the old backbones silently.
    ``machine`` (where the folder was first made) is recorded beside, never compared."""
    path = out / STAMP_FILE
    if not path.is_file():
        write_json(path, {**stamp, MACHINE_KEY: machine or {}})
        return
    try:
        old = json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path}: not valid JSON; delete it to claim the folder again") from None
    changed = sorted(k for k in stamp if old.get(k) != stamp[k])
    if changed:
        raise UserError(f"{path}: this folder holds a demo made with other settings ({', '.join(changed)}); "
                        "use another --output-dir, or delete the folder to start over")


class Eta:
    """Seconds left, from each stage's typical time scaled by how fast this machine ran the
    stages so far. A stage done in under RESUMED_FRACTION of its typical time was mostly
    resumed from disk: it says nothing about the machine's speed, so it does not rescale
    (else a resumed demo would predict seconds for minutes of work)."""
    RESUMED_FRACTION = 0.5

    def __init__(self, expected: dict[str, float]):
        self.expected = expected
        self.spent_expected = self.spent_measured = 0.0

    def remaining(self, names: list[str]) -> float:
        ratio = self.spent_measured / self.spent_expected if self.spent_expected else 1.0
        return sum(self.expected[n] for n in names) * ratio

    def record(self, name: str, took: float) -> None:
        if took >= self.RESUMED_FRACTION * self.expected[name]:
            self.spent_expected += self.expected[name]
            self.spent_measured += took


def run_stages(stages: list[Stage], expected: dict[str, float], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    eta = Eta(expected)
    for i, stage in enumerate(stages, 1):
        remaining = eta.remaining([s.name for s in stages[i - 1:]])
        head = f"[demo {i}/{len(stages)}] {stage.name}: {stage.title}"
        if stage.done():
            print(f"{head} -- already done, skipped", flush=True)
            continue
        print(f"{head} (elapsed {format_seconds(time.perf_counter() - t0)}, "
              f"ETA {format_seconds(remaining)})", flush=True)
        ts = time.perf_counter()
        _run_lanes(stage, env)
        took = time.perf_counter() - ts
        eta.record(stage.name, took)
        print(f"[demo {i}/{len(stages)}] {stage.name} finished in {format_seconds(took)}", flush=True)
    took = time.perf_counter() - t0
    print(f"[demo] all stages done in {format_seconds(took)}", flush=True)
    return took


def _run_lanes(stage: Stage, env: dict[str, str]) -> None:
    lanes = [lane for lane in stage.lanes() if lane]
    share = thread_env(len(lanes), env) if len(lanes) > 1 else {}
    script = [[[sys.executable, "-m", "mocobench", *c] for c in lane] for lane in lanes]
    with ThreadPoolExecutor(max_workers=max(1, len(script))) as pool:
        failed = [f for f in pool.map(lambda lane: _run_lane(lane, {**env, **share}), script) if f]
    if failed:
        raise UserError(f"stage '{stage.name}' failed: {' '.join(failed[0])} (run the demo again to resume)")


def _run_lane(lane: list[Command], env: dict[str, str]) -> Command | None:
    """Run a lane's commands in turn; the first that fails, or None."""
    for command in lane:
        if subprocess.run(command, env=env).returncode != 0:
            return command
    return None


def run(args: argparse.Namespace) -> int:
    if args.engine == "detectron2":  # before the data and pretraining stages, not after them
        from mocobench.transfer.engines.detectron2 import require_detectron2

        require_detectron2()
    cfg = load_config(load_defaults(DEFAULTS_FILE), args.config, args.opts)
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    threads = str(cfg.NUM_THREADS)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if cfg.TRIALS < 1:
        raise UserError(f"TRIALS must be >= 1, got {cfg.TRIALS}")
    machine = describe(cfg.NUM_THREADS)
    print(f"[demo] {machine['cpu']}, {machine['threads']} threads: sgemm {machine['sgemm_gflops']:.0f} GFLOP/s "
          "(demo seconds x GFLOP/s compares times across machines)", flush=True)
    claim_output_dir(out, fingerprint(cfg), machine)
    stages = build_stages(cfg, out, args.engine)
    expected = dict(cfg.EXPECTED_SECONDS)
    expected["detect"] *= cfg.TRIALS  # EXPECTED_SECONDS are for one trial
    took = run_stages(stages, expected, env)
    print(f"[demo] {took:.0f} s x {machine['sgemm_gflops']:.0f} GFLOP/s = {took * machine['sgemm_gflops']:.0f} "
          "(machine-independent time; stages resumed from disk make it smaller)", flush=True)
    report = out / "report"
    print()
    print((report / "report.md").read_text())
    print(f"HTML report: {report / 'report.html'}")
    print(f"plots:       {', '.join(str(p) for p in sorted(report.glob('*.png')))}")
    return 0
