r"""Stable Diffusion through diffusers: the latent ε-model with classifier-free guidance as a
:class:`~dfcore.models.base.Denoiser`, a latent trace network (Alg. 1), DF-TM likelihoods (Eq. 14, 17)
and DF-EA adjoint guidance (Eq. 20) of generated latents.

**Schedule.** SD's DDIM scheduler (scaled-linear :math:`\beta \in [0.00085, 0.012]`, T = 1000) gives
:math:`\bar\alpha_i`; :class:`~dfcore.schedules.DiscreteSchedule` makes it continuous
(:math:`\alpha_t = \sqrt{\bar\alpha}`, :math:`\sigma_t = \sqrt{1-\bar\alpha}`, step i at t = (i+1)/T), and
t is passed to the UNet as the fractional timestep ``schedule.timestep(t)`` = tT - 1.

**Classifier-free guidance** (Ho & Salimans, 2022) with scale w:
:math:`\varepsilon_\theta(z, t) = \varepsilon(z, t, \varnothing) + w\,(\varepsilon(z, t, c) - \varepsilon(z, t, \varnothing))`.

**DF-TM** (Alg. 1, Eq. 17): :math:`\operatorname{tr}F_t \approx d/\sigma^2 - (\alpha^2/\sigma^4)\,V_\theta`, with the
posterior variance :math:`V_\theta(z_t, t) \approx \operatorname{tr}\mathrm{Cov}[z_0 \mid z_t]` of a
:class:`~dfcore.integrations.pretrained.PositiveTraceModel` over the latent denoiser, trained on latents
:math:`z_0` of an image folder (:func:`build_latent_trace_model`: a one-channel diffusers ``UNet2DModel`` head,
:math:`V_\theta = c(t)\,\mathrm{softplus}(h) \ge 0`, so the trace never exceeds :math:`d/\sigma^2`).

**NLL** (Eq. 14): :math:`\log q_{t_{min}}(z) = \log p_T(z_T) + \int_{t_{min}}^1 (f d + \tfrac12 g^2 \operatorname{tr}F_t)\,dt`
along the PF-ODE (torchdiffeq). The prior is the diagonal Gaussian :math:`\mathcal N(0, (\alpha_T^2 v + \sigma_T^2) I)`
with v the latents' variance per coordinate (SD latents are scaled to v ≈ 1, and then
:math:`\alpha_T^2 + \sigma_T^2 = 1`), passed to :func:`dfcore.likelihood.gaussian_log_prior` as ``var`` so that no d×d
covariance is formed (at d = 4·64·64 it would not fit in memory).

**Weights are never downloaded**: :func:`load_pipeline` reads a local folder only
(``local_files_only=True`` with ``HF_HUB_OFFLINE=1``) and names what is missing.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from dfcore.fisher.trace import DFTMTrace, TraceEstimator
from dfcore.integrations.pretrained import PositiveTraceModel, PretrainedDenoiser, scheduler_prediction_type
from dfcore.logs import drop_log_messages
from dfcore.models.base import Denoiser, TraceModel
from dfcore.schedules import DiscreteSchedule
from dfcore.sde import batch_time

# transformers logs, once per image-processor class, that without torchvision it falls back to the PIL
# implementation (`CLIPImageProcessorPil`); harmless here: that is the processor transformers used before its
# torchvision backend, and the pipelines are loaded with feature_extractor=None, so no image processor runs.
drop_log_messages("transformers.utils.import_utils", "requires torchvision (not installed); falling back to")

if TYPE_CHECKING:
    from dfcore.likelihood import LikelihoodResult

__all__ = [
    "SDWeightsError",
    "check_pipeline_dir",
    "load_pipeline",
    "encode_prompt",
    "CFGDenoiser",
    "build_latent_trace_model",
    "latent_trace_state",
    "latent_trace_model_from_state",
    "encode_image_folder",
    "decode_latents",
    "to_uint8",
    "sample_latents",
    "TraceBoundCounter",
    "latent_log_likelihood",
    "CLIPReward",
    "load_reward",
]

PIPELINE_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class SDWeightsError(FileNotFoundError):
    """A local Stable Diffusion (or CLIP) folder is missing or incomplete. Nothing is ever downloaded."""


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def check_pipeline_dir(path: str | Path) -> Path:
    """Check that ``path`` is a saved diffusers Stable Diffusion folder with UNet, VAE, text encoder and tokenizer."""
    if not str(path).strip():
        raise SDWeightsError(
            "no Stable Diffusion folder given: set the config key sd.pipeline to a local diffusers "
            "pipeline folder (or sd.tiny: true for the tiny test pipeline)"
        )
    path = Path(path)
    hint = (
        "Point the config key sd.pipeline at a local folder made by StableDiffusionPipeline.save_pretrained "
        "(or a snapshot of e.g. stable-diffusion-v1-5 downloaded beforehand; resources/README.md); weights are never "
        "fetched at run time."
    )
    if not path.is_dir():
        raise SDWeightsError(f"Stable Diffusion folder {str(path)!r} does not exist. {hint}")
    if not (path / "model_index.json").is_file():
        raise SDWeightsError(f"{str(path)!r} has no model_index.json, so it is not a diffusers pipeline folder. {hint}")
    missing = [
        sub for sub in ("unet", "vae") if not any((path / sub / name).is_file() for name in PIPELINE_WEIGHT_FILES)
    ]
    if not any((path / "text_encoder" / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")):
        missing.append("text_encoder")
    if not (path / "tokenizer").is_dir():
        missing.append("tokenizer")
    if missing:
        raise SDWeightsError(f"{str(path)!r} lacks weights for: {', '.join(missing)}. {hint}")
    return path


def load_pipeline(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """``StableDiffusionPipeline.from_pretrained(path, local_files_only=True)`` with offline hub access,
    safety checker off, modules frozen in eval mode; a clear :class:`SDWeightsError` if the folder is incomplete."""
    _offline()
    path = check_pipeline_dir(path)
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(path),
        local_files_only=True,
        dtype=dtype,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe = pipe.to(device)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------------------------
# ε-model with classifier-free guidance


@torch.no_grad()
def encode_prompt(pipe: Any, prompts: Sequence[str]) -> Tensor:
    """Text-encoder hidden states (B, L, D) of ``prompts`` padded to the tokenizer's length (the UNet's context)."""
    tokens = pipe.tokenizer(
        list(prompts),
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return pipe.text_encoder(tokens.input_ids.to(pipe.text_encoder.device))[0]


class CFGDenoiser(PretrainedDenoiser):
    r"""SD's UNet with a text conditioning: the diffusers adapter
    :class:`~dfcore.integrations.pretrained.PretrainedDenoiser` with ``cond``/``uncond`` text embeddings (1 or B,
    L, D) and classifier-free guidance
    :math:`\varepsilon_\varnothing + w(\varepsilon_c - \varepsilon_\varnothing)` (``guidance_scale`` w; w = 1 is the
    conditional model alone, w = 0 the unconditional one). The scheduler's ``prediction_type`` is honoured as
    for any other pipeline; this class only names SD's arguments in their usual order."""

    def __init__(
        self,
        unet: nn.Module,
        schedule: DiscreteSchedule,
        cond: Tensor,
        uncond: Tensor | None = None,
        guidance_scale: float = 7.5,
        prediction_type: str = "epsilon",
    ) -> None:
        super().__init__(unet, schedule, prediction_type, cond=cond, uncond=uncond, guidance_scale=guidance_scale)

    @classmethod
    def from_pipeline(
        cls, pipe: Any, prompt: str, guidance_scale: float = 7.5, negative_prompt: str = ""
    ) -> CFGDenoiser:
        """Build from a loaded pipeline and one prompt (the unconditional text is ``negative_prompt``), with the
        prediction type of the pipeline's scheduler."""
        cond = encode_prompt(pipe, [prompt])
        uncond = encode_prompt(pipe, [negative_prompt]) if guidance_scale != 1.0 else None
        schedule = DiscreteSchedule.from_scheduler(pipe.scheduler)
        return cls(pipe.unet, schedule, cond, uncond, guidance_scale, scheduler_prediction_type(pipe.scheduler))


