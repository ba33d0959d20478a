"""Timing helpers shared by the benchmarks (run by hand, not by the test suite)."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def timed(fn: Callable[[], object]) -> float:
    """Wall time of one call in seconds (CUDA work included)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_medians(
    candidates: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds per call of each candidate, the candidates timed in turn each
    round so that load from other processes hits them alike."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            times[name].append(timed(fn))
    for name, values in times.items():
        print(f"  {name}: " + " ".join(f"{v:.3f}" for v in values) + " s")
    return {name: statistics.median(values) for name, values in times.items()}


def matmul_peak_gflops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """Median GFLOP/s of an n x n fp32 matrix product: the machine's practical peak."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    seconds = statistics.median(timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / seconds / 1e9


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{_cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
