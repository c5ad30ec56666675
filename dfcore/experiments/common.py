"""What every stage does the same way: the seed of a job and the timing of a block."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch

__all__ = ["section_seed", "Stopwatch", "median_seconds"]

_T = TypeVar("_T")


def section_seed(seed: int, section: Mapping[str, Any]) -> int:
    """The seed of a job: the global ``seed`` plus the ``seed`` offset of its config section (the schema gives every
    section that draws random numbers its own offset, so two stages never share a stream)."""
    return int(seed) + int(section["seed"])


def _cpu_seconds() -> float:
    """User plus system CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Stopwatch:
    """Wall and process CPU seconds of a ``with`` block (``seconds``, ``cpu_seconds``), with the device's queued
    work finished at both ends so that CUDA time is counted where it is spent."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.seconds = self.cpu_seconds = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> Stopwatch:
        self._sync()
        self._wall, self._cpu = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self._wall
        self.cpu_seconds = _cpu_seconds() - self._cpu


def median_seconds(
    fn: Callable[[], _T], device: torch.device | str = "cpu", repeats: int = 3, *, warmup: bool = True
) -> tuple[_T, float, list[float]]:
    r"""``fn()`` timed ``repeats`` times by :class:`Stopwatch` after one untimed warm-up call (when ``warmup``):
    the result of the last call, the median :math:`\operatorname{med}(s_1, \dots, s_n)` of the wall seconds
    (for even n the mean of the two middle ones) and the n seconds themselves."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1; got {repeats}")
    if warmup:
        fn()
    seconds = []
    for _ in range(repeats):
        with Stopwatch(device) as watch:
            out = fn()
        seconds.append(watch.seconds)
    return out, statistics.median(seconds), seconds
