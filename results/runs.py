"""Finished detection runs on disk (docs/DESIGN.md, "Run folder"): ``<root>/<table>/<init>/seed<k>/metrics.json``.

metrics.json is written atomically only at the end of a run, so its presence with the
expected numbers is what "finished" means; anything else (a half-run folder, a crash, the
numbers of ``transfer --eval-only``) is not a result. Shared by run_all (skip finished
jobs), collate and audit. A folder moved aside (``<run>.stale-<time>``,
``<run>.replaced-<time>``) is kept for reference and never counted; two finished runs of
one seed on one side are refused, since either could be the one that counts.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import pandas as pd

from mocobench import UserError

METRICS_FILE = "metrics.json"
SEED_DIR = re.compile(r"^seed(\d+)$")
MOVED_ASIDE = re.compile(r"\.(stale|replaced)-\d")
TASKS = ("bbox", "segm")
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
KEYPOINT_KEYS = ("AP", "AP50", "AP75", "APm", "APl")  # COCO's keypoint AP has no small range
SEM_SEG_KEYS = ("mIoU", "fwIoU", "mACC", "pACC")  # semantic segmentation (SemSegEvaluator's summary numbers)
KNOWN_METRICS = (*(f"{task}/{key}" for task in TASKS for key in KEYS), *(f"keypoints/{k}" for k in KEYPOINT_KEYS),
                 *(f"sem_seg/{k}" for k in SEM_SEG_KEYS))
KNOWN_HINT = (f"<task>/<key> with task {'|'.join(TASKS)} and key {'|'.join(KEYS)}, keypoints/<key> with "
              f"key {'|'.join(KEYPOINT_KEYS)}, or sem_seg/<key> with key {'|'.join(SEM_SEG_KEYS)}")
EVAL_ONLY = "eval-only numbers, not a trained run (meta.eval_only)"


def seed_dir(seed: int) -> str:
    return f"seed{seed}"


def unknown_metric(name: str) -> str | None:
    """Why ``name`` is no metric a detection run records (None: it is one)."""
    return None if name in KNOWN_METRICS else f"not a known metric ({KNOWN_HINT})"


def read_metrics(run_dir: str | os.PathLike, required: Sequence[str] = ()) -> dict | None:
    """The run's metrics.json if it is a finished result holding ``required`` metrics, else None."""
    return check_metrics(run_dir, required)[0]


def read_result_file(path: Path, absent: str) -> tuple[object, str]:
    """(the JSON in ``path``, "") or (None, why not: ``absent``, or unreadable as a torn write leaves it)."""
    if not path.is_file():
        return None, absent
    try:
        return json.loads(path.read_text()), ""
    except (OSError, ValueError) as e:
        return None, f"{path.name} unreadable ({type(e).__name__})"


def finite_number(value: object) -> float | None:
    """``value`` as a float when it is a finite number (not a bool, string, null, NaN or inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def check_metrics(run_dir: str | os.PathLike, required: Sequence[str] = ()) -> tuple[dict | None, str]:
    """(metrics, "") for a finished result holding ``required`` metrics, else (None, why not)."""
    data, why = read_result_file(Path(run_dir) / METRICS_FILE, f"not finished (no {METRICS_FILE})")
    if why:
        return None, why
    if not isinstance(data, dict) or not isinstance(data.get("meta"), dict):
        return None, f"{METRICS_FILE} has no meta record"
    if data["meta"].get("eval_only"):
        return None, f"{METRICS_FILE} holds {EVAL_ONLY}"
    finished = "sem_seg/mIoU" if "sem_seg" in data else "bbox/AP"  # every run records it: a semantic segmentor no boxes
    problems = [p for p in (metric_problem(data, m) for m in (finished, *required)) if p]
    if problems:
        return None, f"{METRICS_FILE}: {'; '.join(problems)}"
    return data, ""


def metric_value(metrics: dict, name: str) -> float | None:
    """The metric as a finite float; None when absent or not a number (a string, null, NaN, inf, bool)."""
    task, _, key = name.partition("/")
    values = metrics.get(task)
    return finite_number(values.get(key) if isinstance(values, dict) else None)


def metric_problem(metrics: dict, name: str) -> str:
    """Why ``name`` has no number in ``metrics`` ("" when it has one)."""
    if metric_value(metrics, name) is not None:
        return ""
    task, _, key = name.partition("/")
    values = metrics.get(task)
    if not isinstance(values, dict) or key not in values:
        return f"{name} absent from {METRICS_FILE}"
    return f"{name} is not a number ({repr(values[key])[:40]})"


def recorded_metrics(metrics: dict) -> list[str]:
    """Every ``task/key`` the run records, numeric or not."""
    return [f"{task}/{key}" for task, values in metrics.items() if task != "meta" and isinstance(values, dict)
            for key in values]


def flat_metrics(metrics: dict) -> dict[str, float]:
    """``{"bbox/AP": 53.1, ...}`` for every numeric metric of every task."""
    out = {}
    for name in recorded_metrics(metrics):
        v = metric_value(metrics, name)
        if v is not None:
            out[name] = v
    return out


def seed_of(run_dir: Path, metrics: dict) -> int | None:
    seed = metrics.get("meta", {}).get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        return seed
    m = SEED_DIR.match(run_dir.name)
    return int(m.group(1)) if m else None


def moved_aside(path: Path) -> str | None:
    """The mark (``.stale-``, ``.replaced-``) of a folder run-all or a run lock moved aside, else None."""
    m = MOVED_ASIDE.search(path.name)
    return f".{m.group(1)}-" if m else None


def refuse_duplicate(seen: dict[int, Path], seed: int | None, run_dir: Path, where: Path) -> None:
    """Record ``run_dir`` as seed ``seed``'s run; a second finished run of one seed is refused naming both."""
    if seed is None:
        return
    if seed in seen:
        raise UserError(f"{where}: seed {seed} twice: {seen[seed]} and {run_dir}; keep one finished run per "
                        f"seed (move the other out of {where})")
    seen[seed] = run_dir


