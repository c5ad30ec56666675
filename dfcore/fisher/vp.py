r"""Fisher-vector products :math:`F_t(x)^\top v` behind one interface (Wang et al., 2025, Sec. 5).

The adjoint of the probability-flow ODE needs :math:`(\partial h/\partial x)^\top \lambda` with
:math:`\partial h/\partial x = f I + \tfrac12 g^2 F_t` (Eq. 19), and a discrete sampler needs
:math:`(\partial\varepsilon/\partial x)^\top \lambda = \sigma_t F_t^\top \lambda`. Interchangeable
estimators, each an object holding its own dependencies and called as ``est(x, t, v)``, give
:math:`F_t^\top v` (:class:`FisherVectorProduct`); :data:`FVP_ESTIMATORS` maps the config word to the class:

``analytic`` (:class:`AnalyticFVP`)
    exact for a :class:`~dfcore.mixtures.Mixture` (Dirac or Gaussian), through its closed-form
    ``fisher_vp`` (Prop. 5 / Prop. 3).
``dfea`` (:class:`DFEA`)
    the endpoint approximation of Eq. 20: the posterior second moment
    :math:`\sum_i w_i y_i y_i^\top` is replaced by :math:`x_0 x_0^\top`, with :math:`x_0` the endpoint
    of the stored sampling trajectory, and :math:`\bar y_\theta` is the network's posterior mean cached
    during the forward sampling pass:

    .. math:: F_t^\top v \approx \frac{v}{\sigma^2} - \frac{\alpha^2}{\sigma^4}\langle x_0, v\rangle x_0
              + \frac{\alpha^2}{\sigma^4}\langle \bar y_\theta, v\rangle \bar y_\theta .

    No network call and no autograd: two inner products per sample.
``dfea_centered`` (:class:`DFEACentered`)
    the same one-sample idea applied to the posterior covariance itself,
    :math:`\mathrm{Cov}[x_0 \mid x_t] \approx (x_0 - \bar y_\theta)(x_0 - \bar y_\theta)^\top`:

    .. math:: F_t^\top v \approx \frac{v}{\sigma^2} - \frac{\alpha^2}{\sigma^4}\langle x_0 - \bar y_\theta, v\rangle (x_0 - \bar y_\theta).

    If :math:`x_0` were drawn from the posterior, both estimates of the covariance would be unbiased
    (:math:`E[x_0 x_0^\top] - \bar y\bar y^\top = E[(x_0 - \bar y)(x_0 - \bar y)^\top]`), but this one is
    positive semi-definite and invariant to shifts of the data, whereas Eq. 20's rank-2 term
    :math:`x_0 x_0^\top - \bar y\bar y^\top` is indefinite with eigenvalues of order :math:`\|x_0\|\,\|x_0 - \bar y\|`,
    which the factor :math:`\alpha^2/\sigma^4` turns into growth of the adjoint at small :math:`\sigma`.
    Not in the paper; offered as a comparison.
``vjp`` (:class:`VJPFVP`)
    :math:`v^\top \partial\varepsilon_\theta/\partial x \,/\, \sigma` through the network (one forward and
    one backward pass).

Shapes: ``x``, ``v``, ``x0``, ``ybar`` are ``(B, ...)`` (flat ``(B, d)`` or images ``(B, C, H, W)``);
``t`` is a scalar or ``(B,)``. Inner products run over all non-batch dimensions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor

from dfcore.checks import check_endpoints, widen_half
from dfcore.fisher.common import build_estimator, resolve_schedule, vjp
from dfcore.mixtures import Mixture, require_finite
from dfcore.models.base import Denoiser
from dfcore.schedules import Schedule
from dfcore.sde import batch_time, expand_like

__all__ = [
    "FVP_ESTIMATORS",
    "FisherVectorProduct",
    "AnalyticFVP",
    "DFEA",
    "DFEACentered",
    "VJPFVP",
    "fvp_estimator",
    "fvp_estimator_from",
    "fisher_vp",
]


def _inner(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product over all non-batch dimensions, shape (B,)."""
    return (a * b).flatten(1).sum(1)


class FisherVectorProduct(ABC):
    r""":math:`F_t(x)^\top v` in the shape and dtype of ``v`` (which has the shape of ``x``), for ``t`` a scalar or
    (B,). ``ybar`` is the posterior mean :math:`\bar y_\theta(x, t)` when the caller already has it (a sampler caches
    it); an estimator that needs it and is not given it computes it. Subclasses implement :meth:`product` on a (B,)
    ``t`` in the dtype of ``x``."""

    name: ClassVar[str]  # the estimator's key in FVP_ESTIMATORS and in configs
    schedule: Schedule

    def __call__(self, x: Tensor, t: Tensor | float, v: Tensor, *, ybar: Tensor | None = None) -> Tensor:
        if v.shape != x.shape:
            raise ValueError(f"v must have the shape of x {tuple(x.shape)}; got {tuple(v.shape)}")
        require_finite("x", x)
        require_finite("v", v)
        dtype, (x, v, ybar) = v.dtype, widen_half(x, v, ybar)
        return self.product(x, batch_time(t, x), v, ybar).to(dtype)

    @abstractmethod
    def product(self, x: Tensor, t: Tensor, v: Tensor, ybar: Tensor | None) -> Tensor:
        r""":math:`F_t(x)^\top v` for a (B,) ``t``."""


