"""One process per run folder: an OS lock (flock) on a file inside the folder.

Two runs writing one folder would interleave their logs and overwrite each other's
checkpoints and results, so every command that writes a run folder (pretrain, lincls,
supervised, transfer) holds its lock for the whole run. run-all holds a lock of its own
(RUN_ALL_LOCK_FILE, so the transfer it launches can still take LOCK_FILE) in each of its jobs'
run folders, all of them or none (``run_folders``): two run-alls over one output run side by
side when their jobs are disjoint, and one overlapping another is refused. The kernel
releases a flock when its holder exits, however it exits, so a killed run never blocks the
next one; the lock file only records who holds it, for the refusal message.

Under torchrun only rank 0 locks (the lock is taken before the process group forms, from
the launcher's RANK): the other ranks write nothing of their own, and a refused rank 0
exits, which makes torchrun stop the rest.

While holding the lock a run also removes what a killed predecessor's atomic writes left
(``.<name>.*.tmp``), and a folder this run created is removed again if the run fails
before anything in it can be resumed, so a refused input leaves no half-made run folder.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

from mocobench import UserError
from mocobench.atomic import ensure_folder, stale_temp_files
from mocobench.conventions import LAST_CHECKPOINT

LOCK_FILE = ".lock"
RUN_ALL_LOCK_FILE = ".run-all.lock"
# what makes a folder hold a run worth keeping: something to resume, or a result
RUN_RECORDS = (LAST_CHECKPOINT, "metrics.json")


def run_records(folder: Path) -> list[str]:
    """The records of a run that ``folder`` holds (none: nothing a fresh run would destroy)."""
    return [name for name in RUN_RECORDS if (folder / name).exists()]


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``, the way to start afresh in a folder that ``run_folder(fresh=True)`` refuses."""
    parser.add_argument("--overwrite", action="store_true",
                        help="the output folder holds a run and this is not a resume: move that run aside "
                             "(to <folder>.replaced-<time>) and start afresh; without it such a folder is refused")


def move_aside(folder: Path, why: str) -> Path:
    """``folder`` renamed to ``<name>.<why>-<time>`` beside it, out of collate's and resume's way."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = folder.with_name(f"{folder.name}.{why}-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = folder.with_name(f"{folder.name}.{why}-{stamp}-{n}")
    folder.rename(aside)
    return aside


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 1000).decode(errors="replace").strip()
    return text or "another process (starting up)"


def acquire(folder: Path, command: str, lock_file: str = LOCK_FILE, refuse: Callable[[], None] | None = None
            ) -> int:
    """The open, locked lock file's descriptor; UserError naming the holder if it is taken.
    ``refuse`` runs once the lock is held, before the holder is recorded: if it raises, the lock
    is released and the folder left as it was."""
    fd = os.open(folder / lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise UserError(f"{folder}: in use by {holder}; one process per run folder "
                        "(wait for it, or give another output folder)") from None
    if refuse is not None:
        try:
            refuse()
        except BaseException:
            os.close(fd)
            raise
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} (mocobench {command}, "
                 f"since {time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode())
    return fd


def _is_lock_owner() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def run_folder(folder: str | os.PathLike, command: str, discard_new_on_failure: bool = True,
               fresh: bool = False, overwrite: bool = False) -> Iterator[Path]:
    """Create ``folder`` if needed and hold its lock while the body runs (rank 0 only).

    ``fresh`` (a run that does not resume): a folder holding a run is refused, so a finished
    result or a resumable checkpoint is never replaced by accident; with ``overwrite`` the
    old run is moved aside (``<name>.replaced-<time>``) and the new one starts in its place.
    """
    folder = Path(folder)
    if not _is_lock_owner():
        yield folder
        return
    records = run_records(folder) if fresh else []

    def refuse() -> None:  # under the lock (a running job is named as such), before a byte changes
        if records and not overwrite:
            raise UserError(f"{folder}: holds a run ({', '.join(records)}); pass --resume to continue it, "
                            "or --overwrite to move it aside and start afresh")

    created = ensure_folder(folder)
    fd = acquire(folder, command, refuse=refuse)
    if records:
        os.close(fd)
        print(f"{folder}: the run it held is moved to {move_aside(folder, 'replaced')}", flush=True)
        created = ensure_folder(folder)
        fd = acquire(folder, command)
    try:
        for stale in stale_temp_files(folder):
            stale.unlink(missing_ok=True)
        yield folder
    except BaseException:
        if created and discard_new_on_failure and not (folder / LAST_CHECKPOINT).exists():
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        os.close(fd)


class FolderLocks:
    """The locks ``run_folders`` holds, one per folder."""

    def __init__(self, command: str, lock_file: str) -> None:
        self.command, self.lock_file = command, lock_file
        self.fds: dict[Path, int] = {}

    def take(self, folder: Path) -> None:
        """Create ``folder`` if needed and lock it; again after the folder was renamed away
        (the old lock file went with it, so the path is unlocked)."""
        ensure_folder(folder)
        fd = acquire(folder, self.command, self.lock_file)
        if folder in self.fds:
            os.close(self.fds[folder])
        self.fds[folder] = fd

    def release(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


@contextlib.contextmanager
def run_folders(folders: Sequence[Path], command: str, lock_file: str = RUN_ALL_LOCK_FILE) -> Iterator[FolderLocks]:
    """Hold the lock of every folder (created if needed) while the body runs, or of none: if
    one is held elsewhere, release those taken, remove the folders this call created and
    raise the UserError naming that folder and its holder, so a refused run starts nothing
    and leaves no folder behind."""
    locks = FolderLocks(command, lock_file)
    new: list[list[Path]] = []
    try:
        for folder in folders:
            missing = [p for p in (folder, *folder.parents) if not p.exists()]
            locks.take(folder)
            new.append(missing)
    except BaseException:
        for missing in reversed(new):  # each deepest first; a folder something else wrote into stays
            if missing:
                (missing[0] / lock_file).unlink(missing_ok=True)
            for path in missing:
                with contextlib.suppress(OSError):
                    path.rmdir()
        locks.release()
        raise
    try:
        yield locks
    finally:
        locks.release()
