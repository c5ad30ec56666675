r"""Learned denoisers and trace networks: an MLP for low-d data, a diffusers ``UNet2DModel`` for images.

**Preconditioning** (Karras et al., 2022, Table 1, written for any schedule). With
:math:`\tilde x = x/\alpha_t` and :math:`\tilde\sigma = \sigma_t/\alpha_t` the problem is the VE one,
:math:`\tilde x = x_0 + \tilde\sigma \varepsilon`. A backbone :math:`F(c_{in}\tilde x, t)` with
:math:`c_{in} = 1/\sqrt{\tilde\sigma^2 + \sigma_d^2}` gives either

* ``prediction: x0`` — :math:`\bar y_\theta = c_{skip}\tilde x + c_{out} F`, with
  :math:`c_{skip} = \sigma_d^2/(\tilde\sigma^2+\sigma_d^2)`, :math:`c_{out} = \tilde\sigma\sigma_d/\sqrt{\tilde\sigma^2+\sigma_d^2}`,
  and :math:`\varepsilon_\theta = (x - \alpha\bar y_\theta)/\sigma`; or
* ``prediction: eps`` — :math:`\varepsilon_\theta = F` and :math:`\bar y_\theta = (x - \sigma\varepsilon_\theta)/\alpha`.

:math:`\sigma_d` is the data's RMS standard deviation, stored in the checkpoint.

**Trace network** (Alg. 1). It models :math:`t_\theta(x, t) \approx E[\|x_0\|^2 | x_t]/d` (Prop. 6) as

.. math:: d\, t_\theta = \|\bar y_\theta\|^2 + V_\theta, \qquad
          V_\theta = d\, \frac{\tilde\sigma^2\sigma_d^2}{\tilde\sigma^2+\sigma_d^2}\, \mathrm{softplus}(G),

i.e. :math:`V_\theta` is the trace of the posterior covariance :math:`\operatorname{tr}\mathrm{Cov}[x_0|x_t]`
in units of its value for Gaussian data of variance :math:`\sigma_d^2` (the same preconditioning idea as
above; it keeps the regression target O(1) at every noise level, which Eq. 17 needs because it
multiplies :math:`d t_\theta - \|\bar y_\theta\|^2 = V_\theta` by :math:`\alpha^2/\sigma^4`).
:math:`G` is either a head on the denoiser's trunk features (``share_trunk: true``) or a separate
backbone of the same kind.

Checkpoints hold the constructor hyper-parameters next to the weights, so :func:`load_denoiser`
and :func:`load_trace_model` rebuild the model from the file alone (``weights_only=True``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from dfcore.device import resolve_device
from dfcore.fisher.common import vjp
from dfcore.io import checkpoint_errors, load_checkpoint
from dfcore.mixtures import DiracMixture, Mixture
from dfcore.models.base import Denoiser, TraceModel
from dfcore.models.trace_output import (
    Calibration,
    calibration_from_lists,
    calibration_to_lists,
    check_parameterization,
    output_loss,
    output_variance,
    with_offset,
)
from dfcore.schedules import Schedule, get_schedule
from dfcore.sde import add_noise, batch_time, expand_like

__all__ = [
    "timestep_embedding",
    "MLPBackbone",
    "UNetBackbone",
    "TraceHead",
    "build_backbone",
    "Preconditioning",
    "precondition",
    "LearnedDenoiser",
    "LearnedTraceModel",
    "TraceTarget",
    "TRACE_TARGETS",
    "training_states",
    "divergence_target",
    "schedule_from_spec",
    "denoiser_from_state",
    "trace_model_from_state",
    "load_denoiser",
    "load_trace_model",
]


class _Trunk(Protocol):
    """What a trace head uses of a backbone (:class:`MLPBackbone`, :class:`UNetBackbone`)."""

    feature_dim: int

    def features(self, x_in: Tensor, t: Tensor) -> Tensor: ...

    def forward_and_features(self, x_in: Tensor, t: Tensor) -> tuple[Tensor, Tensor]: ...


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of ``1000 t`` (Vaswani et al., 2017; Ho et al., 2020), shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return emb if dim % 2 == 0 else torch.cat([emb, torch.zeros_like(emb[:, :1])], 1)


class MLPBackbone(nn.Module):
    r"""Residual MLP :math:`F(x_{in}, t)` for flat data (B, d): ``layers`` SiLU blocks of width ``hidden``.

    ``fourier_levels`` L > 0 appends :math:`\sin, \cos(2^l \pi x_{in})`, l < L, to the input
    (positional encoding; Tancik et al., 2020), which lets a small MLP resolve fine structure of
    low-dimensional data such as the individual training points at small noise.
    """

    freqs: Tensor  # buffer

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        layers: int = 4,
        emb_dim: int = 64,
        out_dim: int | None = None,
        fourier_levels: int = 0,
    ) -> None:
        super().__init__()
        self.dim, self.hidden, self.emb_dim = dim, hidden, emb_dim
        self.fourier_levels = int(fourier_levels)
        self.register_buffer(
            "freqs", math.pi * 2.0 ** torch.arange(self.fourier_levels, dtype=torch.float32), persistent=False
        )
        self.inp = nn.Linear(dim * (1 + 2 * self.fourier_levels), hidden)
        self.emb = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(layers)
        )
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim if out_dim is None else out_dim)
        self.feature_dim = hidden

    def features(self, x_in: Tensor, t: Tensor) -> Tensor:
        """Trunk features (B, hidden) before the output layer."""
        z = x_in.flatten(1)
        if self.fourier_levels:
            args = (z[:, :, None] * self.freqs).flatten(1)
            z = torch.cat([z, torch.sin(args), torch.cos(args)], 1)
        h = self.inp(z) + self.emb(timestep_embedding(t, self.emb_dim))
        for block in self.blocks:
            h = h + block(h)
        return torch.nn.functional.silu(self.out_norm(h))

    def forward(self, x_in: Tensor, t: Tensor) -> Tensor:
        return self.forward_and_features(x_in, t)[0]

    def forward_and_features(self, x_in: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The output and the :meth:`features` it came from, in one pass."""
        feats = self.features(x_in, t)
        out = self.out(feats)
        return (out.reshape(x_in.shape) if out.shape[1] == self.dim else out), feats


