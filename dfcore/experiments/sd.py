r"""The ``sd`` stage: Stable Diffusion experiments on a local pipeline (:mod:`dfcore.integrations.diffusers`).

* :func:`run_trace_net` — the latent trace network of Alg. 1 (a positive-variance
  :class:`~dfcore.integrations.pretrained.PositiveTraceModel` over the unconditional latent denoiser) trained on the
  VAE latents of an image folder.
* :func:`run_sd_nll` — per prompt, guidance scale w and seed: sample a latent with CFG, then its NLL by the
  PF-ODE and DF-TM (Eq. 14, 17) and, next to it, by the exact trace of the network (``vjp``); each row counts
  the trace evaluations above d/σ². Zarr store, CSV, plots "NLL vs guidance scale" (Fig. 1b) and
  "NLL across seeds" with thumbnails (Fig. 2), both of DF-TM.
* :func:`run_adjoint` — adjoint guidance of the CFG sampler with DF-EA (Eq. 20) or VJP Fisher-vector
  products and a differentiable reward (CLIP similarity or a user module); per image: reward before and
  after, wall time, peak memory (Fig. 4).

Command line: ``python -m dfcore sd ...`` (:mod:`dfcore.cli`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
from tqdm.auto import tqdm

from dfcore.device import resolve_device, resolve_dtype
from dfcore.integrations import diffusers as sd
from dfcore.integrations.pretrained import PositiveTraceModel
from dfcore.io import load_checkpoint, provenance, write_csv, write_zarr
from dfcore.plots import plot_sd_adjoint, plot_sd_nll_seeds, plot_sd_nll_vs_guidance, thumbnail
from dfcore.sampling import seeded_noise

__all__ = ["run_trace_net", "run_sd_nll", "run_adjoint", "run_tiny_pipeline"]

log = logging.getLogger(__name__)


def latent_shape(pipe: Any) -> tuple[int, int, int]:
    """(C, H, W) of the pipeline's UNet input."""
    size = int(pipe.unet.config.sample_size)
    return int(pipe.unet.config.in_channels), size, size


def _load(pipeline: str, cfg: dict[str, Any], device: str) -> tuple[Any, torch.device]:
    dev = resolve_device(device)
    return sd.load_pipeline(pipeline, dev, resolve_dtype(cfg["dtype"])), dev


def unconditional_denoiser(pipe: Any, cfg: dict[str, Any]) -> sd.CFGDenoiser:
    """The latent denoiser of the trace network: the UNet on the unconditional text ``cfg['negative_prompt']``
    (classifier-free guidance's unconditional branch), whose posterior mean enters the trace net's target."""
    return sd.CFGDenoiser.from_pipeline(pipe, cfg["negative_prompt"], 1.0)


def run_trace_net(
    cfg: dict[str, Any],
    pipeline: str,
    image_dir: str,
    out: str,
    loss_csv: str,
    *,
    device: str = "auto",
    seed: int = 0,
    resume: str | None = None,
) -> PositiveTraceModel:
    """Alg. 1 on VAE latents of ``image_dir`` (resumable): a positive-variance trace network
    (:func:`~dfcore.integrations.diffusers.build_latent_trace_model`) over the unconditional denoiser
    (:func:`unconditional_denoiser`), regressed onto ``sd.trace_net.target``, with ``sigma_data`` the latents'
    standard deviation."""
    from dfcore.experiments.train import save_trained
    from dfcore.train import train_loop

    tcfg = cfg["trace_net"]
    pipe, dev = _load(pipeline, cfg, device)
    latents = sd.encode_image_folder(pipe, image_dir, int(tcfg["max_images"]) or None)
    sigma_data = float(latents.double().std())
    log.info(
        "trace net: %d latents of shape %s from %s, sigma_data %.4g",
        len(latents),
        tuple(latents.shape[1:]),
        image_dir,
        sigma_data,
    )
    den = unconditional_denoiser(pipe, cfg)
    model = sd.build_latent_trace_model(
        latents.shape[1:],
        den,
        sigma_data,
        tcfg["block_out_channels"],
        tcfg["layers_per_block"],
        tcfg["norm_num_groups"],
        target=tcfg["target"],
        seed=seed,
    )
    model.module.to(dev)
    losses = train_loop(
        model,
        latents,
        steps=int(tcfg["steps"]),
        batch_size=int(tcfg["batch_size"]),
        lr=float(tcfg["lr"]),
        t_min=1.0 / den.schedule.num_steps,
        time_power=float(tcfg["time_power"]),
        checkpoint_every=int(tcfg["checkpoint_every"]),
        seed=seed,
        resume_path=resume,
        desc="sd trace_net",
    )
    model.module.eval().requires_grad_(False)
    meta = {"seed": seed, "config": tcfg, "num_images": len(latents), "sigma_data": sigma_data}
    save_trained(model, losses, out, loss_csv, meta, state=sd.latent_trace_state(model))
    return model


