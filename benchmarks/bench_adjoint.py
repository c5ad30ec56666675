"""Benchmark: DF-EA against VJP adjoints in guided sampling, side by side in one process.

For each model, with random weights (the cost does not depend on training):

- ``mlp`` at d = 64 (dfcore.models.networks.MLPBackbone), and a diffusers ``UNet2DModel`` at 4x32x32 (and 4x64x64,
  the SD-1.5 latent shape, unless ``--skip-large``), both behind dfcore.models.networks.LearnedDenoiser;
- ``sd15_4x64x64`` (with ``--gpu``, or named in ``--models``): a random-weight ``UNet2DConditionModel`` of the SD-1.5
  configuration (benchmarks/common.py) in ``--sd-dtype`` (float16 by default) behind the classifier-free-guidance
  denoiser of dfcore.integrations.diffusers (w = 7.5, random 77 x 768 text embeddings, so each evaluation runs the
  UNet on a batch of 2), on float32 latents;
- the SD-1.5 schedule from diffusers' DDIMScheduler (scaled-linear betas 0.00085-0.012) as a DiscreteSchedule;
- the BELM-style guidance of the paper: 20 DDIM steps, adjoint updates at 10 and 5 steps to go,
  loss = squared distance of x_0 to a fixed random target (a tiny step size: with random weights only the cost means anything).

Timed (best of ``--repeats``; adjoint steps after a warm-up): one adjoint step (one Fisher-vector product and the DDIM
adjoint update) by ``dfea`` and by ``vjp``; a full guided sample by each; the plain 20-step sample. Ratios
are vjp / dfea from the same run. Peak memory of one guided sample is measured too (RSS above the start
level on CPU, ``max_memory_allocated`` on GPU). Writes ``results/benchmarks/adjoint.csv``; its ``device`` column
holds the GPU's name (or ``cpu``). The bar of the SD-sized rows: DF-EA at least 1.3x faster than VJP per guided
sample (``bar``, ``meets_bar``).

    python benchmarks/bench_adjoint.py [--device auto] [--batch 1] [--repeats 3] [--skip-large] [--gpu]

``--gpu`` runs the SD-1.5-sized UNet only (meant for a GPU: one VJP through it takes seconds on a CPU).
"""

from __future__ import annotations

import argparse
import math
import platform
from pathlib import Path

import pandas as pd
import timing  # noqa: E402  (benchmarks/timing.py, next to this script)
import torch
from common import device_name, sd15_unet  # noqa: E402  (benchmarks/common.py)

from dfcore.adjoint import discrete_adjoint, guided_sample
from dfcore.device import resolve_device
from dfcore.io import write_csv
from dfcore.models.base import Denoiser
from dfcore.models.networks import LearnedDenoiser, MLPBackbone, UNetBackbone
from dfcore.profiling import PeakMemory
from dfcore.sampling import sample_trajectory
from dfcore.schedules import DiscreteSchedule
from dfcore.sde import time_grid


def best_time(fn, device: torch.device, repeats: int, warmup: bool = True, min_time: float = 0.5) -> float:
    """Best over ``repeats`` of the mean time per call, each repeat calling ``fn`` until ``min_time`` has passed."""
    return timing.best_time(fn, device, repeats, min_time=min_time, warmup=warmup)


def sd_schedule() -> DiscreteSchedule:
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    return DiscreteSchedule.from_scheduler(sched)


SD_BAR = 1.3  # DF-EA at least 1.3x faster than VJP per guided sample with the SD-1.5-sized UNet


def make_model(
    kind: str, device: torch.device, sd_dtype: torch.dtype = torch.float16
) -> tuple[Denoiser, tuple[int, ...]]:
    torch.manual_seed(0)
    schedule = sd_schedule()
    if kind == "sd15_4x64x64":
        from dfcore.integrations.diffusers import CFGDenoiser

        gen = torch.Generator().manual_seed(2)
        cond, uncond = (torch.randn(1, 77, 768, generator=gen).to(device, sd_dtype) for _ in range(2))
        return CFGDenoiser(sd15_unet(device, sd_dtype), schedule, cond, uncond, guidance_scale=7.5), (4, 64, 64)
    if kind == "mlp_d64":
        module, shape = MLPBackbone(64, hidden=256, layers=4), (64,)
    else:
        side = int(kind.split("x")[-1])
        shape = (4, side, side)
        module = UNetBackbone(shape, block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8)
    module = module.to(device).eval().requires_grad_(False)
    return LearnedDenoiser(module, schedule, prediction="eps", arch="bench"), shape


