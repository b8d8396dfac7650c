"""Run commands for jobs: on this machine (in turn or N at a time), under torchrun on one node, or on SLURM.

A launcher gets argv lists (``LaunchSpec``), not jobs, so what runs on a cluster is
exactly what ``--dry-run`` prints, and the launchers can be exercised with any command.
Every launcher runs all specs even when some fail and returns the exit code per spec.
"""

from __future__ import annotations

import contextlib
import logging
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from mocobench import UserError, preempt
from mocobench.atomic import write_json
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
    gpus_per_node: int = 8    # 0: a CPU job, no gres asked for
    tasks_per_node: int = 8   # one DDP rank per task
    timeout_min: int = 24 * 60
    cpus_per_task: int = 10
    partition: str = ""
    signal_delay_s: int = 120  # SLURM's warning (SIGUSR2) this long before the time limit: time to save
    max_timeouts: int = 20     # requeues after a time limit (preemptions do not count) before giving up


SLURM_JOB_FILE = ".slurm_job.json"  # in the run folder: the job that runs it, so a re-run does not submit it twice
STOPPED_WAIT_S = 600  # a task whose command saved on a signal waits this long for SLURM to end or requeue it


def resume_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--resume`` after the mocobench command (not after its KEY VALUE overrides)."""
    argv = list(argv)
    if "--resume" in argv or "mocobench" not in argv:
        return argv
    at = argv.index("mocobench") + 2
    return argv[:at] + ["--resume"] + argv[at:]


def _exit_status(pid: int) -> int | None:
    """The child's exit status if it has ended, without reaping it (safe inside a signal handler
    while the main thread waits on the same child)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return -1
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _ignore_stop_signals() -> None:  # in the child before exec: until its loop handles them (mocobench/preempt.py)
    for sig in preempt.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _tolerate_requeued() -> None:
    """submitit's requeue after checkpoint() (``scontrol requeue``) fails when SLURM requeued the
    job already (preemption or an ``scontrol requeue`` landing with the time-limit warning):
    then there is nothing to do, not an error that would end the job as failed."""
    from submitit.slurm.slurm import SlurmJobEnvironment

    original = SlurmJobEnvironment._requeue
    if getattr(original, "tolerant", False):
        return

    def requeue(self, countdown: int) -> None:
        try:
            original(self, countdown)
        except subprocess.CalledProcessError:
            if slurm_state(self.job_id) in LIVE_STATES - {"RUNNING"}:
                return
            raise
    requeue.tolerant = True
    SlurmJobEnvironment._requeue = requeue


class Finished:
    """The requeued submission of a job whose command finished as the allocation ended."""

    def __call__(self) -> int:
        return 0


