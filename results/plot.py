"""One PNG per table: each init's delta vs the baseline per metric, error bars over trials.

The paper's claim is a sign and a size of a delta, so that is what is drawn; the error
bar is the init's std over its trials, the spread a reader must compare the delta with.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from mocobench.atomic import atomic_write
from mocobench.results.format import column_names
from mocobench.results.tables import Table


def write_delta_plot(table: Table, stats: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = stats[(stats["source"] == "measured") & ~stats["baseline"] & stats["delta"].notna()]
    inits = list(dict.fromkeys(measured["row"]))
    cols = column_names(table)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(cols), 3.6), dpi=100)
    width = 0.8 / max(1, len(inits))
    for i, init in enumerate(inits):
        part = measured[measured["row"] == init].set_index("metric").reindex(table.metrics)
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(cols))]
        ax.bar(xs, part["delta"].fillna(0), width, yerr=part["std"].fillna(0), capsize=3, label=init)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_ylabel(f"delta vs {table.cfg.BASELINE} (points)")
    ax.set_title(table.title, fontsize=9)
    if inits:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no deltas: no finished {table.cfg.BASELINE} row or no other row",
                transform=ax.transAxes, ha="center", va="center", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
