r"""One training loop for the denoiser (denoising score matching) and the trace network (Alg. 1).

Each step draws a batch :math:`x_0` from the data, :math:`t \sim U(t_{min}, 1)` and
:math:`\varepsilon \sim \mathcal N(0, I)` from one seeded ``torch.Generator``, and takes an Adam step on
the model's ``loss(x0, t, noise)``:

* denoiser — :meth:`dfcore.models.networks.LearnedDenoiser.loss` (EDM-weighted x_0 or ε regression);
* trace network — :meth:`dfcore.models.networks.LearnedTraceModel.loss`, the regression of Alg. 1 onto
  :math:`\|x_0\|^2/d` (Wang et al., 2025, Alg. 1; optimum in Prop. 6), with the denoiser frozen.

The learning rate warms up linearly and then follows a cosine to zero; it is a pure function of the
step, so nothing but the optimizer state needs saving for it. With ``ema_decay`` > 0 the loop keeps an
exponential moving average of the weights (``torch.optim.swa_utils.AveragedModel``) and ends with the
average in the model. Every ``checkpoint_every`` steps the loop saves model, optimizer, generator state, moving
average, step and loss history atomically to ``resume_path``;
a rerun with the same arguments resumes from there and ends bit-identical (on the CPU) to an
uninterrupted run. Loading uses ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from dfcore.device import resolve_device
from dfcore.io import load_checkpoint, save_checkpoint
from dfcore.mixtures import DiracMixture, Mixture
from dfcore.models.networks import (
    TRACE_TARGETS,
    LearnedDenoiser,
    LearnedTraceModel,
    _trace_module,
    build_backbone,
)
from dfcore.paths import PathStates
from dfcore.schedules import Schedule

__all__ = [
    "learning_rate",
    "ema_average",
    "copy_parameters",
    "train_loop",
    "OnPathStates",
    "sigma_data",
    "build_denoiser",
    "build_trace_model",
]

log = logging.getLogger(__name__)


def learning_rate(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_loop(
    model: Any,
    data: Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int = 0,
    t_min: float = 1e-3,
    time_power: float = 1.0,
    checkpoint_every: int = 500,
    seed: int = 0,
    resume_path: str | Path | None = None,
    grad_clip: float = 1.0,
    ema_decay: float = 0.0,
    progress: bool = True,
    desc: str = "train",
    on_step: Callable[[int], None] | None = None,
    fingerprint: str = "",
) -> list[float]:
    """Train ``model.module`` on ``model.loss(x0, t, noise)``; return the loss of every step.

    ``on_step(step)`` is called after each completed step (and its checkpoint, if any) — the tests use it to
    interrupt a run. Training times are :math:`t = t_{min} + (1 - t_{min}) u^p`, u uniform and
    p = ``time_power`` (1: uniform in t; p > 1 puts more of the steps at small t). A model with a ``probe_generator``
    attribute gets the loop's generator there, for randomness its loss draws. ``ema_decay`` > 0 keeps an
    exponential moving average of the weights (:func:`ema_average`), saved in the resume checkpoint and copied into
    ``model.module`` at the end, so the average is what the caller saves.

    A resume checkpoint is used only if its ``fingerprint`` (settings, seed, data) matches, and it is deleted once
    the run completes, so a rerun with other settings starts afresh.

    Checked at every step: the loss and (with ``grad_clip > 0``) the gradient norm are finite, before
    the optimizer step; and before each checkpoint and at the end: the parameters are finite. A failed
    check raises ``FloatingPointError`` naming the step (1-based, as in the loss table) and leaves the
    last resume checkpoint in place, so no checkpoint or model is ever written from NaN parameters.
    """
    settings = [steps, batch_size, lr, warmup_steps, t_min, time_power, seed]
    fingerprint = fingerprint or _fingerprint(model, data, settings, ema_decay)
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive; got {steps}, {batch_size}")
    if not time_power > 0:
        raise ValueError(f"time_power must be positive; got {time_power}")
    module = model.module
    data = data.to(device=next(module.parameters()).device, dtype=next(module.parameters()).dtype)
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    if hasattr(model, "probe_generator"):
        model.probe_generator = gen
    ema = ema_average(module, ema_decay)
    resume_path = Path(resume_path) if resume_path is not None else None
    start, losses = _resume(resume_path, fingerprint, module, opt, gen, desc, ema)
    stop = _Stop(desc, steps, resume_path, start if start else None)
    module.train()
    bar = tqdm(range(start, steps), desc=desc, initial=start, total=steps, disable=not progress, mininterval=1.0)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps, lr, warmup_steps)
        done = step + 1
        losses.append(_step(model, opt, _draw_batch(data, batch_size, t_min, time_power, gen), grad_clip, stop, done))
        if ema is not None:
            ema.update_parameters(module)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4g}")
        if resume_path is not None and (done % checkpoint_every == 0) and done < steps:
            if bad := _non_finite_parameters(module):
                raise stop(f"parameters ({', '.join(bad)})", done)
            _save_resume(resume_path, model, opt, gen, done, losses, fingerprint, ema)
            stop.saved = done
        if on_step is not None:
            on_step(done)
    if ema is not None:
        copy_parameters(ema.module, module)
    if bad := _non_finite_parameters(module):
        raise stop(f"parameters ({', '.join(bad)})", steps)
    module.eval()
    if resume_path is not None:
        resume_path.unlink(missing_ok=True)
    return losses


def _fingerprint(model: Any, data: Tensor, settings: list[Any], ema_decay: float) -> str:
    """What a resume checkpoint must match: the loop's settings, the moving average's decay (when kept), the
    training states (when not noised data) and the data's shape and sum."""
    settings = (
        settings + ([ema_decay] if ema_decay else []) + ([model.states] if isinstance(model, OnPathStates) else [])
    )
    return json.dumps(settings + [list(data.shape), float(data.double().sum())])