class DistributedTask:
    """What each submitit task runs: the command, with torch.distributed's variables set
    from the task's place in the job (so one job = one multi-node DDP run).

    Checkpointable (submitit requeues on SLURM's time-limit warning): on the signal the command
    saves a checkpoint and exits (mocobench/preempt.py), and ``checkpoint()`` hands submitit the
    same task with ``--resume``. A job SLURM requeues itself (``scontrol requeue``, preemption)
    reruns the submitted task; from its second start on it adds ``--resume`` too."""

    running: subprocess.Popen | None = None  # this process's command, for checkpoint()

    def __init__(self, argv: Sequence[str], log: Path, save_s: float = 90) -> None:
        self.argv, self.log, self.save_s = list(argv), log, save_s

    def __call__(self) -> int:
        import submitit

        env = submitit.JobEnvironment()
        _tolerate_requeued()
        port = 10000 + int("".join(c for c in str(env.job_id) if c.isdigit()) or 0) % 20000
        ddp = {"RANK": str(env.global_rank), "LOCAL_RANK": str(env.local_rank),
               "WORLD_SIZE": str(env.num_tasks), "LOCAL_WORLD_SIZE": str(env.num_tasks // env.num_nodes),
               "MASTER_ADDR": env.hostnames[0], "MASTER_PORT": str(port), preempt.ENV: "1"}
        argv = self.argv if not int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0) else resume_argv(self.argv)
        log = self.log.with_name(f"{self.log.stem}.rank{env.global_rank}{self.log.suffix}")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            proc = DistributedTask.running = subprocess.Popen(
                argv, stdout=f, stderr=subprocess.STDOUT, env=child_env(ddp), preexec_fn=_ignore_stop_signals)
            while (rc := proc.poll()) is None:  # polling: checkpoint() may run in between, in a signal handler
                time.sleep(0.5)
        DistributedTask.running = None
        if rc == preempt.EXIT_SAVED:  # saved on SLURM's signal: the job is being requeued or ended from outside
            time.sleep(STOPPED_WAIT_S)
            os._exit(rc)  # no result file: the job is not over
        if rc:
            raise RuntimeError(f"rank {env.global_rank}: {' '.join(argv)} exited {rc} (log: {log})")
        return rc

    def checkpoint(self, *args, **kwargs):
        """On SLURM's time-limit warning (rank 0, inside submitit's signal handler): let the
        command save and exit (it got the signal too; it is sent again until it ends), then
        requeue the same task resuming from that checkpoint."""
        import submitit

        proc, rc = DistributedTask.running, None
        if proc is not None:
            deadline = time.time() + self.save_s
            while rc is None and (rc := _exit_status(proc.pid)) is None and time.time() < deadline:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGUSR2)
                for _ in range(4):
                    if (rc := _exit_status(proc.pid)) is not None:
                        break
                    time.sleep(0.5)
            if rc is None:
                proc.kill()
        if rc == 0:
            return submitit.helpers.DelayedSubmission(Finished())
        return submitit.helpers.DelayedSubmission(DistributedTask(resume_argv(self.argv), self.log, self.save_s))


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


# sbatch's refusals -> the option that asked for it (run-all / sweep flags)
SBATCH_REFUSALS = (
    (re.compile(r"generic resource|gres", re.I), "--gpus"),
    (re.compile(r"partition", re.I), "--partition"),
    (re.compile(r"time limit", re.I), "--time"),
    (re.compile(r"node configuration is not available|more processors|cpu count|nodes? count", re.I),
     "--gpus / --tasks-per-node / --cpus-per-task / --nodes"),
)


def sbatch_refusal(error: BaseException, params: ClusterParams) -> UserError:
    """One line naming the flag for what sbatch refused (its own message quoted)."""
    text = str(error)
    lines = [ln.strip() for ln in text.splitlines() if "error:" in ln] or [ln.strip() for ln in text.splitlines()
                                                                           if ln.strip()]
    said = "; ".join(dict.fromkeys(ln.split("error:", 1)[-1].strip() for ln in lines)) or type(error).__name__
    for pattern, flag in SBATCH_REFUSALS:
        if pattern.search(said):
            break
    else:
        flag = "the SLURM options"
    asked = (f"{params.nodes} node(s) x {params.tasks_per_node} task(s) x {params.cpus_per_task} CPU(s), "
             f"{params.gpus_per_node} GPU(s) per node, {params.timeout_min} min"
             + (f", partition {params.partition}" if params.partition else ""))
    return UserError(f"sbatch refused the job ({asked}): {said} -- check {flag}")


def signal_delay(params: ClusterParams) -> int:
    """The warning's lead, at most 3/4 of the time limit: a warning at the start would reach the
    job's processes before they handle it (and end them)."""
    return max(1, min(params.signal_delay_s, params.timeout_min * 45))


def make_executor(params: ClusterParams, folder: Path, cluster: str | None = None):
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster,
                                     slurm_max_num_timeout=params.max_timeouts)
    executor.update_parameters(nodes=params.nodes, tasks_per_node=params.tasks_per_node,
                               cpus_per_task=params.cpus_per_task, timeout_min=params.timeout_min)
    if params.gpus_per_node:  # --gpus 0: a CPU job asks for no gres at all
        executor.update_parameters(gpus_per_node=params.gpus_per_node)
    if executor.cluster == "slurm":
        executor.update_parameters(slurm_signal_delay_s=signal_delay(params))
    if params.partition:
        executor.update_parameters(slurm_partition=params.partition)
    return executor


