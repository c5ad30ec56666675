r"""The forward process and its probability-flow ODE: the one home of the pieces every algorithm shares.

* Forward noising (Wang et al., 2025, Eq. 1): :math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon`,
  :math:`\varepsilon \sim \mathcal N(0, I)` (:func:`add_noise`, :func:`sample_marginal`).
* PF-ODE velocity (Song et al., 2021, Eq. 13; Wang et al., 2025, Eq. 2):
  :math:`h(x, t) = f(t)\,x - \tfrac12 g^2(t)\,\nabla\log q_t(x)` (:func:`pf_ode_velocity`).
* Time grids decreasing from :math:`t_{max}` to :math:`t_{min}` (:func:`time_grid`): uniform in t, uniform in
  :math:`\log(\sigma_t/\alpha_t)`, or the EDM ρ-spacing of :math:`\sigma_t/\alpha_t` (Karras et al., 2022, Eq. 5).
* Per-sample times and coefficients: :func:`batch_time` turns a scalar or ``(B,)`` time into ``(B,)``,
  :func:`expand_like` reshapes a ``(B,)`` coefficient to broadcast against ``x`` of shape ``(B, ...)``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from dfcore.schedules import Schedule

__all__ = [
    "SPACINGS",
    "expand_like",
    "batch_time",
    "add_noise",
    "sample_marginal",
    "pf_ode_velocity",
    "noise_ratio",
    "time_at_noise_ratio",
    "time_grid",
]

SPACINGS = ("uniform", "log_snr", "edm")


def expand_like(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient ``(B,)`` to broadcast against ``x`` of shape ``(B, ...)``."""
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


def batch_time(t: Tensor | float, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A scalar or ``(B,)`` time as a ``(B,)`` tensor on ``x``'s device, in ``dtype`` (default: ``x``'s)."""
    t = torch.as_tensor(t, dtype=dtype or x.dtype, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def add_noise(x0: Tensor, noise: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    r""":math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon` with per-sample ``alpha``, ``sigma`` of shape ``(B,)``,
    in the dtype of ``x0``."""
    return expand_like(alpha, x0).to(x0.dtype) * x0 + expand_like(sigma, x0).to(x0.dtype) * noise


def sample_marginal(x0: Tensor, schedule: Schedule, t: float, *, generator: torch.Generator | None = None) -> Tensor:
    r"""Exact samples of :math:`q_t` from samples ``x0`` of :math:`q_0` (float64, on the CPU):
    :math:`\alpha_t x_0 + \sigma_t\varepsilon` with the noise drawn from ``generator``."""
    x0 = x0.to("cpu", torch.float64)
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    alpha, sigma = schedule(torch.tensor(t, dtype=torch.float64))
    return alpha * x0 + sigma * eps


def pf_ode_velocity(x: Tensor, t: Tensor, score: Tensor, schedule: Schedule) -> Tensor:
    r"""PF-ODE velocity :math:`h = f x - \tfrac12 g^2 s` for the score ``s`` of :math:`q_t` at ``x`` (Eq. 2).

    ``t`` is a scalar tensor or ``(B,)``, in the dtype of ``x``.
    """
    f, g2 = schedule.f(t), schedule.g2(t)
    if t.ndim:
        f, g2 = expand_like(f, x), expand_like(g2, x)
    return f * x - 0.5 * g2 * score


def noise_ratio(schedule: Schedule, t: Tensor) -> Tensor:
    r""":math:`r_t = \sigma_t / \alpha_t`, increasing in t for every schedule."""
    alpha, sigma = schedule(t)
    return sigma / alpha


def time_at_noise_ratio(schedule: Schedule, target: Tensor, t_lo: float, t_hi: float) -> Tensor:
    """Solve r(t) = target on [t_lo, t_hi] by vectorised bisection in float64 (r is increasing)."""
    lo = torch.full_like(target, t_lo)
    hi = torch.full_like(target, t_hi)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        above = noise_ratio(schedule, mid) > target
        hi = torch.where(above, mid, hi)
        lo = torch.where(above, lo, mid)
        if bool(((hi - lo) <= 1e-15 * hi).all()):
            break
    return 0.5 * (lo + hi)


def time_grid(
    num_steps: int,
    t_min: float,
    *,
    t_max: float = 1.0,
    spacing: Literal["uniform", "log_snr", "edm"] = "uniform",
    schedule: Schedule | None = None,
    rho: float = 7.0,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    r"""Decreasing grid :math:`t_0 = t_{max} > \dots > t_S = t_{min}` with ``num_steps`` steps, shape (S+1,).

    ``uniform``: uniform in t. ``log_snr``: uniform in :math:`\log(\sigma_t/\alpha_t)` (half the log SNR),
    which resolves the stiff part :math:`\tfrac12 g^2/\sigma^2 \approx -d\log r/dt` of the drift equally at
    every noise level. ``edm``: :math:`r_i = (r_{max}^{1/\rho} + \tfrac iS (r_{min}^{1/\rho} - r_{max}^{1/\rho}))^\rho`
    for :math:`r = \sigma/\alpha` (Karras et al., 2022, Eq. 5). The last two need ``schedule``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1; got {num_steps}")
    if not 0.0 < t_min < t_max <= 1.0:
        raise ValueError(f"need 0 < t_min < t_max <= 1; got t_min={t_min}, t_max={t_max}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {list(SPACINGS)}")
    if spacing == "uniform":
        return torch.linspace(t_max, t_min, num_steps + 1, dtype=dtype)
    if schedule is None:
        raise ValueError(f"spacing {spacing!r} needs the schedule")
    frac = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
    ends = torch.tensor([t_max, t_min], dtype=torch.float64)
    r_max, r_min = noise_ratio(schedule, ends).tolist()
    if spacing == "log_snr":
        target = torch.exp(math.log(r_max) + frac * (math.log(r_min) - math.log(r_max)))
    else:
        target = (r_max ** (1 / rho) + frac * (r_min ** (1 / rho) - r_max ** (1 / rho))) ** rho
    grid = time_at_noise_ratio(schedule, target, t_min, t_max)
    grid[0], grid[-1] = t_max, t_min
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError("time grid is not strictly decreasing; use fewer steps or another spacing")
    return grid.to(dtype)
