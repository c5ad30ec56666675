r"""Any diffusers UNet and its scheduler as a dfcore :class:`~dfcore.models.base.Denoiser`.

**Schedule.** The scheduler's table :math:`\bar\alpha_i` (``alphas_cumprod``) becomes the continuous
:class:`~dfcore.schedules.DiscreteSchedule`: :math:`\alpha_t = \sqrt{\bar\alpha}`, :math:`\sigma_t = \sqrt{1-\bar\alpha}`,
step i at :math:`t = (i + 1)/T`; the UNet is called at the fractional timestep ``schedule.timestep(t)`` = tT - 1
(clamped to [0, T - 1]).

**Prediction type.** With :math:`x = \alpha x_0 + \sigma\varepsilon` (Ho et al., 2020, Eq. 4) the scheduler's
``config.prediction_type`` fixes what the network output o stands for, and the ε the estimators need is

* ``epsilon``: :math:`\varepsilon = o`;
* ``v_prediction`` (Salimans & Ho, 2022, :math:`v = \alpha\varepsilon - \sigma x_0`):
  :math:`\varepsilon = \alpha v + \sigma x` (since :math:`\alpha^2 + \sigma^2 = 1`);
* ``sample`` (:math:`o = x_0`): :math:`\varepsilon = (x - \alpha o)/\sigma`.

Any other value is refused.

**Conditioning and classifier-free guidance** (Ho & Salimans, 2022). A ``UNet2DConditionModel`` gets
``encoder_hidden_states`` from ``cond`` (a tensor (1 or B, L, D), or a callable ``cond(x, t)`` returning one);
with guidance scale w and the unconditional ``uncond``,
:math:`o = o_\varnothing + w\,(o_c - o_\varnothing)`, converted to ε as above (the conversions are affine in o
with weights summing to one, so guiding o or ε is the same). w = 1 is the conditional model alone, w = 0 the
unconditional one.

**Folders.** :func:`load_model` reads a local pipeline folder saved with ``save_pretrained`` (``unet/`` and
``scheduler/``, and ``vae/`` for a latent pipeline), offline only, and names what is missing.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from dfcore.models.base import Denoiser, TraceModel
from dfcore.models.networks import divergence_target
from dfcore.models.trace_output import (
    Calibration,
    calibration_to_lists,
    check_parameterization,
    output_loss,
    output_variance,
    with_offset,
)
from dfcore.paths import LogTimeWarp
from dfcore.schedules import DiscreteSchedule
from dfcore.sde import batch_time, expand_like, noise_ratio

if TYPE_CHECKING:
    from dfcore.adjoint import GuidedSample
    from dfcore.dequantize import BitsPerDim

__all__ = [
    "PREDICTION_TYPES",
    "UNET_CLASSES",
    "Conditioning",
    "eps_from_output",
    "output_from_eps",
    "scheduler_prediction_type",
    "PretrainedDenoiser",
    "PretrainedModel",
    "PositiveTraceModel",
    "POSITIVE_TRACE_TARGETS",
    "WarpedTraceModel",
    "check_model_dir",
    "load_model",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel", "ConvertedUNet2DModel")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

# encoder hidden states (1 or B, L, D), or a function of (x, t) returning them
Conditioning = Tensor | Callable[[Tensor, Tensor], Tensor]


def check_prediction_type(prediction_type: str) -> str:
    """Return ``prediction_type`` if it is one of :data:`PREDICTION_TYPES`, else raise a ValueError naming it."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"scheduler config prediction_type {prediction_type!r} is not supported; choose one of {list(PREDICTION_TYPES)}"
        )
    return prediction_type


def scheduler_prediction_type(scheduler: Any) -> str:
    """The ``prediction_type`` of a diffusers scheduler's config (``epsilon`` when it names none), checked by
    :func:`check_prediction_type`."""
    return check_prediction_type(str(scheduler.config.get("prediction_type", "epsilon")))


def eps_from_output(out: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor, prediction_type: str) -> Tensor:
    r"""ε from the network output ``out`` at ``x`` (module docstring); ``alpha``, ``sigma`` are (B,)."""
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return out
    a, s = expand_like(alpha, x).to(x.dtype), expand_like(sigma, x).to(x.dtype)
    if prediction_type == "v_prediction":
        return a * out + s * x
    return (x - a * out) / s