def submit(executor, spec: LaunchSpec, params: ClusterParams):
    """One job for ``spec``; sbatch's refusal as a one-line UserError (submitit's copy of
    sbatch's stderr is kept off the terminal)."""
    import submitit

    executor.update_parameters(name=spec.name.replace("/", "."))
    task = DistributedTask(spec.argv, spec.run_dir / LOG_FILE, save_s=max(10, signal_delay(params) - 15))
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return executor.submit(task)
    except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError) as e:
        raise sbatch_refusal(e, params) from None


LIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
               "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "PREEMPTED", "STOPPED", "RESV_DEL_HOLD"}


def slurm_state(job_id: str) -> str:
    """The job's state in SLURM's queue ("" once it has left it, or when squeue cannot say)."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip().splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else ""


def live_job(run_dir: Path) -> dict | None:
    """The record of the SLURM job that still runs (or waits to run) ``run_dir``, if any."""
    try:
        record = json.loads((run_dir / SLURM_JOB_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if slurm_state(record.get("job_id", "")) in LIVE_STATES else None


def wait_for(job, poll_s: float = 15, grace_s: float = 30) -> bool:
    """Until the job has its results (True), or has left SLURM's queue without them (False,
    after ``grace_s`` for the result files to appear); sacct is not needed (many single-machine
    SLURMs have no accounting, and submitit's own wait would never end there)."""
    checked, gone = 0.0, None
    while not all(j.paths.result_pickle.exists() for j in (job._sub_jobs or [job])):  # not done(): it runs sacct
        if job.__class__.__name__ == "SlurmJob" and time.time() - checked > poll_s:
            checked = time.time()
            if slurm_state(job.job_id) in LIVE_STATES:
                gone = None
            elif gone is None:
                gone = checked
        if gone is not None and time.time() - gone > grace_s:
            return False
        time.sleep(1)
    return True


def launch_submitit(specs: Sequence[LaunchSpec], params: ClusterParams, folder: Path,
                    cluster: str | None = None) -> dict[str, int]:
    """Submit every spec as one job (SLURM, or ``cluster="local"``), then wait for all.

    A spec whose run folder records a job still queued or running (a run-all killed while its
    jobs ran) is not submitted again: that job is waited for. Jobs are checkpointable: at a
    time limit or preemption they save and are requeued (DistributedTask)."""
    import submitit

    executor = make_executor(params, folder, cluster)
    submitted = []
    codes = {}
    with quiet_sacct():
        for spec in specs:
            record = live_job(spec.run_dir) if executor.cluster == "slurm" else None
            if record:
                job = submitit.SlurmJob(folder=record["folder"], job_id=record["job_id"],
                                        tasks=tuple(range(record.get("tasks", 1))))
                print(f"{spec.name}: job {job.job_id} (submitted {record.get('submitted', '?')}) is still "
                      f"{slurm_state(job.job_id).lower() or 'queued'}: waiting for it, not submitting again",
                      flush=True)
            else:
                job = submit(executor, spec, params)
                if executor.cluster == "slurm":
                    write_json(spec.run_dir / SLURM_JOB_FILE, {
                        "job_id": job.job_id, "folder": str(folder / "%j"), "tasks": params.nodes * params.tasks_per_node,
                        "argv": spec.argv, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")})
                print(f"{spec.name}: submitted job {job.job_id}", flush=True)
            submitted.append((spec, job))
        for spec, job in submitted:
            try:
                if not wait_for(job):
                    raise RuntimeError(f"left SLURM's queue without a result (cancelled, or killed with its node?); "
                                       f"log: {spec.run_dir / LOG_FILE} and {job.paths.stdout}")
                job.results()
                codes[spec.name] = 0
            except Exception as e:  # a failed job must not stop waiting for the others
                print(f"{spec.name}: job {job.job_id} failed: {str(e).strip().splitlines()[-1]}", flush=True)
                codes[spec.name] = 1
    return codes