class UNetBackbone(nn.Module):
    """A diffusers ``UNet2DModel`` for images (B, C, H, W) or their flat form (B, C*H*W).

    The time input is ``1000 t``. :meth:`features` returns the mid-block activations, pooled over
    space, for a trace head sharing the trunk.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] | list[int],
        block_out_channels: tuple[int, ...] | list[int] = (32, 64),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        from diffusers import UNet2DModel  # type checkers see its placeholder (diffusers' dummy_pt_objects)

        self.image_shape = tuple(int(s) for s in image_shape)
        c, h, w = self.image_shape
        n = len(block_out_channels)
        self.unet = UNet2DModel(
            sample_size=(h, w),
            in_channels=c,
            out_channels=c if out_channels is None else out_channels,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            down_block_types=("DownBlock2D",) * n,
            up_block_types=("UpBlock2D",) * n,
            norm_num_groups=norm_num_groups,
            add_attention=False,
        )
        self.feature_dim = int(block_out_channels[-1])
        self._captured: Tensor | None = None
        self.unet.mid_block.register_forward_hook(self._capture)  # type: ignore[attr-defined]

    def _capture(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        self._captured = output

    def _as_image(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.image_shape)

    def forward(self, x_in: Tensor, t: Tensor) -> Tensor:
        out = self.unet(self._as_image(x_in), 1000.0 * t.float()).sample  # type: ignore[operator]
        return out.reshape(x_in.shape[0], -1) if x_in.ndim == 2 else out

    def features(self, x_in: Tensor, t: Tensor) -> Tensor:
        return self.forward_and_features(x_in, t)[1]

    def forward_and_features(self, x_in: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The output and the :meth:`features` captured on the way, in one pass."""
        out = self.forward(x_in, t)
        feats, self._captured = self._captured, None
        assert feats is not None  # the mid-block hook ran during forward
        return out, feats.mean((-2, -1))


def build_backbone(arch: str, dim: int, hparams: dict[str, Any], out_dim: int | None = None) -> nn.Module:
    """``mlp`` or ``unet`` from plain hyper-parameters (as stored in checkpoints)."""
    if arch == "mlp":
        return MLPBackbone(
            dim,
            hparams.get("hidden", 256),
            hparams.get("layers", 4),
            hparams.get("emb_dim", 64),
            out_dim,
            hparams.get("fourier_levels", 0),
        )
    if arch == "unet":
        shape = hparams["image_shape"]
        if out_dim is not None:
            raise ValueError("a UNet backbone has image outputs; use a TraceHead on its features for scalars")
        return UNetBackbone(
            shape,
            hparams.get("block_out_channels", (32, 64)),
            hparams.get("layers_per_block", 1),
            hparams.get("norm_num_groups", 8),
        )
    raise ValueError(f"unknown architecture {arch!r}; choose 'mlp' or 'unet'")


