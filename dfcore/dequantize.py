r"""The standard image-likelihood protocol: uniform dequantisation of 8-bit data and bits/dim on [0, 256).

**Dequantisation** (Theis et al., 2016; Ho et al., 2019). An 8-bit image k has a probability, not a density;
with :math:`y = k + u`, :math:`u \sim U[0, 1)^d`, any density p on :math:`[0, 256)^d` gives the bound

.. math:: -\log P(k) \le \mathbb E_u[-\log p(k + u)] ,

estimated with ``num_draws`` draws of u per image (the mean of :math:`-\log p` over draws).

**Model scale.** The model sees :math:`x = a y + b`: ``minus_one_one`` is :math:`x = y/127.5 - 1` (DDPM and
diffusers' [-1, 1] images), ``zero_one`` is :math:`x = y/256` (score_sde's [0, 1)). By the change of variables

.. math:: \log p(y) = \log q(x) + d \log|dx/dy| = \log q(x) + d \log a ,

so the bits/dim on the [0, 256) scale, as score_sde and VDM report it, is

.. math:: \mathrm{bpd} = -\frac{\log p(y)}{d \ln 2} = -\frac{\log q(x)}{d \ln 2} - \log_2 a

(:math:`+\log_2 127.5 \approx 6.994` for [-1, 1], :math:`+8` for [0, 1)). Here :math:`\log q(x)` is the
density of the model at :math:`t_{min}` (Wang et al., 2025, Eq. 14), so the result also depends on
:math:`t_{min}`; :class:`BitsPerDim` records it with the dequantisation used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "DATA_SCALES",
    "data_scale",
    "dequantize",
    "dequantize_images",
    "bits_per_dim_256",
    "BitsPerDim",
    "image_bits_per_dim",
]

# name -> (a, b) of x = a y + b
DATA_SCALES: dict[str, tuple[float, float]] = {"minus_one_one": (1.0 / 127.5, -1.0), "zero_one": (1.0 / 256.0, 0.0)}


def data_scale(scale: str) -> tuple[float, float]:
    """``(a, b)`` of the model scale :math:`x = a y + b` named ``scale`` (a key of :data:`DATA_SCALES`)."""
    try:
        return DATA_SCALES[scale]
    except KeyError:
        raise ValueError(f"unknown data scale {scale!r}; choose one of {list(DATA_SCALES)}") from None


def _check_uint8(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dtype != torch.uint8:
        got = images.dtype if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a uint8 tensor of 8-bit values; got {got}")


def dequantize(images: Tensor, generator: torch.Generator | None = None, scale: str = "minus_one_one") -> Tensor:
    r"""One uniform dequantisation of uint8 ``images``: :math:`x = a(k + u) + b`, float64, same shape."""
    _check_uint8(images)
    a, b = data_scale(scale)
    u = torch.rand(images.shape, generator=generator, dtype=torch.float64)
    return a * (images.to(torch.float64) + u.to(images.device)) + b


@dataclass(frozen=True)
class Dequantized:
    """``num_draws`` dequantisations of B images, draw-major: row ``j * B + i`` is draw j of image i."""

    x: Tensor
    image_index: Tensor
    num_draws: int
    scale: str
    dequantization: str = "uniform"


def dequantize_images(
    images: Tensor, generator: torch.Generator | None = None, num_draws: int = 1, scale: str = "minus_one_one"
) -> Dequantized:
    r"""``num_draws`` independent uniform dequantisations of uint8 ``images`` (B, ...) on the model scale
    :math:`x = a(k + u) + b` (module docstring), stacked to (num_draws B, ...) float64."""
    _check_uint8(images)
    if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 1:
        raise ValueError(f"num_draws must be a positive integer; got {num_draws!r}")
    x = torch.cat([dequantize(images, generator, scale) for _ in range(num_draws)])
    index = torch.arange(images.shape[0]).repeat(num_draws)
    return Dequantized(x, index, num_draws, scale)


def bits_per_dim_256(log_q_x: Tensor, dim: int, scale: str | float = "minus_one_one") -> Tensor:
    r"""Bits/dim on the [0, 256) scale of a model-scale log-density :math:`\log q(x)` (nats, any shape):
    :math:`-(\log q(x) + d\log a)/(d \ln 2)`, with a the slope of ``scale`` (a name, or a itself)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer; got {dim!r}")
    slope = data_scale(scale)[0] if isinstance(scale, str) else float(scale)
    if not slope > 0:
        raise ValueError(f"scale slope a of x = a y + b must be positive; got {slope}")
    return -(log_q_x.to(torch.float64) + dim * math.log(slope)) / (dim * math.log(2.0))


@dataclass
class BitsPerDim:
    """Bits/dim per image on the [0, 256) scale and the protocol that produced them."""

    bpd: Tensor  # (B,): the mean over draws of -log p(k + u)/(d ln 2)
    bpd_draws: Tensor  # (num_draws, B)
    dim: int
    t_min: float
    num_draws: int
    scale: str
    dequantization: str = "uniform"

    def protocol(self) -> dict[str, Any]:
        """The protocol fields (everything but the numbers), for result attributes."""
        return {k: v for k, v in asdict(self).items() if k not in ("bpd", "bpd_draws")}


def image_bits_per_dim(log_q_x: Tensor, deq: Dequantized, t_min: float) -> BitsPerDim:
    r"""Bits/dim of each image from :math:`\log q_{t_{min}}(x)` (nats) of every row of ``deq``: the mean over its
    draws of :func:`bits_per_dim_256` (the dequantisation bound, module docstring)."""
    if log_q_x.shape != (deq.x.shape[0],):
        raise ValueError(f"log_q_x has shape {tuple(log_q_x.shape)}; the dequantised batch has {deq.x.shape[0]} rows")
    dim = math.prod(deq.x.shape[1:])
    draws = bits_per_dim_256(log_q_x, dim, deq.scale).reshape(deq.num_draws, -1)
    return BitsPerDim(draws.mean(0), draws, dim, float(t_min), deq.num_draws, deq.scale, deq.dequantization)
