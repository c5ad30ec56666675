"""What the trace and Fisher-vector-product estimators share: the schedule they use and batched VJPs."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor

from dfcore.checks import check_same_schedule
from dfcore.models.base import Denoiser
from dfcore.schedules import Schedule

__all__ = ["resolve_schedule", "jacobian_quadratic_forms", "vjp"]

# What ``torch.func.vjp`` returns without ``has_aux``: the output and the function of the cotangents.
_VjpResult = tuple[Tensor, Callable[[Tensor], tuple[Tensor, ...]]]


def resolve_schedule(schedule: Schedule | None, denoiser: Denoiser | None, method: str) -> Schedule:
    """``schedule``, or the denoiser's own when none is given."""
    check_same_schedule(schedule, denoiser)
    if schedule is not None:
        return schedule
    if denoiser is not None:
        return denoiser.schedule
    raise ValueError(f"method {method!r} needs a schedule (or a denoiser that has one)")


def vjp(fn: Callable[[Tensor], Tensor], x: Tensor, v: Tensor) -> Tensor:
    r""":math:`v^\top \partial fn/\partial x` at ``x`` by one reverse-mode pass (``torch.func.vjp``)."""
    with torch.enable_grad():
        out, vjp_fn = cast(_VjpResult, torch.func.vjp(fn, x.detach()))
        return vjp_fn(v.to(out.dtype))[0]


def jacobian_quadratic_forms(
    fn: Callable[[Tensor], Tensor], x: Tensor, vectors: Tensor, chunk_size: int | None
) -> Tensor:
    r"""For cotangents ``vectors`` (K, B, d...) return :math:`\langle v_k, v_k^\top J\rangle` per sample, (K, B),
    where J is the (block-diagonal) Jacobian of ``fn`` at x; the K VJPs are vectorised with
    ``torch.func.vmap`` in chunks of ``chunk_size``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        _, vjp_fn = cast(_VjpResult, torch.func.vjp(fn, x))
        try:
            rows = torch.func.vmap(lambda v: vjp_fn(v)[0], chunk_size=chunk_size)(vectors)
        except (RuntimeError, NotImplementedError):  # an op without a batching rule: loop instead
            rows = torch.stack([vjp_fn(v)[0] for v in vectors])
    return (rows.flatten(2) * vectors.flatten(2)).sum(-1)
