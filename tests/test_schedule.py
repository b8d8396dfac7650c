"""The demo's dependency scheduler: the longest remaining path first, dependencies respected,
a failure stops new tasks, and two workers finish a known graph at the expected makespan."""

from __future__ import annotations

import threading
import time

import pytest

from mocobench.results.schedule import Command, Schedule, Task, longest_paths, run


def task(name: str, seconds: float, *after: str) -> Task:
    return Task(name, [[name]], after, seconds)


# the demo's graph after its data step, at its expected seconds on 2 cores
INITS = {"random": (), "supervised": ("convert-supervised",), "moco": ("convert-moco",)}
DEMO = [task("pretrain", 128), task("supervised", 45), task("convert-moco", 3, "pretrain"),
        task("convert-supervised", 3, "supervised"),
        *(task(f"{table}/{init}", seconds, *after) for table, seconds in (("voc", 30), ("coco", 40))
          for init, after in INITS.items())]
DEMO.append(task("collate", 3, *(t.name for t in DEMO)))


def simulate(tasks: list[Task], workers: int) -> tuple[float, list[str]]:
    """The makespan and start order in virtual time, each task taking its expected seconds."""
    schedule, now, running, order = Schedule(tasks), 0.0, {}, []
    while not schedule.over:
        while len(running) < workers and (next_task := schedule.take()) is not None:
            order.append(next_task.name)
            running[next_task.name] = now + next_task.expected
        now = min(running.values())
        for name in [n for n, end in running.items() if end == now]:  # all ending now, then take
            del running[name]
            schedule.finish(name)
    return now, order


def test_longest_paths_count_the_chain_waiting_on_a_task():
    paths = longest_paths(DEMO)
    assert paths["pretrain"] == 128 + 3 + 40 + 3 and paths["supervised"] == 45 + 3 + 40 + 3
    assert paths["coco/random"] == 43 and paths["voc/random"] == 33 and paths["collate"] == 3
    with pytest.raises(ValueError, match="cycle"):
        longest_paths([task("a", 1, "b"), task("b", 1, "a")])


def test_a_free_worker_takes_the_ready_task_with_the_longest_remaining_path():
    schedule = Schedule(DEMO)
    assert [schedule.take().name, schedule.take().name, schedule.take().name] == \
        ["pretrain", "supervised", "coco/random"]
    schedule.finish("supervised")
    assert schedule.take().name == "convert-supervised"  # 3 + 40 + 3 ahead of voc/random's 30 + 3


def test_two_workers_finish_the_demo_graph_at_the_expected_makespan():
    makespan, order = simulate(DEMO, workers=2)
    # pretraining and its chain on one worker, everything else on the other: 128 + 3 + 40 + 30 + 3
    assert makespan == 204 and order[:2] == ["pretrain", "supervised"]
    assert makespan < simulate(DEMO, workers=1)[0] == sum(t.expected for t in DEMO)
    assert max(longest_paths(DEMO).values()) <= makespan  # never shorter than the critical path


def test_tasks_done_beforehand_are_left_out_and_satisfy_their_dependents():
    schedule = Schedule(DEMO, done={"pretrain", "convert-moco"})
    assert "pretrain" not in {t.name for t in schedule.tasks}
    taken = []
    while (next_task := schedule.take()) is not None:
        taken.append(next_task.name)
    assert taken == ["supervised", "coco/random", "coco/moco", "voc/random", "voc/moco"]  # ties: order given
    with pytest.raises(ValueError, match="unknown"):
        Schedule([task("a", 1, "missing")])


class Recorder:
    """A fake ``execute``: sleeps each task's expected seconds, records start and end events,
    and fails the tasks named in ``fail``."""

    def __init__(self, fail: tuple[str, ...] = ()) -> None:
        self.events: list[tuple[str, str]] = []
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, t: Task) -> Command | None:
        with self.lock:
            self.events.append(("start", t.name))
        time.sleep(t.expected)
        with self.lock:
            self.events.append(("end", t.name))
        return t.commands[0] if t.name in self.fail else None


def test_run_respects_dependencies_and_reports_each_task():
    tasks = [task("a", 0.02), task("b", 0.01, "a"), task("c", 0.03), task("d", 0.01, "b", "c")]
    recorder, started, finished = Recorder(), [], []
    assert run(tasks, 2, recorder, started.append, finished.append) is None
    at = {event: i for i, event in enumerate(recorder.events)}
    for t in tasks:
        assert all(at[("end", dep)] < at[("start", t.name)] for dep in t.after), recorder.events
    assert {t.name for t in started} == {t.name for t in finished} == {"a", "b", "c", "d"}


def test_a_failed_task_stops_new_tasks_and_lets_running_ones_finish():
    # two workers take b (longest) and a; a fails first, so c (free, shorter) never starts
    tasks = [task("a", 0.05), task("b", 0.2), task("c", 0.01)]
    recorder, finished = Recorder(fail=("a",)), []
    failure = run(tasks, 2, recorder, on_finish=finished.append)
    assert failure is not None and failure[0].name == "a" and failure[1] == ["a"]
    assert ("end", "b") in recorder.events and [t.name for t in finished] == ["b"]
    assert ("start", "c") not in recorder.events


def test_two_workers_run_a_known_graph_at_its_expected_makespan():
    # the short tasks come first in the list, but the chain long -> tail starts first: 0.6 s
    # (short tasks first would take 0.3 + 0.3 + 0.3)
    tasks = [*(task(f"short{i}", 0.15) for i in range(4)), task("long", 0.3), task("tail", 0.3, "long")]
    assert simulate(tasks, 2)[0] == pytest.approx(0.6)
    t0 = time.perf_counter()
    assert run(tasks, 2, Recorder()) is None
    assert 0.6 <= time.perf_counter() - t0 < 0.8