class OnPathStates:
    """A trace model with ``loss_at(x, t)`` (a target that reads no x0) trained by :func:`train_loop` on the states
    of likelihood solves instead of noised data (``states: ode``): :meth:`loss` ignores the batch's times and noise
    and takes as many states from ``paths``, which draws from the loop's generator. ``module`` and ``state()`` are
    the model's own, so the loop's checkpoints are the model's."""

    states = "ode"

    def __init__(self, model: Any, paths: PathStates) -> None:
        self.model = model
        self.paths = paths

    @property
    def module(self) -> torch.nn.Module:
        return self.model.module

    @property
    def probe_generator(self) -> torch.Generator | None:
        return self.model.probe_generator

    @probe_generator.setter
    def probe_generator(self, generator: torch.Generator) -> None:
        self.model.probe_generator = generator
        self.paths.generator = generator

    def state(self) -> dict[str, Any]:
        return self.model.state()

    def loss(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        x, tt = self.paths.take(len(x0), x0)
        return self.model.loss_at(x, tt)


class _Stop:
    """Builds the ``FloatingPointError`` of a failed check, naming the resume checkpoint left on disk (``saved``:
    the step it was written at, None before the first)."""

    def __init__(self, desc: str, steps: int, resume_path: Path | None, saved: int | None) -> None:
        self.desc, self.steps, self.resume_path, self.saved = desc, steps, resume_path, saved

    def __call__(self, what: str, step_number: int) -> FloatingPointError:
        if self.resume_path is None:
            kept = "no resume checkpoint (resume_path not set)"
        elif self.saved is None:
            kept = "no resume checkpoint was written yet"
        else:
            kept = f"kept the last good resume checkpoint {self.resume_path} (step {self.saved})"
        return FloatingPointError(
            f"{self.desc}: non-finite {what} at step {step_number} of {self.steps}; training stopped, {kept}"
        )


def _step(
    model: Any,
    opt: torch.optim.Optimizer,
    batch: tuple[Tensor, Tensor, Tensor],
    grad_clip: float,
    stop: _Stop,
    done: int,
) -> float:
    """Optimizer step ``done`` (1-based) on ``model.loss(*batch)``, after checking that the loss and gradient norm
    are finite; return the loss."""
    loss = model.loss(*batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(model.module.parameters(), grad_clip)
        value, norm_value = torch.stack([loss.detach(), norm.to(loss.dtype)]).tolist()  # one device sync for both
    else:
        value, norm_value = float(loss.detach()), 0.0
    if not math.isfinite(value):
        raise stop(f"loss ({value})", done)
    if not math.isfinite(norm_value):
        raise stop(f"gradient (norm {norm_value}, loss {value:.6g})", done)
    opt.step()
    return value


def ema_average(module: torch.nn.Module, decay: float) -> AveragedModel | None:
    r"""An exponential moving average of ``module``'s parameters, :math:`W_{ema} \leftarrow \text{decay}\, W_{ema} +
    (1 - \text{decay})\, W` after each step (``torch.optim.swa_utils``; its first update copies W); None for
    ``decay`` 0."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1); got {decay}")
    if decay == 0.0:
        return None
    return AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay))


def copy_parameters(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Copy the parameters of ``source`` into those of ``target`` (same architecture), in place."""
    with torch.no_grad():
        for p_source, p_target in zip(source.parameters(), target.parameters(), strict=True):
            p_target.copy_(p_source)


def _draw_batch(
    data: Tensor, batch_size: int, t_min: float, time_power: float, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    r"""A minibatch (x0, t, noise) on ``data``'s device: indices, times :math:`t_{min} + (1 - t_{min}) u^p` and
    Gaussian noise, drawn in that order from the CPU generator ``gen`` (so a resumed run draws the same)."""
    device, dtype = data.device, data.dtype
    idx = torch.randint(len(data), (batch_size,), generator=gen)
    t = t_min + (1.0 - t_min) * torch.rand(batch_size, generator=gen, dtype=torch.float64).pow(time_power)
    noise = torch.randn(batch_size, *data.shape[1:], generator=gen, dtype=torch.float64)
    return data[idx.to(device)], t.to(device), noise.to(device=device, dtype=dtype)


def _resume(
    resume_path: Path | None,
    fingerprint: str,
    module: torch.nn.Module,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    desc: str,
    ema: AveragedModel | None = None,
) -> tuple[int, list[float]]:
    """Load the resume checkpoint into ``module``, ``opt``, ``gen`` and ``ema`` (the weights' moving average, if kept)
    when it exists and its fingerprint matches; return the step it was written at and the losses so far (0 and []
    without one)."""
    if resume_path is None or not resume_path.exists():
        return 0, []
    ckpt = load_checkpoint(resume_path, map_location=next(module.parameters()).device)
    if ckpt.get("fingerprint") != fingerprint:
        log.warning("ignoring %s: it was written with other settings or data", resume_path)
        return 0, []
    module.load_state_dict(ckpt["model"]["state_dict"])
    opt.load_state_dict(ckpt["optimizer"])
    gen.set_state(ckpt["generator"].cpu())
    if ema is not None:
        ema.load_state_dict(ckpt["ema"])
    start = int(ckpt["step"])
    log.info("resumed %s from step %d (%s)", desc, start, resume_path)
    return start, [float(v) for v in ckpt["losses"].tolist()]


def _save_resume(
    path: Path,
    model: Any,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    step: int,
    losses: list[float],
    fp: str,
    ema: AveragedModel | None = None,
) -> None:
    """Write the resume checkpoint of ``step`` (model, optimizer, generator, losses, fingerprint and the weights'
    moving average, if kept)."""
    state: dict[str, Any] = {
        "model": model.state(),
        "optimizer": opt.state_dict(),
        "generator": gen.get_state(),
        "step": step,
        "losses": torch.tensor(losses, dtype=torch.float64),
        "fingerprint": fp,
    }
    if ema is not None:
        state["ema"] = ema.state_dict()
    save_checkpoint(state, path)


def _non_finite_parameters(module: torch.nn.Module) -> list[str]:
    """The names of the parameters of ``module`` that hold NaN or Inf."""
    return [name for name, p in module.named_parameters() if not bool(torch.isfinite(p).all())]


def sigma_data(data: Tensor) -> float:
    """RMS per-coordinate standard deviation of the data."""
    return float(data.to(torch.float64).std(0).pow(2).mean().sqrt())


def build_denoiser(
    arch: str,
    dim: int,
    schedule: Schedule,
    sigma_data: float,
    *,
    backbone: Mapping[str, Any],
    prediction: str = "x0",
    image_shape: tuple[int, ...] | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> LearnedDenoiser:
    """A freshly initialised (seeded) denoiser: an ``arch`` (``mlp`` or ``unet``) backbone with the settings
    ``backbone``, preconditioned for ``prediction`` (``x0`` or ``eps``) with the data's RMS ``sigma_data``."""
    if arch == "mlp":
        hparams = {"dim": dim, **backbone}
    elif arch == "unet":
        if image_shape is None:
            raise ValueError("a UNet denoiser needs an image dataset (image_shape)")
        hparams = {"dim": dim, "image_shape": list(image_shape), **backbone}
    else:
        raise ValueError(f"unknown architecture {arch!r}; choose 'mlp' or 'unet'")
    torch.manual_seed(int(seed))
    module = build_backbone(arch, dim, hparams).to(resolve_device(device))
    return LearnedDenoiser(module, schedule, prediction, sigma_data, arch, hparams)


def build_trace_model(
    denoiser: LearnedDenoiser,
    *,
    target: str,
    share_trunk: bool = True,
    head_hidden: int = 128,
    backbone: Mapping[str, Any] | None = None,
    seed: int = 0,
    data: Tensor | None = None,
    reference: Mixture | None = None,
    divergence_probes: int = 1,
    divergence_exact_max_dim: int = 16,
    parameterization: str = "variance",
) -> LearnedTraceModel:
    """A freshly initialised (seeded) trace model for the frozen ``denoiser``: a head of width ``head_hidden`` on
    the denoiser's trunk (``share_trunk``) or on a backbone of its own (the denoiser's settings updated by
    ``backbone``), trained on ``target`` (a key of :data:`~dfcore.models.networks.TRACE_TARGETS`). A target with a
    reference regresses onto the posterior variance of ``reference``: for ``training_set`` by default the Dirac
    mixture of the training set ``data`` (N, ...) in float64; for ``exact_mixture`` the data set's exact Gaussian
    mixture, which the caller passes. Target ``divergence`` uses ``divergence_probes`` Rademacher probes, or the
    exact trace when d <= ``divergence_exact_max_dim`` (:func:`~dfcore.models.networks.divergence_target`).
    ``parameterization`` is how the head's output sets the variance (:mod:`dfcore.models.trace_output`)."""
    hparams: dict[str, Any] = {"head_hidden": int(head_hidden)}
    if not share_trunk and backbone:
        hparams["backbone"] = dict(backbone)  # overrides of the denoiser's backbone settings
    torch.manual_seed(int(seed))
    module = _trace_module(denoiser, share_trunk, hparams).to(next(denoiser.module.parameters()).device)
    for p in denoiser.module.parameters():
        p.requires_grad_(False)
    if TRACE_TARGETS[target].reference == "training_set" and reference is None:
        if data is None:
            raise ValueError(f"trace target {target!r} needs the training set (data=)")
        reference = DiracMixture(data.flatten(1).to(device=next(module.parameters()).device, dtype=torch.float64))
    return LearnedTraceModel(
        denoiser,
        module,
        share_trunk,
        hparams,
        target,
        reference,
        divergence_probes=divergence_probes,
        divergence_exact_max_dim=divergence_exact_max_dim,
        parameterization=parameterization,
    )
