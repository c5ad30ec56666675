r"""Fisher-trace estimators behind one signature: ``fisher_trace(method, x, t, ...)`` -> (B,).

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

``x`` is (B, d) or (B, C, H, W); ``t`` is a scalar or (B,). The result is float64.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from dfcore.denoiser import Denoiser, TraceModel
from dfcore.mixture import Mixture, check_finite
from dfcore.schedules import Schedule

__all__ = ["TRACE_METHODS", "fisher_trace", "rademacher"]

TRACE_METHODS = ("analytic", "dftm", "vjp", "hutchinson")


def _times(x: Tensor, t: Tensor | float) -> Tensor:
    t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def rademacher(shape: tuple[int, ...], generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
               device: torch.device | str = "cpu") -> Tensor:
    """Independent ±1 entries."""
    return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(dtype=dtype, device=device)


def _jacobian_quadratic_forms(eps: Callable[[Tensor], Tensor], x: Tensor, vectors: Tensor, chunk_size: int | None) -> Tensor:
    r"""For cotangents ``vectors`` (K, B, d...) return :math:`v_k^\top J` per sample, reduced to
    :math:`\langle v_k, v_k^\top J\rangle` (K, B), where J is the (block-diagonal) Jacobian of ``eps`` at x."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        _, vjp_fn = torch.func.vjp(eps, x)
        try:
            rows = torch.func.vmap(lambda v: vjp_fn(v)[0], chunk_size=chunk_size)(vectors)
        except (RuntimeError, NotImplementedError):  # an op without a batching rule: loop instead
            rows = torch.stack([vjp_fn(v)[0] for v in vectors])
    return (rows.flatten(2) * vectors.flatten(2)).sum(-1)


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
    r"""Estimate :math:`\operatorname{tr}F_t(x)` with ``method`` (one of :data:`TRACE_METHODS`), shape (B,), float64.

    Args:
        method: ``analytic`` (needs ``mixture`` and ``schedule``), ``dftm`` (``denoiser`` and
            ``trace_model``), ``vjp`` or ``hutchinson`` (``denoiser``).
        schedule: defaults to ``denoiser.schedule``.
        num_probes: Rademacher probes for ``hutchinson`` (ignored when ``probes`` (k, *x.shape) is given).
        chunk_size: basis vectors / probes per vectorised batch (bounds memory at chunk x B x d).
    """
    if method not in TRACE_METHODS:
        raise ValueError(f"unknown trace method {method!r}; choose one of {list(TRACE_METHODS)}")
    schedule = schedule if schedule is not None else getattr(denoiser, "schedule", None)
    if schedule is None:
        raise ValueError(f"method {method!r} needs a schedule (or a denoiser that has one)")
    check_finite("x", x)
    tt = _times(x, t)
    alpha, sigma = schedule(tt)
    dim = math.prod(x.shape[1:])
    flat = x.flatten(1)

    if method == "analytic":
        if mixture is None:
            raise ValueError("method 'analytic' needs the exact mixture")
        return mixture.fisher_trace(flat.to(torch.float64), tt, schedule)

    if denoiser is None:
        raise ValueError(f"method {method!r} needs a denoiser")

    if method == "dftm":
        if trace_model is None:
            raise ValueError("method 'dftm' needs a trace model")
        with torch.no_grad():
            if hasattr(trace_model, "posterior_variance"):
                # A LearnedTraceModel is parameterised as d t = ||ybar||^2 + V, so the bracket
                # d t - ||ybar||^2 is V itself: one trunk pass, and no cancellation.
                bracket = trace_model.posterior_variance(x, tt).to(torch.float64)
            else:
                ybar = denoiser.posterior_mean(x, tt).flatten(1).to(torch.float64)
                t_theta = trace_model.mean_sq_norm(x, tt).to(torch.float64)
                bracket = dim * t_theta - ybar.pow(2).sum(1)
        return dim / sigma**2 - alpha**2 / sigma**4 * bracket

    def eps(z: Tensor) -> Tensor:
        return denoiser.eps(z, tt)

    if method == "vjp":
        basis = torch.eye(dim, dtype=x.dtype, device=x.device)  # cotangent e_j for every sample at once
        vectors = basis[:, None, :].expand(dim, x.shape[0], dim).reshape(dim, *x.shape)
        diag = _jacobian_quadratic_forms(eps, x, vectors, chunk_size)  # (d, B): J_jj
        return diag.sum(0).detach().to(torch.float64) / sigma

    # hutchinson
    if probes is None:
        if num_probes < 1:
            raise ValueError(f"num_probes must be positive; got {num_probes}")
        probes = rademacher((num_probes, *x.shape), generator, x.dtype, x.device)
    forms = _jacobian_quadratic_forms(eps, x, probes.to(x.dtype), chunk_size)
    return forms.mean(0).detach().to(torch.float64) / sigma
