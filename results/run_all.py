"""Run every job of the paper's tables: tables x inits x seeds -> OUTPUT/<table>/<init>/seed<k>/.

Finished runs (a valid metrics.json) are skipped and interrupted ones resumed from their
last checkpoint, so this can be re-run after a kill, a crash or a preempted allocation and
only runs what is left. A finished or interrupted run whose recorded inputs (digests.json:
the resolved config, seed, engine and the init weights' bytes) no longer match the job is
stale: its folder is moved aside to <run>.stale-<time> (kept for reference, never collated)
and the job runs afresh. Each job is one ``mocobench transfer`` run, launched in turn on this
machine (local), as a torchrun DDP run on this node (torchrun), or as one SLURM job per run
through submitit (slurm), one task per GPU. With a world size other than the table's
reference (the paper used 8 GPUs), images per batch and LR scale linearly and iterations
inversely (detectron2's REFERENCE_WORLD_SIZE rule); job.json in each run folder records the
command, the world size and those overrides. A failed job does not stop the others; the
summary names it and the exit status is 1.

Before it plans or starts anything, run-all locks every job's run folder (``.run-all.lock``,
beside the ``.lock`` its transfer takes), all of them or none: two run-alls over one output
folder run side by side when their jobs are disjoint (the demo runs one per init and table),
and one sharing a job with a running one is refused in one line naming the folder and holder.
Nothing else it writes is shared at the output root: the slurm launcher's ``.submitit`` folder
names its files by job id and a random id.
"""

from __future__ import annotations

import argparse
import os
import shlex
import time
from contextlib import nullcontext
from pathlib import Path

from mocobench import UserError
from mocobench.atomic import write_json
from mocobench.run_lock import move_aside, run_folders, run_records
from mocobench.results.plan import (DONE, NEW, STALE, PlannedRun, changed_inputs, expand, reference_world_size,
                                    scaling_overrides)
from mocobench.transfer.config import load_detection_config
from mocobench.results.launch import (ClusterParams, LaunchSpec, launch_local, launch_submitit, live_job,
                                      torchrun_argv, transfer_argv)
from mocobench.results.runs import check_metrics, read_metrics
from mocobench.results.tables import add_trials_argument, load_inits, resolve_tables, tables_for_engine

LAUNCHERS = ("local", "torchrun", "slurm")
NO_CONFIG = "no-config"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tables", nargs="+", metavar="TABLE",
                   help="table names (configs/tables/<name>.yaml) or paths; default: every paper-scale table")
    p.add_argument("--inits", required=True, metavar="FILE",
                   help="YAML: init name -> {weights: converted .pkl (empty: random init), format: RGB|BGR}")
    add_trials_argument(p)
    add_launch_arguments(p)