def schedule_from_spec(spec: dict[str, Any]) -> Schedule:
    """Rebuild a schedule from ``{"name": ..., "params": {...}}``."""
    return get_schedule(spec["name"], **spec.get("params", {}))


@dataclass(frozen=True)
class Preconditioning:
    r"""EDM's preconditioning (Karras et al., 2022, Table 1) at times t for any schedule, every field (B,) float64.

    With :math:`\tilde\sigma = \sigma_t/\alpha_t` (the noise level of :math:`\tilde x = x/\alpha_t`):
    :math:`c_{in} = 1/\sqrt{\tilde\sigma^2+\sigma_d^2}`, :math:`c_{skip} = \sigma_d^2/(\tilde\sigma^2+\sigma_d^2)`,
    :math:`c_{out} = \tilde\sigma\sigma_d/\sqrt{\tilde\sigma^2+\sigma_d^2}`; the network sees
    :math:`c_{in}\tilde x` and t (t is its own noise label: c_noise is the identity)."""

    alpha: Tensor
    sigma: Tensor
    noise: Tensor  # sigma~ = sigma / alpha
    c_in: Tensor
    c_skip: Tensor
    c_out: Tensor


def precondition(schedule: Schedule, t: Tensor, sigma_data: float) -> Preconditioning:
    """:class:`Preconditioning` at ``t`` (B,): one evaluation of the schedule."""
    alpha, sigma = schedule(t.to(torch.float64))
    s = sigma / alpha
    sd2 = sigma_data**2
    root = torch.sqrt(s**2 + sd2)
    return Preconditioning(alpha, sigma, s, 1.0 / root, sd2 / (s**2 + sd2), s * sigma_data / root)


