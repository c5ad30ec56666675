r"""A small diffusers DDPM made in the project, and exact conversions between prediction types.

**Training** (Ho et al., 2020, Alg. 1): a ``UNet2DModel`` with a ``DDPMScheduler`` (linear
:math:`\beta \in [10^{-4}, 0.02]`, T = 1000, ``epsilon`` prediction by default) minimises
:math:`\|\varepsilon - \varepsilon_\theta(\sqrt{\bar\alpha_i}x_0 + \sqrt{1-\bar\alpha_i}\varepsilon, i)\|^2` over
integer steps i uniform in {0..T-1}; a ``v_prediction`` scheduler regresses the network onto
:math:`v = \alpha\varepsilon - \sigma x_0` (Salimans & Ho, 2022), a ``sample`` one onto :math:`x_0`
(:func:`prediction_target`). The data are 8-bit images dequantised afresh at every step,
:math:`x_0 = (k + u)/127.5 - 1`, :math:`u \sim U[0, 1)^d` (:func:`dfcore.dequantize.dequantize`), so the model
learns a continuous density whose bits/dim on the [0, 256) scale is the standard one.

**Conversions.** :class:`ConvertedUNet2DModel` wraps an ε-network and returns what a ``v_prediction`` or
``sample`` network would for the same ε (:func:`~dfcore.integrations.pretrained.output_from_eps` with
:math:`\alpha, \sigma` of the :class:`~dfcore.schedules.DiscreteSchedule` at the timestep it is called with):
read through a scheduler of that prediction type it is the same model exactly, for every timestep in
[0, T - 1] (continuous t >= 1/T). It saves and loads with ``save_pretrained`` / ``from_pretrained``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import ConfigMixin, DDPMScheduler, ModelMixin, UNet2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import Tensor
from tqdm.auto import tqdm

from dfcore import distributed
from dfcore.dequantize import dequantize
from dfcore.integrations.pretrained import check_prediction_type, output_from_eps, scheduler_prediction_type
from dfcore.paths import TRACE_STATES, PathStates
from dfcore.schedules import DiscreteSchedule
from dfcore.train import copy_parameters, ema_average, learning_rate

__all__ = [
    "ConvertedUNet2DModel",
    "convert_prediction_type",
    "build_unet",
    "ddpm_scheduler",
    "prediction_target",
    "train_ddpm",
    "build_trace_unet",
    "train_trace_model",
]


class ConvertedUNet2DModel(ModelMixin, ConfigMixin):
    r"""An ε ``UNet2DModel`` (``inner``) whose output is converted to ``output_type`` (module docstring), with
    :math:`\alpha, \sigma` at timestep s from the table ``alphas_cumprod`` at :math:`t = (s + 1)/T`."""

    config_name = "config.json"  # type: ignore[assignment]

    @register_to_config
    def __init__(
        self,
        unet_config: dict[str, Any] | None = None,
        output_type: str = "epsilon",
        alphas_cumprod: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if unet_config is None or alphas_cumprod is None:
            raise ValueError("ConvertedUNet2DModel needs unet_config and alphas_cumprod")
        check_prediction_type(output_type)
        self.inner = UNet2DModel.from_config(unet_config)
        self.output_type = output_type
        self.table = DiscreteSchedule(list(alphas_cumprod))

    def forward(self, sample: Tensor, timestep: Tensor | float, **kwargs: Any) -> UNet2DOutput:
        eps = self.inner(sample, timestep, **kwargs).sample
        steps = torch.as_tensor(timestep, dtype=torch.float64, device=sample.device)
        t = ((steps + 1.0) / self.table.num_steps).expand(sample.shape[0])
        alpha, sigma = self.table(t)
        return UNet2DOutput(sample=output_from_eps(eps, sample, alpha, sigma, self.output_type))


def convert_prediction_type(unet: Any, scheduler: Any, prediction_type: str) -> tuple[Any, Any]:
    """An ε ``unet`` and its scheduler as the equivalent ``prediction_type`` pair (a :class:`ConvertedUNet2DModel`
    holding a copy of the weights, and a scheduler copy whose ``prediction_type`` says so)."""
    check_prediction_type(prediction_type)
    source = str(scheduler.config.get("prediction_type", "epsilon"))
    if source != "epsilon":
        raise ValueError(f"convert_prediction_type needs an epsilon model; the scheduler says {source!r}")
    table = [float(v) for v in scheduler.alphas_cumprod.to(torch.float64).tolist()]
    model = ConvertedUNet2DModel(dict(unet.config), prediction_type, table)
    model.inner.load_state_dict(unet.state_dict())
    param = next(unet.parameters())
    model = model.to(device=param.device, dtype=param.dtype).eval().requires_grad_(False)
    new_scheduler = type(scheduler).from_config({**dict(scheduler.config), "prediction_type": prediction_type})
    return model, new_scheduler


def ddpm_scheduler(num_train_timesteps: int = 1000, prediction_type: str = "epsilon") -> DDPMScheduler:
    """DDPM's linear schedule, :math:`\\beta \\in [10^{-4}, 0.02]`, with ``prediction_type`` (ε by default)."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type=check_prediction_type(prediction_type),
    )


