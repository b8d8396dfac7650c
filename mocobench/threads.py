"""Threads per process when several of the suite's processes share one machine.

Why it matters: the demo's and the CPU tests' jobs are small and use a second thread
poorly, so N one-thread processes side by side finish sooner than the same work in turn
(docs/NOTES.md, "Performance"). Both ``run-all --parallel`` and the demo's PARALLEL workers split
the cores this way.
"""

from __future__ import annotations

import os
from typing import Mapping


def thread_env(parallel: int, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """OMP/MKL thread counts for each of ``parallel`` processes: the machine's cores split
    evenly, unless ``environ`` fixes OMP_NUM_THREADS (then each gets that share of it)."""
    cores = int(environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    threads = str(max(1, cores // parallel))
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