def output_from_eps(eps: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor, prediction_type: str) -> Tensor:
    r"""The inverse of :func:`eps_from_output`: the output a ``prediction_type`` network gives for ε at x,
    :math:`v = \alpha\varepsilon - \sigma x_0` or :math:`x_0 = (x - \sigma\varepsilon)/\alpha`."""
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return eps
    a, s = expand_like(alpha, x).to(x.dtype), expand_like(sigma, x).to(x.dtype)
    x0 = (x - s * eps) / a
    return a * eps - s * x0 if prediction_type == "v_prediction" else x0


def _accepts_context(unet: nn.Module) -> bool:
    """True for a UNet that takes ``encoder_hidden_states`` (a ``UNet2DConditionModel``)."""
    config = getattr(unet, "config", None)
    return config is not None and getattr(config, "cross_attention_dim", None) is not None


class PretrainedDenoiser(Denoiser):
    r"""A diffusers UNet as :math:`\varepsilon_\theta(x, t)` on its :class:`DiscreteSchedule` (module docstring).

    Inputs of any float dtype are cast to the UNet's dtype and the output back to the input's, so float64
    solvers and autograd pass through. ``unet`` is any module called as ``unet(x, timestep, **kw)`` that returns
    a tensor or an object with ``.sample``.
    """

    schedule: DiscreteSchedule

    def __init__(
        self,
        unet: nn.Module,
        schedule: DiscreteSchedule,
        prediction_type: str = "epsilon",
        *,
        cond: Conditioning | None = None,
        uncond: Conditioning | None = None,
        guidance_scale: float = 1.0,
    ) -> None:
        self.prediction_type = check_prediction_type(prediction_type)
        conditional = _accepts_context(unet)
        if conditional and cond is None:
            raise ValueError(f"{type(unet).__name__} takes encoder_hidden_states: pass cond= (a tensor or a callable)")
        if not conditional and (cond is not None or uncond is not None):
            raise ValueError(f"{type(unet).__name__} takes no encoder_hidden_states; got cond/uncond")
        if not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be finite; got {guidance_scale}")
        if guidance_scale != 1.0 and uncond is None:
            raise ValueError(f"classifier-free guidance with guidance_scale {guidance_scale} needs uncond=")
        self.unet = unet
        self.schedule = schedule
        self.cond = cond
        self.uncond = uncond
        self.guidance_scale = float(guidance_scale)

    def _dtype(self, x: Tensor) -> torch.dtype:
        param = next(iter(self.unet.parameters()), None)
        return x.dtype if param is None else param.dtype

    @staticmethod
    def _context(hook: Conditioning, x: Tensor, t: Tensor, dtype: torch.dtype) -> Tensor:
        emb = hook(x, t) if callable(hook) and not isinstance(hook, Tensor) else hook
        emb = emb.expand(x.shape[0], *emb.shape[1:]) if emb.shape[0] == 1 else emb
        if emb.shape[0] != x.shape[0]:
            raise ValueError(f"conditioning has batch {emb.shape[0]}; x has batch {x.shape[0]}")
        return emb.to(device=x.device, dtype=dtype)

    def _call(self, z: Tensor, step: Tensor, context: Tensor | None) -> Tensor:
        out = self.unet(z, step) if context is None else self.unet(z, step, encoder_hidden_states=context)
        return out if isinstance(out, Tensor) else out.sample

    def output(self, x: Tensor, t: Tensor) -> Tensor:
        """The raw (guided) network output o at x and continuous t, in x's dtype."""
        dtype = self._dtype(x)
        t = batch_time(t, x, torch.float64)
        # float64 timesteps: diffusers embeds them in float32 itself, and wrappers can read them exactly
        step = self.schedule.timestep(t).clamp(0.0, self.schedule.num_steps - 1)
        z = x.to(dtype)
        if self.cond is None:
            return self._call(z, step, None).to(x.dtype)
        cond = self._context(self.cond, x, t, dtype)
        if self.guidance_scale == 1.0:
            return self._call(z, step, cond).to(x.dtype)
        assert self.uncond is not None  # __init__ requires it when guidance_scale != 1
        uncond = self._context(self.uncond, x, t, dtype)
        both = self._call(torch.cat([z, z]), torch.cat([step, step]), torch.cat([uncond, cond]))
        out_u, out_c = both.chunk(2)
        if self.guidance_scale == 0.0:
            return out_u.to(x.dtype)
        return (out_u + self.guidance_scale * (out_c - out_u)).to(x.dtype)

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        t = batch_time(t, x, torch.float64)
        alpha, sigma = self.schedule(t)
        return eps_from_output(self.output(x, t), x, alpha, sigma, self.prediction_type)


