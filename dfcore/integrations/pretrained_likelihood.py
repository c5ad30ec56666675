r"""Likelihoods of a loaded diffusers pipeline (:class:`~dfcore.integrations.pretrained.PretrainedModel`): the
probability-flow ODE log-density (Eq. 14) with the adapter as the denoiser, solved in log time by default
(:class:`~dfcore.paths.LogTimeWarp`: uniform solver steps in :math:`\log t`), and bits/dim of 8-bit images with
uniform dequantisation on the [0, 256) scale (:mod:`dfcore.dequantize`):

:math:`\mathrm{bpd} = -\big(\log q_{t_{min}}(x) + d \log a\big) / (d \ln 2)` per dequantised draw x = a(k + u) + b,
averaged over the draws (a bound on the discrete likelihood of the image k).

``dftm`` takes a trace net (:class:`~dfcore.integrations.pretrained.PositiveTraceModel`); the anchored variant
rescales it per image by the model's exact trace at a few solver steps (:mod:`dfcore.anchors`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from dfcore.dequantize import BitsPerDim, dequantize_images, image_bits_per_dim
from dfcore.fisher.trace import DFTMTrace, VJPTrace
from dfcore.integrations.pretrained import PretrainedModel, WarpedTraceModel
from dfcore.models.base import Denoiser, TraceModel
from dfcore.paths import LogTimeWarp
from dfcore.schedules import Schedule

if TYPE_CHECKING:
    from dfcore.anchors import AnchoredLikelihood
    from dfcore.likelihood import LikelihoodResult

__all__ = ["model_log_likelihood", "model_anchored_log_likelihood", "check_pixel_space", "images_bits_per_dim"]

DEFAULT_SOLVE: dict[str, Any] = {"solver": "rk4", "num_steps": 20, "time_warp": "log"}


def _solve_time(
    model: PretrainedModel, t_min: float, time_warp: str, trace_model: TraceModel | None
) -> tuple[Schedule, Denoiser, float, TraceModel | None]:
    """The schedule, denoiser, start time and trace model of a solve in the original time (``none``) or in log
    time (``log``, :class:`LogTimeWarp`)."""
    if time_warp == "none":
        return model.schedule, model.denoiser, t_min, trace_model
    if time_warp == "log":
        warp = LogTimeWarp(model.denoiser, t_min)
        return warp.schedule, warp, warp.s_min, None if trace_model is None else WarpedTraceModel(trace_model, warp)
    raise ValueError(f"unknown time_warp {time_warp!r}; choose 'none' or 'log'")


def model_log_likelihood(
    model: PretrainedModel,
    x: Tensor,
    *,
    method: str,
    t_min: float,
    solver: str,
    num_steps: int = 40,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    time_warp: str = "log",
    data_mean: Tensor | None = None,
    data_var: float | None = None,
    generator: torch.Generator | None = None,
    trace_model: TraceModel | None = None,
) -> LikelihoodResult:
    """:func:`dfcore.likelihood.log_likelihood` of model-scale ``x`` from ``t_min`` to 1 with the adapter as the
    denoiser, in the original time (``time_warp: none``) or log time (:class:`LogTimeWarp`: uniform solver steps
    in :math:`\\log t`)."""
    from dfcore.fisher.trace import trace_estimator_from
    from dfcore.likelihood import gaussian_log_prior, log_likelihood

    schedule, denoiser, s_min, trace_model = _solve_time(model, t_min, time_warp, trace_model)
    trace = trace_estimator_from(
        method,
        {"schedule": schedule, "denoiser": denoiser, "trace_model": trace_model, "generator": generator},
    )
    log_prior = gaussian_log_prior(schedule, 1.0, mean=data_mean, var=data_var)
    return log_likelihood(
        x,
        trace,
        log_prior=log_prior,
        t_min=s_min,
        t_max=1.0,
        solver=solver,
        num_steps=num_steps,
        rtol=rtol,
        atol=atol,
    )


def model_anchored_log_likelihood(
    model: PretrainedModel,
    x: Tensor,
    *,
    trace_model: TraceModel,
    anchors: int,
    t_min: float,
    solver: str,
    num_steps: int,
    time_warp: str = "log",
    data_mean: Tensor | None = None,
    data_var: float | None = None,
) -> AnchoredLikelihood:
    """:func:`model_log_likelihood` with ``dftm``, and the same solve rescaled per image by the model's exact trace at
    ``anchors`` evenly spaced steps (:func:`dfcore.anchors.anchored_log_likelihood`; fixed-step solvers)."""
    from dfcore.anchors import anchored_log_likelihood
    from dfcore.likelihood import gaussian_log_prior

    schedule, denoiser, s_min, warped = _solve_time(model, t_min, time_warp, trace_model)
    assert warped is not None
    return anchored_log_likelihood(
        x,
        DFTMTrace(denoiser, warped, schedule),
        VJPTrace(denoiser, schedule=schedule),
        anchors=anchors,
        log_prior=gaussian_log_prior(schedule, 1.0, mean=data_mean, var=data_var),
        t_min=s_min,
        solver=solver,
        num_steps=num_steps,
    )


def check_pixel_space(folder: str | Path, latent: bool) -> None:
    """ValueError for the ``latent`` pipeline of ``folder`` (one with ``vae/``): bits/dim of images needs a
    pixel-space UNet."""
    if latent:
        raise ValueError(f"{folder} is a latent pipeline (vae/); bits/dim of images needs a pixel-space UNet")


def images_bits_per_dim(
    model: PretrainedModel,
    images: Tensor,
    method: str = "vjp",
    *,
    trace: TraceModel | None = None,
    num_draws: int = 1,
    seed: int = 0,
    t_min: float | None = None,
    **solve: Any,
) -> BitsPerDim:
    """Bits/dim on the [0, 256) scale of uint8 ``images`` (B, C, H, W) under a pixel-space ``model``, by
    :func:`model_log_likelihood` with trace ``method`` (``vjp``, ``hutchinson`` or ``dftm`` with ``trace``):
    ``num_draws`` uniform dequantisations seeded ``seed``, Hutchinson probes seeded ``seed + 1``, t_min = 1/T unless
    given, and ``solve`` over :data:`DEFAULT_SOLVE` (RK4, 20 steps uniform in log t). The same protocol as
    ``python -m dfcore likelihood`` with one batch."""
    check_pixel_space(model.folder, model.vae is not None)
    if (method == DFTMTrace.name) != (trace is not None):
        raise ValueError(f"a trace net is needed by method {DFTMTrace.name!r} and read by it alone; got {method!r}")
    t_min = 1.0 / model.schedule.num_steps if t_min is None else float(t_min)
    deq = dequantize_images(images, torch.Generator().manual_seed(int(seed)), int(num_draws))
    param = next(model.unet.parameters())
    generator = torch.Generator().manual_seed(int(seed) + 1)
    res = model_log_likelihood(
        model,
        deq.x.to(device=param.device, dtype=param.dtype),
        method=method,
        t_min=t_min,
        generator=generator,
        trace_model=trace,
        **(DEFAULT_SOLVE | solve),
    )
    return image_bits_per_dim(res.log_q.detach().to("cpu", torch.float64), deq, t_min)