# ----------------------------------------------------------------------------------------------
# Trace network for latents (Alg. 1)


def build_latent_trace_model(
    latent_shape: Sequence[int],
    denoiser: Denoiser,
    sigma_data: float,
    block_out_channels: Sequence[int] = (32, 64),
    layers_per_block: int = 1,
    norm_num_groups: int = 8,
    target: str = "residual",
    seed: int = 0,
) -> PositiveTraceModel:
    r"""The latent trace network: a :class:`~dfcore.integrations.pretrained.PositiveTraceModel` over ``denoiser``
    (whose posterior mean :math:`\bar y_\theta` enters the training target) with a small one-channel
    ``UNet2DModel`` (C latent channels in) as its head; ``sigma_data`` is the latents' standard deviation per
    coordinate. Its posterior variance is :math:`c(t)\,\mathrm{softplus}(h) \ge 0`, so DF-TM's trace never exceeds
    :math:`d/\sigma_t^2`. ``target`` is the regression target of
    :class:`~dfcore.integrations.pretrained.PositiveTraceModel` (``residual``: :math:`\|z_0 - \bar y_\theta\|^2`)."""
    from dfcore.integrations.pretrained_train import build_unet

    module = build_unet(latent_shape, block_out_channels, layers_per_block, norm_num_groups, seed, out_channels=1)
    return PositiveTraceModel(module, denoiser, sigma_data, target=target)


