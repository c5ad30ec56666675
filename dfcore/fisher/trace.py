r"""Fisher-trace estimators: a registry of functions with one signature, ``fisher_trace(method, x, t, ...)`` -> (B,).

With :math:`\partial\varepsilon/\partial x = \sigma F_t` (since :math:`\varepsilon = -\sigma\nabla\log q_t`):

* ``analytic`` — the exact :math:`\operatorname{tr}F_t` of a mixture (for a Dirac mixture over the
  training set, Prop. 5: :math:`d/\sigma^2 - (\alpha^2/\sigma^4)(\sum_i w_i\|y_i\|^2 - \|\bar y\|^2)`).
* ``dftm`` — DF-TM (Wang et al., 2025, Eq. 17):
  :math:`\operatorname{tr}F_t \approx d/\sigma^2 - (\alpha^2/\sigma^4)(d\,t_\theta - \|\bar y_\theta\|^2)`,
  one denoiser and one trace-network evaluation.
* ``vjp`` — exact trace of the network's Jacobian, :math:`\operatorname{tr}(\partial\varepsilon_\theta/\partial x)/\sigma`,
  from d vector-Jacobian products with the basis vectors :math:`e_j` (all samples at once, since
  samples do not interact), vectorised with ``torch.func.vmap`` in chunks of ``chunk_size``.
* ``hutchinson`` — Skilling–Hutchinson: :math:`\frac1k\sum_{j=1}^k z_j^\top(\partial\varepsilon_\theta/\partial x)z_j/\sigma`
  with Rademacher :math:`z_j` (unbiased; pass ``probes`` to fix them, e.g. along an ODE solve).

``x`` is (B, d) or (B, C, H, W); ``t`` is a scalar or (B,). The result is float64 (a scalar per sample,
accumulated in double precision whatever the network's dtype). Each method is a function of
:data:`TRACE_METHODS` with the signature of :class:`TraceFn`; :func:`fisher_trace` looks it up by name.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from dfcore.checks import check_same_schedule, widen_half
from dfcore.fisher.common import jacobian_quadratic_forms, resolve_schedule
from dfcore.mixtures import Mixture, require_finite
from dfcore.models.base import Denoiser, TraceModel
from dfcore.schedules import Schedule
from dfcore.sde import batch_time

__all__ = [
    "TRACE_METHODS",
    "TraceFn",
    "fisher_trace",
    "trace_analytic",
    "trace_dftm",
    "trace_vjp",
    "trace_hutchinson",
    "rademacher",
]


class TraceFn(Protocol):
    """The signature every trace method shares; each reads only the keywords it needs."""

    def __call__(
        self,
        x: Tensor,
        t: Tensor,
        *,
        schedule: Schedule,
        mixture: Mixture | None = None,
        denoiser: Denoiser | None = None,
        trace_model: TraceModel | None = None,
        num_probes: int = 1,
        probes: Tensor | None = None,
        generator: torch.Generator | None = None,
        chunk_size: int | None = 256,
    ) -> Tensor: ...


def rademacher(
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Independent ±1 entries."""
    return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(dtype=dtype, device=device)


def _need(value: object, what: str, method: str) -> None:
    if value is None:
        raise ValueError(f"trace method {method!r} needs {what}")


def trace_analytic(x: Tensor, t: Tensor, *, schedule: Schedule, mixture: Mixture | None = None, **_: object) -> Tensor:
    r"""Exact :math:`\operatorname{tr}F_t` of a mixture (Dirac: Prop. 5; Gaussian: closed form)."""
    _need(mixture, "the exact mixture (mixture=)", "analytic")
    assert mixture is not None
    return mixture.fisher_trace(x.flatten(1).to(torch.float64), t, schedule)


def trace_dftm(
    x: Tensor,
    t: Tensor,
    *,
    schedule: Schedule,
    denoiser: Denoiser | None = None,
    trace_model: TraceModel | None = None,
    **_: object,
) -> Tensor:
    r"""DF-TM, Eq. 17: :math:`d/\sigma^2 - (\alpha^2/\sigma^4)\,V`, with the bracket
    :math:`V = d\,t_\theta - \|\bar y_\theta\|^2` from :meth:`TraceModel.posterior_variance`."""
    _need(denoiser, "a denoiser (denoiser=)", "dftm")
    _need(trace_model, "a trace model (trace_model=)", "dftm")
    assert denoiser is not None and trace_model is not None
    alpha, sigma = schedule(t)
    with torch.no_grad():
        bracket = trace_model.posterior_variance(x, t, denoiser).to(torch.float64)
    return math.prod(x.shape[1:]) / sigma**2 - alpha**2 / sigma**4 * bracket


