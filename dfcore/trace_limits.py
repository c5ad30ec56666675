r"""Where each ground-truth-free trace target leads with unlimited training: its regression optimum.

Alg. 1 regresses a target T on noised data :math:`x_t = \alpha x_0 + \sigma\varepsilon`, :math:`x_0 \sim q_0`, so
with unlimited data, steps and capacity the net converges to :math:`E[T \mid x_t]` under the posterior of the
training distribution. When that distribution is known (a Dirac mixture over the training set, or a Gaussian
mixture) the optimum is computed here in closed form, with the model's own posterior mean
:math:`\bar y_\theta` and the exact :math:`\bar y` and :math:`\operatorname{tr}\mathrm{Cov}[x_0 \mid x_t]`:

- ``sq_norm`` (Alg. 1 as written): :math:`E[\|x_0\|^2 - \|\bar y_\theta\|^2] = \operatorname{tr}\mathrm{Cov}
  + \|\bar y\|^2 - \|\bar y_\theta\|^2`, off by :math:`2\bar y^\top(\bar y - \bar y_\theta)` to first order
  in the denoiser's error;
- ``residual``: :math:`E\|x_0 - \bar y_\theta\|^2 = \operatorname{tr}\mathrm{Cov} + \|\bar y - \bar y_\theta\|^2`,
  off by the squared error only;
- ``divergence`` (this project's extension): :math:`(\sigma^2/\alpha)\operatorname{div}\bar y_\theta` exactly, the
  model's own posterior variance, so DF-TM's limit is the ``vjp`` trace.

Put into Eq. 17 (:class:`~dfcore.fisher.trace.DFTMTrace`) each optimum gives the trace that a perfectly trained
net of that target would give: the floor of its Table 2 error that no training budget goes below. This is an
analysis of this project, not the paper's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dfcore.mixtures import Mixture
from dfcore.models.base import Denoiser, TraceModel
from dfcore.models.networks import divergence_target
from dfcore.schedules import Schedule
from dfcore.sde import batch_time

__all__ = ["TARGET_OPTIMA", "TargetOptimum"]

# (mixture, schedule, denoiser, x (B, ...), t (B,)) -> E[T | x_t], (B,) float64
OptimumFn = Callable[[Mixture, Schedule, Denoiser, Tensor, Tensor], Tensor]


def _exact_moments(mixture: Mixture, schedule: Schedule, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """The exact posterior mean (B, d) and :math:`\\operatorname{tr}\\mathrm{Cov}` (B,), float64."""
    flat, tt = x.flatten(1).to(torch.float64), t.to(torch.float64)
    return mixture.posterior_mean(flat, tt, schedule), mixture.posterior_variance(flat, tt, schedule)


def _model_mean(denoiser: Denoiser, x: Tensor, t: Tensor) -> Tensor:
    with torch.no_grad():
        return denoiser.posterior_mean(x, t).flatten(1).to(torch.float64)


def _sq_norm(mixture: Mixture, schedule: Schedule, denoiser: Denoiser, x: Tensor, t: Tensor) -> Tensor:
    ybar, var = _exact_moments(mixture, schedule, x, t)
    return var + ybar.pow(2).sum(1) - _model_mean(denoiser, x, t).pow(2).sum(1)


def _residual(mixture: Mixture, schedule: Schedule, denoiser: Denoiser, x: Tensor, t: Tensor) -> Tensor:
    ybar, var = _exact_moments(mixture, schedule, x, t)
    return var + (ybar - _model_mean(denoiser, x, t)).pow(2).sum(1)


def _divergence(mixture: Mixture, schedule: Schedule, denoiser: Denoiser, x: Tensor, t: Tensor) -> Tensor:
    return divergence_target(denoiser.posterior_mean, x, t, schedule, 1, exact_max_dim=x[0].numel())


# The optimum of every ground-truth-free target of dfcore.models.networks.TRACE_TARGETS.
TARGET_OPTIMA: dict[str, OptimumFn] = {"sq_norm": _sq_norm, "residual": _residual, "divergence": _divergence}


class TargetOptimum(TraceModel):
    """The trace model that a perfectly trained net of ``target`` would be, for training data from ``mixture``
    (module docstring): :meth:`posterior_variance` is :math:`E[T \\mid x_t]` with the given denoiser's
    :math:`\\bar y_\\theta`."""

    def __init__(self, target: str, mixture: Mixture, schedule: Schedule) -> None:
        if target not in TARGET_OPTIMA:
            raise ValueError(f"no closed-form optimum for trace target {target!r}; choose one of {list(TARGET_OPTIMA)}")
        self.target = target
        self.mixture = mixture
        self.schedule = schedule

    def mean_sq_norm(self, x: Tensor, t: Tensor) -> Tensor:
        raise ValueError("a target's optimum needs the denoiser: call posterior_variance(x, t, denoiser)")

    def posterior_variance(self, x: Tensor, t: Tensor, denoiser: Denoiser | None = None) -> Tensor:
        if denoiser is None:
            raise ValueError("a target's optimum needs the denoiser whose posterior mean the target reads (denoiser=)")
        return TARGET_OPTIMA[self.target](self.mixture, self.schedule, denoiser, x, batch_time(t, x, torch.float64))
