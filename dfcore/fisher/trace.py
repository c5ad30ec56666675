r"""Fisher-trace estimators: objects that hold their own dependencies, called as ``est(x, t)`` -> (B,) float64.

With :math:`\partial\varepsilon/\partial x = \sigma F_t` (since :math:`\varepsilon = -\sigma\nabla\log q_t`):

* :class:`AnalyticTrace` (``analytic``) — the exact :math:`\operatorname{tr}F_t` of a mixture (for a Dirac
  mixture over the training set, Prop. 5: :math:`d/\sigma^2 - (\alpha^2/\sigma^4)(\sum_i w_i\|y_i\|^2 - \|\bar y\|^2)`).
* :class:`DFTMTrace` (``dftm``) — DF-TM (Wang et al., 2025, Eq. 17):
  :math:`\operatorname{tr}F_t \approx d/\sigma^2 - (\alpha^2/\sigma^4)(d\,t_\theta - \|\bar y_\theta\|^2)`,
  one denoiser and one trace-network evaluation.
* :class:`VJPTrace` (``vjp``) — exact trace of the network's Jacobian,
  :math:`\operatorname{tr}(\partial\varepsilon_\theta/\partial x)/\sigma`, from d vector-Jacobian products with the
  basis vectors :math:`e_j` (all samples at once, since samples do not interact), vectorised with
  ``torch.func.vmap`` in chunks of ``chunk_size``.
* :class:`HutchinsonTrace` (``hutchinson``) — Skilling–Hutchinson:
  :math:`\frac1k\sum_{j=1}^k z_j^\top(\partial\varepsilon_\theta/\partial x)z_j/\sigma` with Rademacher
  :math:`z_j` (unbiased; :meth:`~HutchinsonTrace.frozen` fixes the probes, e.g. along an ODE solve).

``x`` is (B, d) or (B, C, H, W); ``t`` is a scalar or (B,). The result is float64 (a scalar per sample,
accumulated in double precision whatever the network's dtype). :meth:`TraceEstimator.eps_and_trace` also returns
the ε-prediction the PF-ODE drift needs, from the same forward pass where the estimator makes one.
:data:`TRACE_ESTIMATORS` maps each name to its class; :func:`trace_estimator` builds one by name and
:func:`fisher_trace` evaluates it once.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from dfcore.checks import check_same_schedule, widen_half
from dfcore.fisher.common import build_estimator, output_and_jacobian_quadratic_forms, resolve_schedule
from dfcore.mixtures import Mixture, require_finite
from dfcore.models.base import Denoiser, ExactDenoiser, TraceModel
from dfcore.schedules import Schedule
from dfcore.sde import batch_time

__all__ = [
    "TRACE_ESTIMATORS",
    "TraceEstimator",
    "AnalyticTrace",
    "DFTMTrace",
    "VJPTrace",
    "HutchinsonTrace",
    "ZeroTrace",
    "trace_estimator",
    "trace_estimator_from",
    "fisher_trace",
    "rademacher",
]


def rademacher(
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Independent ±1 entries."""
    return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(dtype=dtype, device=device)