class LearnedDenoiser(Denoiser):
    r"""A preconditioned network as a :class:`~dfcore.models.base.Denoiser` (see the module docstring).

    Attributes:
        module: the backbone ``nn.Module`` (its parameters are what training updates).
        schedule: the forward schedule the model was trained for.
        prediction: ``x0`` or ``eps``.
        sigma_data: RMS data standard deviation used by the preconditioning.
    """

    def __init__(
        self,
        module: nn.Module,
        schedule: Schedule,
        prediction: str = "x0",
        sigma_data: float = 1.0,
        arch: str = "mlp",
        hparams: dict[str, Any] | None = None,
    ) -> None:
        if prediction not in ("x0", "eps"):
            raise ValueError(f"prediction must be 'x0' or 'eps'; got {prediction!r}")
        self.module = module
        self.schedule = schedule
        self.prediction = prediction
        self.sigma_data = float(sigma_data)
        self.arch = arch
        self.hparams = dict(hparams or {})

    @property
    def _param(self) -> Tensor:
        return next(self.module.parameters())

    def precondition(self, t: Tensor) -> Preconditioning:
        """The preconditioning of this model at ``t`` (B,)."""
        return precondition(self.schedule, t, self.sigma_data)

    def network_input(self, x: Tensor, t: Tensor, pre: Preconditioning) -> tuple[Tensor, Tensor]:
        r"""The backbone's inputs :math:`c_{in} x/\alpha` and t, in the model's dtype."""
        x_in = (x.to(torch.float64) * expand_like(pre.c_in / pre.alpha, x)).to(self._param.dtype)
        return x_in, t.to(self._param.dtype)

    def raw(self, x: Tensor, t: Tensor) -> tuple[Tensor, Preconditioning]:
        """The backbone output F (model dtype) and the preconditioning at ``t``."""
        t = batch_time(t, x, t.dtype)
        pre = self.precondition(t)
        return self.module(*self.network_input(x, t, pre)), pre

    def _x0(self, x: Tensor, out: Tensor, pre: Preconditioning) -> Tensor:
        r""":math:`\bar y_\theta = c_{skip}\tilde x + c_{out} F` (x0 prediction)."""
        x_tilde = x / expand_like(pre.alpha, x).to(x.dtype)
        return expand_like(pre.c_skip, x).to(x.dtype) * x_tilde + expand_like(pre.c_out, x).to(x.dtype) * out.to(
            x.dtype
        )

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        out, pre = self.raw(x, t)
        return self.eps_from_raw(x, out, pre)

    def eps_from_raw(self, x: Tensor, out: Tensor, pre: Preconditioning) -> Tensor:
        r""":math:`\varepsilon_\theta` from the backbone output F at x (:meth:`raw`).

        For x0 prediction :math:`\varepsilon = (x - \alpha\bar y_\theta)/\sigma` with
        :math:`\bar y_\theta = c_{skip}x/\alpha + c_{out}F`, collected into two coefficients per sample:
        :math:`\varepsilon = \tilde\sigma c_{in}^2 x/\alpha - \sigma_d c_{in} F` (finite as
        :math:`\sigma \to 0`; two products and a difference on (B, d), the drift's only full-size work
        besides the network)."""
        if self.prediction == "eps":
            return out.to(x.dtype)
        coef_x = expand_like(pre.noise * pre.c_in**2 / pre.alpha, x).to(x.dtype)
        coef_out = expand_like(-self.sigma_data * pre.c_in, x).to(x.dtype)
        return torch.addcmul(coef_x * x, coef_out, out.to(x.dtype))

    def posterior_mean(self, x: Tensor, t: Tensor) -> Tensor:
        out, pre = self.raw(x, t)
        if self.prediction == "x0":
            return self._x0(x, out, pre)
        a, s = expand_like(pre.alpha, x).to(x.dtype), expand_like(pre.sigma, x).to(x.dtype)
        return (x - s * out.to(x.dtype)) / a

    def loss(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        r"""Denoising score matching with the EDM weighting: for ``x0`` prediction
        :math:`\|F - (x_0 - c_{skip}\tilde x)/c_{out}\|^2`, for ``eps`` :math:`\|\varepsilon_\theta - \varepsilon\|^2`
        (mean over batch and dimensions). The schedule is evaluated once."""
        pre = self.precondition(t)
        x = add_noise(x0, noise, pre.alpha, pre.sigma)
        out = self.module(*self.network_input(x, t, pre))
        if self.prediction == "eps":
            target = noise
        else:
            x_tilde = x / expand_like(pre.alpha, x).to(x.dtype)
            c_skip, c_out = expand_like(pre.c_skip, x0).to(x0.dtype), expand_like(pre.c_out, x0).to(x0.dtype)
            target = (x0 - c_skip * x_tilde) / c_out
        return (out - target.to(out.dtype)).pow(2).mean()

    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild this model (weights-only safe)."""
        return {
            "kind": "denoiser",
            "arch": self.arch,
            "hparams": self.hparams,
            "schedule": {"name": self.schedule.name, "params": self.schedule.params()},
            "prediction": self.prediction,
            "sigma_data": self.sigma_data,
            "state_dict": self.module.state_dict(),
        }


class TraceHead(nn.Module):
    """Scalar head :math:`G` on trunk features (B, F) and the time embedding."""

    def __init__(self, feature_dim: int, hidden: int = 128, emb_dim: int = 64) -> None:
        super().__init__()
        self.emb_dim = emb_dim
        self.net = nn.Sequential(
            nn.Linear(feature_dim + emb_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, features: Tensor, t: Tensor) -> Tensor:
        return self.net(torch.cat([features, timestep_embedding(t, self.emb_dim)], 1))[:, 0]


TargetFn = Callable[["LearnedTraceModel", Tensor, Tensor, Tensor], Tensor]


def _sq_norm_target(model: LearnedTraceModel, x0: Tensor, x: Tensor, t: Tensor) -> Tensor:
    r"""Alg. 1's literal target: :math:`\|x_0\|^2 - \|\bar y_\theta\|^2`."""
    return x0.pow(2).sum(1) - model.denoised(x, t).pow(2).sum(1)


def _residual_target(model: LearnedTraceModel, x0: Tensor, x: Tensor, t: Tensor) -> Tensor:
    r""":math:`\|x_0 - \bar y_\theta\|^2`."""
    return (x0 - model.denoised(x, t)).pow(2).sum(1)


def _batch_posterior_target(model: LearnedTraceModel, x0: Tensor, x: Tensor, t: Tensor) -> Tensor:
    r""":math:`\operatorname{tr}\mathrm{Cov}[x_0 | x_t]` under the minibatch's clean samples."""
    return DiracMixture(x0).posterior_variance(x.flatten(1).to(torch.float64), t.to(torch.float64), model.schedule)


def _reference_posterior_target(model: LearnedTraceModel, x0: Tensor, x: Tensor, t: Tensor) -> Tensor:
    r""":math:`\operatorname{tr}\mathrm{Cov}[x_0 | x_t]` under the model's ``reference`` distribution."""
    if model.reference is None:
        raise ValueError(f"trace target {model.target!r} needs its reference distribution (reference=)")
    return model.reference.posterior_variance(x.flatten(1).to(torch.float64), t.to(torch.float64), model.schedule)


def _jacobian_products(fn: Callable[[Tensor], Tensor], x: Tensor, v: Tensor, *, forward: bool) -> Tensor:
    r"""Per sample a product whose quadratic form :math:`v^\top(\cdot)` is :math:`v^\top J v`, J the Jacobian of the
    per-sample map ``fn`` at ``x``. ``forward``: :math:`J v` by forward mode (``torch.func.jvp``) where every
    operation of ``fn`` has a forward derivative; otherwise, and for an operation without one
    (``NotImplementedError``: CPU flash attention, say), the vector-Jacobian product :math:`J^\top v`, which has
    the same quadratic form :math:`v^\top J^\top v = v^\top J v`."""
    if forward:
        try:
            with torch.no_grad():
                return torch.func.jvp(fn, (x,), (v,))[1]  # (value, J v)
        except NotImplementedError:
            pass
    return vjp(fn, x, v).detach()


def divergence_target(
    posterior_mean: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    t: Tensor,
    schedule: Schedule,
    probes: int,
    exact_max_dim: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Second-order Tweedie estimate of :math:`\operatorname{tr}\mathrm{Cov}[x_0 | x_t]` from a posterior mean alone,
    (B,) float64 and detached: this project's extension of Alg. 1, not the paper's.

    Second-order Tweedie gives :math:`\mathrm{Cov}[x_0 | x_t] = (\sigma_t^2/\alpha_t)\, \partial\bar y/\partial x_t`,
    so with ``posterior_mean(x, t)`` = :math:`\bar y_\theta` (B, ...) the value is

    .. math:: T = \frac{\sigma_t^2}{\alpha_t}\, \frac1k \sum_{j=1}^k v_j^\top \frac{\partial\bar y_\theta}{\partial x} v_j,

    with k = ``probes`` Rademacher vectors :math:`v_j` (Hutchinson; drawn on the CPU from ``generator``), whose
    expectation is :math:`(\sigma_t^2/\alpha_t) \operatorname{div}_x \bar y_\theta`, the posterior variance the
    model's own denoiser implies (the bracket of Eq. 17 that ``VJPTrace`` evaluates). When d <= ``exact_max_dim``
    the trace is exact instead: d Jacobian-vector products with the basis vectors, in one batched call. One
    probe can give T < 0; the squared loss on the softplus output still has the conditional mean as its optimum.
    The probes' products run in reverse mode (:math:`v^\top J^\top v = v^\top J v`; one forward and one backward
    pass, two to four times faster than forward mode through a UNet on the CPU); the exact trace's in forward mode
    (``torch.func.jvp``; reverse mode for an operation without a forward derivative, such as attention on the
    CPU), where the whole batch of basis vectors runs without stored activations. Products and sums in float64.
    """
    if probes < 1:
        raise ValueError(f"divergence_probes must be positive; got {probes}")
    t = batch_time(t, x, t.dtype)
    batch, shape = x.shape[0], x.shape[1:]
    dim = x[0].numel()
    exact = dim <= exact_max_dim
    if exact:
        count = dim
        v = torch.eye(dim, dtype=x.dtype, device=x.device).repeat_interleave(batch, 0)
    else:
        count = probes
        signs = torch.randint(0, 2, (probes * batch, dim), generator=generator, dtype=torch.int8)
        v = (2 * signs - 1).to(device=x.device, dtype=x.dtype)
    xs = x.detach().repeat(count, *(1,) * len(shape))
    ts = t.detach().repeat(count)
    jv = _jacobian_products(lambda y: posterior_mean(y, ts), xs, v.reshape(xs.shape), forward=exact)
    quad = (v.to(torch.float64) * jv.flatten(1).to(torch.float64)).sum(1).reshape(count, batch)
    div = quad.sum(0) if exact else quad.mean(0)
    alpha, sigma = schedule(t.to(torch.float64))
    return sigma**2 / alpha * div


def _divergence_target(model: LearnedTraceModel, x0: Tensor, x: Tensor, t: Tensor) -> Tensor:
    r""":math:`(\sigma^2/\alpha) \operatorname{div}_x \bar y_\theta` by :func:`divergence_target` (no :math:`x_0` needed)."""
    return divergence_target(
        model.denoiser.posterior_mean,
        x,
        t,
        model.schedule,
        model.divergence_probes,
        model.divergence_exact_max_dim,
        model.probe_generator,
    )


@dataclass(frozen=True)
class TraceTarget:
    """A regression target of Alg. 1: its value (model, x0 (B, d) float64, x_t, t) -> (B,) float64, and the
    distribution whose posterior it reads: ``""`` (none), ``training_set`` (the Dirac mixture of the training
    data) or ``exact_mixture`` (the data set's exact Gaussian mixture, which real data never offers).
    ``needs_x0``: whether the value reads the clean x0 whose noising gave x_t (a target that does not can train
    on states that are not noised data, such as a likelihood solve's, :class:`~dfcore.paths.PathStates`)."""

    value: TargetFn
    reference: str = ""
    needs_x0: bool = True


# Every trace-net target by name (LearnedTraceModel.loss documents each).
TRACE_TARGETS: dict[str, TraceTarget] = {
    "dataset_posterior": TraceTarget(_reference_posterior_target, reference="training_set"),
    "batch_posterior": TraceTarget(_batch_posterior_target),
    "residual": TraceTarget(_residual_target),
    "sq_norm": TraceTarget(_sq_norm_target),
    "mixture_posterior": TraceTarget(_reference_posterior_target, reference="exact_mixture"),
    "divergence": TraceTarget(_divergence_target, needs_x0=False),
}


def training_states(target: str, states: str) -> str:
    """The states a net of ``target`` trains on when its section says ``states``: ``ode`` (the likelihood's own
    states, :class:`~dfcore.paths.PathStates`) holds for a target that reads no x0; one that reads x0 trains on
    noised data."""
    return "noised" if TRACE_TARGETS[target].needs_x0 else states


class LearnedTraceModel(TraceModel):
    r""":math:`t_\theta = (\|\bar y_\theta\|^2 + V_\theta)/d` (module docstring) as a :class:`~dfcore.models.base.TraceModel`.

    ``module`` holds the trainable part: the head only (``share_trunk``; the denoiser's trunk is
    frozen and shared) or a head on a separate backbone.
    """

    def __init__(
        self,
        denoiser: LearnedDenoiser,
        module: nn.Module,
        share_trunk: bool,
        hparams: dict[str, Any] | None = None,
        target: str = "residual",
        reference: Mixture | None = None,
        *,
        divergence_probes: int = 1,
        divergence_exact_max_dim: int = 16,
        parameterization: str = "variance",
    ) -> None:
        if target not in TRACE_TARGETS:
            raise ValueError(f"unknown trace target {target!r}; choose one of {list(TRACE_TARGETS)}")
        if divergence_probes < 1:
            raise ValueError(f"divergence_probes must be positive; got {divergence_probes}")
        check_parameterization(parameterization)
        self.denoiser = denoiser
        self.parameterization = parameterization  # how the head's output sets V (dfcore.models.trace_output)
        self.reference = reference  # the distribution whose posterior variance a reference target regresses onto
        self.schedule = denoiser.schedule
        self.module = module
        self.share_trunk = bool(share_trunk)
        self.hparams = dict(hparams or {})
        self.target = target
        self.divergence_probes = int(divergence_probes)  # Rademacher probes of target divergence
        self.divergence_exact_max_dim = int(divergence_exact_max_dim)  # up to this d that target is the exact trace
        # the CPU generator of target divergence's probes; the training loop sets its own, so a resumed run
        # draws the same probes
        self.probe_generator: torch.Generator | None = None
        # from dfcore.calibration.calibrate_along_paths, or None
        self.calibration: Calibration | None = None

    @property
    def sigma_data(self) -> float:
        """The data's standard deviation per coordinate that the denoiser's preconditioning uses."""
        return float(self.denoiser.sigma_data)

    def sigma_tilde(self, t: Tensor) -> Tensor:
        r""":math:`\tilde\sigma = \sigma_t/\alpha_t`, (B,)."""
        return self.denoiser.precondition(t).noise

    def head(self, x: Tensor, t: Tensor) -> Tensor:
        r"""The raw head output h (B,), plus the calibration's offset :math:`\delta(t)` when there is one."""
        t = batch_time(t, x, t.dtype)
        x_in, tm = self.denoiser.network_input(x, t, self.denoiser.precondition(t))
        if self.share_trunk:
            with torch.no_grad():
                feats = cast(_Trunk, self.denoiser.module).features(x_in, tm)
            return with_offset(self.module(feats, tm), self.calibration, t)
        modules = cast(nn.ModuleDict, self.module)
        return with_offset(modules["head"](cast(_Trunk, modules["trunk"]).features(x_in, tm), tm), self.calibration, t)

    def posterior_variance(self, x: Tensor, t: Tensor, denoiser: Denoiser | None = None) -> Tensor:
        r""":math:`V_\theta(x, t) \approx \operatorname{tr}\mathrm{Cov}[x_0 | x_t]`, shape (B,), float64: the learned
        variance itself (``denoiser`` is not needed: the model holds its own)."""
        t = batch_time(t, x, t.dtype)
        return self._variance(self.head(x, t), x, t)

    def _variance(self, h: Tensor, x: Tensor, t: Tensor) -> Tensor:
        return output_variance(h, self.sigma_tilde(t), self.sigma_data, x[0].numel(), self.parameterization)

    def eps_and_posterior_variance(self, x: Tensor, t: Tensor, denoiser: Denoiser) -> tuple[Tensor, Tensor]:
        r"""With ``share_trunk`` and ``denoiser`` this model's own, :math:`\varepsilon_\theta` and :math:`V_\theta`
        from one pass of the trunk (the head reads the features that the denoiser's output layer reads);
        otherwise the denoiser's and the trace net's passes one after the other."""
        if not self.share_trunk or denoiser is not self.denoiser:
            return super().eps_and_posterior_variance(x, t, denoiser)
        t = batch_time(t, x, t.dtype)
        pre = self.denoiser.precondition(t)
        x_in, tm = self.denoiser.network_input(x, t, pre)
        with torch.no_grad():
            out, feats = cast(_Trunk, self.denoiser.module).forward_and_features(x_in, tm)
            h = with_offset(self.module(feats, tm), self.calibration, t)
            return self.denoiser.eps_from_raw(x, out, pre), self._variance(h, x, t)

    def denoised(self, x: Tensor, t: Tensor) -> Tensor:
        r"""The frozen denoiser's :math:`\bar y_\theta(x, t)`, (B, d) float64, without gradients."""
        with torch.no_grad():
            return self.denoiser.posterior_mean(x, t).flatten(1).to(torch.float64)

    def mean_sq_norm(self, x: Tensor, t: Tensor) -> Tensor:
        t = batch_time(t, x, t.dtype)
        with torch.no_grad():
            ybar = self.denoiser.posterior_mean(x, t).flatten(1).to(torch.float64)
        dim = ybar.shape[1]
        return ((ybar.pow(2).sum(1) + self.posterior_variance(x, t)) / dim).to(x.dtype)

    def loss(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        r"""Alg. 1 with the preconditioning above: :math:`((V_\theta - T)/c)^2` where ``target: sq_norm`` gives
        :math:`T = \|x_0\|^2 - \|\bar y_\theta\|^2` (exactly Alg. 1's :math:`(d t_\theta - \|x_0\|^2)^2/c^2`),
        ``target: residual`` gives :math:`T = \|x_0 - \bar y_\theta\|^2` (same optimum when :math:`\bar y_\theta = \bar y`;
        an error :math:`\delta` of the denoiser then enters squared instead of linearly) and
        ``target: batch_posterior`` gives :math:`\operatorname{tr}\mathrm{Cov}[x_0 | x_t]` under the empirical
        distribution of the minibatch's clean samples, duplicates counted (a "stable target field", Xu et al.,
        ICLR 2023: a self-normalised importance-sampling estimate of Prop. 5's bracket whose expectation tends
        to it as the batch grows; Alg. 1's single-sample target is the batch-of-one case), and
        ``target: dataset_posterior`` the same over the whole training set (``self.reference``): the
        conditional expectation of Alg. 1's target itself (Prop. 6), so the same optimum with no variance at all.
        Both come from :meth:`DiracMixture.posterior_variance` and need no denoiser call. ``target:
        mixture_posterior`` is the posterior variance under the exact Gaussian mixture of the data
        (``self.reference``), an ablation. ``target: divergence`` (this project's extension, not the paper's) is
        :math:`(\sigma^2/\alpha)\operatorname{div}_x\bar y_\theta` by second-order Tweedie
        (:func:`divergence_target`): no :math:`x_0`, and unbiased for the posterior variance the denoiser itself
        implies, so Eq. 17 tends to the model's exact trace. Each target is an entry of :data:`TRACE_TARGETS`."""
        alpha, sigma = self.schedule(t.to(torch.float64))
        return self.loss_at(add_noise(x0, noise, alpha, sigma), t, x0)

    def loss_at(self, x: Tensor, t: Tensor, x0: Tensor | None = None) -> Tensor:
        """:meth:`loss` at the states ``x`` (B, ...) at times ``t`` (B,); ``x0``, the clean samples whose noising
        gave ``x``, may be left out for a target that does not read it (``divergence``), so that the net trains
        on any states, such as those a likelihood solve visits (``states: ode``)."""
        spec = TRACE_TARGETS[self.target]
        if x0 is None and spec.needs_x0:
            raise ValueError(f"trace target {self.target!r} needs the clean x0 of every state; 'divergence' does not")
        # a target that reads no x0 gets an empty (B, 0) stand-in
        flat = x.new_empty(len(x), 0, dtype=torch.float64) if x0 is None else x0.flatten(1).to(torch.float64)
        target = spec.value(self, flat, x, t)
        s = self.denoiser.precondition(t).noise  # sigma~ = sigma / alpha
        sigma_data, dim = self.denoiser.sigma_data, x[0].numel()
        return output_loss(self.head(x, t), target, s, sigma_data, dim, self.parameterization)

    def state(self) -> dict[str, Any]:
        return {
            "kind": "trace",
            "share_trunk": self.share_trunk,
            "target": self.target,
            "divergence_probes": self.divergence_probes,
            "divergence_exact_max_dim": self.divergence_exact_max_dim,
            "parameterization": self.parameterization,
            "hparams": self.hparams,
            "calibration": calibration_to_lists(self.calibration),
            "denoiser": self.denoiser.state(),
            "state_dict": self.module.state_dict(),
        }


def same_weights(a: nn.Module | dict[str, Tensor], b: nn.Module | dict[str, Tensor]) -> bool:
    """True when two modules (or state dicts) hold the same parameter and buffer tensors."""
    sa = a.state_dict() if isinstance(a, nn.Module) else a
    sb = b.state_dict() if isinstance(b, nn.Module) else b
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def denoiser_from_state(state: dict[str, Any], device: torch.device | str = "cpu") -> LearnedDenoiser:
    """Rebuild a :class:`LearnedDenoiser` from :meth:`LearnedDenoiser.state` (random weights if no state_dict)."""
    hp = state["hparams"]
    module = build_backbone(state["arch"], int(hp["dim"]), hp)
    if state.get("state_dict") is not None:
        module.load_state_dict(state["state_dict"])
    module.to(resolve_device(device)).eval()
    return LearnedDenoiser(
        module, schedule_from_spec(state["schedule"]), state["prediction"], state["sigma_data"], state["arch"], hp
    )


def _trace_module(denoiser: LearnedDenoiser, share_trunk: bool, hparams: dict[str, Any]) -> nn.Module:
    head_hidden = int(hparams.get("head_hidden", 128))
    emb_dim = int(hparams.get("emb_dim", 64))
    if share_trunk:
        return TraceHead(cast(_Trunk, denoiser.module).feature_dim, head_hidden, emb_dim)
    trunk = build_backbone(
        denoiser.arch, int(denoiser.hparams["dim"]), {**denoiser.hparams, **hparams.get("backbone", {})}
    )
    return nn.ModuleDict({"trunk": trunk, "head": TraceHead(cast(_Trunk, trunk).feature_dim, head_hidden, emb_dim)})


def trace_model_from_state(
    state: dict[str, Any], device: torch.device | str = "cpu", denoiser: LearnedDenoiser | None = None
) -> LearnedTraceModel:
    """Rebuild a :class:`LearnedTraceModel` (and its denoiser, stored inside it) from its state."""
    den = denoiser if denoiser is not None else denoiser_from_state(state["denoiser"], device)
    module = _trace_module(den, state["share_trunk"], state["hparams"])
    if state.get("state_dict") is not None:
        module.load_state_dict(state["state_dict"])
    module.to(resolve_device(device)).eval()
    model = LearnedTraceModel(
        den,
        module,
        state["share_trunk"],
        state["hparams"],
        state.get("target", "residual"),
        divergence_probes=int(state.get("divergence_probes", 1)),
        divergence_exact_max_dim=int(state.get("divergence_exact_max_dim", 16)),
        parameterization=str(state.get("parameterization", "variance")),
    )
    model.calibration = calibration_from_lists(state.get("calibration"))
    return model


def _model_state(path: str | Path, kind: str, dataset: str | None = None) -> dict[str, Any]:
    ckpt = load_checkpoint(path, dataset=dataset)
    state = ckpt.get("model", ckpt)
    if state.get("kind") != kind:
        raise ValueError(f"{path}: not a {kind} checkpoint (kind={state.get('kind')!r})")
    return state


def load_denoiser(
    path: str | Path, device: torch.device | str = "cpu", *, dataset: str | None = None
) -> LearnedDenoiser:
    """Load a denoiser checkpoint (``weights_only=True``) and rebuild the model on ``device``; with ``dataset``, a
    checkpoint recorded as trained on another data set is refused."""
    with checkpoint_errors(path):
        return denoiser_from_state(_model_state(path, "denoiser", dataset), device)


def load_trace_model(
    path: str | Path, device: torch.device | str = "cpu", *, dataset: str | None = None
) -> LearnedTraceModel:
    """Load a trace-network checkpoint (it embeds its denoiser) and rebuild the model on ``device``; with
    ``dataset``, a checkpoint recorded as trained on another data set is refused."""
    with checkpoint_errors(path):
        return trace_model_from_state(_model_state(path, "trace", dataset), device)
