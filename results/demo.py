"""Run the whole suite end to end at demo scale, on the CPU, in minutes:

  synthetic data -> MoCo v2 pretraining | supervised init -> convert each to detectron2
  weights -> demo VOC table (Faster R-CNN R50-C4) and demo COCO table (Mask R-CNN R50-C4)
  with random / supervised / MoCo inits -> collated tables with deltas vs supervised.

Each step is the suite's own command run as a subprocess, so the demo exercises exactly
what a researcher runs by hand. The data comes first, alone on every thread; the rest runs
as a dependency graph on PARALLEL workers (``mocobench.results.schedule``), each process
on its share of the threads: a task per backbone, per conversion and per (init, table)
detection run-all, then collate. A task starts as soon as what it needs is on disk, the
longest chain first, so MoCo pretraining starts at once while the other worker runs the
supervised init, its conversion and detection and the random-init detection.

Every task is resumable: run the demo again after a kill and it skips what finished and
continues what did not (pretraining and detection jobs resume from their last checkpoint).
One detection trial per init by default, three for random init (its tables' RANDOM_TRIALS), so
each lead is told against random init's measured spread (about 5 minutes on 2 cores); `mocobench
demo TRIALS 3` runs three of every init and prints their means and stds too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import yaml
from fvcore.common.config import CfgNode

from mocobench import UserError
from mocobench.atomic import write_json, write_text
from mocobench.atomic import ensure_folder
from mocobench.config import Rule, at_least, check_rules, load_config, load_defaults
from mocobench.digests import text_digest
from mocobench.machine import describe
from mocobench.progress import format_seconds
from mocobench.resources import config_path
from mocobench.results import schedule
from mocobench.results.schedule import Command, Task, longest_paths
from mocobench.threads import thread_env

DEFAULTS_FILE = Path(__file__).with_name("demo.yaml")
STAMP_FILE = "demo.json"  # in the output folder: the settings its results were made with
MACHINE_KEY = "machine"
# settings that change what the tasks produce (threads, workers, ETA seconds and TRIALS do
# not: more trials only add seeds)
RESULT_KEYS = ("SEED", "DATA_SCALE", "PRETRAIN_CONFIG", "SUPERVISED_CONFIG", "TABLES")

INITS_FILE = "inits.yaml"  # every init, for collate; each detection task reads a one-init file
# EXPECTED_SECONDS keys that are kinds of task; the others are tables (one detection job)
TASK_KINDS = ("data", "pretrain", "supervised", "convert", "collate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="demo-output", metavar="D",
                        help="where data, checkpoints, runs and the report go (default: demo-output); "
                             "run again with the same folder to resume")
    parser.add_argument("--engine", default="torchvision", choices=("torchvision", "detectron2"),
                        help="detection engine (default: torchvision, the embedded one)")
    parser.add_argument("--config", metavar="FILE", help=f"demo settings overriding {DEFAULTS_FILE.name}")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, e.g. SEED 1")


def build_tasks(cfg: CfgNode, out: Path, engine: str) -> tuple[list[Task], set[str]]:
    """The demo's tasks, data first, and the names of those whose output is already on disk;
    writes the inits files that the detection tasks and collate read."""
    from mocobench.results.tables import resolve_tables

    data, weights, runs = out / "data", out / "weights", out / "runs"
    seconds = cfg.EXPECTED_SECONDS
    inits = {"random": "", "supervised": str(weights / "supervised.pkl"), "moco": str(weights / "moco.pkl")}
    write_text(out / INITS_FILE, yaml.safe_dump({n: {"weights": w} for n, w in inits.items()}, sort_keys=False))
    for name, path in inits.items():
        write_text(out / f"inits_{name}.yaml", yaml.safe_dump({name: {"weights": path}}))

    def backbone(command: str, config: str, images: str, folder: str) -> Command:
        return [command, "--config", str(config_path(config)), "--data", str(data / images),
                "--output-dir", str(out / folder), "--resume", "TRAIN.SEED", str(cfg.SEED)]

    # init -> (the task making its backbone, the backbone's final checkpoint)
    backbones = {"moco": ("pretrain", out / "pretrain" / f"checkpoint_{_pretrain_epochs(cfg):04d}.pth.tar"),
                 "supervised": ("supervised", out / "supervised" / "model_final.pth")}
    tasks = [
        Task("data", [["data", "synth", "--out", str(data), "--seed", str(cfg.SEED), "--scale", cfg.DATA_SCALE]],
             (), seconds.data, "synthetic VOC / COCO / unlabeled / classify data"),
        Task("pretrain", [backbone("pretrain", cfg.PRETRAIN_CONFIG, "unlabeled", "pretrain")], ("data",),
             seconds.pretrain, "MoCo v2 pretraining on data/unlabeled"),
        Task("supervised", [backbone("supervised", cfg.SUPERVISED_CONFIG, "classify", "supervised")], ("data",),
             seconds.supervised, "supervised init on data/classify"),
    ]
    done = {task for task, final in backbones.values() if final.is_file()}
    for init, (task, final) in backbones.items():
        # the MoCo checkpoint holds the query and key encoders: convert takes the one asked for (the
        # query, as the MoCo authors' converter); the supervised model_final.pth holds one
        choose = ["--encoder", "query"] if init == "moco" else []
        tasks.append(Task(f"convert-{init}", [["convert", str(final), inits[init], *choose]], (task,), seconds.convert,
                          f"{init} backbone -> detectron2 weights"))
        if Path(inits[init]).is_file():
            done.add(f"convert-{init}")
    for entry, table in zip(cfg.TABLES, resolve_tables(list(cfg.TABLES), trials=cfg.TRIALS)):
        for init in inits:
            command = ["run-all", "--tables", entry, "--inits", str(out / f"inits_{init}.yaml"),
                       "--trials", str(cfg.TRIALS), "--engine", engine, "--output", str(runs),
                       "--data-root", str(data), "--parallel", "1"]
            after = (f"convert-{init}",) if init in backbones else ("data",)
            trials = table.trials_for(init)
            tasks.append(Task(f"{table.name}/{init}", [command], after,
                              detection_seconds(seconds, table.name) * trials,
                              f"{table.title}, {init} init, {trials} trial(s)"))
    tasks.append(Task("collate", [["collate", str(runs), "--out", str(out / "report"), "--tables", *cfg.TABLES,
                                   "--trials", str(cfg.TRIALS), "--inits", str(out / INITS_FILE)]],
                      tuple(t.name for t in tasks), seconds.collate, "tables with deltas vs supervised"))
    return tasks, done


def detection_seconds(seconds: CfgNode, table: str) -> float:
    """Expected seconds of one trial of ``table`` for one init; a table not listed counts as
    the slowest listed one, so its ETA errs long rather than short."""
    tables = {k: float(v) for k, v in seconds.items() if k not in TASK_KINDS}
    return tables.get(table, max(tables.values(), default=0.0))


def _pretrain_epochs(cfg: CfgNode) -> int:
    from mocobench.pretrain.config import load_pretrain_config

    return int(load_pretrain_config(str(config_path(cfg.PRETRAIN_CONFIG))).SOLVER.EPOCHS)


def fingerprint(cfg: CfgNode) -> dict[str, str]:
    """The demo settings that shape its results, and digests of the backbone and detection
    configs as resolved (their _BASE_ chains and the defaults included), so an edit anywhere
    counts: the tasks skip backbones on disk whatever their config now says."""
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
    """Resume only into a folder made with the same settings. The tasks skip what is on
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
    """Seconds left: the expected seconds of the tasks left, spread over the workers but never
    less than their longest chain, scaled by how fast this machine ran the tasks so far. A
    task done in under RESUMED_FRACTION of its expected time was mostly resumed from disk: it
    says nothing about the machine's speed, so it does not rescale (else a resumed demo would
    predict seconds for minutes of work)."""
    RESUMED_FRACTION = 0.5

    def __init__(self, tasks: Sequence[Task], workers: int) -> None:
        self.tasks = {t.name: t for t in tasks}
        self.workers = workers
        self.spent_expected = self.spent_measured = 0.0

    def remaining(self, left: Iterable[str], running: Mapping[str, float] | None = None) -> float:
        """``left``: the tasks not finished; ``running``: seconds spent so far on those started."""
        ratio = self.spent_measured / self.spent_expected if self.spent_expected else 1.0
        running = running or {}
        cost = {n: max(0.0, self.tasks[n].expected - running.get(n, 0.0) / ratio) for n in left}
        chain = max(longest_paths([self.tasks[n] for n in cost], cost).values(), default=0.0)
        return max(sum(cost.values()) / self.workers, chain) * ratio

    def record(self, name: str, took: float) -> None:
        expected = self.tasks[name].expected
        if took >= self.RESUMED_FRACTION * expected:
            self.spent_expected += expected
            self.spent_measured += took