def prediction_target(prediction_type: str, x0: Tensor, noise: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    r"""What a ``prediction_type`` network should output at :math:`x = \alpha x_0 + \sigma\varepsilon`: ε itself,
    :math:`v = \alpha\varepsilon - \sigma x_0` or :math:`x_0` (``alpha``, ``sigma`` broadcast against ``x0``)."""
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return noise
    return alpha * noise - sigma * x0 if prediction_type == "v_prediction" else x0


def build_unet(
    image_shape: Sequence[int],
    block_out_channels: Sequence[int] = (32, 64),
    layers_per_block: int = 1,
    norm_num_groups: int = 8,
    seed: int = 0,
    out_channels: int | None = None,
) -> Any:
    """A small ``UNet2DModel`` for (C, H, W) images (plain conv blocks, one downsampling per extra level, no
    attention), with ``out_channels`` outputs (default C)."""
    channels, height, _ = (int(v) for v in image_shape)
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=height,
        in_channels=channels,
        out_channels=channels if out_channels is None else int(out_channels),
        layers_per_block=layers_per_block,
        block_out_channels=tuple(int(c) for c in block_out_channels),
        down_block_types=("DownBlock2D",) * len(block_out_channels),
        up_block_types=("UpBlock2D",) * len(block_out_channels),
        norm_num_groups=norm_num_groups,
        add_attention=False,  # no attention: vmapped VJPs (the vjp trace) have no batching rule for its backward
    )