@dataclass
class FoundRuns:
    """Finished runs under a folder (any depth), the folders left out with why, and each run's metrics."""
    frame: pd.DataFrame  # run_dir, seed, then one column per numeric metric
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    metrics: dict[str, dict] = field(default_factory=dict)  # run_dir -> its metrics.json

    def problems(self, metric: str) -> list[tuple[str, str]]:
        """(run folder, why) for each finished run without a number for ``metric``."""
        return [(run, p) for run, data in self.metrics.items() if (p := metric_problem(data, metric))]

    def recorded(self) -> set[str]:
        return {m for data in self.metrics.values() for m in recorded_metrics(data)}


def find_runs(root: str | os.PathLike) -> FoundRuns:
    """Every finished run below ``root``; moved-aside and unfinished folders are left out with why."""
    root = Path(root)
    found = FoundRuns(pd.DataFrame())
    rows, seen = [], {}
    for path in sorted(root.rglob(METRICS_FILE)):
        run_dir = path.parent
        mark = next((m for p in [run_dir, *run_dir.relative_to(root).parents] if (m := moved_aside(p))), None)
        metrics, why = check_metrics(run_dir) if mark is None else (None, f"moved aside ({mark}), not counted")
        if metrics is None:
            found.skipped.append((run_dir, why))
            continue
        seed = seed_of(run_dir, metrics)
        refuse_duplicate(seen, seed, run_dir, root)
        found.metrics[str(run_dir)] = metrics
        rows.append({"run_dir": str(run_dir), "seed": seed, **flat_metrics(metrics)})
    found.frame = pd.DataFrame(rows, columns=None if rows else ["run_dir", "seed"])
    return found


def collect_runs(root: str | os.PathLike) -> pd.DataFrame:
    """One row per finished run under ``root`` (any depth): run_dir, seed, then metric columns."""
    return find_runs(root).frame


def collect_table_runs(root: str | os.PathLike, table: str, metrics: Sequence[str]) -> pd.DataFrame:
    """Long frame (init, seed, metric, value) of the table's finished runs under ``root/table``."""
    return table_runs(root, table, metrics).values


# (init name, seed, run folder) -> why the run does not belong in the table, or None
RunCheck = Callable[[str, int, Path], Optional[str]]


@dataclass
class TableRuns:
    values: pd.DataFrame  # long: init, seed, metric, value
    skipped: list[tuple[Path, str]]  # run folders left out, each with why
    problems: list[tuple[str, int, str, str]]  # (init, seed, metric, why) for a value that is no number


def table_runs(root: str | os.PathLike, table: str, metrics: Sequence[str], check: RunCheck | None = None,
               seeds: Callable[[str], Sequence[int]] | None = None) -> TableRuns:
    """The table's finished runs under ``root/table`` (of ``seeds(init)`` when given), with every
    run folder left out and every value that is not a number, each with why."""
    out = TableRuns(pd.DataFrame(), [], [])
    records = []
    for init_dir in _init_dirs(Path(root) / table):
        seen: dict[int, Path] = {}
        for run_dir in sorted(p for p in init_dir.iterdir() if p.is_dir()):
            seed, why = _table_seed(run_dir, seeds(init_dir.name) if seeds else None)
            data = None
            if not why:
                data, why = check_metrics(run_dir)
            if data is not None:
                why = _seed_mismatch(data, seed) or (check(init_dir.name, seed, run_dir) if check else None) or ""
            if why:
                out.skipped.append((run_dir, why))
                continue
            if seed is None:
                continue  # a folder that is no run of this table (no seed<k> name, no metrics.json)
            refuse_duplicate(seen, seed, run_dir, init_dir)
            for m in metrics:
                problem = metric_problem(data, m)
                if problem:
                    out.problems.append((init_dir.name, seed, m, problem))
                else:
                    records.append({"init": init_dir.name, "seed": seed, "metric": m, "value": metric_value(data, m)})
    out.values = pd.DataFrame(records, columns=["init", "seed", "metric", "value"])
    return out


def _table_seed(run_dir: Path, seeds: Sequence[int] | None) -> tuple[int | None, str]:
    """(seed, "") for a ``seed<k>`` folder of one of ``seeds``; else (None, why it is left out) or
    (None, "") for a folder that holds no result at all."""
    mark = moved_aside(run_dir)
    if mark:
        return None, f"moved aside ({mark}), not collated"
    m = SEED_DIR.match(run_dir.name)
    if not m:
        return None, "a result in a folder not named seed<k>, not collated" if (run_dir / METRICS_FILE).exists() else ""
    seed = int(m.group(1))
    if seeds is not None and seed not in seeds:
        return None, f"seed {seed} is not one of this row's trials (seeds 0..{max(seeds)})"
    return seed, ""


def _seed_mismatch(data: dict, seed: int | None) -> str | None:
    """Why a run whose metrics.json records another seed than its folder name is left out."""
    recorded = data["meta"].get("seed")
    if isinstance(recorded, int) and not isinstance(recorded, bool) and seed is not None and recorded != seed:
        return f"its {METRICS_FILE} records seed {recorded}, not {seed} (a copied folder?)"
    return None


def _init_dirs(base: Path) -> list[Path]:
    return sorted(p for p in base.glob("*") if p.is_dir() and not p.name.startswith("."))


def init_names(root: str | os.PathLike, table: str) -> list[str]:
    """Inits that have a folder (finished or not) under ``root/table``."""
    return [p.name for p in _init_dirs(Path(root) / table)]
