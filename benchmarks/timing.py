"""Side-by-side timing shared by the benchmarks: interleaved repeats, medians, ratios.

Why interleaved: the machines these run on are shared, and their load changes within
seconds. Timing A then B would credit one of them with whatever else ran meanwhile;
alternating A, B, A, B ... and taking each one's median exposes both to the same load,
so their RATIO is meaningful even where an absolute time is not. A benchmark therefore
reports ratios; absolute times are printed only as context.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Mapping

import torch


def sync() -> None:
    """Wait for queued GPU work, so a timer stops when the work is done, not launched."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved_medians(candidates: Mapping[str, Callable[[], object]], repeats: int,
                        warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each candidate, run in turn ``repeats`` times each."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def report_ratio(label: str, numerator: float, denominator: float, target: str = "",
                 met: bool | None = None) -> float:
    """Print ``label: ratio`` (and the target with its verdict); returns the ratio."""
    ratio = numerator / denominator
    verdict = "" if met is None else ("  [met]" if met else "  [NOT met]")
    print(f"RATIO {label}: {ratio:.3f}" + (f"  (target {target}){verdict}" if target else ""), flush=True)
    return ratio


def report_times(medians: Mapping[str, float], unit: str = "s") -> None:
    """Context for the ratios: the medians this run measured (not a result by themselves)."""
    scale = {"s": 1.0, "ms": 1e3}[unit]
    print("  medians: " + ", ".join(f"{n} {t * scale:.4g} {unit}" for n, t in medians.items()), flush=True)


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, n: int = 8192, repeats: int = 10) -> float:
    """The device's measured dense matmul rate: the roofline a training step is held to."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    seconds = interleaved_medians({"matmul": lambda: a @ b}, repeats)["matmul"]
    return 2 * n ** 3 / seconds


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call, counted by torch's FlopCounterMode (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (under 3 minutes on CPU)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats per candidate (default: 5 quick, 7 full)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    return p


def setup(args: argparse.Namespace) -> int:
    """Apply --threads, print the machine, and return the number of repeats."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"# torch {torch.__version__}, {device}, {torch.get_num_threads()} threads", flush=True)
    return args.repeats or (5 if args.quick else 7)