class PositiveTraceModel(TraceModel):
    r"""A trace model for any denoiser with the posterior variance parameterised positive (Alg. 1, Eq. 17):

    .. math:: V_\theta(x, t) = c(t)\,\mathrm{softplus}(h_\theta(x, t)) \approx \operatorname{tr}\mathrm{Cov}[x_0 | x_t = x],
              \qquad c(t) = d\,\frac{\tilde\sigma^2\sigma_d^2}{\tilde\sigma^2 + \sigma_d^2},\ \tilde\sigma = \sigma_t/\alpha_t,

    (c is the posterior variance of Gaussian data of variance :math:`\sigma_d^2` per coordinate), so
    :math:`V_\theta \ge 0` and DF-TM's :math:`\operatorname{tr}F_t = d/\sigma^2 - (\alpha^2/\sigma^4) V_\theta \le d/\sigma^2`
    always; :math:`t_\theta = (\|\bar y_\theta\|^2 + V_\theta)/d`. ``module`` maps
    (:math:`x/\sqrt{\alpha^2\sigma_d^2 + \sigma^2}`, 1000 t) to a tensor whose per-sample mean is h (a
    one-channel diffusers ``UNet2DModel``, say). Alg. 1's loss with the target
    :math:`T = \|x_0\|^2 - \|\bar y_\theta(x_t)\|^2` is :math:`((V_\theta - T)/c)^2` (:meth:`loss`): the minimiser
    of :math:`E[(d\,t_\theta - \|x_0\|^2)^2]` (Prop. 6) rescaled by :math:`c^{-2}`. ``target="residual"`` regresses
    onto :math:`\|x_0 - \bar y_\theta\|^2` instead: the same optimum when :math:`\bar y_\theta = E[x_0 | x_t]`, without
    the cross term :math:`2\bar y_\theta\cdot(x_0 - \bar y_\theta)` whose spread dwarfs c at small t.
    ``target="divergence"`` (this project's extension, not the paper's) regresses onto the second-order Tweedie value
    :math:`(\sigma^2/\alpha)\operatorname{div}_x\bar y_\theta` from ``divergence_probes`` Rademacher probes
    (:func:`~dfcore.models.networks.divergence_target`), or the exact trace of :math:`\partial\bar y_\theta/\partial x`
    (d Jacobian-vector products) when d <= ``divergence_exact_max_dim``: no :math:`x_0`, and unbiased for the
    posterior variance the denoiser itself implies, so DF-TM converges to the exact (``vjp``) trace of that
    denoiser. Its probes are drawn from :attr:`probe_generator` (the training loop sets it).
    ``parameterization="fisher"`` (:mod:`dfcore.models.trace_output`) makes h the logit of the fraction
    :math:`\operatorname{tr}F\,\sigma^2/d` of the bound instead, offset by the Gaussian's, with the loss
    :math:`((V_\theta - T)/(d\tilde\sigma^2 - c))^2`: the net then resolves the trace itself where it is a small
    difference of two large terms (small t), and still :math:`0 < V_\theta < d\tilde\sigma^2`.
    ``denoiser_input=True`` (this project's extension) feeds the denoiser's posterior mean
    :math:`\bar y_\theta(x, t)/\sigma_d` to ``module`` as channels after the scaled x (``module`` then takes 2C
    channels): :meth:`eps_and_posterior_variance` takes it from the denoiser pass that the likelihood's drift makes.

    With data in a box of side w per coordinate, :math:`\operatorname{tr}\mathrm{Cov} \le d w^2/4` (Popoviciu);
    :meth:`out_of_bounds` counts evaluations above it (``upper``) and below 0 (``lower``, impossible here).
    """

    def __init__(
        self,
        module: nn.Module,
        denoiser: Denoiser,
        sigma_data: float,
        box_width: float | None = None,
        target: str = "sq_norm",
        divergence_probes: int = 1,
        divergence_exact_max_dim: int = 0,
        likelihood_weight: bool = False,
        parameterization: str = "variance",
        denoiser_input: bool = False,
    ) -> None:
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive; got {sigma_data}")
        if target not in POSITIVE_TRACE_TARGETS:
            raise ValueError(f"unknown trace target {target!r}; choose one of {list(POSITIVE_TRACE_TARGETS)}")
        if divergence_probes < 1:
            raise ValueError(f"divergence_probes must be positive; got {divergence_probes}")
        check_parameterization(parameterization)
        self.target = target
        self.parameterization = parameterization
        self.divergence_probes = int(divergence_probes)
        self.divergence_exact_max_dim = int(divergence_exact_max_dim)
        self.likelihood_weight = bool(likelihood_weight)
        self.denoiser_input = bool(denoiser_input)
        self.probe_generator: torch.Generator | None = None
        self.module = module
        self.denoiser = denoiser
        self.schedule = denoiser.schedule
        self.sigma_data = float(sigma_data)
        self.box_width = box_width
        self.counts = {"evaluations": 0, "lower": 0, "upper": 0}
        # from dfcore.calibration.calibrate_along_paths, or None
        self.calibration: Calibration | None = None

    def state(self) -> dict[str, Any]:
        """What rebuilds the model around a module of the same architecture: the module's weights,
        ``sigma_data``, ``box_width`` (None: no bound), ``target``, ``divergence_probes``,
        ``divergence_exact_max_dim``, ``likelihood_weight``, ``parameterization``, ``denoiser_input`` and
        ``calibration`` (plain types, for ``weights_only`` loading)."""
        return {
            "state_dict": self.module.state_dict(),
            "sigma_data": self.sigma_data,
            "box_width": self.box_width,
            "target": self.target,
            "divergence_probes": self.divergence_probes,
            "divergence_exact_max_dim": self.divergence_exact_max_dim,
            "likelihood_weight": self.likelihood_weight,
            "parameterization": self.parameterization,
            "denoiser_input": self.denoiser_input,
            "calibration": calibration_to_lists(self.calibration),
        }

    def sigma_tilde(self, t: Tensor) -> Tensor:
        """:math:`\\tilde\\sigma = \\sigma_t/\\alpha_t`, (B,) float64."""
        return noise_ratio(self.schedule, t.to(torch.float64))

    def head(self, x: Tensor, t: Tensor, ybar: Tensor | None = None) -> Tensor:
        """The raw output h (B,); with ``denoiser_input``, ``ybar`` is the denoiser's posterior mean at (x, t)
        (computed here when None)."""
        t = batch_time(t, x, torch.float64)
        alpha, sigma = self.schedule(t)
        c_in = 1.0 / torch.sqrt(alpha**2 * self.sigma_data**2 + sigma**2)
        param = next(iter(self.module.parameters()))
        inputs = expand_like(c_in, x) * x
        if self.denoiser_input:
            if ybar is None:
                with torch.no_grad():
                    ybar = self.denoiser.posterior_mean(x, t)
            inputs = torch.cat([inputs, ybar.reshape(x.shape).to(inputs.dtype) / self.sigma_data], dim=1)
        out = self.module(inputs.to(param.dtype), (1000.0 * t).to(param.dtype))
        out = out if isinstance(out, Tensor) else out.sample
        return with_offset(out.flatten(1).mean(1), self.calibration, t)

    def posterior_variance(
        self, x: Tensor, t: Tensor, denoiser: Denoiser | None = None, ybar: Tensor | None = None
    ) -> Tensor:
        t = batch_time(t, x, torch.float64)
        dim = math.prod(x.shape[1:])
        h = self.head(x, t, ybar)
        var = output_variance(h, self.sigma_tilde(t), self.sigma_data, dim, self.parameterization)
        self.counts["evaluations"] += int(var.numel())
        self.counts["lower"] += int((var < 0).sum())
        if self.box_width is not None:
            self.counts["upper"] += int((var > dim * self.box_width**2 / 4).sum())
        return var

    def eps_and_posterior_variance(self, x: Tensor, t: Tensor, denoiser: Denoiser) -> tuple[Tensor, Tensor]:
        r"""With ``denoiser_input``, the net's ȳ input comes from the ε of the same denoiser pass,
        :math:`\bar y = (x - \sigma\varepsilon)/\alpha` (Eq. 4)."""
        if not self.denoiser_input:
            return super().eps_and_posterior_variance(x, t, denoiser)
        t = batch_time(t, x, torch.float64)
        with torch.no_grad():
            eps = self.denoiser.eps(x, t)
            ybar = output_from_eps(eps.to(torch.float64), x.to(torch.float64), *self.schedule(t), "sample")
            return eps, self.posterior_variance(x, t, ybar=ybar)

    def mean_sq_norm(self, x: Tensor, t: Tensor) -> Tensor:
        t = batch_time(t, x, torch.float64)
        with torch.no_grad():
            ybar = self.denoiser.posterior_mean(x, t)
        sq = ybar.flatten(1).to(torch.float64).pow(2).sum(1)
        return ((sq + self.posterior_variance(x, t, ybar=ybar)) / ybar[0].numel()).to(x.dtype)

    def loss(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        r"""Alg. 1's loss :math:`((V_\theta - T)/c)^2` averaged over the batch at
        :math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon` (``noise`` = ε); :meth:`loss_at` gives the weighting."""
        alpha, sigma = self.schedule(t.to(torch.float64))
        x = expand_like(alpha, x0).to(x0.dtype) * x0 + expand_like(sigma, x0).to(x0.dtype) * noise
        return self.loss_at(x, t, x0)

    def loss_at(self, x: Tensor, t: Tensor, x0: Tensor | None = None) -> Tensor:
        r"""The loss :math:`((V_\theta - T)/n)^2` at the states ``x`` (B, ...) at times ``t`` (B,), averaged over
        the batch, n the parameterisation's scale (:func:`~dfcore.models.trace_output.loss_scale`: c for
        ``variance``); with ``likelihood_weight`` :math:`((V_\theta - T)/(d\tilde\sigma^2))^2` instead, the error of
        :math:`(\alpha^2/\sigma^4)V_\theta` relative to :math:`d/\sigma^2` in Eq. 17, weighted as the likelihood
        integrand weighs it (the same at small t, and :math:`\to 0` at large t, where a model's own divergence
        target can exceed c many times over). The targets ``sq_norm`` and ``residual`` need the clean ``x0`` whose
        noising gave ``x``; ``divergence`` needs ``x`` alone, so it also trains on states that are not noised data
        (:func:`~dfcore.paths.likelihood_path_states`)."""
        if x0 is None and self.target != "divergence":
            raise ValueError(
                f"trace target {self.target!r} needs the clean x0 of every state; only 'divergence' does not"
            )
        dim = math.prod(x.shape[1:])
        with torch.no_grad():
            ybar = self.denoiser.posterior_mean(x, t).flatten(1).to(torch.float64)
        flat = ybar if x0 is None else x0.flatten(1).to(torch.float64)
        s = self.sigma_tilde(t)
        norm = dim * s**2 if self.likelihood_weight else None
        target = POSITIVE_TRACE_TARGETS[self.target](self, flat, x, t, ybar)
        h = self.head(x, t, ybar)
        return output_loss(h, target, s, self.sigma_data, dim, self.parameterization, norm)


def _sq_norm_target(model: PositiveTraceModel, x0: Tensor, x: Tensor, t: Tensor, ybar: Tensor) -> Tensor:
    r"""Alg. 1: :math:`\|x_0\|^2 - \|\bar y_\theta\|^2`."""
    return x0.pow(2).sum(1) - ybar.pow(2).sum(1)


def _residual_target(model: PositiveTraceModel, x0: Tensor, x: Tensor, t: Tensor, ybar: Tensor) -> Tensor:
    r""":math:`\|x_0 - \bar y_\theta\|^2`."""
    return (x0 - ybar).pow(2).sum(1)


def _divergence_target(model: PositiveTraceModel, x0: Tensor, x: Tensor, t: Tensor, ybar: Tensor) -> Tensor:
    r""":math:`(\sigma^2/\alpha)\operatorname{div}_x\bar y_\theta` from ``model.divergence_probes`` probes, or exact
    when d <= ``model.divergence_exact_max_dim``."""
    return divergence_target(
        model.denoiser.posterior_mean,
        x,
        t,
        model.schedule,
        model.divergence_probes,
        model.divergence_exact_max_dim,
        model.probe_generator,
    )


# The regression targets of PositiveTraceModel by name: (model, x0 (B, d) float64, x_t, t, ybar (B, d) float64)
# -> (B,) float64, each an estimate of tr Cov[x0 | x_t] (the same names mean the same targets in
# dfcore.models.networks.TRACE_TARGETS).
POSITIVE_TRACE_TARGETS: dict[str, Callable[[PositiveTraceModel, Tensor, Tensor, Tensor, Tensor], Tensor]] = {
    "sq_norm": _sq_norm_target,
    "residual": _residual_target,
    "divergence": _divergence_target,
}


class WarpedTraceModel(TraceModel):
    """A trace model on :class:`LogTimeWarp`'s time s: every call at s is the base model's at t = φ(s)."""

    def __init__(self, base: TraceModel, warp: LogTimeWarp) -> None:
        self.base = base
        self.warp = warp

    def mean_sq_norm(self, x: Tensor, t: Tensor) -> Tensor:
        return self.base.mean_sq_norm(x, self.warp.schedule.time(batch_time(t, x, torch.float64)))

    def posterior_variance(self, x: Tensor, t: Tensor, denoiser: Denoiser | None = None) -> Tensor:
        tt = self.warp.schedule.time(batch_time(t, x, torch.float64))
        return self.base.posterior_variance(x, tt, self.warp.base)

    def eps_and_posterior_variance(self, x: Tensor, t: Tensor, denoiser: Denoiser) -> tuple[Tensor, Tensor]:
        tt = self.warp.schedule.time(batch_time(t, x, torch.float64))
        return self.base.eps_and_posterior_variance(x, tt, self.warp.base)


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _component_class(folder: Path, sub: str, config_name: str) -> str:
    path = folder / sub / config_name
    if not path.is_file():
        raise FileNotFoundError(
            f"model folder {str(folder)!r} has no {sub}/{config_name} (save it with save_pretrained)"
        )
    try:
        return str(json.loads(path.read_text())["_class_name"])
    except (ValueError, KeyError) as err:
        raise ValueError(f"{path}: not a diffusers config with a _class_name ({err})") from err


def check_model_dir(folder: str | Path) -> dict[str, str]:
    """Check a local pipeline folder and return the class names of its parts (``unet``, ``scheduler``, ``vae``
    when present); a FileNotFoundError names what is missing."""
    folder = Path(folder)
    if not str(folder).strip() or not folder.is_dir():
        raise FileNotFoundError(f"model folder {str(folder)!r} does not exist (a pipeline saved with save_pretrained)")
    parts = {
        "unet": _component_class(folder, "unet", "config.json"),
        "scheduler": _component_class(folder, "scheduler", "scheduler_config.json"),
    }
    if (folder / "vae").is_dir():
        parts["vae"] = _component_class(folder, "vae", "config.json")
    for sub in ("unet", "vae"):
        if sub in parts and not any((folder / sub / name).is_file() for name in WEIGHT_FILES):
            raise FileNotFoundError(
                f"model folder {str(folder)!r} has no weights in {sub}/ (one of {list(WEIGHT_FILES)})"
            )
    if parts["unet"] not in UNET_CLASSES:
        raise ValueError(f"{folder}/unet: class {parts['unet']!r} is not supported; choose one of {list(UNET_CLASSES)}")
    return parts


@dataclass
class PretrainedModel:
    r"""A loaded pipeline folder: the adapter (:attr:`denoiser`), its :attr:`schedule`, the shape (C, H, W) the
    UNet works on (:attr:`sample_shape`, latents for a latent pipeline) and the VAE (or None).

    :meth:`encode` maps images in [-1, 1] (B, 3, H, W) to the UNet's space: the VAE posterior mean times
    ``scaling_factor`` for a latent pipeline, the images themselves otherwise; :meth:`decode` is its inverse."""

    folder: Path
    unet: nn.Module
    scheduler: Any
    denoiser: PretrainedDenoiser
    schedule: DiscreteSchedule
    sample_shape: tuple[int, int, int]
    prediction_type: str
    vae: nn.Module | None = None
    parts: dict[str, str] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """d, the number of coordinates of one sample."""
        return math.prod(self.sample_shape)

    def log_likelihood(self, images: Tensor, method: str = "vjp", **kwargs: Any) -> BitsPerDim:
        """Bits/dim on the [0, 256) scale of uint8 ``images`` (B, C, H, W) with trace ``method`` (``vjp``,
        ``hutchinson``, or ``dftm`` with ``trace=`` a trace net): uniform dequantisation, t_min = 1/T, RK4 with 20
        steps uniform in log t unless ``kwargs`` say otherwise
        (:func:`~dfcore.integrations.pretrained_likelihood.images_bits_per_dim`)."""
        from dfcore.integrations.pretrained_likelihood import images_bits_per_dim

        return images_bits_per_dim(self, images, method, **kwargs)

    def guided_sample(self, reward: Callable[[Tensor], Tensor], **kwargs: Any) -> GuidedSample:
        """Samples guided towards a higher ``reward`` of the decoded images in [-1, 1], by DF-EA adjoint guidance
        unless ``method="vjp"`` (:func:`~dfcore.integrations.pretrained_guidance.reward_guided_sample`)."""
        from dfcore.integrations.pretrained_guidance import reward_guided_sample

        return reward_guided_sample(self, reward, **kwargs)

    def encode(self, images: Tensor) -> Tensor:
        if self.vae is None:
            return images
        vae: Any = self.vae
        dist = vae.encode(images.to(device=vae.device, dtype=vae.dtype)).latent_dist
        return (dist.mean * vae.config.scaling_factor).to(images.dtype)

    def decode(self, latents: Tensor) -> Tensor:
        if self.vae is None:
            return latents
        vae: Any = self.vae
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample.to(latents.dtype)


def _sample_shape(unet: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) from the UNet's config (a wrapper's inner UNet for :class:`ConvertedUNet2DModel`)."""
    config: Any = getattr(unet, "inner", unet).config
    size = config.sample_size
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return int(config.in_channels), int(height), int(width)


def _unet_class(name: str) -> Any:
    if name == "ConvertedUNet2DModel":
        from dfcore.integrations.pretrained_train import ConvertedUNet2DModel

        return ConvertedUNet2DModel
    import diffusers

    return getattr(diffusers, name)


def load_model(
    folder: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    cond: Conditioning | None = None,
    uncond: Conditioning | None = None,
    guidance_scale: float = 1.0,
) -> PretrainedModel:
    """Load a local pipeline folder (``unet/``, ``scheduler/``, optional ``vae/``) offline, frozen in eval mode,
    with the prediction type of its scheduler's config; ``cond``/``uncond``/``guidance_scale`` as in
    :class:`PretrainedDenoiser` (a conditional UNet needs ``cond``)."""
    _offline()
    folder = Path(folder)
    parts = check_model_dir(folder)
    import diffusers

    scheduler_cls = getattr(diffusers, parts["scheduler"], None)
    if scheduler_cls is None:
        raise ValueError(f"{folder}/scheduler: unknown diffusers scheduler class {parts['scheduler']!r}")
    scheduler = scheduler_cls.from_pretrained(str(folder), subfolder="scheduler", local_files_only=True)
    prediction_type = scheduler_prediction_type(scheduler)
    schedule = DiscreteSchedule.from_scheduler(scheduler)
    load = {"local_files_only": True, "dtype": dtype}
    unet = _unet_class(parts["unet"]).from_pretrained(str(folder), subfolder="unet", **load)
    unet = unet.to(device=device).eval().requires_grad_(False)
    vae = None
    if "vae" in parts:
        vae = getattr(diffusers, parts["vae"]).from_pretrained(str(folder), subfolder="vae", **load)
        vae = vae.to(device=device).eval().requires_grad_(False)
    sample_shape = _sample_shape(unet)
    denoiser = PretrainedDenoiser(
        unet, schedule, prediction_type, cond=cond, uncond=uncond, guidance_scale=guidance_scale
    )
    return PretrainedModel(folder, unet, scheduler, denoiser, schedule, sample_shape, prediction_type, vae, parts)