def run_sd_nll(
    cfg: dict[str, Any],
    pipeline: str,
    trace: str,
    out_zarr: str,
    out_csv: str,
    plot_guidance: str,
    plot_seeds: str,
    *,
    device: str = "auto",
    config: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """NLL of CFG-generated latents for every (prompt, guidance scale, seed) by ``sd.nll.method`` (DF-TM by default)
    and, with ``sd.nll.vjp``, by the exact trace of the network (``vjp``) on the same latents. One CSV row per
    method; ``trace_above_bound`` counts the trace evaluations of the solve above d/σ² (none for a valid estimate)."""
    from dfcore.fisher.trace import VJPTrace

    ncfg = cfg["nll"]
    pipe, dev = _load(pipeline, cfg, device)
    trace_model = sd.latent_trace_model_from_state(
        load_checkpoint(trace, map_location=dev)["model"], unconditional_denoiser(pipe, cfg), dev
    )
    shape = latent_shape(pipe)
    prompts, scales, seeds = (
        list(cfg["prompts"]),
        [float(w) for w in ncfg["guidance_scales"]],
        [int(s) for s in ncfg["seeds"]],
    )
    methods = [ncfg["method"]] + ([VJPTrace.name] if ncfg["vjp"] and ncfg["method"] != VJPTrace.name else [])
    thumb = int(ncfg["thumbnail_size"])
    thumbs = np.zeros((len(prompts), len(scales), len(seeds), thumb, thumb, 3), dtype=np.uint8)
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(methods) * len(prompts) * len(scales) * len(seeds), desc="sd nll")
    for i, prompt in enumerate(prompts):
        for j, w in enumerate(scales):
            den = sd.CFGDenoiser.from_pipeline(pipe, prompt, w, cfg["negative_prompt"])
            z_T = torch.cat([seeded_noise(s, (1, *shape)) for s in seeds]).to(dev)
            z0 = sd.sample_latents(den, z_T, int(cfg["num_steps"]))
            with torch.no_grad():
                imgs = sd.to_uint8(sd.decode_latents(pipe, z0)).numpy()
            for k in range(len(seeds)):
                thumbs[i, j, k] = thumbnail(imgs[k], thumb)
            for method in methods:
                rows += _latent_nll_rows(z0, den, trace_model, method, ncfg, prompt, w, seeds)
                bar.update(len(seeds))
    bar.close()
    frame = pd.DataFrame(rows)
    coords = {"method": methods, "prompt": prompts, "guidance_scale": scales, "seed": seeds}
    ds = _sd_nll_dataset(frame, coords, thumbs)
    write_zarr(ds, out_zarr, provenance(config, None, stage="sd_nll", method=ncfg["method"], latent_shape=list(shape)))
    frame = frame.drop(columns="prior_log_prob")
    write_csv(frame, out_csv)
    main = frame[frame.method == ncfg["method"]]
    plot_sd_nll_vs_guidance(main, plot_guidance)
    plot_sd_nll_seeds(main, thumbs, prompts, scales, seeds, plot_seeds)
    return frame


def _latent_nll_rows(
    z0: torch.Tensor,
    den: Any,
    trace_model: Any,
    method: str,
    ncfg: dict[str, Any],
    prompt: str,
    guidance_scale: float,
    seeds: list[int],
) -> list[dict[str, Any]]:
    """One row per seed: the NLL of the latents ``z0`` (one per seed) by the trace estimator ``method``, with the
    count of its trace evaluations above d/σ²."""
    from dfcore.fisher.trace import trace_estimator_from

    pool = {"denoiser": den, "trace_model": trace_model, "chunk_size": int(ncfg["chunk_size"])}
    counter = sd.TraceBoundCounter(trace_estimator_from(method, pool))
    start = time.perf_counter()
    res = sd.latent_log_likelihood(
        z0,
        den,
        trace_model,
        method=counter,
        solver=ncfg["solver"],
        num_steps=int(ncfg["num_steps"]),
        data_var=float(ncfg["data_var"]),
    )
    elapsed = (time.perf_counter() - start) / len(seeds)
    return [
        {
            "prompt": prompt,
            "guidance_scale": guidance_scale,
            "seed": s,
            "method": method,
            "nll_nats": -res.log_q[k].item(),
            "bpd": res.bpd[k].item(),
            "trace_above_bound": int(counter.above[k]),
            "trace_evaluations": counter.evaluations,
            "seconds": elapsed,
            "nfe": res.nfe,
            "prior_log_prob": res.prior[k].item(),
        }
        for k, s in enumerate(seeds)
    ]


