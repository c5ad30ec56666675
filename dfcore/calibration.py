r"""Calibration of a trained trace net along the likelihood's own paths (this project's extension, not the paper's).

A trace net's error on a likelihood path has two parts: a per-state scatter and a bias that varies smoothly with
t. What bits/dim integrates at time t is the mean of :math:`(\alpha^2/\sigma^4)(V_\theta - V)` over the states
the solves visit (Eq. 17 inside Eq. 14), so the calibration removes exactly that mean: it runs the
probability-flow ODE from data points (:func:`~dfcore.paths.likelihood_path_states`), evaluates at every state
the model's own posterior variance :math:`V = (\sigma^2/\alpha)\operatorname{div}\bar y_\theta` (second-order
Tweedie; exact, or from Rademacher probes; no :math:`x_0`, so no ground truth), sorts the states into bins of
equal width in log t, and finds per bin the offset :math:`\delta_b` of the net's raw output that makes the bin's
mean :math:`V_\theta` equal its mean target (:func:`~dfcore.models.trace_output.fit_offsets`). The net then
outputs :math:`h + \delta(t)`, δ linear in log t between the bins' centres
(:func:`~dfcore.models.trace_output.offset_at`).

Any trace model with the attributes of :class:`CalibratedTrace` can be calibrated: dfcore's
:class:`~dfcore.models.networks.LearnedTraceModel` and the diffusers integration's ``PositiveTraceModel``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from dfcore.models.base import Denoiser
from dfcore.models.networks import divergence_target
from dfcore.models.trace_output import fit_offsets, output_variance
from dfcore.paths import likelihood_path_states
from dfcore.schedules import Schedule

__all__ = ["CalibratedTrace", "log_t_bins", "calibrate_along_paths"]

# States per call of the divergence target (each takes d or ``probes`` Jacobian-vector products).
_CHUNK = 256


class CalibratedTrace(Protocol):
    """What :func:`calibrate_along_paths` uses of a trace model."""

    # (log t knots (K,), offsets of h (K,)), added to the raw output by head(); None: uncalibrated
    calibration: tuple[Tensor, Tensor] | None

    @property
    def denoiser(self) -> Denoiser: ...

    @property
    def schedule(self) -> Schedule: ...

    @property
    def parameterization(self) -> str: ...

    @property
    def module(self) -> nn.Module: ...

    @property
    def sigma_data(self) -> float: ...

    def head(self, x: Tensor, t: Tensor) -> Tensor: ...

    def sigma_tilde(self, t: Tensor) -> Tensor: ...


def log_t_bins(t: Tensor, t_min: float, num_bins: int) -> tuple[Tensor, Tensor]:
    """The bin of each time ``t`` (int64, like ``t``) among ``num_bins`` bins of equal width in log t over
    [``t_min``, 1] (times outside go to the nearest end bin), and the bins' centres in log t, (``num_bins``,)
    float64."""
    edges = torch.linspace(math.log(t_min), 0.0, num_bins + 1, dtype=torch.float64)
    bins = torch.bucketize(torch.log(t.to(torch.float64)), edges[1:-1].to(t.device)).clamp(0, num_bins - 1)
    return bins, (edges[:-1] + edges[1:]) / 2


def _path_samples(
    trace_model: CalibratedTrace,
    points: Tensor,
    prepare: Callable[[Tensor, torch.Generator], Tensor] | None,
    *,
    t_min: float,
    ode_num_steps: int,
    probes: int,
    exact_max_dim: int,
    batch_points: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """The raw outputs h (without calibration), the divergence targets and the times t, each (N,) float64, at every
    state of the likelihood solves of ``points`` (``prepare`` applied), ``batch_points`` at a time, each batch on
    a grid shifted by a random fraction of a step."""
    from tqdm.auto import tqdm

    param = next(trace_model.module.parameters())
    hs, targets, times = [], [], []
    for start in tqdm(range(0, len(points), batch_points), desc="calibrate", leave=False):
        x0 = points[start : start + batch_points]
        x0 = (x0 if prepare is None else prepare(x0, generator)).to(device=param.device, dtype=param.dtype)
        offset = float(torch.rand((), generator=generator, dtype=torch.float64))
        x, t = likelihood_path_states(trace_model.denoiser, x0, t_min=t_min, num_steps=ode_num_steps, offset=offset)
        t = t.to(x.device)
        target = torch.cat(
            [
                divergence_target(
                    trace_model.denoiser.posterior_mean, xc, tc, trace_model.schedule, probes, exact_max_dim, generator
                )
                for xc, tc in zip(x.split(_CHUNK), t.split(_CHUNK), strict=True)
            ]
        )
        with torch.no_grad():
            hs.append(trace_model.head(x, t).to(torch.float64).cpu())
        targets.append(target.cpu())
        times.append(t.cpu())
    return torch.cat(hs), torch.cat(targets), torch.cat(times)


def calibrate_along_paths(
    trace_model: CalibratedTrace,
    points: Tensor,
    *,
    t_min: float,
    ode_num_steps: int = 20,
    num_bins: int = 16,
    probes: int = 4,
    exact_max_dim: int = 0,
    batch_points: int = 16,
    seed: int = 0,
    prepare: Callable[[Tensor, torch.Generator], Tensor] | None = None,
) -> list[dict[str, Any]]:
    r"""Set ``trace_model.calibration`` from the likelihood paths of ``points`` (N, ...) (module docstring):
    ``num_bins`` bins of equal width in log t over [``t_min``, 1], targets from ``probes`` Rademacher probes
    (exact when d <= ``exact_max_dim``), paths by RK4 with ``ode_num_steps`` log-time steps from
    ``prepare(points, generator)`` (e.g. dequantised images; default: the points themselves). Any earlier
    calibration is replaced. Returns one record per bin: its centre ``t``, the number of states ``count``, the
    offset ``offset`` and the bias of the mean trace relative to the bound,
    :math:`\overline{V - V_\theta}/(d\tilde\sigma^2)` (= the mean error of :math:`\sigma^2\operatorname{tr}F/d`),
    before (``bias_before``) and after (``bias_after``) with its standard error ``bias_se``."""
    if num_bins < 1 or len(points) < 1:
        raise ValueError(f"need num_bins >= 1 and at least one point; got {num_bins}, {len(points)}")
    if not 0 < t_min < 1:
        raise ValueError(f"t_min must lie in (0, 1); got {t_min}")
    gen = torch.Generator().manual_seed(int(seed))
    trace_model.calibration = None
    h, target, t = _path_samples(
        trace_model,
        points,
        prepare,
        t_min=t_min,
        ode_num_steps=ode_num_steps,
        probes=probes,
        exact_max_dim=exact_max_dim,
        batch_points=batch_points,
        generator=gen,
    )
    dim = math.prod(points.shape[1:])
    bins, centres = log_t_bins(t, t_min, num_bins)
    s = trace_model.sigma_tilde(t).to(torch.float64).cpu()
    args = (trace_model.sigma_data, dim, trace_model.parameterization)
    offsets = fit_offsets(h, target, s, bins, num_bins, *args)
    trace_model.calibration = (centres, offsets)
    bound = dim * s**2
    before = (target - output_variance(h, s, *args)) / bound
    after = (target - output_variance(h + offsets[bins], s, *args)) / bound
    return [_bin_record(trace_model.calibration, b, bins == b, offsets, before, after) for b in range(num_bins)]


def _bin_record(
    calibration: tuple[Tensor, Tensor], b: int, mask: Tensor, offsets: Tensor, before: Tensor, after: Tensor
) -> dict[str, Any]:
    n = int(mask.sum())
    return {
        "t": math.exp(float(calibration[0][b])),
        "count": n,
        "offset": float(offsets[b]),
        "bias_before": float(before[mask].mean()) if n else math.nan,
        "bias_after": float(after[mask].mean()) if n else math.nan,
        "bias_se": float(after[mask].std() / math.sqrt(n)) if n > 1 else math.nan,
    }
