"""Tasks as a dependency graph on N workers: a task starts as soon as the tasks it waits for
have finished and a worker is free, instead of waiting for a whole stage.

A task is a list of commands run in turn, the names of the tasks it waits for and its
expected seconds. A free worker takes the ready task with the longest remaining path (its own
seconds plus the longest chain of tasks waiting on it), so the longest chain starts first and
the shorter work fills the other workers beside it. A failed task stops new tasks from
starting; those running finish, and ``run`` returns the failure.

``Schedule`` only decides (no threads, no clock), so tests drive it in virtual time; ``run``
executes it on a pool of worker threads.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

Command = list[str]


@dataclass(frozen=True)
class Task:
    name: str
    commands: Sequence[Command]
    after: tuple[str, ...] = ()  # names of the tasks it waits for
    expected: float = 0.0  # seconds
    title: str = ""  # what it does, for progress lines


def _dependents(tasks: Sequence[Task]) -> dict[str, list[str]]:
    """Name -> the names of the given tasks waiting on it (waits on other tasks are ignored)."""
    out: dict[str, list[str]] = {t.name: [] for t in tasks}
    for task in tasks:
        for name in task.after:
            if name in out:
                out[name].append(task.name)
    return out


def longest_paths(tasks: Sequence[Task], cost: Mapping[str, float] | None = None) -> dict[str, float]:
    """Name -> its cost (default: its expected seconds) plus the longest chain of the given
    tasks waiting on it; ValueError on a cycle."""
    cost = {t.name: t.expected for t in tasks} if cost is None else cost
    by_name = {t.name: t for t in tasks}
    dependents = _dependents(tasks)
    unresolved = {name: len(waiting) for name, waiting in dependents.items()}
    paths: dict[str, float] = {}
    ends = [name for name, n in unresolved.items() if n == 0]
    while ends:  # from the ends of the chains back to their starts
        name = ends.pop()
        paths[name] = cost[name] + max((paths[d] for d in dependents[name]), default=0.0)
        for dep in by_name[name].after:
            if dep in unresolved:
                unresolved[dep] -= 1
                if unresolved[dep] == 0:
                    ends.append(dep)
    if len(paths) != len(tasks):
        raise ValueError(f"tasks wait for each other in a cycle: {sorted(set(by_name) - set(paths))}")
    return paths


class Schedule:
    """Which task a free worker runs next, as tasks start and finish. Tasks named in ``done``
    are left out and count as finished for those waiting on them."""

    def __init__(self, tasks: Sequence[Task], done: Iterable[str] = ()) -> None:
        finished_before = set(done)
        self.tasks = [t for t in tasks if t.name not in finished_before]
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
        for task in self.tasks:
            unknown = [n for n in task.after if n not in names and n not in finished_before]
            if unknown:
                raise ValueError(f"task {task.name!r} waits for unknown tasks {unknown}")
        self.priority = longest_paths(self.tasks)
        self._waiting = {t.name: {n for n in t.after if n not in finished_before} for t in self.tasks}
        self._dependents = _dependents(self.tasks)
        self.running: set[str] = set()
        self.finished: set[str] = set()
        self.failed: str | None = None

    def take(self) -> Task | None:
        """The ready task with the longest remaining path (ties: the order given), marked
        running; None when none is ready or a task has failed."""
        if self.failed is not None:
            return None
        ready = [t for t in self.tasks if not self._waiting[t.name]
                 and t.name not in self.running and t.name not in self.finished]
        if not ready:
            return None
        task = max(ready, key=lambda t: self.priority[t.name])
        self.running.add(task.name)
        return task

    def finish(self, name: str, ok: bool = True) -> None:
        self.running.remove(name)
        if not ok:
            self.failed = self.failed or name
            return
        self.finished.add(name)
        for waiting in self._dependents[name]:
            self._waiting[waiting].discard(name)

    @property
    def over(self) -> bool:
        """Nothing running and nothing more to start: every task finished, or one failed."""
        return not self.running and (self.failed is not None or len(self.finished) == len(self.tasks))


def _ignore(task: Task) -> None:
    pass


def run(tasks: Sequence[Task], workers: int, execute: Callable[[Task], Command | None],
        on_start: Callable[[Task], None] = _ignore, on_finish: Callable[[Task], None] = _ignore,
        done: Iterable[str] = ()) -> tuple[Task, Command] | None:
    """Run the tasks (less those in ``done``) on ``workers`` threads; ``execute`` runs a task's
    commands and returns the one that failed, or None. The callbacks run on this thread, one
    at a time. Returns the first failed task and command, or None."""
    schedule = Schedule(tasks, done)
    failure: tuple[Task, Command] | None = None
    running: dict[Future, Task] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        while not schedule.over:
            while len(running) < workers and (task := schedule.take()) is not None:
                on_start(task)
                running[pool.submit(execute, task)] = task
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                task = running.pop(future)
                failed = future.result()
                schedule.finish(task.name, ok=failed is None)
                if failed is None:
                    on_finish(task)
                elif failure is None:
                    failure = (task, failed)
    return failure
