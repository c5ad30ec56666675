r"""Reward-guided sampling of a loaded diffusers pipeline (:class:`~dfcore.integrations.pretrained.PretrainedModel`):
adjoint guidance (Wang et al., 2025, Eq. 19-20; :func:`dfcore.adjoint.guided_sample`) with the adapter as the
denoiser and the loss :math:`L(x_0) = -r(D(x_0))`, for a user reward r on images in [-1, 1] and the pipeline's
decoder D (the VAE of a latent pipeline, the identity otherwise).

The sampler takes ``num_steps`` DDIM steps on a grid uniform in t from 1 to t_min = 1/T, from
:math:`x_1 \sim \mathcal N(0, I)` (seeded on the CPU, so the same on every device). ``method`` picks the
Fisher-vector product of the adjoint: ``dfea`` (Eq. 20, no gradient through the UNet) or ``vjp`` (one
vector-Jacobian product through the UNet per adjoint step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from dfcore.adjoint import GuidedSample, guided_sample
from dfcore.integrations.pretrained import PretrainedModel
from dfcore.sampling import seeded_noise
from dfcore.sde import time_grid

__all__ = ["Reward", "reward_guided_sample"]

Reward = Callable[[Tensor], Tensor]  # images (B, C, H, W) in [-1, 1] -> (B,) scores to raise


def reward_guided_sample(
    model: PretrainedModel,
    reward: Reward,
    *,
    num_samples: int = 1,
    num_steps: int = 20,
    method: str = "dfea",
    seed: int = 0,
    update_steps: tuple[int, ...] = (10, 5),
    step_size: float = 0.1,
    normalize: str = "grad",
    **guidance: Any,
) -> GuidedSample:
    """Samples of ``model`` guided towards a higher ``reward`` (module docstring); ``update_steps``, ``step_size``,
    ``normalize`` and ``guidance`` (``iterations``, ``dfea_endpoint``) as in :func:`dfcore.adjoint.guided_sample`.
    ``final_loss`` of the result is minus the reward of the decoded samples; decode ``x_final`` with
    :meth:`~dfcore.integrations.pretrained.PretrainedModel.decode`."""
    if num_samples < 1 or num_steps < 1:
        raise ValueError(f"num_samples and num_steps must be positive; got {num_samples} and {num_steps}")
    param = next(model.unet.parameters())
    shape = (int(num_samples), *model.sample_shape)
    x = seeded_noise(int(seed), shape)
    times = time_grid(int(num_steps), 1.0 / model.schedule.num_steps, t_max=1.0).to(param.device)

    def loss(x0: Tensor) -> Tensor:
        return -reward(model.decode(x0))

    return guided_sample(
        model.denoiser,
        x.to(device=param.device, dtype=param.dtype),
        times,
        loss,
        method=method,
        update_steps=update_steps,
        step_size=step_size,
        normalize=normalize,
        **guidance,
    )
