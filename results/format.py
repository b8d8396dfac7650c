"""Table cells in the paper's form and the Markdown / HTML renderings of them.

One decimal, as the paper prints; the delta is computed from unrounded means and signed
("+0.6", "-0.4", "+0.0"), so a reader sees at a glance which side of the baseline a row is.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Sequence, Tuple

import pandas as pd

from mocobench.results.tables import RANDOM_ROW, Table

MISSING = "—"
Notes = Sequence[Tuple[str, Sequence[str]]]  # (heading, lines) printed under a table; empty lines: none
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.published td { color: #666; font-style: italic; }
td.missing { color: #b00; }
p.note, ul.note { color: #555; font-size: 0.9em; }
img { max-width: 48em; }
"""


def _present(x: float) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def cell(n: int, trials: int, mean: float, std: float, delta: float) -> str:
    """``81.4±0.2 (+0.6)``; ``[3/5]`` when trials are missing; ``—`` when none finished."""
    if n == 0 or not _present(mean):
        return MISSING
    text = f"{mean:.1f}"
    if _present(std):
        text += f"±{std:.1f}"
    if n < trials:
        text += f" [{n}/{trials}]"
    if _present(delta):
        text += f" ({delta:+.1f})"
    return text


def column_names(table: Table) -> list[str]:
    """The paper's column headers where the table names them, else the metric keys."""
    return list(table.cfg.PAPER.COLUMNS) or table.metrics


def table_cells(table: Table, stats: pd.DataFrame) -> pd.DataFrame:
    """Wide text frame: row, source, one column per metric, rows in ``stats`` order."""
    rows = list(dict.fromkeys(zip(stats["row"], stats["source"])))
    by_key = {(r.row, r.source, r.metric): r for r in stats.itertuples(index=False)}
    records = []
    for row, source in rows:
        rec = {"row": row, "source": source}
        for metric, col in zip(table.metrics, column_names(table)):
            s = by_key[(row, source, metric)]
            rec[col] = cell(s.n, s.trials, s.mean, s.std, s.delta)
        records.append(rec)
    return pd.DataFrame(records, columns=["row", "source", *column_names(table)])


def caption(table: Table) -> str:
    deltas = (f"(delta) vs `{table.cfg.BASELINE}`; published rows vs their own baseline" if table.cfg.BASELINE
              else "absolute numbers, no baseline")  # the paper's Table 3 has none
    trials = f"{table.cfg.TRIALS} trial(s)"
    if table.trials_for(RANDOM_ROW) != table.cfg.TRIALS:
        trials += f" ({RANDOM_ROW} init: {table.trials_for(RANDOM_ROW)}, the spread each lead is judged by)"
    return (f"`{table.name}`: mean over {trials}, ±std over trials, [n/N] where trials "
            f"are missing, {deltas}; {MISSING} = no number (the reason is noted under the table).")


def markdown_table(table: Table, cells: pd.DataFrame, notes: Notes = ()) -> str:
    cols = column_names(table)
    lines = [f"### {table.title}", "", caption(table), "",
             "| " + " | ".join(["init", *cols]) + " |",
             "|" + "---|" * (len(cols) + 1)]
    for rec in cells.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for i, v in enumerate(rec) if i != 1) + " |")
    for heading, items in notes:
        if items:
            lines += ["", heading, "", *(f"- {item}" for item in items)]
    return "\n".join(lines) + "\n"


def _html_notes(notes: Notes) -> str:
    return "".join(f"<p class=note>{html.escape(heading)}</p><ul class=note>"
                   + "".join(f"<li>{html.escape(item)}</li>" for item in items) + "</ul>\n"
                   for heading, items in notes if items)


def _html_table(table: Table, cells: pd.DataFrame) -> str:
    cols = column_names(table)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["init", *cols])
    body = []
    for rec in cells.itertuples(index=False):
        cls = "" if rec.source == "measured" else ' class="published"'
        tds = "".join(f'<td{" class=missing" if v == MISSING else ""}>{html.escape(str(v))}</td>'
                      for v in [rec.row, *rec[2:]])
        body.append(f"<tr{cls}>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_report(sections: Sequence[tuple[Table, pd.DataFrame, Path, Notes]]) -> str:
    """One self-contained page: inline CSS, each table's notes under it, its PNG embedded as base64."""
    parts = []
    for table, cells, png, notes in sections:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f"<h2>{html.escape(table.title)}</h2>\n<p class=note>{html.escape(caption(table))}</p>\n"
                     f"{_html_table(table, cells)}\n{_html_notes(notes)}"
                     f'<img alt="delta vs {html.escape(table.cfg.BASELINE)}: {html.escape(table.name)}" '
                     f'src="data:image/png;base64,{data}">')
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>mocobench results</title>"
            f"<style>{CSS}</style></head><body>\n<h1>mocobench results</h1>\n"
            + "\n".join(parts) + "\n</body></html>\n")