def _sd_nll_dataset(frame: pd.DataFrame, coords: dict[str, list[Any]], thumbs: np.ndarray) -> xr.Dataset:
    """The rows of :func:`_latent_nll_rows` as arrays over ``coords`` (method, prompt, guidance_scale, seed), with
    the thumbnails."""
    dims = tuple(coords)
    index = {d: {value: n for n, value in enumerate(coords[d])} for d in dims}
    shape = tuple(len(coords[d]) for d in dims)
    columns = {"nll_nats": float, "bpd": float, "prior_log_prob": float, "trace_above_bound": np.int64}
    arrays = {c: np.zeros(shape, dtype=dtype) for c, dtype in columns.items()}
    for row in frame.to_dict("records"):
        at = tuple(index[d][row[d]] for d in dims)
        for c, array in arrays.items():
            array[at] = row[c]
    return xr.Dataset(
        {
            "nll": (dims, arrays["nll_nats"], {"units": "nats", "long_name": "-log q(z_0) by the PF-ODE (Eq. 14)"}),
            "bpd": (dims, arrays["bpd"], {"units": "bits/dim"}),
            "prior_log_prob": (dims, arrays["prior_log_prob"], {"units": "nats"}),
            "trace_above_bound": (
                dims,
                arrays["trace_above_bound"],
                {"long_name": "trace evaluations of the solve above d/sigma^2"},
            ),
            "thumbnail": (dims[1:] + ("y", "x", "rgb"), thumbs),
        },
        coords=coords,
    )


def run_adjoint(
    cfg: dict[str, Any],
    pipeline: str,
    out_csv: str,
    out_plot: str,
    *,
    clip_path: str | None = None,
    device: str = "auto",
    config: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """DF-EA vs VJP adjoint guidance (BELM-style schedule) with a differentiable reward; one row per image and method."""
    from dfcore.adjoint import guided_sample
    from dfcore.profiling import PeakMemory
    from dfcore.sde import time_grid

    acfg = cfg["adjoint"]
    pipe, dev = _load(pipeline, cfg, device)
    reward = sd.load_reward(
        acfg["reward"],
        pipe,
        clip_path=clip_path or acfg["clip_path"] or None,
        module=acfg["reward_module"] or None,
        module_kwargs=acfg["reward_kwargs"],
    ).to(dev)
    shape = latent_shape(pipe)
    times = time_grid(int(acfg["num_steps"]), 1.0 / pipe.scheduler.config.num_train_timesteps, t_max=1.0).to(dev)
    rows = []
    jobs = [(p, s, m) for p in cfg["prompts"] for s in acfg["seeds"] for m in acfg["methods"]]
    for prompt, seed, method in tqdm(jobs, desc="sd adjoint"):
        den = sd.CFGDenoiser.from_pipeline(pipe, prompt, float(acfg["guidance_scale"]), cfg["negative_prompt"])
        reward.set_prompt(prompt)
        z_T = seeded_noise(int(seed), (1, *shape)).to(dev)
        with torch.no_grad():
            before = reward(sd.sample_latents(den, z_T, int(acfg["num_steps"]))).item()
        with PeakMemory(dev) as mem:
            start = time.perf_counter()
            out = guided_sample(
                den,
                z_T,
                times,
                lambda z: -reward(z),
                method=method,
                update_steps=acfg["update_steps"],
                step_size=float(acfg["step_size"]),
                iterations=int(acfg["iterations"]),
                normalize=acfg["normalize"],
            )
            seconds = time.perf_counter() - start
        assert out.final_loss is not None  # guided_sample sets it
        rows.append(
            {
                "prompt": prompt,
                "seed": int(seed),
                "method": method,
                "reward": acfg["reward"],
                "score_before": before,
                "score_after": -out.final_loss.item(),
                "seconds": seconds,
                "peak_mem_mb": mem.peak_bytes / 2**20,
                "fvp_calls": out.fvp_calls,
                "device": str(dev),
            }
        )
    frame = pd.DataFrame(rows)
    frame["improvement"] = frame.score_after - frame.score_before
    write_csv(frame, out_csv)
    plot_sd_adjoint(frame, out_plot, acfg["reward"])
    return frame


def run_tiny_pipeline(cfg: dict[str, Any], out_pipeline: str, out_clip: str, out_images: str, seed: int = 0) -> None:
    """Build the tiny random pipeline and CLIP model (:mod:`dfcore.integrations.tiny_sd`), then save
    ``cfg['tiny_images']`` images generated by the pipeline."""
    from PIL import Image

    from dfcore.integrations.tiny_sd import build_tiny_clip, build_tiny_pipeline

    build_tiny_pipeline(out_pipeline, seed=seed)
    build_tiny_clip(out_clip, seed=seed + 1)
    pipe = sd.load_pipeline(out_pipeline)
    Path(out_images).mkdir(parents=True, exist_ok=True)
    prompts = cfg["prompts"]
    for i in tqdm(range(int(cfg["tiny_images"])), desc="sd tiny images"):
        den = sd.CFGDenoiser.from_pipeline(pipe, prompts[i % len(prompts)], cfg["nll"]["guidance_scales"][-1])
        z0 = sd.sample_latents(den, seeded_noise(seed + 1000 + i, (1, *latent_shape(pipe))), int(cfg["num_steps"]))
        with torch.no_grad():
            img = sd.to_uint8(sd.decode_latents(pipe, z0))[0].numpy()
        Image.fromarray(img).save(Path(out_images) / f"image_{i:03d}.png")
