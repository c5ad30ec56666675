r"""Fisher-vector products :math:`F_t(x)^\top v` behind one interface (Wang et al., 2025, Sec. 5).

The adjoint of the probability-flow ODE needs :math:`(\partial h/\partial x)^\top \lambda` with
:math:`\partial h/\partial x = f I + \tfrac12 g^2 F_t` (Eq. 19), and a discrete sampler needs
:math:`(\partial\varepsilon/\partial x)^\top \lambda = \sigma_t F_t^\top \lambda`. Three interchangeable
methods, selected by a config word, give :math:`F_t^\top v`:

``analytic``
    exact for a :class:`~dfcore.mixtures.Mixture` (Dirac or Gaussian), through its closed-form
    ``fisher_vp`` (Prop. 5 / Prop. 3).
``dfea``
    the endpoint approximation of Eq. 20: the posterior second moment
    :math:`\sum_i w_i y_i y_i^\top` is replaced by :math:`x_0 x_0^\top`, with :math:`x_0` the endpoint
    of the stored sampling trajectory, and :math:`\bar y_\theta` is the network's posterior mean cached
    during the forward sampling pass:

    .. math:: F_t^\top v \approx \frac{v}{\sigma^2} - \frac{\alpha^2}{\sigma^4}\langle x_0, v\rangle x_0
              + \frac{\alpha^2}{\sigma^4}\langle \bar y_\theta, v\rangle \bar y_\theta .

    No network call and no autograd: two inner products per sample.
``dfea_centered``
    the same one-sample idea applied to the posterior covariance itself,
    :math:`\mathrm{Cov}[x_0 \mid x_t] \approx (x_0 - \bar y_\theta)(x_0 - \bar y_\theta)^\top`:

    .. math:: F_t^\top v \approx \frac{v}{\sigma^2} - \frac{\alpha^2}{\sigma^4}\langle x_0 - \bar y_\theta, v\rangle (x_0 - \bar y_\theta).

    If :math:`x_0` were drawn from the posterior, both estimates of the covariance would be unbiased
    (:math:`E[x_0 x_0^\top] - \bar y\bar y^\top = E[(x_0 - \bar y)(x_0 - \bar y)^\top]`), but this one is
    positive semi-definite and invariant to shifts of the data, whereas Eq. 20's rank-2 term
    :math:`x_0 x_0^\top - \bar y\bar y^\top` is indefinite with eigenvalues of order :math:`\|x_0\|\,\|x_0 - \bar y\|`,
    which the factor :math:`\alpha^2/\sigma^4` turns into growth of the adjoint at small :math:`\sigma`.
    Not in the paper; offered as a comparison.
``vjp``
    :math:`v^\top \partial\varepsilon_\theta/\partial x \,/\, \sigma` through the network (one forward and
    one backward pass).

Shapes: ``x``, ``v``, ``x0``, ``ybar`` are ``(B, ...)`` (flat ``(B, d)`` or images ``(B, C, H, W)``);
``t`` is a scalar or ``(B,)``. Inner products run over all non-batch dimensions.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from dfcore.checks import check_endpoints, widen_half
from dfcore.fisher.common import resolve_schedule, vjp
from dfcore.mixtures import Mixture, require_finite
from dfcore.models.base import Denoiser
from dfcore.schedules import Schedule
from dfcore.sde import batch_time, expand_like

__all__ = [
    "FVP_METHODS",
    "FisherVpFn",
    "fisher_vp",
    "fisher_vp_analytic",
    "fisher_vp_dfea",
    "fisher_vp_dfea_centered",
    "fisher_vp_vjp",
]


class FisherVpFn(Protocol):
    """The signature every Fisher-vector-product method shares; each reads only the keywords it needs."""

    def __call__(
        self,
        x: Tensor,
        t: Tensor,
        v: Tensor,
        *,
        schedule: Schedule,
        mixture: Mixture | None = None,
        denoiser: Denoiser | None = None,
        x0: Tensor | None = None,
        ybar: Tensor | None = None,
    ) -> Tensor: ...


def _inner(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product over all non-batch dimensions, shape (B,)."""
    return (a * b).flatten(1).sum(1)


def fisher_vp_analytic(
    x: Tensor, t: Tensor, v: Tensor, *, schedule: Schedule, mixture: Mixture | None = None, **_: object
) -> Tensor:
    r"""Exact :math:`F_t(x) v` of a mixture (F is symmetric). Prop. 5 (Dirac) / Prop. 3 (Gaussian)."""
    if mixture is None:
        raise ValueError("fisher_vp method 'analytic' needs mixture=")
    flat = mixture.fisher_vp(x.flatten(1), t, v.flatten(1), schedule)
    return flat.reshape(x.shape)


