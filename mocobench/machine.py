"""What machine this is, in the figures a timing should be reported with.

Demo and benchmark times differ by CPU (AVX-512 machines run torch's sgemm ~2.5x faster than
AVX2-only ones), so a time is reported beside the machine's measured float32 matmul rate:
seconds x GFLOP/s is comparable across machines where seconds alone are not. Small
convolutions gain far less than sgemm from wide vector units, so the demo's kind of work has
its own rate too (``conv_gflops``).
"""

from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` (unchanged when None) inside the block."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _best_seconds(fn: Callable[[], object], seconds: float) -> float:
    """The fastest of ``fn``'s runs over about ``seconds`` of repeats (at least one)."""
    best, spent = float("inf"), 0.0
    while spent < seconds or best == float("inf"):
        start = time.perf_counter()
        fn()
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
    return best


def sgemm_gflops(n: int = 4096, seconds: float = 1.0, threads: int | None = None) -> float:
    """Best float32 n x n matmul rate (GFLOP/s) over about ``seconds`` of repeats (at least one).

    4096 by default: the size the demo's time budget was set at (600 s on a 2-core machine
    whose sgemm runs at 61 GFLOP/s at 4096; 2048 reads ~7% faster on a 2-core AVX-512 EPYC).
    The warm-up is a small matmul, so a slow machine spends one 4096 product (~2 s), not two.
    """
    with _threads(threads):
        a, b = torch.randn(n, n), torch.randn(n, n)
        small = min(n, 512)
        a[:small, :small] @ b[:small, :small]  # warm-up: thread pool start, packing buffers
        return 2 * n ** 3 / _best_seconds(lambda: a @ b, seconds) / 1e9


def conv_gflops(seconds: float = 0.5) -> float:
    """Best rate (GFLOP/s) of the demo's kind of work on one thread, over about ``seconds``:
    a training step (forward and backward) of the demo encoder's shape, the ResNet-50 layout at
    1/4 width, on 32 crops of 64 pixels. Each demo task is such one-thread small convolutions."""
    from torch.utils.flop_counter import FlopCounterMode

    from mocobench.resnet import ResNetShape, build_resnet

    with _threads(1):
        net = build_resnet(ResNetShape(50, 16, 64, 16), num_classes=128)
        x = torch.randn(32, 3, 64, 64, generator=torch.Generator().manual_seed(0))

        def step() -> None:
            net(x).sum().backward()

        with FlopCounterMode(display=False) as counter:  # also the warm-up
            step()
        return counter.get_total_flops() / _best_seconds(step, seconds) / 1e9


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
    """The machine's figures for a report: CPU, cores, threads used, sgemm GFLOP/s at those
    threads, and the one-thread rate of the demo's kind of work (``conv_gflops``)."""
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": threads,
            "sgemm_gflops": round(sgemm_gflops(threads=threads), 1), "conv_gflops": round(conv_gflops(), 2)}
