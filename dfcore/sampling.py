r"""Deterministic PF-ODE sampling (DDIM and Heun steps) with a stored trajectory.

**Sampler.** In the variables :math:`\bar x = x/\alpha_t`, :math:`\bar\sigma = \sigma_t/\alpha_t` the
probability-flow ODE (Song et al., 2021, Eq. 13) reads :math:`d\bar x/d\bar\sigma = \varepsilon(x, t)`.
One Euler step from t to s < t is the DDIM step (Song et al., 2021b, Eq. 12)

.. math:: x_s = \alpha_s \bar y_\theta(x_t, t) + \sigma_s \varepsilon_\theta(x_t, t), \qquad
          \bar y_\theta = (x_t - \sigma_t \varepsilon_\theta)/\alpha_t ,

and the ``heun`` option is its second-order (trapezoidal) correction, Heun's method in
:math:`(\bar\sigma, \bar x)` as in EDM (Karras et al., 2022, Alg. 1): with :math:`h = \bar\sigma_s - \bar\sigma_t`,
:math:`x'_s = \alpha_s(\bar x_t + h\,\varepsilon_t)` and
:math:`x_s = \alpha_s(\bar x_t + \tfrac h2(\varepsilon_t + \varepsilon(x'_s, s)))`.
The trajectory keeps every state and the network outputs (ε and :math:`\bar y_\theta`) of the pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dfcore.mixtures import Mixture
from dfcore.models.base import Denoiser
from dfcore.schedules import Schedule
from dfcore.sde import batch_time, expand_like

__all__ = [
    "SAMPLERS",
    "CountingDenoiser",
    "Trajectory",
    "schedule_at",
    "ode_step",
    "sample_trajectory",
    "with_posterior_mean",
    "seeded_noise",
]

SAMPLERS = ("ddim", "heun")


class CountingDenoiser(Denoiser):
    """Wraps a denoiser and counts its ε evaluations (``calls`` batched calls, ``evals`` = samples)."""

    def __init__(self, inner: Denoiser) -> None:
        self.inner = inner
        self.schedule = inner.schedule
        self.calls = 0
        self.evals = 0

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        self.evals += x.shape[0]
        return self.inner.eps(x, t)

    def reset(self) -> None:
        self.calls = self.evals = 0


@dataclass
class _StepCache:
    eps: Tensor
    ybar: Tensor
    x_pred: Tensor | None = None  # Heun predictor x'_s
    eps_pred: Tensor | None = None
    ybar_pred: Tensor | None = None


def schedule_at(schedule: Schedule, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The time as (B,) in ``x``'s dtype, and alpha, sigma shaped to broadcast against ``x``."""
    tb = batch_time(t, x)
    alpha, sigma = schedule(tb)
    return tb, expand_like(alpha, x), expand_like(sigma, x)


def _step(denoiser: Denoiser, x: Tensor, t: Tensor, s: Tensor, sampler: str) -> tuple[Tensor, _StepCache]:
    schedule = denoiser.schedule
    tb, a_t, s_t = schedule_at(schedule, t, x)
    sb, a_s, s_s = schedule_at(schedule, s, x)
    eps = denoiser.eps(x, tb)
    ybar = (x - s_t * eps) / a_t
    x_next = a_s * ybar + s_s * eps  # DDIM / Euler in (sigma-bar, x-bar)
    if sampler == "ddim":
        return x_next, _StepCache(eps, ybar)
    if sampler == "heun":
        eps_pred = denoiser.eps(x_next, sb)
        ybar_pred = (x_next - s_s * eps_pred) / a_s
        h = s_s / a_s - s_t / a_t
        x_corr = a_s * (x / a_t + 0.5 * h * (eps + eps_pred))
        return x_corr, _StepCache(eps, ybar, x_next, eps_pred, ybar_pred)
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}")


def ode_step(denoiser: Denoiser, x: Tensor, t: Tensor, s: Tensor, sampler: str = "ddim") -> Tensor:
    """One PF-ODE step from time t to s < t (``ddim`` or ``heun``); differentiable through the network."""
    return _step(denoiser, x, t, s, sampler)[0]


@dataclass
class Trajectory:
    """States ``xs[k]`` at ``times[k]`` (k = 0..K) and the network outputs cached at each step."""

    times: Tensor
    xs: list[Tensor]
    caches: list[_StepCache]
    sampler: str

    @property
    def x_final(self) -> Tensor:
        """The final state (at ``times[-1]`` = t_min), which still holds :math:`\\sigma_{min}\varepsilon`."""
        return self.xs[-1]

    @property
    def ybar_final(self) -> Tensor:
        r"""The sampler's last clean prediction :math:`\bar y_\theta` (of the final step; for Heun at
        ``times[-1]``): the endpoint in the limit :math:`t_{min} \to 0`, free of the :math:`\sigma_{min}\varepsilon` left in
        ``x_final``."""
        last = self.caches[-1]
        return last.ybar_pred if last.ybar_pred is not None else last.ybar

    def stack(self) -> Tensor:
        """All states as one tensor, shape (K+1, B, ...)."""
        return torch.stack(self.xs)


@torch.no_grad()
def sample_trajectory(denoiser: Denoiser, x: Tensor, times: Tensor, sampler: str = "ddim") -> Trajectory:
    """Integrate the PF-ODE from ``times[0]`` to ``times[-1]``, keeping states and network outputs."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}")
    xs, caches = [x], []
    for k in range(len(times) - 1):
        x, cache = _step(denoiser, x, times[k], times[k + 1], sampler)
        xs.append(x)
        caches.append(cache)
    return Trajectory(times, xs, caches, sampler)


def with_posterior_mean(traj: Trajectory, mixture: Mixture, schedule: Schedule) -> Trajectory:
    r"""``traj`` with every cached :math:`\bar y_\theta` replaced by the mixture's exact posterior mean
    :math:`E[x_0 \mid x_t]` (:meth:`~dfcore.mixtures.Mixture.posterior_mean`) at the same state and time, and for
    Heun also at the predictor :math:`x'_s`. The states and ε are kept. Eq. 20 (``dfea``, ``dfea_centered``)
    run along the result sees no network: its :math:`\bar y` is exact, and with ``dfea_endpoint="denoised"`` so
    is its :math:`x_0` (the posterior mean of the last step), so what remains of its error is the
    approximation :math:`E[x_0x_0^\top \mid x_t] \approx x_0x_0^\top` itself."""

    def mean(x: Tensor, t: Tensor) -> Tensor:
        return mixture.posterior_mean(x.flatten(1), batch_time(t, x), schedule).reshape(x.shape).to(x.dtype)

    caches = []
    for k, cache in enumerate(traj.caches):
        exact = _StepCache(cache.eps, mean(traj.xs[k], traj.times[k]), cache.x_pred, cache.eps_pred, cache.ybar_pred)
        if cache.x_pred is not None:
            exact.ybar_pred = mean(cache.x_pred, traj.times[k + 1])
        caches.append(exact)
    return Trajectory(traj.times, list(traj.xs), caches, traj.sampler)


def seeded_noise(seed: int, shape: tuple[int, ...]) -> Tensor:
    """The standard normal start x_1 of a sampler for a seed (drawn by a CPU generator, so the same on every device),
    float64."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
