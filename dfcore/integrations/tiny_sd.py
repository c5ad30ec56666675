"""A tiny random Stable Diffusion pipeline and CLIP model, built locally for the tests and the ``sd.tiny``
workflow config.

Everything is built from random weights (a few hundred kB) and saved in the diffusers / transformers folder
layout that :func:`dfcore.integrations.diffusers.load_pipeline` and the CLIP reward read; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["build_tiny_pipeline", "build_tiny_clip"]


def _write_tiny_tokenizer(path: Path, max_length: int) -> None:
    """A byte-level BPE vocabulary of lowercase letters, digits and a few merges (CLIP's format)."""
    from transformers import CLIPTokenizer

    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("o", "n</w>"), ("i", "n"), ("e", "r</w>")]
    tokens += ["".join(m) for m in merges]
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tok = CLIPTokenizer(
        str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=max_length, pad_token="<|endoftext|>"
    )
    tok.save_pretrained(str(path))


def build_tiny_pipeline(path: str | Path, seed: int = 0, image_size: int = 16) -> Path:
    """Save a tiny random Stable Diffusion pipeline to ``path`` (a few hundred kB; 4×(image_size/2)² latents).

    UNet2DConditionModel (channels 8/16, cross-attention 16), AutoencoderKL (downsampling ×2),
    CLIPTextModel (2 layers, width 16), a CLIPTokenizer from a local vocab, and DDIM with scaled-linear
    betas 0.00085–0.012 as in SD-1.5. Loadable with :func:`load_pipeline`.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = Path(path)
    max_length = 16
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=image_size // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        sample_size=image_size,
    )
    tok_dir = path.parent / (path.name + ".tokenizer_tmp")
    _write_tiny_tokenizer(tok_dir, max_length)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=max_length,
            projection_dim=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(path), safe_serialization=True)  # type: ignore[attr-defined]
    for item in tok_dir.iterdir():
        item.unlink()
    tok_dir.rmdir()
    return path


def build_tiny_clip(path: str | Path, seed: int = 0, image_size: int = 16) -> Path:
    """Save a tiny random ``transformers.CLIPModel`` plus its tokenizer to ``path`` (the test reward model)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    path = Path(path)
    _write_tiny_tokenizer(path, 16)
    tokenizer = CLIPTokenizer.from_pretrained(str(path))
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=4,
        ),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(str(path), safe_serialization=True)
    return path