def bench(kind: str, device: torch.device, batch: int, repeats: int, sd_dtype: torch.dtype) -> list[dict]:
    denoiser, shape = make_model(kind, device, sd_dtype)
    times = time_grid(20, 1.0 / 1000, t_max=1.0, dtype=torch.float32).to(device)
    gen = torch.Generator().manual_seed(1)
    x_T = torch.randn(batch, *shape, generator=gen).to(device)
    target = torch.randn(batch, *shape, generator=gen).to(device)

    def loss_fn(x0: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x0 - target).pow(2).flatten(1).sum(1)

    traj = sample_trajectory(denoiser, x_T, times)
    lam0 = traj.x_final - target
    step_traj = type(traj)(times[-2:], traj.xs[-2:], traj.caches[-1:], traj.sampler)  # one step: the last one
    # float16 UNet: DF-EA's adjoint of a random network grows by many orders of magnitude toward t_min (its
    # a^2/s^4 term; 1e27 with a small random UNet of this layout), and a state moved by 1e-4 of it no longer fits
    # in float16 (65504): the update is rescaled to unit RMS per coordinate (a few O(d) operations, the same for
    # both methods); the float32 models take the update as it is.
    normalize = "rms" if kind.startswith("sd15") else "none"
    rows = []
    t_plain = best_time(lambda: sample_trajectory(denoiser, x_T, times), device, repeats)
    results = {}
    for method in ("dfea", "vjp"):
        t_step = best_time(
            lambda: discrete_adjoint(step_traj, lam0, method, schedule=denoiser.schedule, denoiser=denoiser),
            device,
            repeats,
        )
        run = lambda: guided_sample(  # noqa: E731
            denoiser, x_T, times, loss_fn, method=method, update_steps=(10, 5), step_size=1e-4, normalize=normalize
        )
        t_sample = best_time(run, device, repeats, warmup=False)  # the step timing above warmed up
        with PeakMemory(device) as mem:
            run()
        results[method] = (t_step, t_sample)
        rows.append(
            {
                "model": kind,
                "shape": "x".join(map(str, shape)),
                "dtype": str(sd_dtype if kind.startswith("sd15") else torch.float32).replace("torch.", ""),
                "batch": batch,
                "method": method,
                "adjoint_step_s": t_step,
                "guided_sample_s": t_sample,
                "plain_sample_s": t_plain,
                "peak_mem_mb": mem.peak_bytes / 2**20,
            }
        )
    for row in rows:
        row["step_ratio_vjp_over_dfea"] = results["vjp"][0] / results["dfea"][0]
        row["sample_ratio_vjp_over_dfea"] = results["vjp"][1] / results["dfea"][1]
        row["device"] = device_name(device)
        row["bar"] = SD_BAR if kind.startswith("sd15") else math.nan
        row["meets_bar"] = str(row["sample_ratio_vjp_over_dfea"] >= SD_BAR) if kind.startswith("sd15") else ""
        row["threads"] = torch.get_num_threads()
        row["cpu"] = platform.processor() or platform.machine()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-large", action="store_true", help="skip the 4x64x64 UNet")
    parser.add_argument(
        "--models", nargs="+", default=None, help="subset of mlp_d64 unet_4x32x32 unet_4x64x64 sd15_4x64x64"
    )
    parser.add_argument("--gpu", action="store_true", help="the SD-1.5-sized UNet only (sd15_4x64x64)")
    parser.add_argument("--sd-dtype", default="float16", choices=["float16", "float32"], help="dtype of the SD UNet")
    parser.add_argument("--out", default="results/benchmarks/adjoint.csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    default = (
        ["sd15_4x64x64"] if args.gpu else ["mlp_d64", "unet_4x32x32"] + ([] if args.skip_large else ["unet_4x64x64"])
    )
    kinds = args.models or default
    rows = []
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        rows += bench(kind, device, args.batch, args.repeats, getattr(torch, args.sd_dtype))
        print(pd.DataFrame(rows[-2:]).to_string(index=False), flush=True)
        table = pd.DataFrame(rows)
        write_csv(table, args.out)  # after every model, so a cut-off run keeps what it measured
    print(
        table[
            [
                "model",
                "method",
                "adjoint_step_s",
                "guided_sample_s",
                "step_ratio_vjp_over_dfea",
                "sample_ratio_vjp_over_dfea",
                "peak_mem_mb",
            ]
        ].to_string(index=False)
    )


if __name__ == "__main__":
    main()
