"""Finished detection runs on disk (docs/DESIGN.md, "Run folder"): ``<root>/<table>/<init>/seed<k>/metrics.json``.

metrics.json is written atomically only at the end of a run, so its presence with the
expected numbers is what "finished" means; anything else (a half-run folder, a crash) is
not a result. Shared by run_all (skip finished jobs), collate and audit.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Callable, Optional, Sequence

import pandas as pd

METRICS_FILE = "metrics.json"
SEED_DIR = re.compile(r"^seed(\d+)$")


def seed_dir(seed: int) -> str:
    return f"seed{seed}"


def read_metrics(run_dir: str | os.PathLike, required: Sequence[str] = ()) -> dict | None:
    """The run's metrics.json if it is a finished result holding ``required`` metrics, else None."""
    return check_metrics(run_dir, required)[0]


def check_metrics(run_dir: str | os.PathLike, required: Sequence[str] = ()) -> tuple[dict | None, str]:
    """(metrics, "") for a finished result holding ``required`` metrics, else (None, why not)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return None, f"not finished (no {METRICS_FILE})"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"{METRICS_FILE} unreadable ({type(e).__name__})"
    if not isinstance(data, dict) or not isinstance(data.get("meta"), dict):
        return None, f"{METRICS_FILE} has no meta record"
    if not isinstance(data.get("bbox"), dict) or metric_value(data, "bbox/AP") is None:
        return None, f"{METRICS_FILE} has no bbox/AP"
    absent = [m for m in required if metric_value(data, m) is None]
    if absent:
        return None, f"{METRICS_FILE} lacks {', '.join(absent)}"
    return data, ""


def metric_value(metrics: dict, name: str) -> float | None:
    task, _, key = name.partition("/")
    value = (metrics.get(task) or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def flat_metrics(metrics: dict) -> dict[str, float]:
    """``{"bbox/AP": 53.1, ...}`` for every numeric metric of every task."""
    out = {}
    for task, values in metrics.items():
        if task == "meta" or not isinstance(values, dict):
            continue
        for key in values:
            v = metric_value(metrics, f"{task}/{key}")
            if v is not None:
                out[f"{task}/{key}"] = v
    return out


def seed_of(run_dir: Path, metrics: dict) -> int | None:
    seed = metrics.get("meta", {}).get("seed")
    if isinstance(seed, int):
        return seed
    m = SEED_DIR.match(run_dir.name)
    return int(m.group(1)) if m else None


def collect_runs(root: str | os.PathLike) -> pd.DataFrame:
    """One row per finished run under ``root`` (any depth): run_dir, seed, then metric columns."""
    rows = []
    for path in sorted(Path(root).rglob(METRICS_FILE)):
        metrics = read_metrics(path.parent)
        if metrics is not None:
            rows.append({"run_dir": str(path.parent), "seed": seed_of(path.parent, metrics),
                         **flat_metrics(metrics)})
    return pd.DataFrame(rows, columns=None if rows else ["run_dir", "seed"])


def collect_table_runs(root: str | os.PathLike, table: str, metrics: Sequence[str]) -> pd.DataFrame:
    """Long frame (init, seed, metric, value) of the table's finished runs under ``root/table``."""
    return table_runs(root, table, metrics)[0]


# (init name, seed, run folder) -> why the run does not belong in the table, or None
RunCheck = Callable[[str, int, Path], Optional[str]]


def table_runs(root: str | os.PathLike, table: str, metrics: Sequence[str], check: RunCheck | None = None
               ) -> tuple[pd.DataFrame, list[tuple[Path, str]]]:
    """The long frame of ``collect_table_runs`` and the run folders left out, each with why."""
    records, skipped = [], []
    base = Path(root) / table
    for init_dir in sorted(p for p in base.glob("*") if p.is_dir() and not p.name.startswith(".")):
        for run_dir in sorted(p for p in init_dir.glob("seed*") if SEED_DIR.match(p.name)):
            seed = int(SEED_DIR.match(run_dir.name).group(1))
            data, why = check_metrics(run_dir)
            if data is not None and check is not None:
                why = check(init_dir.name, seed, run_dir) or ""
            if why:
                skipped.append((run_dir, why))
                continue
            for m in metrics:
                v = metric_value(data, m)
                if v is not None:
                    records.append({"init": init_dir.name, "seed": seed, "metric": m, "value": v})
    return pd.DataFrame(records, columns=["init", "seed", "metric", "value"]), skipped


def init_names(root: str | os.PathLike, table: str) -> list[str]:
    """Inits that have a folder (finished or not) under ``root/table``."""
    base = Path(root) / table
    return sorted(p.name for p in base.glob("*") if p.is_dir() and not p.name.startswith("."))