def trace_vjp(
    x: Tensor,
    t: Tensor,
    *,
    schedule: Schedule,
    denoiser: Denoiser | None = None,
    chunk_size: int | None = 256,
    **_: object,
) -> Tensor:
    r""":math:`\operatorname{tr}(\partial\varepsilon_\theta/\partial x)/\sigma` from d VJPs with the basis vectors."""
    _need(denoiser, "a denoiser (denoiser=)", "vjp")
    assert denoiser is not None
    dim = math.prod(x.shape[1:])
    basis = torch.eye(dim, dtype=x.dtype, device=x.device)  # cotangent e_j for every sample at once
    vectors = basis[:, None, :].expand(dim, x.shape[0], dim).reshape(dim, *x.shape)
    diag = jacobian_quadratic_forms(lambda z: denoiser.eps(z, t), x, vectors, chunk_size)  # (d, B): J_jj
    return diag.sum(0).detach().to(torch.float64) / schedule.sigma(t)


def trace_hutchinson(
    x: Tensor,
    t: Tensor,
    *,
    schedule: Schedule,
    denoiser: Denoiser | None = None,
    num_probes: int = 1,
    probes: Tensor | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = 256,
    **_: object,
) -> Tensor:
    r"""Skilling–Hutchinson: :math:`\frac1k\sum_j z_j^\top(\partial\varepsilon_\theta/\partial x)z_j/\sigma`."""
    _need(denoiser, "a denoiser (denoiser=)", "hutchinson")
    assert denoiser is not None
    if probes is None:
        if num_probes < 1:
            raise ValueError(f"num_probes must be positive; got {num_probes}")
        probes = rademacher((num_probes, *x.shape), generator, x.dtype, x.device)
    forms = jacobian_quadratic_forms(lambda z: denoiser.eps(z, t), x, probes.to(x.dtype), chunk_size)
    return forms.mean(0).detach().to(torch.float64) / schedule.sigma(t)


TRACE_METHODS: dict[str, TraceFn] = {
    "analytic": trace_analytic,
    "dftm": trace_dftm,
    "vjp": trace_vjp,
    "hutchinson": trace_hutchinson,
}


def fisher_trace(
    method: str,
    x: Tensor,
    t: Tensor | float,
    *,
    schedule: Schedule | None = None,
    mixture: Mixture | None = None,
    denoiser: Denoiser | None = None,
    trace_model: TraceModel | None = None,
    num_probes: int = 1,
    probes: Tensor | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = 256,
) -> Tensor:
    r"""Estimate :math:`\operatorname{tr}F_t(x)` with ``method`` (a key of :data:`TRACE_METHODS`), shape (B,), float64.

    Args:
        method: ``analytic`` (needs ``mixture``), ``dftm`` (``denoiser`` and ``trace_model``), ``vjp`` or
            ``hutchinson`` (``denoiser``).
        schedule: defaults to ``denoiser.schedule``.
        num_probes: Rademacher probes for ``hutchinson`` (ignored when ``probes`` (k, *x.shape) is given).
        chunk_size: basis vectors / probes per vectorised batch (bounds memory at chunk x B x d).
    """
    try:
        fn = TRACE_METHODS[method]
    except KeyError:
        raise ValueError(f"unknown trace method {method!r}; choose one of {list(TRACE_METHODS)}") from None
    schedule = resolve_schedule(schedule, denoiser, method)
    check_same_schedule(schedule, trace_model)
    require_finite("x", x)
    x, probes = widen_half(x, probes)
    return fn(
        x,
        batch_time(t, x, torch.float64),
        schedule=schedule,
        mixture=mixture,
        denoiser=denoiser,
        trace_model=trace_model,
        num_probes=num_probes,
        probes=probes,
        generator=generator,
        chunk_size=chunk_size,
    )
