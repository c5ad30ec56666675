"""Argument checks shared by the estimators: each raises a one-line ``ValueError`` that names the argument and the
value it got, before any work is done.

They are called in one line at the top of :func:`dfcore.likelihood.log_likelihood`,
:func:`dfcore.likelihood.bits_per_dim`, :func:`dfcore.fisher.common.resolve_schedule` and the endpoint terms of
:mod:`dfcore.fisher.vp` (DF-EA).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from dfcore.mixtures import require_finite

__all__ = [
    "check_same_schedule",
    "check_likelihood_args",
    "check_dim",
    "check_endpoints",
    "widen_half",
]

HALF_DTYPES = (torch.float16, torch.bfloat16)


def _model_schedule(model: Any) -> Any:
    """The schedule a denoiser or trace model was trained under (a trace model's is its denoiser's), or None."""
    inner = getattr(model, "denoiser", model)
    return getattr(inner, "schedule", None)


def check_same_schedule(schedule: Any, *models: Any) -> None:
    """Refuse a ``schedule`` other than the one each model in ``models`` (denoisers, trace models; None skipped)
    was trained under: the network's output means something only under its own schedule."""
    if schedule is None:
        return
    for model in models:
        own = _model_schedule(model)
        if own is not None and own != schedule:
            what = "trace model" if hasattr(model, "denoiser") else "denoiser"
            raise ValueError(f"schedule is {schedule!r}, but the {what} was trained under {own!r}")


def check_likelihood_args(
    x: Tensor,
    *,
    rtol: float,
    atol: float,
    num_steps: int,
    num_probes: int = 1,
    schedule: Any = None,
    denoiser: Any = None,
    trace_model: Any = None,
) -> None:
    """The arguments of :func:`dfcore.likelihood.log_likelihood`: a non-empty finite batch ``x`` (B, ...), finite
    positive ODE tolerances, at least one step and one probe, and networks trained under ``schedule`` whose
    dimension is that of ``x``."""
    if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[0] == 0 or x[0].numel() == 0:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a non-empty batch (B, d...) with B >= 1 and d >= 1; got {shape}")
    require_finite("x", x)
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    for name, count in (("num_steps", num_steps), ("num_probes", num_probes)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {count!r}")
    check_same_schedule(schedule, denoiser, trace_model)
    for model in (denoiser, trace_model):
        hparams = getattr(getattr(model, "denoiser", model), "hparams", None) or {}
        if "dim" in hparams and int(hparams["dim"]) != x[0].numel():
            raise ValueError(f"x has dimension {x[0].numel()}, but the network was trained on dim {hparams['dim']}")


def widen_half(*tensors: Any) -> tuple[Any, ...]:
    """The tensors with float16 and bfloat16 ones converted to float32 (others, and non-tensors, as given): the
    estimators compute in at least float32 and return in the dtype their documentation states."""
    return tuple(t.to(torch.float32) if isinstance(t, Tensor) and t.dtype in HALF_DTYPES else t for t in tensors)


def check_dim(dim: Any) -> None:
    """A data dimension: an integer >= 1."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1; got {dim!r}")


def check_endpoints(x: Tensor, **endpoints: Tensor | None) -> None:
    """Endpoint inputs of DF-EA (``x0``, ``ybar``): each, when given, a finite tensor of the shape of ``x``."""
    for name, value in endpoints.items():
        if value is None:
            continue
        if not isinstance(value, Tensor) or value.shape != x.shape:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{name} must have the shape of x {tuple(x.shape)}; got {shape}")
        if not torch.is_floating_point(value):
            raise ValueError(f"{name} must be a floating-point tensor; got {value.dtype}")
        require_finite(name, value)