class TaskLog:
    """A line as each task is skipped, starts and finishes, with the time elapsed and the ETA."""

    def __init__(self, tasks: Sequence[Task], workers: int) -> None:
        self.eta = Eta(tasks, workers)
        self.left = {t.name for t in tasks}
        self.started: dict[str, float] = {}
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def skipped(self, task: Task) -> None:
        self.left.discard(task.name)
        print(f"[demo] {task.name}: {task.title} -- already done, skipped", flush=True)

    def start(self, task: Task) -> None:
        self.started[task.name] = time.perf_counter()
        print(f"[demo] {task.name}: {task.title} ({self._clock()})", flush=True)

    def finish(self, task: Task) -> None:
        took = time.perf_counter() - self.started.pop(task.name)
        self.eta.record(task.name, took)
        self.left.discard(task.name)
        print(f"[demo] {task.name} finished in {format_seconds(took)} ({self._clock()})", flush=True)

    def _clock(self) -> str:
        now = time.perf_counter()
        running = {name: now - t for name, t in self.started.items()}
        return f"elapsed {format_seconds(now - self.t0)}, ETA {format_seconds(self.eta.remaining(self.left, running))}"


def run_tasks(tasks: Sequence[Task], workers: int, env: dict[str, str], log: TaskLog,
              done: Iterable[str] = ()) -> None:
    """Run the tasks (less ``done``) as a graph on ``workers`` processes at a time, each on its
    share of the threads; UserError naming the first command that failed."""
    share = {**env, **thread_env(workers, env)}
    failure = schedule.run(tasks, workers, lambda task: _run_commands(task.commands, share),
                           log.start, log.finish, done)
    if failure is not None:
        task, command = failure
        raise UserError(f"task '{task.name}' failed: {' '.join(command)} (run the demo again to resume)")


