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
    "fit_offsets",
    "offset_at",
    "Calibration",
    "with_offset",
    "calibration_to_lists",
    "calibration_from_lists",
]

# A calibration of a trace net's raw output: (log t knots (K,), offsets (K,)), both float64.
Calibration = tuple[Tensor, Tensor]

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


def fit_offsets(
    h: Tensor,
    target: Tensor,
    sigma_tilde: Tensor,
    bins: Tensor,
    num_bins: int,
    sigma_data: float,
    dim: int,
    parameterization: str,
    span: float = 8.0,
    iterations: int = 60,
) -> Tensor:
    r"""Per-bin offsets :math:`\delta_b` of the raw output, (``num_bins``,) float64, such that the mean of
    :math:`V_\theta(h + \delta_b)` over the samples of bin b equals the mean of their targets:

    .. math:: \sum_{i \in b} V_\theta(h_i + \delta_b, t_i) = \sum_{i \in b} T_i,

    found by bisection on :math:`[-\mathrm{span}, \mathrm{span}]` (V is monotone in h for both
    parameterisations). ``h``, ``target``, ``sigma_tilde`` and ``bins`` (the bin index of each sample, int64)
    are (N,). A bin without samples gets 0; a bin whose mean target lies beyond what the span reaches (a mean
    posterior variance below 0, say) gets the end of the span closer to it."""
    h, target, s = (v.detach().to(torch.float64) for v in (h, target, sigma_tilde))

    def excess(delta: Tensor) -> Tensor:
        v = output_variance(h + delta[bins], s, sigma_data, dim, parameterization)
        return torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, v - target)

    lo = torch.full((num_bins,), -span, dtype=torch.float64)
    hi = torch.full((num_bins,), span, dtype=torch.float64)
    at_lo = excess(lo)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        same = torch.sign(excess(mid)) == torch.sign(at_lo)
        lo, hi = torch.where(same, mid, lo), torch.where(same, hi, mid)
    delta = (lo + hi) / 2
    at_hi = excess(hi.new_full((num_bins,), span))
    beyond = torch.sign(at_lo) == torch.sign(at_hi)
    nearer = torch.where(at_lo.abs() < at_hi.abs(), -span, span).to(delta)
    delta = torch.where(beyond, nearer, delta)
    counts = torch.bincount(bins, minlength=num_bins)
    return torch.where(counts > 0, delta, torch.zeros_like(delta))


def offset_at(log_t_knots: Tensor, offsets: Tensor, t: Tensor) -> Tensor:
    r""":math:`\delta(t)`, (B,) float64: ``offsets`` (K,) linearly interpolated in log t between the increasing
    ``log_t_knots`` (K,), constant beyond the first and the last knot."""
    x = torch.log(t.to(torch.float64)).clamp(float(log_t_knots[0]), float(log_t_knots[-1]))
    knots, values = log_t_knots.to(x), offsets.to(x)
    if len(knots) == 1:
        return values.expand_as(x).clone()
    right = torch.searchsorted(knots, x).clamp(1, len(knots) - 1)
    left = right - 1
    w = (x - knots[left]) / (knots[right] - knots[left])
    return values[left] + w * (values[right] - values[left])


def with_offset(h: Tensor, calibration: Calibration | None, t: Tensor) -> Tensor:
    r"""The raw output ``h`` (B,) plus the calibration's :math:`\delta(t)` (:func:`offset_at`); ``h`` itself when
    ``calibration`` is None."""
    if calibration is None:
        return h
    return h + offset_at(*calibration, t).to(device=h.device, dtype=h.dtype)


def calibration_to_lists(calibration: Calibration | None) -> list[list[float]] | None:
    """``calibration`` as plain lists [knots, offsets], for checkpoints loaded with ``weights_only``."""
    return None if calibration is None else [v.tolist() for v in calibration]


def calibration_from_lists(value: list[list[float]] | None) -> Calibration | None:
    """The inverse of :func:`calibration_to_lists`."""
    if value is None:
        return None
    knots, offsets = value
    return torch.tensor(knots, dtype=torch.float64), torch.tensor(offsets, dtype=torch.float64)
