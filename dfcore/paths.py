r"""The likelihood's paths: a denoiser in log time, and the states at which a likelihood solve evaluates the trace.

:class:`LogTimeWarp` makes uniform solver steps uniform in log t (:class:`WarpedSchedule`);
:func:`likelihood_path_states` records the states of an RK4 solve of the probability-flow ODE from data points, and
:class:`PathStates` serves them in shuffled minibatches to a trace net's training (``states: ode``, this project's
extension, not the paper's: a model's PF-ODE from the data points visits states that noised data
:math:`\alpha_t x_0 + \sigma_t\varepsilon` do not reach).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from dfcore.models.base import Denoiser
from dfcore.schedules import Schedule
from dfcore.sde import batch_time, pf_ode_velocity

__all__ = ["TRACE_STATES", "WarpedSchedule", "LogTimeWarp", "likelihood_path_states", "PathStates"]

# Where a trace net's training states come from: noised data (Alg. 1) or the states of the likelihood's own ODE
# solves (likelihood_path_states).
TRACE_STATES = ("noised", "ode")


class WarpedSchedule(Schedule):
    r"""``base`` in log time: :math:`t = \varphi(s) = e^{-L(1 - s)}`, so :math:`\alpha(s) = \alpha_{base}(\varphi(s))`,
    :math:`\sigma(s) = \sigma_{base}(\varphi(s))` and, since :math:`d/ds = \varphi'(s)\,d/dt` with
    :math:`\varphi' = L\varphi`, :math:`f(s) = L\varphi f_{base}` and :math:`g^2(s) = L\varphi\, g^2_{base}`: the
    same probability-flow ODE (Song et al., 2021, Eq. 13) and Eq. 14 integrand, reparametrised in s."""

    name = "log-time"

    def __init__(self, base: Schedule, rate: float) -> None:
        if not rate > 0:
            raise ValueError(f"log-time rate L must be positive; got {rate}")
        self.base = base
        self.rate = float(rate)

    def time(self, s: Tensor) -> Tensor:
        r""":math:`t = \varphi(s)`."""
        return torch.exp(-self.rate * (1.0 - s))

    def alpha(self, t: Tensor) -> Tensor:
        return self.base.alpha(self.time(t))

    def sigma(self, t: Tensor) -> Tensor:
        return self.base.sigma(self.time(t))

    def f(self, t: Tensor) -> Tensor:
        tt = self.time(t)
        return self.rate * tt * self.base.f(tt)

    def g2(self, t: Tensor) -> Tensor:
        tt = self.time(t)
        return self.rate * tt * self.base.g2(tt)

    def params(self) -> dict[str, Any]:
        return {"base": repr(self.base), "rate": self.rate}


class LogTimeWarp(Denoiser):
    r"""A denoiser on :class:`WarpedSchedule`: :math:`\varepsilon(x, s) = \varepsilon_{base}(x, \varphi(s))`, with
    L chosen so that :math:`\varphi(s_{min}) = t_{min}`. Uniform solver steps in :math:`s \in [s_{min}, 1]`
    are uniform in :math:`\log t`, which follows the :math:`1/t` growth of the likelihood integrand at small t
    (:math:`\operatorname{tr}F_t \approx d/\sigma_t^2`, :math:`\sigma_t^2 \propto t`)."""

    schedule: WarpedSchedule

    def __init__(self, base: Denoiser, t_min: float, s_min: float = 0.5) -> None:
        if not 0 < t_min < 1 or not 0 < s_min < 1:
            raise ValueError(f"LogTimeWarp needs 0 < t_min < 1 and 0 < s_min < 1; got {t_min}, {s_min}")
        self.base = base
        self.t_min = float(t_min)
        self.s_min = float(s_min)
        self.schedule = WarpedSchedule(base.schedule, math.log(1.0 / t_min) / (1.0 - s_min))

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        s = batch_time(t, x, torch.float64)
        return self.base.eps(x, self.schedule.time(s))


def likelihood_path_states(
    denoiser: Denoiser, x0: Tensor, *, t_min: float, num_steps: int, offset: float
) -> tuple[Tensor, Tensor]:
    r"""Every state at which a likelihood solve of ``x0`` (B, ...) evaluates the trace: the probability-flow ODE
    :math:`\dot x = f x + \tfrac12 g^2 \varepsilon_\theta/\sigma` (Eq. 2) from :math:`x(t_{min}) = x_0` to t = 1, by
    RK4 in log time (:class:`LogTimeWarp`) with ``num_steps`` steps of width h
    in s, the grid shifted by ``offset`` h (``offset`` in [0, 1): the first step is ``offset`` h long, so that
    shifted grids cover every t). Returns the states (4 (num_steps + 1) B, ...) in ``x0``'s dtype and their times
    t (not s), float64, without gradients.

    These are the states of :func:`dfcore.likelihood.log_likelihood`, not noised data: it starts at the data
    point itself, without the :math:`\sigma_{t_{min}}` noise of :math:`q_{t_{min}}`, and follows the model's own
    flow, so an imperfect model visits states that :math:`\alpha_t x_0 + \sigma_t\varepsilon` does not reach."""
    from torchdiffeq import odeint

    if not 0 <= offset < 1 or num_steps < 1:
        raise ValueError(f"need 0 <= offset < 1 and num_steps >= 1; got {offset}, {num_steps}")
    warp = LogTimeWarp(denoiser, t_min)
    schedule = warp.schedule
    width = (1.0 - warp.s_min) / num_steps
    inner = [warp.s_min + (offset + k) * width for k in range(num_steps)]
    grid = torch.tensor([warp.s_min, *[s for s in inner if s > warp.s_min], 1.0], dtype=torch.float64)
    states: list[Tensor] = []
    times: list[Tensor] = []

    def velocity(s: Tensor, x: Tensor) -> Tensor:
        ss = batch_time(s, x, torch.float64)
        states.append(x.to(x0.dtype))
        times.append(schedule.time(ss))
        return pf_ode_velocity(x, ss, warp.score(x, ss), schedule)

    with torch.no_grad():
        odeint(velocity, x0.to(torch.float64), grid.to(x0.device), method="rk4")
    return torch.cat(states), torch.cat(times)


class PathStates:
    """A shuffled pool of :func:`likelihood_path_states` of the data points ``data`` (N, ...), refilled from
    ``ceil(n / 4)`` of them (``prepare(points, generator)`` applied, e.g. dequantisation; default none) with a
    random grid offset whenever fewer than the n states asked for remain. Its draws come from ``generator``, which
    a training loop may replace."""

    def __init__(
        self,
        denoiser: Denoiser,
        data: Tensor,
        generator: torch.Generator,
        *,
        t_min: float,
        num_steps: int,
        prepare: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    ) -> None:
        self.denoiser, self.data, self.generator, self.prepare = denoiser, data, generator, prepare
        self.t_min, self.num_steps = t_min, num_steps
        self.pool: list[Tensor] = []

    def take(self, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """n states (in ``like``'s dtype and device) and their times."""
        gen = self.generator
        if not self.pool or len(self.pool[0]) < n:
            idx = torch.randint(len(self.data), (-(-n // 4),), generator=gen)
            x0 = self.data[idx.to(self.data.device)]
            x0 = (x0 if self.prepare is None else self.prepare(x0, gen)).to(device=like.device, dtype=like.dtype)
            offset = float(torch.rand((), generator=gen, dtype=torch.float64))
            x, t = likelihood_path_states(self.denoiser, x0, t_min=self.t_min, num_steps=self.num_steps, offset=offset)
            order = torch.randperm(len(x), generator=gen)
            self.pool = [x[order.to(x.device)], t[order.to(t.device)]]
        x, t = (v[:n] for v in self.pool)
        self.pool = [v[n:] for v in self.pool]
        return x, t