class TraceEstimator(ABC):
    r"""An estimate of :math:`\operatorname{tr}F_t(x)`, shape (B,), float64, for ``x`` (B, ...) and ``t`` a scalar
    or (B,). Subclasses implement :meth:`trace` on a (B,) float64 ``t``; ``denoiser`` gives the ε-prediction of
    the PF-ODE drift (Eq. 2) that :meth:`eps_and_trace` returns with the trace."""

    name: ClassVar[str]  # the estimator's key in TRACE_ESTIMATORS and in configs
    label: ClassVar[str]  # its name in tables and figures
    schedule: Schedule
    denoiser: Denoiser

    def __call__(self, x: Tensor, t: Tensor | float) -> Tensor:
        require_finite("x", x)
        (x,) = widen_half(x)
        return self.trace(x, batch_time(t, x, torch.float64))

    @abstractmethod
    def trace(self, x: Tensor, t: Tensor) -> Tensor:
        r""":math:`\operatorname{tr}F_t(x)` for a (B,) float64 ``t``."""

    def eps_and_trace(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        r""":math:`\varepsilon_\theta(x, t)` (detached, shape of x) and :math:`\operatorname{tr}F_t(x)` (B,)."""
        require_finite("x", x)
        (x,) = widen_half(x)
        tt = batch_time(t, x, torch.float64)
        with torch.no_grad():
            eps = self.denoiser.eps(x, tt)
        return eps, self.trace(x, tt)

    def frozen(self, x: Tensor) -> TraceEstimator:
        """The estimator to use at every step of one ODE solve of ``x``: itself, unless it draws random numbers."""
        return self


class AnalyticTrace(TraceEstimator):
    r"""Exact :math:`\operatorname{tr}F_t` of a mixture (Dirac: Prop. 5; Gaussian: closed form); its drift comes
    from the mixture's exact score (:class:`~dfcore.models.base.ExactDenoiser`)."""

    name = "analytic"
    label = "analytic"

    def __init__(self, mixture: Mixture, schedule: Schedule) -> None:
        self.mixture = mixture
        self.schedule = schedule
        self.denoiser = ExactDenoiser(mixture, schedule)

    def trace(self, x: Tensor, t: Tensor) -> Tensor:
        return self.mixture.fisher_trace(x.flatten(1).to(torch.float64), t, self.schedule)


class DFTMTrace(TraceEstimator):
    r"""DF-TM, Eq. 17: :math:`d/\sigma^2 - (\alpha^2/\sigma^4)\,V`, with the bracket
    :math:`V = d\,t_\theta - \|\bar y_\theta\|^2` from :meth:`TraceModel.posterior_variance`.
    ``schedule`` defaults to the denoiser's."""

    name = "dftm"
    label = "DF-TM"

    def __init__(self, denoiser: Denoiser, trace_model: TraceModel, schedule: Schedule | None = None) -> None:
        self.denoiser = denoiser
        self.trace_model = trace_model
        self.schedule = resolve_schedule(schedule, denoiser, "DFTMTrace")
        check_same_schedule(self.schedule, trace_model)

    def _trace(self, x: Tensor, t: Tensor, bracket: Tensor) -> Tensor:
        alpha, sigma = self.schedule(t)
        return math.prod(x.shape[1:]) / sigma**2 - alpha**2 / sigma**4 * bracket.to(torch.float64)

    def trace(self, x: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad():
            return self._trace(x, t, self.trace_model.posterior_variance(x, t, self.denoiser))

    def eps_and_trace(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """One call of :meth:`TraceModel.eps_and_posterior_variance`: a trace head on the denoiser's own trunk
        shares its forward pass."""
        require_finite("x", x)
        (x,) = widen_half(x)
        tt = batch_time(t, x, torch.float64)
        eps, bracket = self.trace_model.eps_and_posterior_variance(x, tt, self.denoiser)
        return eps, self._trace(x, tt, bracket)


class _JacobianTrace(TraceEstimator):
    r"""The mean of the quadratic forms :math:`z^\top(\partial\varepsilon_\theta/\partial x)z/\sigma` over the
    cotangents of :meth:`vectors` (k, B, ...), whose forward pass also gives :math:`\varepsilon_\theta`."""

    chunk_size: int | None

    @abstractmethod
    def vectors(self, x: Tensor) -> Tensor:
        """The cotangents (k, *x.shape)."""

    @abstractmethod
    def reduce(self, forms: Tensor) -> Tensor:
        """The (B,) trace of the Jacobian from the (k, B) quadratic forms."""

    def _eps_and_trace(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        eps, forms = output_and_jacobian_quadratic_forms(
            lambda z: self.denoiser.eps(z, t), x, self.vectors(x).to(x.dtype), self.chunk_size
        )
        return eps, self.reduce(forms).detach().to(torch.float64) / self.schedule.sigma(t)

    def trace(self, x: Tensor, t: Tensor) -> Tensor:
        return self._eps_and_trace(x, t)[1]

    def eps_and_trace(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        require_finite("x", x)
        (x,) = widen_half(x)
        return self._eps_and_trace(x, batch_time(t, x, torch.float64))


class VJPTrace(_JacobianTrace):
    r""":math:`\operatorname{tr}(\partial\varepsilon_\theta/\partial x)/\sigma` from d VJPs with the basis vectors,
    ``chunk_size`` of them per vectorised batch (memory: chunk x B x d). ``schedule`` defaults to the denoiser's."""

    name = "vjp"
    label = "VJP"

    def __init__(self, denoiser: Denoiser, chunk_size: int | None = 256, schedule: Schedule | None = None) -> None:
        self.denoiser = denoiser
        self.chunk_size = chunk_size
        self.schedule = resolve_schedule(schedule, denoiser, "VJPTrace")

    def vectors(self, x: Tensor) -> Tensor:
        dim = math.prod(x.shape[1:])
        basis = torch.eye(dim, dtype=x.dtype, device=x.device)  # cotangent e_j for every sample at once
        return basis[:, None, :].expand(dim, x.shape[0], dim).reshape(dim, *x.shape)

    def reduce(self, forms: Tensor) -> Tensor:
        return forms.sum(0)  # (d, B): the diagonal J_jj


class HutchinsonTrace(_JacobianTrace):
    r"""Skilling–Hutchinson: :math:`\frac1k\sum_j z_j^\top(\partial\varepsilon_\theta/\partial x)z_j/\sigma` with
    ``num_probes`` Rademacher probes drawn from ``generator`` at every call, or the fixed ``probes`` (k, *x.shape).
    ``schedule`` defaults to the denoiser's."""

    name = "hutchinson"
    label = "Hutchinson"

    def __init__(
        self,
        denoiser: Denoiser,
        num_probes: int = 1,
        generator: torch.Generator | None = None,
        chunk_size: int | None = 256,
        probes: Tensor | None = None,
        schedule: Schedule | None = None,
    ) -> None:
        if probes is None and num_probes < 1:
            raise ValueError(f"num_probes must be positive; got {num_probes}")
        self.denoiser = denoiser
        self.num_probes = num_probes if probes is None else probes.shape[0]
        self.generator = generator
        self.chunk_size = chunk_size
        self.probes = probes
        self.schedule = resolve_schedule(schedule, denoiser, "HutchinsonTrace")

    def vectors(self, x: Tensor) -> Tensor:
        if self.probes is not None:
            return self.probes
        return rademacher((self.num_probes, *x.shape), self.generator, x.dtype, x.device)

    def reduce(self, forms: Tensor) -> Tensor:
        return forms.mean(0)

    def frozen(self, x: Tensor) -> HutchinsonTrace:
        """The same estimator with its probes drawn once for ``x`` (the same probes at every step of a solve)."""
        return HutchinsonTrace(
            self.denoiser, chunk_size=self.chunk_size, probes=self.vectors(x), schedule=self.schedule
        )


class ZeroTrace(TraceEstimator):
    r""":math:`\operatorname{tr}F_t \equiv 0`: with it Eq. 14 integrates :math:`f d` only, so a solve costs the
    denoiser's forward passes of the PF-ODE and nothing else (the likelihood stage's ``floor`` row; not an
    estimate of the trace, so not in :data:`TRACE_ESTIMATORS`). ``schedule`` defaults to the denoiser's."""

    def __init__(self, denoiser: Denoiser, schedule: Schedule | None = None) -> None:
        self.denoiser = denoiser
        self.schedule = resolve_schedule(schedule, denoiser, "ZeroTrace")

    def trace(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)


TRACE_ESTIMATORS: dict[str, type[TraceEstimator]] = {
    cls.name: cls for cls in (AnalyticTrace, DFTMTrace, VJPTrace, HutchinsonTrace)
}


def trace_estimator(method: str, **deps: Any) -> TraceEstimator:
    """The estimator :data:`TRACE_ESTIMATORS` ``[method]`` built from the keywords it takes (``schedule``,
    ``mixture``, ``denoiser``, ``trace_model``, ``num_probes``, ``generator``, ``chunk_size``, ``probes``); a keyword
    given as None counts as not given, and one the estimator does not take is a TypeError."""
    return build_estimator(TRACE_ESTIMATORS, "trace", method, deps)


def trace_estimator_from(method: str, pool: Mapping[str, Any]) -> TraceEstimator:
    """The estimator :data:`TRACE_ESTIMATORS` ``[method]`` built from those of the dependencies in ``pool`` that it
    takes (for a driver that holds the dependencies of every method and lets a config word pick one)."""
    return build_estimator(TRACE_ESTIMATORS, "trace", method, pool, strict=False)


def fisher_trace(method: str, x: Tensor, t: Tensor | float, **deps: Any) -> Tensor:
    r""":math:`\operatorname{tr}F_t(x)` by ``trace_estimator(method, **deps)``, shape (B,), float64."""
    return trace_estimator(method, **deps)(x, t)
