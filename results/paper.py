"""Published rows (results/paper/*.csv: MoCo paper and the authors' repository) for a table.

Shipped as package data so a report prints the reference numbers beside the measured
ones without network access; results/paper/README.md cites the sources.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mocobench import UserError
from mocobench.results.tables import Table

PAPER_DIR = Path(__file__).with_name("paper")


def paper_rows(table: Table) -> pd.DataFrame:
    """Wide frame: one row per published row, columns = label, source, baseline, the table's metrics."""
    p = table.cfg.PAPER
    columns = ["label", "source", "baseline", *table.metrics]
    if not p.FILE:
        return pd.DataFrame(columns=columns)
    path = PAPER_DIR / p.FILE
    if not path.is_file():
        raise UserError(f"{table.path}: PAPER.FILE {p.FILE} is not in {PAPER_DIR}")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for cond in p.FILTER:
        col, sep, value = cond.partition("=")
        if not sep or col not in df.columns:
            raise UserError(f"{table.path}: PAPER.FILTER {cond!r} is not column=value over {list(df.columns)}")
        df = df[df[col] == value]
    labels = list(p.LABEL_COLUMNS)
    keys = [*labels, "source"] if "source" in df.columns else labels
    if p.METRIC_COLUMN:
        df = df.pivot_table(index=keys, columns=p.METRIC_COLUMN, values=p.VALUE_COLUMN,
                            aggfunc="first", sort=False).reset_index()
    missing = [c for c in [*labels, *p.COLUMNS] if c not in df.columns]
    if missing:
        raise UserError(f"{table.path}: PAPER columns {missing} are not in {p.FILE}")
    out = pd.DataFrame({
        "label": df[labels].apply(lambda r: " ".join(v for v in r if v), axis=1),
        "source": df["source"] if "source" in df.columns else "paper",
        "baseline": df[labels[0]] == p.BASELINE,
    })
    for metric, col in zip(table.metrics, p.COLUMNS):
        out[metric] = pd.to_numeric(df[col], errors="coerce")
    return out.reset_index(drop=True)[columns]
