r"""How a trace net's raw output h (B,) becomes the posterior variance :math:`V \approx \operatorname{tr}\mathrm{Cov}
[x_0 | x_t]` of Eq. 17, :math:`\operatorname{tr}F_t = d/\sigma^2 - (\alpha^2/\sigma^4)V`, and the scale that its
regression loss divides :math:`V_\theta - T` by. With :math:`\tilde\sigma = \sigma_t/\alpha_t` and
:math:`\sigma_d` the data's standard deviation per coordinate, the Gaussian reference (data
:math:`N(\mu, \sigma_d^2 I)`) has

.. math:: V_{ref} = c(t) = d\,\frac{\tilde\sigma^2\sigma_d^2}{\tilde\sigma^2 + \sigma_d^2}, \qquad
          \alpha^2\operatorname{tr}F_{ref} = \frac{d}{\tilde\sigma^2} - \frac{c}{\tilde\sigma^4}
          = \frac{d}{\tilde\sigma^2 + \sigma_d^2}.

Two parameterisations:

``variance``
    :math:`V_\theta = c\,\mathrm{softplus}(h)` (the reference at :math:`h = \log(e - 1)`), loss :math:`((V_\theta - T)/c)^2`. A relative error
    :math:`\epsilon` of :math:`V_\theta` is an error :math:`\epsilon\,(d/\sigma^2 - \operatorname{tr}F)` of the trace:
    at small t, where :math:`V \to d\tilde\sigma^2` and the trace is a small difference of two terms of order
    :math:`d/\sigma^2`, the net must be accurate to a relative :math:`\sigma^2\operatorname{tr}F/d`, far below 1.

``fisher`` (this project's extension, not the paper's)
    the fraction of the bound that the trace reaches, :math:`r = \operatorname{tr}F\,\sigma^2/d =
    1 - V/(d\tilde\sigma^2)`, is a logistic function of h offset by the reference's logit (the reference at h = 0),
    :math:`r_\theta = \mathrm{sigmoid}(h + \log(\tilde\sigma^2/\sigma_d^2))`, so
    :math:`V_\theta = d\tilde\sigma^2\,\mathrm{sigmoid}(-h - \log(\tilde\sigma^2/\sigma_d^2))`. An error
    :math:`\delta` of h is then a relative error of about :math:`\delta` of the trace itself where the trace is far
    below its bound (small t on smooth data), and of V where it is near it. The loss is
    :math:`((V_\theta - T)/n)^2` with :math:`n = d\tilde\sigma^2 - c = d\tilde\sigma^4/(\tilde\sigma^2 + \sigma_d^2)`,
    the reference's own :math:`\tilde\sigma^4\operatorname{tr}F`: the error of the trace relative to the
    reference's trace. :math:`0 < V_\theta < d\tilde\sigma^2`, so :math:`0 < \operatorname{tr}F < d/\sigma^2`.

Both keep :math:`V_\theta > 0` (:math:`\operatorname{tr}F < d/\sigma^2`, the bound of Prop. 5).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "TRACE_PARAMETERIZATIONS",
    "check_parameterization",
    "reference_variance",
    "output_variance",
    "loss_scale",
    "output_loss",
]

# The parameterisations of a trace net's output by name (module docstring).
TRACE_PARAMETERIZATIONS = ("variance", "fisher")


def check_parameterization(parameterization: str) -> None:
    """ValueError naming the choices unless ``parameterization`` is one of :data:`TRACE_PARAMETERIZATIONS`."""
    if parameterization not in TRACE_PARAMETERIZATIONS:
        raise ValueError(
            f"unknown trace parameterization {parameterization!r}; choose one of {list(TRACE_PARAMETERIZATIONS)}"
        )


def reference_variance(sigma_tilde: Tensor, sigma_data: float, dim: int) -> Tensor:
    r""":math:`c = d\,\tilde\sigma^2\sigma_d^2/(\tilde\sigma^2 + \sigma_d^2)`, the Gaussian reference's posterior
    variance, (B,) in the dtype of ``sigma_tilde``."""
    s2, sd2 = sigma_tilde**2, sigma_data**2
    return dim * s2 * sd2 / (s2 + sd2)


def output_variance(h: Tensor, sigma_tilde: Tensor, sigma_data: float, dim: int, parameterization: str) -> Tensor:
    r""":math:`V_\theta` (B,) float64 from the raw output ``h`` (B,) at :math:`\tilde\sigma` (B,) (``variance``: c in
    the dtype of :math:`\tilde\sigma`, times the softplus in float64)."""
    check_parameterization(parameterization)
    if parameterization == "variance":
        return reference_variance(sigma_tilde, sigma_data, dim) * nn.functional.softplus(h).to(torch.float64)
    s = sigma_tilde.to(torch.float64)
    return dim * s**2 * torch.sigmoid(-h.to(torch.float64) - torch.log(s**2 / sigma_data**2))


def loss_scale(sigma_tilde: Tensor, sigma_data: float, dim: int, parameterization: str) -> Tensor:
    r"""The default scale n of the loss :math:`((V_\theta - T)/n)^2`, (B,) float64: c for ``variance``,
    :math:`d\tilde\sigma^2 - c = d\tilde\sigma^4/(\tilde\sigma^2 + \sigma_d^2)` for ``fisher``."""
    check_parameterization(parameterization)
    s = sigma_tilde.to(torch.float64)
    if parameterization == "variance":
        return reference_variance(s, sigma_data, dim)
    return dim * s**4 / (s**2 + sigma_data**2)


def output_loss(
    h: Tensor,
    target: Tensor,
    sigma_tilde: Tensor,
    sigma_data: float,
    dim: int,
    parameterization: str,
    scale: Tensor | None = None,
) -> Tensor:
    r"""The batch mean of :math:`((V_\theta - T)/n)^2` for the raw outputs ``h`` (B,) and the targets ``target`` (B,)
    float64 of :math:`V`; n is ``scale`` (B,) or :func:`loss_scale`. The ``variance`` loss is computed as
    :math:`(\mathrm{softplus}(h) - T/c)^2 (c/n)^2` in the dtype of h; the ``fisher`` loss in float64."""
    check_parameterization(parameterization)
    if parameterization == "variance":
        c = reference_variance(sigma_tilde, sigma_data, dim)
        n = c if scale is None else scale
        pred = nn.functional.softplus(h)
        return ((c / n).to(pred.dtype) * (pred - (target / c).to(pred.dtype))).pow(2).mean()
    n = loss_scale(sigma_tilde, sigma_data, dim, parameterization) if scale is None else scale
    v = output_variance(h, sigma_tilde, sigma_data, dim, parameterization)
    return ((v - target) / n).pow(2).mean().to(h.dtype)
