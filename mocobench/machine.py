"""What machine this is, in the figures a timing should be reported with.

Demo and benchmark times differ by CPU (AVX-512 machines run torch's sgemm ~2.5x faster than
AVX2-only ones), so a time is reported beside the machine's measured float32 matmul rate:
seconds x GFLOP/s is comparable across machines where seconds alone are not.
"""

from __future__ import annotations

import os
import platform
import time

import torch


def sgemm_gflops(n: int = 2048, seconds: float = 1.0, threads: int | None = None) -> float:
    """Best float32 n x n matmul rate (GFLOP/s) over about ``seconds`` of repeats."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up: thread pool start, page faults
        best, spent = float("inf"), 0.0
        while spent < seconds:
            start = time.perf_counter()
            a @ b
            took = time.perf_counter() - start
            best, spent = min(best, took), spent + took
        return 2 * n ** 3 / best / 1e9
    finally:
        torch.set_num_threads(previous)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(threads: int) -> dict[str, object]:
    """The machine's figures for a report: CPU, cores, threads used, sgemm GFLOP/s at those threads."""
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": threads,
            "sgemm_gflops": round(sgemm_gflops(threads=threads), 1)}