def _run_commands(commands: Sequence[Command], env: dict[str, str]) -> Command | None:
    """Run ``mocobench COMMAND`` for each command in turn; the first that fails, or None."""
    for command in commands:
        argv = [sys.executable, "-m", "mocobench", *command]
        if subprocess.run(argv, env=env).returncode != 0:
            return argv
    return None


# the settings' ranges, checked before the output folder is made
RULES = {"SEED": at_least(0), "TRIALS": at_least(1), "NUM_THREADS": at_least(1), "PARALLEL": at_least(1),
         "DATA_SCALE": Rule(lambda v: v in ("demo", "tiny"), "demo or tiny")}


def run(args: argparse.Namespace) -> int:
    if args.engine == "detectron2":  # before the data and pretraining tasks, not after them
        from mocobench.transfer.engines.detectron2 import require_detectron2

        require_detectron2()
    cfg = load_config(load_defaults(DEFAULTS_FILE), args.config, args.opts)
    check_rules(cfg, RULES, args.config or DEFAULTS_FILE)
    out = Path(args.output_dir).resolve()
    ensure_folder(out)
    threads = str(cfg.NUM_THREADS)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    machine = describe(cfg.NUM_THREADS)
    print(f"[demo] {machine['cpu']}, {machine['threads']} threads: sgemm {machine['sgemm_gflops']:.0f} GFLOP/s; "
          f"one thread of demo-scale convolutions {machine['conv_gflops']:.1f} GFLOP/s "
          "(demo seconds x GFLOP/s compares times across machines)", flush=True)
    claim_output_dir(out, fingerprint(cfg), machine)
    tasks, done = build_tasks(cfg, out, args.engine)
    log = TaskLog(tasks, cfg.PARALLEL)
    for task in tasks:
        if task.name in done:
            log.skipped(task)
    data, rest = tasks[0], tasks[1:]
    run_tasks([data], 1, env, log)  # alone on every thread: every other task reads its output
    run_tasks(rest, cfg.PARALLEL, env, log, done={data.name, *done})
    took = log.elapsed()
    print(f"[demo] all stages done in {format_seconds(took)}", flush=True)
    print(f"[demo] {took:.0f} s x sgemm {machine['sgemm_gflops']:.0f} GFLOP/s = {took * machine['sgemm_gflops']:.0f}; "
          f"x convolutions {machine['conv_gflops']:.1f} GFLOP/s = {took * machine['conv_gflops']:.0f} "
          "(tasks resumed from disk make them smaller)", flush=True)
    report = out / "report"
    print()
    print((report / "report.md").read_text())
    print(f"HTML report: {report / 'report.html'}")
    print(f"plots:       {', '.join(str(p) for p in sorted(report.glob('*.png')))}")
    return 0
