"""What every stage does the same way: the seed of a job and the timing of a block."""

from __future__ import annotations

import resource
import time
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["section_seed", "Stopwatch"]


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
