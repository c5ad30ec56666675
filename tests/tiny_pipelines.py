"""Tiny random diffusers parts for the tests of the pretrained paths: a DDPM scheduler, a UNet2DModel, a
conditional UNet2DConditionModel (8x8 samples) and a folder of random 8-bit PNG images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

T = 100  # training steps of the tiny schedulers
SIZE = 8  # sample size of the tiny UNets and the images


def tiny_scheduler() -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=T, beta_start=1e-3, beta_end=0.1)


def tiny_unet(seed: int = 0) -> Any:
    """A one-channel UNet2DModel without attention (vmapped VJPs have no batching rule for its backward)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=SIZE,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        add_attention=False,
    )


def tiny_conditional_unet(channels: int = 1, seed: int = 3) -> Any:
    """A UNet2DConditionModel with ``channels`` channels in and out and cross-attention of width 8."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=SIZE,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=4,
    )


def write_images(folder: Path, count: int = 3, size: int = SIZE, mode: str = "L") -> Path:
    """``count`` random images ``img{i}.png`` of ``size`` x ``size`` pixels (``mode`` L or RGB), seed 0."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        shape = (size, size) if mode == "L" else (size, size, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"img{i}.png")
    return folder
