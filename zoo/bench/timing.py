"""One timer for the bench and the scripts in `benchmarks/`: CUDA events on a GPU, perf_counter on a CPU.

Timing follows the performance method: warm-up calls first (compilation and Triton autotuning
land there), then each timed call between two CUDA events, and the median of the timed calls.
A CPU gives smoke numbers only.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


class Timer:
    """CUDA events around each call on a GPU; perf_counter on a CPU."""

    def __init__(self, device: torch.device | str):
        self.cuda = torch.device(device).type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn: Callable[[], Any], calls: int = 1) -> float:
        """Seconds per call of `fn`, run `calls` times back to back between the two events."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / calls
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t0) / calls

    def wall(self, fn: Callable[[], Any]) -> float:
        """Seconds of one call including host work, synchronized (for untimed phases)."""
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0

    def times(self, fn: Callable[[], Any], warmup: int, reps: int, calls: int = 1) -> list[float]:
        """Seconds per call of `reps` timed rounds of `calls` calls each, after `warmup` calls."""
        for _ in range(warmup):
            fn()
        self.sync()
        return [self.time(fn, calls) for _ in range(reps)]

    def median(self, fn: Callable[[], Any], warmup: int, reps: int, calls: int = 1) -> float:
        """Median seconds per call (see `times`)."""
        return statistics.median(self.times(fn, warmup, reps, calls))


def time_calls(timer: Timer, fn: Callable[[], Any], warmup: int, reps: int, budget_s: float,
               before: Callable[[], Any] | None = None) -> list[float]:
    """Per-call seconds of `fn` after up to `warmup` calls. The first call compiles and autotunes,
    and a compiled step may compile once more on its second call (a shape marked dynamic), so
    only from the second warm-up on does a call's time say how slow `fn` is. Calls slower than
    `budget_s` then get one timed call; otherwise calls go on until `reps`, or until `budget_s`
    is spent with at least 3 timed."""
    last = None
    for i in range(warmup):
        if i >= 2 and last > budget_s:
            break
        if before is not None:
            before()
        last = timer.wall(fn)
    times: list[float] = []
    min_reps = 1 if last is not None and last > budget_s else min(3, reps)
    start = time.perf_counter()
    while len(times) < reps:
        if before is not None:
            before()
        times.append(timer.time(fn))
        if len(times) >= min_reps and time.perf_counter() - start > budget_s:
            break
    return times