def latent_trace_state(model: PositiveTraceModel) -> dict[str, Any]:
    """The checkpoint entry of a latent trace network made by :func:`build_latent_trace_model`: its
    :meth:`~dfcore.integrations.pretrained.PositiveTraceModel.state` (weights, ``sigma_data``, ``target``), the
    settings of its ``UNet2DModel`` (``hparams``, the builder's arguments, read from the network's config) and the
    schedule's ``alphas_cumprod``."""
    config: Any = model.module.config  # a diffusers UNet2DModel
    size = config.sample_size
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    hparams = {
        "latent_shape": [int(config.in_channels), int(height), int(width)],
        "block_out_channels": [int(c) for c in config.block_out_channels],
        "layers_per_block": int(config.layers_per_block),
        "norm_num_groups": int(config.norm_num_groups),
    }
    schedule = cast(DiscreteSchedule, model.schedule)
    return {**model.state(), "hparams": hparams, "alphas_cumprod": schedule.alphas_cumprod}


def latent_trace_model_from_state(
    state: dict[str, Any], denoiser: Denoiser, device: torch.device | str = "cpu"
) -> PositiveTraceModel:
    """Rebuild a trained latent trace network from its checkpoint's ``model`` entry (:func:`latent_trace_state`)
    over ``denoiser``, frozen in eval mode on ``device``. A ``denoiser`` on another schedule than the one the
    network was trained under is refused."""
    schedule = cast(DiscreteSchedule, denoiser.schedule)
    trained = torch.as_tensor(state["alphas_cumprod"], dtype=torch.float64).cpu()
    if trained.shape != schedule.alphas_cumprod.shape or not torch.allclose(
        trained, schedule.alphas_cumprod.to(torch.float64).cpu(), rtol=0, atol=1e-12
    ):
        raise ValueError("the latent trace network was trained under another schedule than the pipeline's")
    hp = state["hparams"]
    model = build_latent_trace_model(
        hp["latent_shape"],
        denoiser,
        float(state["sigma_data"]),
        hp["block_out_channels"],
        hp["layers_per_block"],
        hp["norm_num_groups"],
        target=str(state["target"]),
    )
    model.module.load_state_dict(state["state_dict"])
    model.module.to(device).eval().requires_grad_(False)
    return model


# ----------------------------------------------------------------------------------------------
# Images <-> latents


@torch.no_grad()
def encode_image_folder(pipe: Any, folder: str | Path, max_images: int | None = None) -> Tensor:
    """Latents :math:`z_0` = VAE posterior mean × ``scaling_factor`` of every image in ``folder`` (sorted),
    resized to the VAE's ``sample_size``; shape (N, 4, h, w), float32."""
    import numpy as np
    from PIL import Image

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) in {str(folder)!r} (config key sd.trace_net.image_dir)"
        )
    files = files[:max_images] if max_images else files
    size = int(pipe.vae.config.sample_size)
    vae = pipe.vae
    latents = []
    for file in files:
        img = Image.open(file).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        dist = vae.encode(arr.to(device=vae.device, dtype=vae.dtype)).latent_dist
        latents.append(dist.mean.float().cpu() * vae.config.scaling_factor)
    return torch.cat(latents)


