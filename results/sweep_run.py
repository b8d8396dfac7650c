"""Run a sweep file (configs/sweeps/*.yaml): the paper's dictionary ablations end to end.

Stages, each skipping what is finished and resuming what was interrupted, so the command
can be re-run after a kill and only runs what is left:
  1. pretraining, one run per distinct grid point: OUTPUT/<run>/pretrain/
  2. its evaluation: kNN (OUTPUT/<run>/knn.json) and/or the linear probe (OUTPUT/<run>/lincls/),
     and conversion to detectron2 weights (OUTPUT/<run>/init.pkl) for the runs of a Table 3
     group; kNN and conversion run on this machine
  3. Table 3's detection jobs through run-all: OUTPUT/detection/<table>/<run>/seed<k>/
  4. the report: OUTPUT/report/ (report.md, runs.csv, figure3.png, <table>.csv)
Pretraining and the linear probe go through the chosen launcher (local, torchrun, slurm);
--dry-run lists every job with its state (done / resume / new / waits) and command.
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from mocobench import UserError
from mocobench.atomic import write_text
from mocobench.checkpoints import last_checkpoint
from mocobench.results import run_all
from mocobench.results.launch import LaunchSpec, launch_local, mocobench_argv, torchrun_argv
from mocobench.results.sweep import Run, Sweep, load_sweep, resolve_sweep, run_config
from mocobench.results.sweep_report import knn_key, read_result, write_report

DONE, RESUME, NEW, WAITS = "done", "resume", "new", "waits"


@dataclass(frozen=True)
class Job:
    name: str
    state: str
    args: list[str]  # after ``mocobench``
    run_dir: Path
    distributed: bool  # through the launcher (pretrain, lincls) or on this machine (knn, convert)
    why: str = ""  # why a job whose result file exists runs again


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", metavar="SWEEP", help="sweep name (configs/sweeps/<name>.yaml) or path")
    p.add_argument("--data", help="pretraining image folder (else the pretraining config's DATA.PATH)")
    p.add_argument("--eval-data", help="labelled root with train/ and val/ for kNN and the linear probe")
    p.add_argument("--collate-only", action="store_true", help="only write OUTPUT/report from what has finished")
    run_all.add_launch_arguments(p)


def final_checkpoint(sweep: Sweep, run: Run, out: Path) -> Path:
    return out / run.name / "pretrain" / f"checkpoint_{run_config(sweep, run).SOLVER.EPOCHS:04d}.pth.tar"


def pretrain_job(sweep: Sweep, run: Run, out: Path, data: str | None) -> Job:
    folder = out / run.name / "pretrain"
    state = DONE if final_checkpoint(sweep, run, out).is_file() else RESUME if last_checkpoint(folder) else NEW
    args = ["pretrain", "--config", str(sweep.relative(sweep.cfg.PRETRAIN.CONFIG)), "--output-dir", str(folder)]
    args += (["--data", data] if data else []) + ["--resume", *map(str, sweep.cfg.PRETRAIN.OVERRIDES), *run.overrides]
    return Job(f"{run.name}/pretrain", state, args, folder, True)


def eval_jobs(sweep: Sweep, run: Run, out: Path, eval_data: str | None, convert: bool) -> list[Job]:
    """kNN / linear probe / conversion of the run's final checkpoint; each is done when its
    result file exists (for kNN and the probe: whole, with its top-1), and waits while the
    checkpoint does not."""
    weights, folder, ev = final_checkpoint(sweep, run, out), out / run.name, sweep.cfg.EVAL
    if (ev.KNN or ev.LINCLS) and not eval_data:
        raise UserError(f"{sweep.path}: EVAL names kNN / linear-probe configs; give --eval-data (train/ and val/)")
    planned: list[tuple[str, Path, list[str], Path, bool]] = []
    if ev.KNN:
        planned.append(("knn", folder / "knn.json", ["knn", "--weights", str(weights), "--data", str(eval_data),
                        "--config", str(sweep.relative(ev.KNN)), "--output", str(folder / "knn.json")], folder, False))
    if ev.LINCLS:
        planned.append(("lincls", folder / "lincls" / "metrics.json",
                        ["lincls", "--weights", str(weights), "--config", str(sweep.relative(ev.LINCLS)),
                         "--data", str(eval_data), "--output-dir", str(folder / "lincls"), "--resume"],
                        folder / "lincls", True))
    if convert:
        # the run's MoCo checkpoint holds query and key encoders: the query, as the authors' converter
        planned.append(("convert", folder / "init.pkl", ["convert", str(weights), str(folder / "init.pkl"),
                                                         "--encoder", "query"], folder, False))
    jobs = []
    for name, result, args, run_dir, distributed in planned:
        why = "" if name == "convert" or not result.is_file() else usable(sweep, name, result)
        done = result.is_file() and not why
        jobs.append(Job(f"{run.name}/{name}", DONE if done else NEW if weights.is_file() else WAITS,
                        args, run_dir, distributed, f"{why}; recomputed" if why else ""))
    return jobs


def usable(sweep: Sweep, name: str, result: Path) -> str:
    """Why an existing kNN / linear-probe result is no result ("" when it is one)."""
    return read_result(result, knn_key(sweep) if name == "knn" else "top1")[1]


def argv(job: Job, args: argparse.Namespace, world: int) -> list[str]:
    command, rest = job.args[0], job.args[1:]
    if job.distributed and args.launcher == "torchrun":
        return torchrun_argv(world, rest, command)
    return mocobench_argv(command, rest)


def run_stage(title: str, jobs: list[Job], args: argparse.Namespace, out: Path, world: int) -> list[str]:
    """Print the stage's jobs; unless a dry run, launch those to run; return the failed ones."""
    print(f"== {title}")
    todo = []
    for job in jobs:
        line = f"{job.state:7s} {job.name}" + (f"  ({job.why})" if job.why else "")
        if job.state in (NEW, RESUME):
            todo.append(LaunchSpec(job.name, job.run_dir, argv(job, args, world)))
            line += "  " + shlex.join(todo[-1].argv)
        print(line)
    if args.dry_run or not todo:
        return []
    remote = {j.name for j in jobs if j.distributed}
    codes = run_all.launch(args, [s for s in todo if s.name in remote], out, world)
    codes |= launch_local([s for s in todo if s.name not in remote], args.parallel)
    return [name for name, code in codes.items() if code]


