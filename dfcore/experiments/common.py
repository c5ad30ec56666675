"""What every stage does the same way: the seed of a job and the timing of a block."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch

__all__ = ["section_seed", "Stopwatch", "median_seconds", "calibrate_on_subset"]

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


def calibrate_on_subset(
    model: Any,
    points: torch.Tensor,
    section: Mapping[str, Any],
    *,
    t_min: float,
    seed: int,
    prepare: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> tuple[list[dict[str, Any]], int, float]:
    """Calibrate the trace ``model`` (:func:`dfcore.calibration.calibrate_along_paths`) on the likelihood paths of
    ``section["calibration_images"]`` of ``points``, drawn with ``seed``, with the section's ``calibration_bins``,
    ``calibration_probes``, ``ode_num_steps`` and ``divergence_exact_max_dim``. Returns the per-bin records, the
    number of points used and the seconds it took."""
    from dfcore.calibration import calibrate_along_paths

    start = time.perf_counter()
    chosen = torch.randperm(len(points), generator=torch.Generator().manual_seed(seed))
    chosen = chosen[: int(section["calibration_images"])]
    records = calibrate_along_paths(
        model,
        points[chosen],
        t_min=t_min,
        ode_num_steps=int(section.get("ode_num_steps", 20)),
        num_bins=int(section["calibration_bins"]),
        probes=int(section["calibration_probes"]),
        exact_max_dim=int(section["divergence_exact_max_dim"]),
        seed=seed,
        prepare=prepare,
    )
    return records, len(chosen), time.perf_counter() - start
