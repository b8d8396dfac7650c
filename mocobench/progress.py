"""Progress lines with ETA and append-only ``metrics.jsonl`` logs for long-running jobs.

Researchers watch these in a terminal or a SLURM log, so the progress line is plain text
on stderr (one line per report, no carriage-return tricks that garble log files).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Reports ``label step/total [elapsed<eta] key=value ...`` on a stream."""

    def __init__(self, label: str, total: int, start: int = 0, stream: TextIO | None = None,
                 enabled: bool = True) -> None:
        self.label, self.total, self.start = label, total, start
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def eta(self, step: int) -> float:
        done = step - self.start
        elapsed = time.perf_counter() - self.t0
        return elapsed / done * (self.total - step) if done > 0 else float("nan")

    def report(self, step: int, **values: Any) -> str:
        elapsed = time.perf_counter() - self.t0
        eta = self.eta(step)
        eta_s = format_seconds(eta) if eta == eta else "?"
        parts = [f"{self.label} {step}/{self.total} [{format_seconds(elapsed)}<{eta_s}]"]
        for k, v in values.items():
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
        line = " ".join(parts)
        if self.enabled:
            print(line, file=self.stream, flush=True)
        return line


class JsonlLog:
    """Appends one JSON object per line; a killed job leaves at most one partial last line,
    which ``read_jsonl`` skips, and a resumed job truncates entries past its checkpoint."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def truncate_after(self, key: str, value: float) -> None:
        """Drop entries with ``entry[key] > value`` (logged after the checkpoint we resume)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [e for e in read_jsonl(self.path) if e.get(key, -1) <= value]
        from mocobench.atomic import write_text

        write_text(self.path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in keep))

    def write(self, **entry: Any) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill
    return out