def detection(sweep: Sweep, out: Path, args: argparse.Namespace) -> int:
    """Table 3: each table's runs as inits of ``run-all`` (converted weights, RGB)."""
    status = 0
    for table, runs in sweep.detection_runs().items():
        print(f"== detection: {table.stem}")
        ready = {r.name: {"weights": str(out / r.name / "init.pkl"), "format": "RGB"} for r in runs
                 if args.dry_run or (out / r.name / "init.pkl").is_file()}
        for r in runs:
            if r.name not in ready:
                print(f"{WAITS:7s} {table.stem}/{r.name}  (no converted weights yet)")
        if not ready:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            inits = (Path(tmp) if args.dry_run else out / "detection") / f"{table.stem}.inits.yaml"
            write_text(inits, yaml.safe_dump(ready, sort_keys=False))
            parser = argparse.ArgumentParser()
            run_all.add_arguments(parser)
            ns = parser.parse_args(["--inits", str(inits), "--tables", str(table)])
            for key, value in vars(args).items():
                if key in vars(ns) and key not in ("inits", "tables", "output", "trials"):
                    setattr(ns, key, value)
            ns.output = str(out / "detection")
            status |= run_all.run(ns)
    return status


def run(args: argparse.Namespace) -> int:
    sweep = load_sweep(resolve_sweep(args.sweep))
    out = Path(args.output).resolve()
    if not args.collate_only:
        world = run_all.world_size(args)
        converted = {r.name for runs in sweep.detection_runs().values() for r in runs}
        runs = sweep.runs
        print(f"{sweep.title}: {len(runs)} pretraining runs in {len(sweep.groups)} groups; world size {world}")
        failed = run_stage("pretrain", [pretrain_job(sweep, r, out, args.data) for r in runs], args, out, world)
        failed += run_stage("evaluate", [j for r in runs for j in eval_jobs(sweep, r, out, args.eval_data,
                                                                             r.name in converted)], args, out, world)
        status = detection(sweep, out, args)
        if args.dry_run:
            return 0
        for name in failed:
            print(f"  FAILED {name} (log: {out / name.split('/')[0]})")
        if failed or status:
            return 1
    write_report(sweep, out, out / "report")
    print(f"wrote {out / 'report'}/report.md")
    return 0
