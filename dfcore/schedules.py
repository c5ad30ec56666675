r"""Noise schedules of the forward process.

The forward kernel is :math:`q(x_t \mid x_0) = \mathcal{N}(\alpha_t x_0, \sigma_t^2 I)` for
:math:`t \in (0, 1]`. It is the marginal of the linear SDE

.. math:: dx = f(t)\, x\, dt + g(t)\, dW, \qquad f = \frac{d \log \alpha_t}{dt}, \qquad
          g^2 = \frac{d \sigma_t^2}{dt} - 2 f \sigma_t^2 ,

whose probability-flow ODE is :math:`dx/dt = f x - \tfrac12 g^2 \nabla \log q_t(x)`
(Song et al., 2021, Eq. 13; Wang et al., 2025, Eq. 2).

Every schedule returns tensors of the dtype and device of ``t``; ``f`` and ``g2`` are closed
forms, checked against autograd derivatives of ``alpha`` and ``sigma`` in the tests.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Schedule",
    "VESchedule",
    "VPSchedule",
    "SubVPSchedule",
    "EDMSchedule",
    "DiscreteSchedule",
    "SCHEDULES",
    "get_schedule",
    "check_time",
]


def check_time(t: Tensor | float, *, allow_zero: bool = False) -> Tensor:
    """Return ``t`` as a tensor after checking that it lies in (0, 1] (or [0, 1])."""
    if not isinstance(t, Tensor):
        t = torch.as_tensor(t, dtype=torch.float64)  # keep Python floats exact
    elif not torch.is_floating_point(t):
        t = t.to(torch.float64)
    if torch.isnan(t).any():
        raise ValueError("t contains NaN")
    low_ok = (t >= 0).all() if allow_zero else (t > 0).all()
    if not low_ok or (t > 1).any():
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"t must lie in {interval}; got values in [{t.min().item():.6g}, {t.max().item():.6g}]")
    return t


def _finite_params(schedule: str, **params: Any) -> None:
    """Raise ValueError naming the first parameter of ``schedule`` that is not a finite real number."""
    for key, value in params.items():
        try:
            finite = not isinstance(value, str) and math.isfinite(float(value))
        except (TypeError, ValueError):
            finite = False
        if not finite:
            raise ValueError(f"{schedule} parameter {key} must be a finite number; got {value!r}")


class Schedule(ABC):
    r"""A forward-process schedule :math:`t \mapsto (\alpha_t, \sigma_t)`."""

    name: str = "schedule"
    # (low, high, strict): two constructor parameters that must satisfy low < high (strict) or low <= high
    ordered_params: tuple[str, str, bool] | None = None

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        r""":math:`\alpha_t`, the signal scale."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        r""":math:`\sigma_t`, the noise standard deviation."""

    @abstractmethod
    def f(self, t: Tensor) -> Tensor:
        r"""Drift coefficient :math:`f(t) = d \log \alpha_t / dt`."""

    @abstractmethod
    def g2(self, t: Tensor) -> Tensor:
        r"""Squared diffusion :math:`g^2(t) = d\sigma_t^2/dt - 2 f(t) \sigma_t^2`."""

    def __call__(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Return ``(alpha_t, sigma_t)``."""
        t = t if isinstance(t, Tensor) else torch.as_tensor(t, dtype=torch.float64)
        return self.alpha(t), self.sigma(t)

    def params(self) -> dict[str, Any]:
        """Constructor parameters, for provenance attributes."""
        return {}

    def spec(self) -> dict[str, Any]:
        """``{"name": ..., "params": {...}}``: what rebuilds this schedule (:func:`get_schedule`)."""
        return {"name": self.name, "params": self.params()}

    def _key(self) -> tuple[Any, ...]:
        """What equality compares: the family and its parameters."""
        return (type(self), tuple(sorted(self.params().items())))

    def __eq__(self, other: object) -> bool:
        """Equal when of the same family (class) with the same parameters."""
        if not isinstance(other, Schedule):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class VESchedule(Schedule):
    r"""Variance exploding (Song & Ermon, 2019; Song et al., 2021):
    :math:`\alpha_t = 1`, :math:`\sigma_t = \sigma_{min} (\sigma_{max}/\sigma_{min})^t`,
    so :math:`f = 0` and :math:`g^2 = 2 \sigma_t^2 \log(\sigma_{max}/\sigma_{min})`."""

    name = "VE"
    ordered_params = ("sigma_min", "sigma_max", True)

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        _finite_params(type(self).name, sigma_min=sigma_min, sigma_max=sigma_max)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"VE needs 0 < sigma_min < sigma_max; got {sigma_min}, {sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def g2(self, t: Tensor) -> Tensor:
        return 2.0 * self._log_ratio * self.sigma(t) ** 2

    def params(self) -> dict[str, Any]:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class VPSchedule(Schedule):
    r"""Variance preserving (Ho et al., 2020; Song et al., 2021) with linear
    :math:`\beta(t) = \beta_{min} + t(\beta_{max} - \beta_{min})`:
    :math:`\alpha_t = \exp(-\tfrac12 \int_0^t \beta)`, :math:`\sigma_t = \sqrt{1 - \alpha_t^2}`,
    :math:`f = -\beta/2`, :math:`g^2 = \beta`."""

    name = "VP"
    ordered_params = ("beta_min", "beta_max", False)

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        _finite_params(type(self).name, beta_min=beta_min, beta_max=beta_max)
        if not 0 < beta_min <= beta_max:
            raise ValueError(f"{type(self).name} needs 0 < beta_min <= beta_max; got {beta_min}, {beta_max}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral_beta(self, t: Tensor) -> Tensor:
        r""":math:`\int_0^t \beta(s) ds`."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self.integral_beta(t))

    def sigma(self, t: Tensor) -> Tensor:
        # sqrt(1 - exp(-B)) computed with expm1 for accuracy at small t.
        return torch.sqrt(-torch.expm1(-self.integral_beta(t)))

    def f(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def g2(self, t: Tensor) -> Tensor:
        return self.beta(t)

    def params(self) -> dict[str, Any]:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max}


class SubVPSchedule(VPSchedule):
    r"""Sub-VP (Song et al., 2021): :math:`\alpha_t` as VP, :math:`\sigma_t = 1 - \exp(-\int_0^t\beta)`,
    so :math:`g^2 = \beta(t) (1 - \exp(-2 \int_0^t \beta))`."""

    name = "subVP"

    def sigma(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self.integral_beta(t))

    def g2(self, t: Tensor) -> Tensor:
        return self.beta(t) * -torch.expm1(-2.0 * self.integral_beta(t))


class EDMSchedule(Schedule):
    r"""EDM (Karras et al., 2022): :math:`\alpha_t = 1`, :math:`\sigma_t = t\,\sigma_{max}`, so
    :math:`f = 0` and :math:`g^2 = 2 t \sigma_{max}^2`. The trained range
    :math:`\sigma \in [\sigma_{min}, \sigma_{max}]` is :math:`t \ge t_{min} = \sigma_{min}/\sigma_{max}`."""

    name = "EDM"
    ordered_params = ("sigma_min", "sigma_max", True)

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0) -> None:
        _finite_params(type(self).name, sigma_min=sigma_min, sigma_max=sigma_max)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"EDM needs 0 < sigma_min < sigma_max; got {sigma_min}, {sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    @property
    def t_min(self) -> float:
        return self.sigma_min / self.sigma_max

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_max * t

    def f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def g2(self, t: Tensor) -> Tensor:
        return 2.0 * self.sigma_max**2 * t

    def params(self) -> dict[str, Any]:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class DiscreteSchedule(Schedule):
    r"""A schedule built from a discrete table :math:`\bar\alpha_i` (diffusers' ``alphas_cumprod``),
    with :math:`\alpha = \sqrt{\bar\alpha}`, :math:`\sigma = \sqrt{1 - \bar\alpha}`.

    Step :math:`i \in \{0, \dots, T-1\}` sits at :math:`t_i = (i + 1)/T`, and :math:`t = 0` at
    :math:`\bar\alpha = 1`. :math:`\log \bar\alpha` is interpolated linearly in t, so
    :math:`f = \tfrac12 d \log\bar\alpha / dt` is piecewise constant and, since
    :math:`d\sigma^2/dt = -2 f \bar\alpha`, :math:`g^2 = -2 f`.
    """

    name = "discrete"

    def __init__(self, alphas_cumprod: Sequence[float] | Tensor) -> None:
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if ac.numel() < 2 or not ((ac > 0) & (ac < 1)).all():
            raise ValueError("alphas_cumprod must hold at least 2 values in (0, 1)")
        if not (ac[1:] <= ac[:-1]).all():
            raise ValueError("alphas_cumprod must be non-increasing")
        n = ac.numel()
        self.num_steps = n
        self._knots = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
        self._log_ac = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(ac)])

    @classmethod
    def from_scheduler(cls, scheduler: Any) -> DiscreteSchedule:
        """Build from any diffusers scheduler that has ``alphas_cumprod`` (DDPM, DDIM, ...)."""
        if not hasattr(scheduler, "alphas_cumprod"):
            raise ValueError(f"{type(scheduler).__name__} has no alphas_cumprod table")
        return cls(scheduler.alphas_cumprod)

    def timestep(self, t: Tensor) -> Tensor:
        """The (fractional) discrete timestep index i matching continuous t: i = tT - 1."""
        return t * self.num_steps - 1.0

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        knots = self._knots.to(device=t.device, dtype=t.dtype)
        vals = self._log_ac.to(device=t.device, dtype=t.dtype)
        idx = torch.clamp(torch.searchsorted(knots, t.detach().contiguous(), right=True) - 1, 0, self.num_steps - 1)
        slope = (vals[idx + 1] - vals[idx]) / (knots[idx + 1] - knots[idx])
        return idx, slope, vals[idx] + slope * (t - knots[idx])

    def log_alpha_bar(self, t: Tensor) -> Tensor:
        return self._segment(t)[2]

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(0.5 * self.log_alpha_bar(t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(self.log_alpha_bar(t)))

    def f(self, t: Tensor) -> Tensor:
        return 0.5 * self._segment(t)[1]

    def g2(self, t: Tensor) -> Tensor:
        return -2.0 * self.f(t)

    @property
    def alphas_cumprod(self) -> Tensor:
        r"""The table :math:`\bar\alpha_i`, i = 0..T-1, float64."""
        return torch.exp(self._log_ac[1:])

    def params(self) -> dict[str, Any]:
        return {"num_steps": self.num_steps}

    def _key(self) -> tuple[Any, ...]:
        """The family and the whole table (two tables of one length differ in their values)."""
        return (type(self), tuple(self._log_ac.tolist()))


SCHEDULES: dict[str, type[Schedule]] = {
    "VE": VESchedule,
    "VP": VPSchedule,
    "subVP": SubVPSchedule,
    "EDM": EDMSchedule,
}
_ALIASES = {"ve": "VE", "vp": "VP", "subvp": "subVP", "sub-vp": "subVP", "sub_vp": "subVP", "edm": "EDM"}


def get_schedule(name: str, **params: Any) -> Schedule:
    """Build a schedule by name (``VE``, ``VP``, ``subVP``, ``EDM``; case-insensitive)."""
    key = _ALIASES.get(str(name).lower())
    if key is None:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    try:
        return SCHEDULES[key](**params)
    except TypeError as err:
        raise ValueError(f"bad parameters for schedule {key}: {err}") from None
