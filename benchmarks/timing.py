"""Timing helpers shared by the benchmarks (imported as ``timing``: the scripts run from this folder)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def sync(device: torch.device | str) -> None:
    """Wait for queued CUDA work, so that a timer measures it (no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(
    fn: Callable[[], object],
    device: torch.device | str = "cpu",
    repeats: int = 3,
    *,
    min_time: float = 0.0,
    max_calls: int | None = None,
    warmup: bool = True,
    reduce: Callable[[list[float]], float] = min,
) -> float:
    """Seconds per call of ``fn``: after an optional warm-up call, each of ``repeats`` rounds calls ``fn``
    until ``min_time`` has passed (or ``max_calls`` calls; at least one) and records the mean time per
    call; ``reduce`` (default ``min``) combines the rounds."""
    if warmup:
        fn()
        sync(device)
    times = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            sync(device)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time or (max_calls is not None and calls >= max_calls):
                break
        times.append(elapsed / calls)
    return reduce(times)