def add_launch_arguments(p: argparse.ArgumentParser) -> None:
    """How and where jobs run (shared with the sweep command, which launches through ``launch``)."""
    p.add_argument("--engine", default="torchvision", choices=("torchvision", "detectron2"),
                   help="detection engine passed to mocobench transfer (default: torchvision)")
    p.add_argument("--launcher", default="local", choices=LAUNCHERS,
                   help="local: one process per job, in turn; torchrun: DDP over --gpus on this node; "
                        "slurm: one submitit job per run (default: local)")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="local launcher: run up to N jobs at once, the CPU cores split between them "
                        "(OMP_NUM_THREADS = cores / N); for many small CPU jobs (default: 1, in turn)")
    p.add_argument("--gpus", type=int, default=int(os.environ.get("MOCOBENCH_GPUS", 0)) or None,
                   help="GPUs (DDP processes) per node; torchrun default: all visible, slurm default: 8 "
                        "[env MOCOBENCH_GPUS]")
    p.add_argument("--tasks-per-node", type=int, default=int(os.environ.get("MOCOBENCH_TASKS_PER_NODE", 0)) or None,
                   metavar="N", help="DDP processes per node (torchrun, slurm); default: --gpus, 1 with --gpus 0 "
                                     "(a CPU job: N > 1 is an N-rank gloo run) [env MOCOBENCH_TASKS_PER_NODE]")
    p.add_argument("--nodes", type=int, default=int(os.environ.get("MOCOBENCH_NODES", 1)),
                   help="nodes per job (slurm only) [env MOCOBENCH_NODES, default 1]")
    p.add_argument("--partition", default=os.environ.get("MOCOBENCH_PARTITION", ""),
                   help="SLURM partition [env MOCOBENCH_PARTITION; default: the cluster's]")
    p.add_argument("--time", type=int, default=int(os.environ.get("MOCOBENCH_TIME_MIN", 24 * 60)),
                   metavar="MIN", help="SLURM time limit per job in minutes [env MOCOBENCH_TIME_MIN, default 1440]")
    p.add_argument("--signal-delay", type=int, default=int(os.environ.get("MOCOBENCH_SIGNAL_DELAY_S", 120)),
                   metavar="S", help="slurm: SLURM warns a job S seconds before its time limit; the job then saves a "
                                     "checkpoint and is requeued, resuming from it [env MOCOBENCH_SIGNAL_DELAY_S, "
                                     "default 120]")
    p.add_argument("--cpus-per-task", type=int, default=int(os.environ.get("MOCOBENCH_CPUS_PER_TASK", 10)),
                   help="SLURM CPUs per GPU task (data loading) [env MOCOBENCH_CPUS_PER_TASK, default 10]")
    p.add_argument("--output", default="output", metavar="DIR", help="root of the run folders (default: output)")
    p.add_argument("--data-root", metavar="R", help="datasets root passed to each job (else $DETECTRON2_DATASETS)")
    p.add_argument("--dry-run", action="store_true",
                   help="list every job with its state (done / resume / new) and command; run nothing")


def world_size(args: argparse.Namespace) -> int:
    if args.parallel < 1 or (args.parallel > 1 and args.launcher != "local"):
        raise UserError(f"--parallel {args.parallel}: needs the local launcher and N >= 1")
    if args.launcher == "local":
        if args.gpus and args.gpus > 1:
            raise UserError(f"--gpus {args.gpus}: the local launcher runs one process; use --launcher torchrun")
        if args.tasks_per_node and args.tasks_per_node > 1:
            raise UserError(f"--tasks-per-node {args.tasks_per_node}: the local launcher runs one process; "
                            "use --launcher torchrun")
        return 1
    for flag, value, least in (("--gpus", args.gpus, 0), ("--tasks-per-node", args.tasks_per_node, 1),
                               ("--nodes", args.nodes, 1), ("--time", args.time, 1),
                               ("--cpus-per-task", args.cpus_per_task, 1), ("--signal-delay", args.signal_delay, 1)):
        if value is not None and value < least:
            raise UserError(f"{flag} {value}: must be at least {least}")
    return tasks_per_node(args) * (args.nodes if args.launcher == "slurm" else 1)


def gpus_per_node(args: argparse.Namespace) -> int:
    """GPUs per node: --gpus (0: CPU jobs), else 8 on SLURM, else all visible here."""
    if args.gpus is not None:
        return args.gpus
    if args.launcher == "slurm":
        return 8
    import torch

    return max(1, torch.cuda.device_count())


def tasks_per_node(args: argparse.Namespace) -> int:
    """DDP processes per node: --tasks-per-node, else one per GPU, else (CPU) one."""
    return args.tasks_per_node or gpus_per_node(args) or 1


def plan(job: PlannedRun, world: int, engine: str) -> str:
    """The job's state; for one to run, sets the overrides that scale it to this world size."""
    if not job.config.is_file():
        return NO_CONFIG
    state = job.state
    if state != NEW:
        job.stale = changed_inputs(job, world, engine)
    elif run_records(job.run_dir):  # a metrics.json that is no trained result: transfer would refuse the folder
        job.stale = [check_metrics(job.run_dir, job.table.metrics)[1]]
    if state == DONE and not job.stale:
        return state
    cfg = load_detection_config(job.config)
    try:
        job.overrides = scaling_overrides(cfg, reference_world_size(job.table, cfg), world)
    except ValueError as e:
        raise UserError(f"{job.config}: {e}") from None
    return STALE if job.stale else state


