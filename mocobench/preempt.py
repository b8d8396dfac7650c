"""Save and stop when the allocation ends: a training loop run by the SLURM launcher
(``MOCOBENCH_SAVE_ON_SIGNAL`` set in its environment) turns SIGUSR2 (SLURM's warning before the
time limit, sent by ``--signal``) and SIGTERM (``scontrol requeue``, preemption, ``scancel``)
into a flag; the loop checks it after each iteration, saves a resumable checkpoint and exits
with ``EXIT_SAVED``; the launcher requeues the job, which resumes from that checkpoint.

Outside the SLURM launcher nothing changes: no handler is installed and ``requested()`` is
False without a collective. Under DDP every rank takes part in one all-reduce per iteration,
so all ranks stop after the same iteration (the signal may reach them apart).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import NoReturn

import torch

from mocobench import dist as mdist

ENV = "MOCOBENCH_SAVE_ON_SIGNAL"
EXIT_SAVED = 75  # EX_TEMPFAIL: stopped with a checkpoint, to be resumed
SIGNALS = (signal.SIGUSR2, signal.SIGTERM)

_received: list[int] = []


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def _note(signum: int, frame=None) -> None:
    _received.append(signum)


def install() -> None:
    """Called where a loop starts (main thread); a no-op unless the launcher asked for it."""
    if enabled():
        for sig in SIGNALS:
            signal.signal(sig, _note)


def requested(device: torch.device) -> bool:
    """Whether a rank has received one of the signals; the same answer on every rank."""
    if not enabled():
        return False
    if not mdist.is_distributed():
        return bool(_received)
    flag = torch.tensor([1 if _received else 0], device=device if device.type == "cuda" else "cpu")
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def stop(command: str, checkpoint: Path, iteration: int) -> NoReturn:
    """After the checkpoint is saved (on every rank): one line, then the launcher's exit status."""
    if mdist.is_main():
        name = signal.Signals(_received[0]).name if _received else "signal on another rank"
        print(f"{command}: {name}: saved {checkpoint} at iteration {iteration}; "
              f"stopping to be requeued (continue with --resume)", flush=True)
    for sig in SIGNALS:  # a late repeat must not end the exit with the signal's status
        signal.signal(sig, signal.SIG_IGN)
    mdist.cleanup()
    raise SystemExit(EXIT_SAVED)
