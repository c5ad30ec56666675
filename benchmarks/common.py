"""What the benchmarks share besides timing (imported as ``common``: the scripts run from this folder): the
device's name for the ``device`` column of every CSV, and the random-weight SD-1.5-sized UNet."""

from __future__ import annotations

import torch

__all__ = ["device_name", "sd15_unet"]


def device_name(device: torch.device | str) -> str:
    """``torch.cuda.get_device_name`` for a CUDA device, else ``"cpu"``: the ``device`` column of a benchmark CSV."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def sd15_unet(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A ``UNet2DConditionModel`` with the Stable Diffusion 1.5 configuration (block_out_channels 320/640/1280/1280,
    2 layers per block, cross-attention dimension 768, 8 attention heads, 64x64x4 latents) and random weights, built
    on ``device`` (860 M parameters: initialising them on a GPU takes a fraction of the CPU's time), frozen, in
    eval mode."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            cross_attention_dim=768,
            attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
    return unet.to(dtype=dtype).eval().requires_grad_(False)