def _endpoint_terms(
    method: str, t: Tensor, v: Tensor, schedule: Schedule, x0: Tensor | None, ybar: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""The inputs of the endpoint methods, checked: ``x0``, ``ybar``, and :math:`\sigma^2` and
    :math:`\alpha^2/\sigma^4` broadcast against ``v``."""
    if x0 is None or ybar is None:
        raise ValueError(
            f"fisher_vp method {method!r} needs x0= (trajectory endpoint) and ybar= (cached posterior mean)"
        )
    check_endpoints(v, x0=x0, ybar=ybar)
    alpha, sigma = schedule(t)
    return x0, ybar, expand_like(sigma.pow(2), v), expand_like(alpha.pow(2) / sigma.pow(4), v)


def fisher_vp_dfea(
    x: Tensor,
    t: Tensor,
    v: Tensor,
    *,
    schedule: Schedule,
    x0: Tensor | None = None,
    ybar: Tensor | None = None,
    **_: object,
) -> Tensor:
    r"""DF-EA, Eq. 20: :math:`v/\sigma^2 - (\alpha^2/\sigma^4)(\langle x_0, v\rangle x_0 - \langle\bar y, v\rangle\bar y)`.

    Args:
        x: the point :math:`x_t` (only its shape and dtype are used).
        x0: endpoint of the sampling trajectory that passes through ``x``.
        ybar: cached posterior mean :math:`\bar y_\theta(x_t, t)` of the forward pass.
    """
    x0, ybar, var, scale = _endpoint_terms("dfea", t, v, schedule, x0, ybar)
    proj_x0 = expand_like(_inner(x0, v), v)
    proj_y = expand_like(_inner(ybar, v), v)
    return v / var - scale * (proj_x0 * x0 - proj_y * ybar)


def fisher_vp_dfea_centered(
    x: Tensor,
    t: Tensor,
    v: Tensor,
    *,
    schedule: Schedule,
    x0: Tensor | None = None,
    ybar: Tensor | None = None,
    **_: object,
) -> Tensor:
    r"""One-sample covariance form: :math:`v/\sigma^2 - (\alpha^2/\sigma^4)\langle x_0 - \bar y, v\rangle (x_0 - \bar y)`."""
    x0, ybar, var, scale = _endpoint_terms("dfea_centered", t, v, schedule, x0, ybar)
    dev = x0 - ybar
    return v / var - scale * expand_like(_inner(dev, v), v) * dev


def fisher_vp_vjp(
    x: Tensor, t: Tensor, v: Tensor, *, schedule: Schedule, denoiser: Denoiser | None = None, **_: object
) -> Tensor:
    r""":math:`v^\top (\partial\varepsilon_\theta/\partial x) / \sigma` by one reverse-mode pass through the network."""
    if denoiser is None:
        raise ValueError("fisher_vp method 'vjp' needs denoiser=")
    jtv = vjp(lambda z: denoiser.eps(z, t), x, v)
    return jtv / expand_like(schedule.sigma(t), jtv)


FVP_METHODS: dict[str, FisherVpFn] = {
    "analytic": fisher_vp_analytic,
    "dfea": fisher_vp_dfea,
    "dfea_centered": fisher_vp_dfea_centered,
    "vjp": fisher_vp_vjp,
}


def fisher_vp(
    method: str,
    x: Tensor,
    t: Tensor | float,
    v: Tensor,
    *,
    schedule: Schedule | None = None,
    mixture: Mixture | None = None,
    denoiser: Denoiser | None = None,
    x0: Tensor | None = None,
    ybar: Tensor | None = None,
) -> Tensor:
    r""":math:`F_t(x)^\top v` by ``method`` (a key of :data:`FVP_METHODS`), in the shape and dtype of ``v``.

    Each method reads only the keyword arguments it needs: ``mixture`` (analytic), ``x0`` and
    ``ybar`` (dfea, dfea_centered), ``denoiser`` (vjp). ``schedule`` defaults to ``denoiser.schedule``.
    """
    try:
        fn = FVP_METHODS[method]
    except KeyError:
        raise ValueError(f"unknown fisher_vp method {method!r}; choose one of {sorted(FVP_METHODS)}") from None
    if v.shape != x.shape:
        raise ValueError(f"v must have the shape of x {tuple(x.shape)}; got {tuple(v.shape)}")
    require_finite("x", x)
    require_finite("v", v)
    schedule = resolve_schedule(schedule, denoiser, method)
    dtype, (x, v, x0, ybar) = v.dtype, widen_half(x, v, x0, ybar)
    return fn(x, batch_time(t, x), v, schedule=schedule, mixture=mixture, denoiser=denoiser, x0=x0, ybar=ybar).to(dtype)