def _optimise(
    module: torch.nn.Module,
    batch_loss: Callable[[torch.nn.Module], tuple[Tensor, int]],
    *,
    steps: int,
    lr: float,
    warmup_steps: int,
    grad_clip: float,
    name: str,
    ema_decay: float = 0.0,
) -> list[float]:
    """Adam on ``module`` for ``steps`` steps of ``batch_loss(net)`` (the mean loss of this process's share of a
    fresh minibatch, computed with ``net``, and the number of its samples), with the learning rate of
    :func:`dfcore.train.learning_rate` and gradient clipping; returns the loss of every step and leaves the module
    frozen in eval mode, with a progress bar on rank 0. A non-finite loss raises FloatingPointError naming
    ``name`` and the step. With ``ema_decay`` > 0 the module ends with the exponential moving average of its
    weights over the steps (:func:`dfcore.train.ema_average`).

    Under a process group of world size > 1 (:mod:`dfcore.distributed`) ``net`` is ``module`` in
    ``DistributedDataParallel``: the backward pass averages the gradients over the ranks, the norm is clipped on
    that average, and the recorded loss is the mean over the global minibatch, so every rank takes the step and
    records the curve of one process training on the whole minibatch."""
    net = distributed.wrap(module)
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    ema = ema_average(module, ema_decay)
    losses: list[float] = []
    module.train()
    bar = tqdm(range(steps), desc=name, disable=not distributed.is_main(), mininterval=1.0)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps, lr, warmup_steps)
        loss, count = batch_loss(net)
        value = distributed.global_mean(loss, count).item()
        if not math.isfinite(value):
            raise FloatingPointError(f"{name}: non-finite loss at step {step + 1} of {steps}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
        opt.step()
        if ema is not None:
            ema.update_parameters(module)
        losses.append(value)
        bar.set_postfix(loss=f"{value:.4g}", refresh=False)
    if ema is not None:
        copy_parameters(ema.module, module)
    module.eval().requires_grad_(False)
    return losses


def train_ddpm(
    unet: Any,
    scheduler: Any,
    images: Tensor,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    warmup_steps: int = 100,
    grad_clip: float = 1.0,
    seed: int = 0,
    ema_decay: float = 0.0,
) -> list[float]:
    """Train ``unet`` in place on uint8 ``images`` (N, C, H, W) by DDPM's loss for the scheduler's prediction type
    with fresh uniform dequantisation (module docstring); Adam with linear warm-up and cosine decay. Returns the loss of every step; a non-finite
    loss raises FloatingPointError naming the step. With ``ema_decay`` > 0 the UNet ends with the exponential
    moving average of its weights over the steps. Under a process group of world size > 1 each rank computes
    its shard of the same global minibatch, as in :func:`train_trace_model`."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive; got {steps}, {batch_size}")
    part = distributed.shard(batch_size)
    gen = torch.Generator().manual_seed(int(seed))
    abar = scheduler.alphas_cumprod.to(torch.float32)
    num_t = abar.numel()
    prediction_type = scheduler_prediction_type(scheduler)
    device = next(unet.parameters()).device

    def batch_loss(net: torch.nn.Module) -> tuple[Tensor, int]:
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        x0 = dequantize(images[idx], generator=gen).to(torch.float32)
        noise = torch.randn(x0.shape, generator=gen)
        i = torch.randint(num_t, (batch_size,), generator=gen)
        a = abar[i].sqrt().view(-1, 1, 1, 1)
        s = (1 - abar[i]).sqrt().view(-1, 1, 1, 1)
        target = prediction_target(prediction_type, x0, noise, a, s)
        x, target, i = (v[part].to(device) for v in (a * x0 + s * noise, target, i))
        return (net(x, i).sample - target).pow(2).mean(), len(x)

    return _optimise(
        unet,
        batch_loss,
        steps=steps,
        lr=lr,
        warmup_steps=warmup_steps,
        grad_clip=grad_clip,
        name="train_ddpm",
        ema_decay=ema_decay,
    )


def build_trace_unet(
    image_shape: Sequence[int],
    block_out_channels: Sequence[int] = (16, 32),
    norm_num_groups: int = 8,
    seed: int = 0,
    denoiser_input: bool = False,
) -> Any:
    """A one-channel-output :func:`build_unet` for :class:`~dfcore.integrations.pretrained.PositiveTraceModel`,
    with twice the image's channels in for ``denoiser_input``."""
    channels, height, width = (int(v) for v in image_shape)
    shape = (2 * channels if denoiser_input else channels, height, width)
    return build_unet(shape, block_out_channels, 1, norm_num_groups, seed, out_channels=1)


def _dequantized(images: Tensor, generator: torch.Generator) -> Tensor:
    """uint8 images as dequantised model inputs (:func:`~dfcore.dequantize.dequantize`)."""
    return dequantize(images, generator=generator)


def train_trace_model(
    trace_model: Any,
    images: Tensor,
    *,
    steps: int,
    t_min: float,
    batch_size: int = 64,
    lr: float = 2e-3,
    warmup_steps: int = 50,
    grad_clip: float = 1.0,
    seed: int = 0,
    ema_decay: float = 0.0,
    states: str = "noised",
    ode_num_steps: int = 20,
) -> list[float]:
    r"""Train ``trace_model.module`` (a :class:`~dfcore.integrations.pretrained.PositiveTraceModel`) in place by
    Alg. 1 on uint8 ``images`` with fresh uniform dequantisation, at times log-uniform in [``t_min``, 1]
    (:math:`t = t_{min}^{u}`, where the likelihood integrand is spread evenly); Adam with warm-up and cosine decay,
    and with ``ema_decay`` > 0 the moving average of the weights as the result. Returns the loss of every step.

    ``states`` says where the training states come from: ``noised``, :math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon`
    (Alg. 1), or ``ode``, the states that a likelihood solve with RK4 and ``ode_num_steps`` log-time steps visits
    (:class:`~dfcore.paths.PathStates`, from ``ceil(batch_size / 4)`` images at a time with a random grid offset,
    served in shuffled minibatches; target ``divergence`` only, since those states carry no posterior sample of
    :math:`x_0`). This project's extension, not the paper's: a model's PF-ODE from the data points does not
    reach the marginals of noised data, and the likelihood evaluates the trace net where the ODE goes.

    Under a process group of world size W > 1 every rank draws the same global minibatch of ``batch_size`` from
    the generator seeded with ``seed`` and computes the loss of its contiguous shard of ``batch_size / W``
    (:func:`dfcore.distributed.shard`; ValueError unless W divides ``batch_size``); the update and the returned
    losses are those of one process at the same ``batch_size`` (:func:`_optimise`), except under target
    ``divergence``, whose probes each rank draws for its own shard from that generator."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive; got {steps}, {batch_size}")
    if not 0 < t_min < 1:
        raise ValueError(f"t_min must lie in (0, 1); got {t_min}")
    if states not in TRACE_STATES:
        raise ValueError(f"unknown states {states!r}; choose one of {list(TRACE_STATES)}")
    if states == "ode" and trace_model.target != "divergence":
        raise ValueError(f"states 'ode' needs target 'divergence'; got target {trace_model.target!r}")
    part = distributed.shard(batch_size)
    module = trace_model.module
    gen = torch.Generator().manual_seed(int(seed))
    trace_model.probe_generator = gen  # the probes of target divergence
    param = next(module.parameters())

    paths = PathStates(trace_model.denoiser, images, gen, t_min=t_min, num_steps=ode_num_steps, prepare=_dequantized)

    def batch_loss(net: torch.nn.Module) -> tuple[Tensor, int]:
        trace_model.module = net  # the forward pass through DistributedDataParallel when it wraps the module
        try:
            if states == "ode":
                x, t = (v[part] for v in paths.take(batch_size, param))
                return trace_model.loss_at(x, t), len(x)
            idx = torch.randint(len(images), (batch_size,), generator=gen)
            x0 = dequantize(images[idx], generator=gen).to(param.dtype)
            noise = torch.randn(x0.shape, generator=gen, dtype=param.dtype)
            t = t_min ** torch.rand(batch_size, generator=gen, dtype=torch.float64)
            x0, noise, t = (v[part].to(param.device) for v in (x0, noise, t))
            return trace_model.loss(x0, t, noise), len(x0)
        finally:
            trace_model.module = module

    return _optimise(
        module,
        batch_loss,
        steps=steps,
        lr=lr,
        warmup_steps=warmup_steps,
        grad_clip=grad_clip,
        name="train_trace_model",
        ema_decay=ema_decay,
    )
