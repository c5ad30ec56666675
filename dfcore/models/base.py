r"""Denoiser and trace-model interfaces shared by the estimators, the NLL and the adjoint code.

A :class:`Denoiser` gives the ε-prediction :math:`\varepsilon(x, t) = -\sigma_t \nabla\log q_t(x)` and
the posterior mean :math:`\bar y(x, t) = E[x_0 | x_t = x] = (x - \sigma_t \varepsilon)/\alpha_t`
(Tweedie). A :class:`TraceModel` gives :math:`t_\theta(x, t) \approx E[\|x_0\|^2 | x_t = x]/d`,
the target of Alg. 1 (Prop. 6). ``x`` is ``(B, d)`` or ``(B, C, H, W)``; ``t`` is ``(B,)``.

:class:`ExactDenoiser` and :class:`ExactTraceModel` answer from a :class:`~dfcore.mixtures.Mixture`,
so every estimator can be tested apart from training error.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from dfcore.mixtures import DiracMixture, Mixture
from dfcore.schedules import Schedule
from dfcore.sde import expand_like

__all__ = ["Denoiser", "TraceModel", "ExactDenoiser", "ExactTraceModel"]


class Denoiser(ABC):
    """An ε-prediction model tied to its schedule."""

    schedule: Schedule

    @abstractmethod
    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        r""":math:`\varepsilon_\theta(x, t)`, same shape as x."""

    def posterior_mean(self, x: Tensor, t: Tensor) -> Tensor:
        r""":math:`\bar y = (x - \sigma \varepsilon)/\alpha`."""
        alpha, sigma = self.schedule(t)
        return (x - expand_like(sigma, x) * self.eps(x, t)) / expand_like(alpha, x)

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        r""":math:`\nabla \log q_t = -\varepsilon/\sigma`."""
        return -self.eps(x, t) / expand_like(self.schedule.sigma(t), x)


class TraceModel(ABC):
    r"""A model of :math:`E[\|x_0\|^2 | x_t]/d` (Alg. 1).

    DF-TM (Eq. 17) needs the bracket :math:`d\,t_\theta - \|\bar y_\theta\|^2`, the model's
    :math:`\operatorname{tr}\mathrm{Cov}[x_0 | x_t]`: :meth:`posterior_variance` forms it from
    :meth:`mean_sq_norm` and the denoiser's posterior mean; a model that parameterises the variance
    directly overrides it (no cancellation between two large numbers).
    """

    @abstractmethod
    def mean_sq_norm(self, x: Tensor, t: Tensor) -> Tensor:
        r""":math:`t_\theta(x, t)`, shape (B,)."""

    def posterior_variance(self, x: Tensor, t: Tensor, denoiser: Denoiser | None = None) -> Tensor:
        r""":math:`d\,t_\theta(x, t) - \|\bar y_\theta(x, t)\|^2`, shape (B,), float64."""
        if denoiser is None:
            raise ValueError("this trace model needs the denoiser for the posterior variance (denoiser=)")
        ybar = denoiser.posterior_mean(x, t).flatten(1).to(torch.float64)
        return math.prod(x.shape[1:]) * self.mean_sq_norm(x, t).to(torch.float64) - ybar.pow(2).sum(1)

    def eps_and_posterior_variance(self, x: Tensor, t: Tensor, denoiser: Denoiser) -> tuple[Tensor, Tensor]:
        r"""``denoiser``'s :math:`\varepsilon_\theta(x, t)` (detached) and :meth:`posterior_variance`, what one
        evaluation of DF-TM's likelihood ODE needs; a model that computes both from one network pass overrides
        it."""
        with torch.no_grad():
            return denoiser.eps(x, t), self.posterior_variance(x, t, denoiser)


class ExactDenoiser(Denoiser):
    """The ideal denoiser of a mixture: ε = -σ ∇log q_t (differentiable through torch ops)."""

    def __init__(self, mixture: Mixture, schedule: Schedule) -> None:
        self.mixture = mixture
        self.schedule = schedule

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        sigma = self.schedule.sigma(t.to(x.dtype))
        return (-expand_like(sigma, flat) * self.mixture.score(flat, t, self.schedule)).reshape(x.shape)


class ExactTraceModel(TraceModel):
    r"""The optimum of Alg. 1 for a Dirac mixture: :math:`\frac1d \sum_i w_i \|y_i\|^2` (Prop. 6)."""

    def __init__(self, mixture: DiracMixture, schedule: Schedule) -> None:
        self.mixture = mixture
        self.schedule = schedule

    def mean_sq_norm(self, x: Tensor, t: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        return self.mixture.posterior_sq_norm(flat, t, self.schedule) / flat.shape[1]