def _at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32 when it is in a half-precision type, else unchanged (a float64 CLIP stays float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def decode_latents(pipe: Any, z: Tensor) -> Tensor:
    """Images in [-1, 1], (B, 3, H, W), in the VAE's dtype widened to float32 at least:
    ``vae.decode(z / scaling_factor)`` (differentiable)."""
    vae = pipe.vae
    return _at_least_float32(vae.decode(z.to(vae.dtype) / vae.config.scaling_factor).sample)


def to_uint8(images: Tensor) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return ((images.detach().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


@torch.no_grad()
def sample_latents(denoiser: Denoiser, z_T: Tensor, num_steps: int, t_min: float | None = None) -> Tensor:
    r"""DDIM (Euler of the PF-ODE) from t = 1 to ``t_min`` (default: 1/T, SD's first training step), float64."""
    from dfcore.sampling import sample_trajectory
    from dfcore.sde import time_grid

    t_min = 1.0 / cast(DiscreteSchedule, denoiser.schedule).num_steps if t_min is None else t_min
    return sample_trajectory(denoiser, z_T.to(torch.float64), time_grid(num_steps, t_min, t_max=1.0), "ddim").x_final


# ----------------------------------------------------------------------------------------------
# NLL via DF-TM (Eq. 14, 17)


class TraceBoundCounter(TraceEstimator):
    r"""``base`` (any trace estimator) that counts, per sample, the traces it returned above :math:`d/\sigma_t^2`
    (:attr:`above`, (B,) int64, over every evaluation since construction, :meth:`frozen` copies included) and the
    evaluations (:attr:`evaluations`). The bound holds for every density (:math:`\operatorname{tr}F_t =
    d/\sigma^2 - (\alpha^2/\sigma^4)\operatorname{tr}\mathrm{Cov}[z_0 \mid z_t]`), so a count above 0 flags an
    estimate no density can have, whatever the estimator's parameterisation."""

    name = "bound_count"
    label = "bound count"

    def __init__(self, base: TraceEstimator, counts: dict[str, Any] | None = None) -> None:
        self.base = base
        self.schedule = base.schedule
        self.denoiser = base.denoiser
        self.trace_model = getattr(base, "trace_model", None)
        self.counts: dict[str, Any] = {"above": None, "evaluations": 0} if counts is None else counts

    @property
    def above(self) -> Tensor:
        """Per sample, the traces returned above d/σ² (zeros before any evaluation of a batch)."""
        return self.counts["above"] if self.counts["above"] is not None else torch.zeros(0, dtype=torch.int64)

    @property
    def evaluations(self) -> int:
        """Trace evaluations per sample so far."""
        return int(self.counts["evaluations"])

    def _count(self, x: Tensor, t: Tensor, trace: Tensor) -> Tensor:
        bound = math.prod(x.shape[1:]) / self.schedule.sigma(t.to(torch.float64)) ** 2
        above = (trace.to(torch.float64) > bound).to(torch.int64).cpu()
        self.counts["above"] = above if self.counts["above"] is None else self.counts["above"] + above
        self.counts["evaluations"] += 1
        return trace

    def trace(self, x: Tensor, t: Tensor) -> Tensor:
        return self._count(x, t, self.base.trace(x, t))

    def eps_and_trace(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        eps, trace = self.base.eps_and_trace(x, t)
        return eps, self._count(x, batch_time(t, x, torch.float64), trace)

    def frozen(self, x: Tensor) -> TraceBoundCounter:
        return TraceBoundCounter(self.base.frozen(x), self.counts)


def latent_log_likelihood(
    z: Tensor,
    denoiser: Denoiser,
    trace_model: TraceModel | None,
    *,
    method: str | TraceEstimator = DFTMTrace.name,
    t_min: float | None = None,
    t_max: float = 1.0,
    solver: str = "rk4",
    num_steps: int = 50,
    data_var: float = 1.0,
    chunk_size: int | None = None,
) -> LikelihoodResult:
    r""":math:`\log q_{t_{min}}(z)` in nats (B,) by the PF-ODE and Eq. 14 (:func:`dfcore.likelihood.log_likelihood`), with
    :math:`\operatorname{tr}F_t` from the trace estimator ``method`` (a name, ``dftm`` by default, built from what it
    takes of ``denoiser``, ``trace_model`` and ``chunk_size`` (VJPs per vectorised batch of ``vjp``/``hutchinson``);
    or an estimator, used as is) and the prior :math:`\mathcal N(0, (\alpha_T^2 v + \sigma_T^2) I)` with
    v = ``data_var``. Fixed-step torchdiffeq ``euler``/``rk4`` with ``num_steps`` steps (the discrete schedule has
    kinks every 1/T, which make adaptive steppers crawl)."""
    from dfcore.fisher.trace import trace_estimator_from
    from dfcore.likelihood import gaussian_log_prior, log_likelihood

    schedule = denoiser.schedule
    t_min = 1.0 / cast(DiscreteSchedule, schedule).num_steps if t_min is None else t_min
    if solver not in ("euler", "rk4"):
        raise ValueError(f"latent NLL uses a fixed-step solver, 'euler' or 'rk4'; got {solver!r}")
    pool = {"schedule": schedule, "denoiser": denoiser, "trace_model": trace_model, "chunk_size": chunk_size}
    return log_likelihood(
        z,
        method if isinstance(method, TraceEstimator) else trace_estimator_from(method, pool),
        log_prior=gaussian_log_prior(schedule, t_max, var=data_var),
        t_min=t_min,
        t_max=t_max,
        solver=solver,
        num_steps=num_steps,
    )


# ----------------------------------------------------------------------------------------------
# Differentiable rewards


class CLIPReward(nn.Module):
    r"""CLIP similarity :math:`\cos(E_{img}(\mathrm{decode}(z)), E_{txt}(\text{prompt}))` of latents z (B,),
    through the pipeline's VAE decoder and a local ``transformers.CLIPModel`` (differentiable in z)."""

    MEAN = (0.48145466, 0.4578275, 0.40821073)
    STD = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, clip_path: str | Path, pipe: Any) -> None:
        super().__init__()
        _offline()
        from transformers import CLIPModel, CLIPTokenizer

        clip_path = Path(clip_path)
        if not (clip_path / "config.json").is_file():
            raise SDWeightsError(
                f"CLIP reward folder {str(clip_path)!r} has no config.json (config key sd.adjoint.clip_path); "
                "save a transformers CLIPModel and its tokenizer there first"
            )
        self.clip = CLIPModel.from_pretrained(str(clip_path), local_files_only=True).eval().requires_grad_(False)
        self.tokenizer = CLIPTokenizer.from_pretrained(str(clip_path), local_files_only=True)
        self.pipe = pipe
        self.image_size = int(self.clip.config.vision_config.image_size)
        self.prompt = ""
        self._text: Tensor | None = None

    def set_prompt(self, prompt: str) -> None:
        tokens = self.tokenizer(
            [prompt],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            text = self.clip.get_text_features(input_ids=tokens.input_ids.to(self.clip.device))
        text = getattr(text, "pooler_output", text)
        self.prompt, self._text = prompt, torch.nn.functional.normalize(_at_least_float32(text), dim=-1)

    def forward(self, z: Tensor) -> Tensor:
        if self._text is None:
            raise RuntimeError("call set_prompt(prompt) before scoring")
        images = decode_latents(self.pipe, z)
        images = torch.nn.functional.interpolate(
            (images + 1) / 2, size=(self.image_size,) * 2, mode="bilinear", align_corners=False
        )
        mean = torch.tensor(self.MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.STD, device=images.device).view(1, 3, 1, 1)
        feats = self.clip.get_image_features(pixel_values=((images - mean) / std).to(self.clip.dtype))
        feats = getattr(feats, "pooler_output", feats)
        feats = torch.nn.functional.normalize(_at_least_float32(feats), dim=-1)
        return (feats * self._text.to(feats.dtype)).sum(-1).to(z.dtype)


class _ModuleReward(nn.Module):
    """A user reward ``module(images in [-1, 1]) -> (B,)`` applied to decoded latents."""

    def __init__(self, module: nn.Module, pipe: Any) -> None:
        super().__init__()
        self.module, self.pipe = module, pipe

    def set_prompt(self, prompt: str) -> None:
        if hasattr(self.module, "set_prompt"):
            cast(Any, self.module).set_prompt(prompt)

    def forward(self, z: Tensor) -> Tensor:
        return self.module(decode_latents(self.pipe, z)).reshape(z.shape[0]).to(z.dtype)


def load_reward(
    kind: str,
    pipe: Any,
    *,
    clip_path: str | None = None,
    module: str | None = None,
    module_kwargs: dict[str, Any] | None = None,
) -> CLIPReward | _ModuleReward:
    """The differentiable reward of adjoint guidance: ``clip`` (a :class:`CLIPReward` from ``clip_path``) or
    ``module``: ``"package.module:Name"`` importable, called with ``module_kwargs``, mapping images (B, 3, H, W)
    in [-1, 1] to scores (B,). (An import path, not a pickled module: nothing unsafe is unpickled.)"""
    if kind == "clip":
        if not clip_path:
            raise ValueError("reward 'clip' needs clip_path (a CLIP model folder)")
        return CLIPReward(clip_path, pipe)
    if kind == "module":
        if not module or ":" not in module:
            raise ValueError(f"reward 'module' needs module as 'package.module:Name'; got {module!r}")
        mod_name, attr = module.split(":", 1)
        factory: Callable[..., nn.Module] = getattr(importlib.import_module(mod_name), attr)
        return _ModuleReward(factory(**(module_kwargs or {})).eval().requires_grad_(False), pipe)
    raise ValueError(f"unknown reward {kind!r}; choose 'clip' or 'module'")