class AnalyticFVP(FisherVectorProduct):
    r"""Exact :math:`F_t(x) v` of a mixture (F is symmetric). Prop. 5 (Dirac) / Prop. 3 (Gaussian)."""

    name = "analytic"

    def __init__(self, mixture: Mixture, schedule: Schedule) -> None:
        self.mixture = mixture
        self.schedule = schedule

    def product(self, x: Tensor, t: Tensor, v: Tensor, ybar: Tensor | None) -> Tensor:
        return self.mixture.fisher_vp(x.flatten(1), t, v.flatten(1), self.schedule).reshape(x.shape)


class _Endpoint(FisherVectorProduct):
    r"""The one-sample estimators: the trajectory endpoint ``x0`` (B, ...) stands in for a posterior draw; the
    posterior mean is the cached ``ybar`` or, without it, the ``denoiser``'s. ``schedule`` defaults to the
    denoiser's."""

    def __init__(self, x0: Tensor, schedule: Schedule | None = None, denoiser: Denoiser | None = None) -> None:
        self.x0 = x0
        self.denoiser = denoiser
        self.schedule = resolve_schedule(schedule, denoiser, type(self).__name__)

    def _terms(self, x: Tensor, t: Tensor, v: Tensor, ybar: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        r"""``ybar``, and :math:`\sigma^2` and :math:`\alpha^2/\sigma^4` broadcast against ``v``."""
        if ybar is None:
            if self.denoiser is None:
                raise ValueError(f"{type(self).__name__} needs the cached posterior mean (ybar=) or a denoiser")
            ybar = self.denoiser.posterior_mean(x, t).detach()
        check_endpoints(v, x0=self.x0, ybar=ybar)
        alpha, sigma = self.schedule(t)
        return ybar, expand_like(sigma.pow(2), v), expand_like(alpha.pow(2) / sigma.pow(4), v)


class DFEA(_Endpoint):
    r"""DF-EA, Eq. 20: :math:`v/\sigma^2 - (\alpha^2/\sigma^4)(\langle x_0, v\rangle x_0 - \langle\bar y, v\rangle\bar y)`,
    with ``x0`` the endpoint of the sampling trajectory through ``x`` and :math:`\bar y` the posterior mean
    :math:`\bar y_\theta(x_t, t)` cached in the forward pass (``ybar=``); no network call when it is given."""

    name = "dfea"

    def product(self, x: Tensor, t: Tensor, v: Tensor, ybar: Tensor | None) -> Tensor:
        ybar, var, scale = self._terms(x, t, v, ybar)
        proj_x0 = expand_like(_inner(self.x0, v), v)
        proj_y = expand_like(_inner(ybar, v), v)
        return v / var - scale * (proj_x0 * self.x0 - proj_y * ybar)


class DFEACentered(_Endpoint):
    r"""One-sample covariance form: :math:`v/\sigma^2 - (\alpha^2/\sigma^4)\langle x_0 - \bar y, v\rangle (x_0 - \bar y)`
    (positive semi-definite; not in the paper)."""

    name = "dfea_centered"

    def product(self, x: Tensor, t: Tensor, v: Tensor, ybar: Tensor | None) -> Tensor:
        ybar, var, scale = self._terms(x, t, v, ybar)
        dev = self.x0 - ybar
        return v / var - scale * expand_like(_inner(dev, v), v) * dev


class VJPFVP(FisherVectorProduct):
    r""":math:`v^\top (\partial\varepsilon_\theta/\partial x) / \sigma` by one reverse-mode pass through the network.
    ``schedule`` defaults to the denoiser's."""

    name = "vjp"

    def __init__(self, denoiser: Denoiser, schedule: Schedule | None = None) -> None:
        self.denoiser = denoiser
        self.schedule = resolve_schedule(schedule, denoiser, "VJPFVP")

    def product(self, x: Tensor, t: Tensor, v: Tensor, ybar: Tensor | None) -> Tensor:
        jtv = vjp(lambda z: self.denoiser.eps(z, t), x, v)
        return jtv / expand_like(self.schedule.sigma(t), jtv)


FVP_ESTIMATORS: dict[str, type[FisherVectorProduct]] = {
    cls.name: cls for cls in (AnalyticFVP, DFEA, DFEACentered, VJPFVP)
}


def fvp_estimator(method: str, **deps: Any) -> FisherVectorProduct:
    """The estimator :data:`FVP_ESTIMATORS` ``[method]`` built from the keywords it takes (``schedule``,
    ``mixture``, ``denoiser``, ``x0``); a keyword given as None counts as not given, and one the estimator does
    not take is a TypeError."""
    return build_estimator(FVP_ESTIMATORS, "fisher_vp", method, deps)


def fvp_estimator_from(method: str, pool: Mapping[str, Any]) -> FisherVectorProduct:
    """The estimator :data:`FVP_ESTIMATORS` ``[method]`` built from those of the dependencies in ``pool`` that it
    takes (for a driver that holds the dependencies of every method and lets a config word pick one)."""
    return build_estimator(FVP_ESTIMATORS, "fisher_vp", method, pool, strict=False)


def fisher_vp(
    method: str, x: Tensor, t: Tensor | float, v: Tensor, *, ybar: Tensor | None = None, **deps: Any
) -> Tensor:
    r""":math:`F_t(x)^\top v` by ``fvp_estimator(method, **deps)``, in the shape and dtype of ``v``; ``ybar`` is
    the cached posterior mean at (x, t), read by the endpoint estimators only."""
    return fvp_estimator(method, **deps)(x, t, v, ybar=ybar)