def run(args: argparse.Namespace) -> int:
    tables = resolve_tables(args.tables, trials=args.trials)
    tables = tables_for_engine(tables, args.engine, named=bool(args.tables))
    inits = load_inits(args.inits)
    output = Path(args.output).resolve()
    world = world_size(args)
    jobs = expand(tables, inits, output)
    # locked before planning, so no other run-all changes a job's state between plan and launch
    held = (nullcontext() if args.dry_run
            else run_folders([j.run_dir for j in jobs if j.config.is_file()], "run-all"))
    with held as locks:
        specs, counts, missing = plan_jobs(jobs, world, args)
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        print(f"{len(jobs)} jobs in {len(tables)} tables: {summary}; world size {world}")
        if args.dry_run:
            return 0
        for job, spec in specs:
            if job.stale and args.launcher == "slurm" and (live := live_job(job.run_dir)):
                raise UserError(f"{job.run_dir}: SLURM job {live['job_id']} still runs it with the old inputs "
                                f"({', '.join(job.stale)}); wait for it or scancel {live['job_id']}, then re-run")
            if job.stale and job.run_dir.exists():
                print(f"{job.name}: inputs changed ({', '.join(job.stale)}); old run moved to "
                      f"{move_aside(job.run_dir, 'stale')}")
                locks.take(job.run_dir)  # the lock file moved aside with the old run
            write_json(job.run_dir / "job.json", job_record(job, spec, args, world))
        codes = launch(args, [s for _, s in specs], output, world)
    failed = [j.name for j, s in specs if codes.get(s.name) or read_metrics(j.run_dir, j.table.metrics) is None]
    failed += [j.name for j in missing]
    finished = len(specs) + len(missing) - len(failed)
    print(f"run_all: {counts.get(DONE, 0)} already done, {finished} finished now, {len(failed)} failed")
    for name in failed:
        print(f"  FAILED {name}")
    return 1 if failed else 0


def plan_jobs(jobs: list[PlannedRun], world: int, args: argparse.Namespace
              ) -> tuple[list[tuple[PlannedRun, LaunchSpec]], dict[str, int], list[PlannedRun]]:
    """The jobs to run with their launch specs, the count per state, and the jobs without a
    config; prints a line per job."""
    specs, counts, missing = [], {}, []
    for job in jobs:
        state = plan(job, world, args.engine)
        counts[state] = counts.get(state, 0) + 1
        if state == NO_CONFIG:
            missing.append(job)
            print(f"{NO_CONFIG:9s} {job.name}  (config not found: {job.config})")
            continue
        if state == DONE:
            print(f"{DONE:9s} {job.name}")
            continue
        targs = job.transfer_args(args.engine, args.data_root)
        argv = (transfer_argv(targs) if args.launcher != "torchrun"
                else torchrun_argv(world, targs))
        why = f"  (changed: {', '.join(job.stale)})" if job.stale else ""
        print(f"{state:9s} {job.name}{why}  {shlex.join(argv)}")
        specs.append((job, LaunchSpec(job.name, job.run_dir, argv)))
    return specs, counts, missing


def launch(args: argparse.Namespace, specs: list[LaunchSpec], output: Path, world: int) -> dict[str, int]:
    if not specs:
        return {}
    if args.launcher == "slurm":
        params = ClusterParams(nodes=args.nodes, gpus_per_node=gpus_per_node(args),
                               tasks_per_node=tasks_per_node(args), timeout_min=args.time,
                               cpus_per_task=args.cpus_per_task, partition=args.partition,
                               signal_delay_s=args.signal_delay)
        return launch_submitit(specs, params, output / ".submitit")
    return launch_local(specs, args.parallel)


def job_record(job: PlannedRun, spec: LaunchSpec, args: argparse.Namespace, world: int) -> dict:
    """job.json: what ran in this folder and how it was scaled, for whoever reads the result."""
    return {"table": job.table.name, "table_file": str(job.table.path), "init": job.init.name,
            "weights": str(job.init.weights) if job.init.weights else None, "format": job.init.format,
            "seed": job.seed, "config": str(job.config), "engine": args.engine, "launcher": args.launcher,
            "world_size": world, "scaling_overrides": job.overrides, "resumed": "--resume" in spec.argv, "argv": spec.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
