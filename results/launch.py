"""Run commands for jobs: on this machine (in turn or N at a time), under torchrun on one node, or on SLURM.

A launcher gets argv lists (``LaunchSpec``), not jobs, so what runs on a cluster is
exactly what ``--dry-run`` prints, and the launchers can be exercised with any command.
Every launcher runs all specs even when some fail and returns the exit code per spec.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from mocobench.threads import thread_env

LOG_FILE = "run_all.log"
SUBMITIT_LOGGER = "submitit"
SACCT_BYPASS = "Bypassing sacct error"  # submitit's warning each time its sacct poll fails


@dataclass(frozen=True)
class LaunchSpec:
    name: str
    run_dir: Path
    argv: list[str]  # for launch_submitit: the command EACH task runs


def mocobench_argv(command: str, args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "mocobench", command, *args]


def transfer_argv(args: Sequence[str]) -> list[str]:
    return mocobench_argv("transfer", args)


def torchrun_argv(nproc: int, args: Sequence[str], command: str = "transfer") -> list[str]:
    """``torchrun --standalone --nproc_per_node N -m mocobench COMMAND ...`` (torchrun's module)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "mocobench", command, *args]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The children run ``sys.executable -m mocobench``: the installed package run_all came from."""
    return {**os.environ, **(extra or {})}


def launch_local(specs: Sequence[LaunchSpec], parallel: int = 1) -> dict[str, int]:
    """Up to ``parallel`` jobs at once on this machine, each on its share of the cores;
    output to <run_dir>/run_all.log. Why more than one: small jobs (the demo's, CPU test
    runs) use two threads poorly, so two one-thread jobs side by side finish sooner than
    the same two in turn (measured in README "Performance"). Ctrl-C reaches the jobs too
    (same process group); each resumes on the next run."""
    parallel = max(1, min(parallel, len(specs) or 1))
    env = child_env(thread_env(parallel) if parallel > 1 else None)

    def run(numbered: tuple[int, LaunchSpec]) -> tuple[str, int]:
        i, spec = numbered
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        print(f"[{i}/{len(specs)}] {spec.name}: running (log: {spec.run_dir / LOG_FILE})", flush=True)
        with open(spec.run_dir / LOG_FILE, "a") as log:
            code = subprocess.run(spec.argv, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        print(f"[{i}/{len(specs)}] {spec.name}: exit {code}", flush=True)
        return spec.name, code

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return dict(pool.map(run, enumerate(specs, 1)))


@dataclass(frozen=True)
class ClusterParams:
    nodes: int = 1
    gpus_per_node: int = 8
    tasks_per_node: int = 8   # one DDP rank per task
    timeout_min: int = 24 * 60
    cpus_per_task: int = 10
    partition: str = ""


class DistributedTask:
    """What each submitit task runs: the command, with torch.distributed's variables set
    from the task's place in the job (so one job = one multi-node DDP run)."""

    def __init__(self, argv: Sequence[str], log: Path) -> None:
        self.argv, self.log = list(argv), log

    def __call__(self) -> int:
        import submitit

        env = submitit.JobEnvironment()
        port = 10000 + int("".join(c for c in str(env.job_id) if c.isdigit()) or 0) % 20000
        ddp = {"RANK": str(env.global_rank), "LOCAL_RANK": str(env.local_rank),
               "WORLD_SIZE": str(env.num_tasks), "LOCAL_WORLD_SIZE": str(env.num_tasks // env.num_nodes),
               "MASTER_ADDR": env.hostnames[0], "MASTER_PORT": str(port)}
        log = self.log.with_name(f"{self.log.stem}.rank{env.global_rank}{self.log.suffix}")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            rc = subprocess.run(self.argv, stdout=f, stderr=subprocess.STDOUT, env=child_env(ddp)).returncode
        if rc:
            raise RuntimeError(f"rank {env.global_rank}: {' '.join(self.argv)} exited {rc} (log: {log})")
        return rc


class SacctBypassFilter(logging.Filter):
    """Drops (and counts) submitit's per-poll sacct warning: on a SLURM without accounting
    every poll fails, and submitit reads job states from its result files anyway."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == SUBMITIT_LOGGER and SACCT_BYPASS in record.getMessage():
            self.dropped += 1
            return False
        return True


@contextlib.contextmanager
def quiet_sacct() -> Iterator[SacctBypassFilter]:
    """submitit's logger without the sacct warning while inside; then one line if any was dropped."""
    logger = logging.getLogger(SUBMITIT_LOGGER)
    quiet = SacctBypassFilter()
    logger.addFilter(quiet)
    try:
        yield quiet
    finally:
        logger.removeFilter(quiet)
        if quiet.dropped:
            print(f"run-all: sacct failed on {quiet.dropped} poll(s) (e.g. SLURM accounting is disabled); "
                  "job states were read from submitit's result files", flush=True)


def launch_submitit(specs: Sequence[LaunchSpec], params: ClusterParams, folder: Path,
                    cluster: str | None = None) -> dict[str, int]:
    """Submit every spec as one job (SLURM, or ``cluster="local"``), then wait for all."""
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)
    executor.update_parameters(nodes=params.nodes, gpus_per_node=params.gpus_per_node,
                               tasks_per_node=params.tasks_per_node, cpus_per_task=params.cpus_per_task,
                               timeout_min=params.timeout_min)
    if params.partition:
        executor.update_parameters(slurm_partition=params.partition)
    submitted = []
    codes = {}
    with quiet_sacct():
        for spec in specs:
            executor.update_parameters(name=spec.name.replace("/", "."))
            job = executor.submit(DistributedTask(spec.argv, spec.run_dir / LOG_FILE))
            print(f"{spec.name}: submitted job {job.job_id}", flush=True)
            submitted.append((spec, job))
        for spec, job in submitted:
            try:
                job.results()
                codes[spec.name] = 0
            except Exception as e:  # a failed job must not stop waiting for the others
                print(f"{spec.name}: job {job.job_id} failed: {str(e).strip().splitlines()[-1]}", flush=True)
                codes[spec.name] = 1
    return codes
