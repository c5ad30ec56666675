"""What the trace and Fisher-vector-product estimators share: the schedule they use, batched VJPs, and the
construction of an estimator from its registry name."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor

from dfcore.checks import check_same_schedule
from dfcore.models.base import Denoiser
from dfcore.schedules import Schedule

__all__ = [
    "resolve_schedule",
    "jacobian_quadratic_forms",
    "output_and_jacobian_quadratic_forms",
    "vjp",
    "build_estimator",
]

_T = TypeVar("_T")


def resolve_schedule(schedule: Schedule | None, denoiser: Denoiser | None, estimator: str) -> Schedule:
    """``schedule``, or the denoiser's own when none is given."""
    check_same_schedule(schedule, denoiser)
    if schedule is not None:
        return schedule
    if denoiser is not None:
        return denoiser.schedule
    raise ValueError(f"{estimator} needs a schedule (or a denoiser that has one)")


def build_estimator(
    registry: Mapping[str, type[_T]], kind: str, method: str, deps: Mapping[str, Any], *, strict: bool = True
) -> _T:
    """``registry[method](**deps)`` without the keywords given as None (they count as not given).

    An unknown ``method`` is a ValueError naming the choices. With ``strict`` a keyword the estimator does not take,
    or a dependency it needs and did not get, is the constructor's own TypeError; without it, ``deps`` is the pool
    of dependencies of every method (a driver whose config word picks the method) and each estimator takes those
    of them its constructor names."""
    try:
        cls = registry[method]
    except KeyError:
        raise ValueError(f"unknown {kind} method {method!r}; choose one of {sorted(registry)}") from None
    given = {key: value for key, value in deps.items() if value is not None}
    if not strict:
        takes = inspect.signature(cls).parameters
        given = {key: value for key, value in given.items() if key in takes}
    return cls(**given)


def vjp(fn: Callable[[Tensor], Tensor], x: Tensor, v: Tensor) -> Tensor:
    r""":math:`v^\top \partial fn/\partial x` at ``x`` by one reverse-mode pass (``torch.autograd.grad``)."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        out = fn(leaf)
        return torch.autograd.grad(out, leaf, v.to(out.dtype))[0]


def _cotangent_rows(out: Tensor, leaf: Tensor, vectors: Tensor, chunk_size: int | None) -> Tensor:
    r""":math:`v_k^\top J` for the cotangents ``vectors`` (K, *out.shape), one backward pass of the graph from
    ``leaf`` to ``out`` per chunk of ``chunk_size`` cotangents (vectorised by ``is_grads_batched``; one by one for
    an operation without a batching rule)."""
    count = vectors.shape[0]
    if count == 1:
        return torch.autograd.grad(out, leaf, vectors[0])[0][None]
    step = count if chunk_size is None else max(1, int(chunk_size))
    rows = []
    for start in range(0, count, step):
        chunk = vectors[start : start + step]
        try:
            rows.append(torch.autograd.grad(out, leaf, chunk, retain_graph=True, is_grads_batched=True)[0])
        except (RuntimeError, NotImplementedError):  # an op without a batching rule: loop instead
            rows.append(torch.stack([torch.autograd.grad(out, leaf, v, retain_graph=True)[0] for v in chunk]))
    return torch.cat(rows)


def output_and_jacobian_quadratic_forms(
    fn: Callable[[Tensor], Tensor], x: Tensor, vectors: Tensor, chunk_size: int | None
) -> tuple[Tensor, Tensor]:
    r"""``fn(x)`` (detached) and, for cotangents ``vectors`` (K, B, d...), :math:`\langle v_k, v_k^\top J\rangle`
    per sample, (K, B), where J is the (block-diagonal) Jacobian of ``fn`` at x. One forward pass serves both; the
    K VJPs are backward passes of its graph, vectorised in chunks of ``chunk_size`` (``torch.autograd.grad``,
    which on the CPU costs two thirds of ``torch.func.vjp``'s time through a small UNet)."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        out = fn(leaf)
        rows = _cotangent_rows(out, leaf, vectors.to(out.dtype), chunk_size)
    return out.detach(), (rows.flatten(2) * vectors.flatten(2)).sum(-1).detach()


def jacobian_quadratic_forms(
    fn: Callable[[Tensor], Tensor], x: Tensor, vectors: Tensor, chunk_size: int | None
) -> Tensor:
    r"""The (K, B) quadratic forms of :func:`output_and_jacobian_quadratic_forms` alone."""
    return output_and_jacobian_quadratic_forms(fn, x, vectors, chunk_size)[1]
