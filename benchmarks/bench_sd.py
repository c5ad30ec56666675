"""Benchmark: DF-EA vs VJP per adjoint step, and DF-TM vs exact VJP per Fisher trace, on Stable
Diffusion latents. Both methods of a pair are timed side by side in one run; the ratio is VJP time / DF time.

Models: the tiny random pipeline (built in a temporary folder; 4×8×8 latents) and, with ``--sd-size``, a
random-weight UNet2DConditionModel with the SD-1.5 configuration at 4×64×64 latents (no weights needed).

* adjoint step: one discrete-adjoint update λ_t = (α_s/α_t) λ_s + (σ_s − α_s σ_t/α_t) σ_t Fᵀλ_s, with Fᵀλ from
  ``fisher_vp('dfea')`` (cached x0 and ȳ: no network call) or ``fisher_vp('vjp')`` (forward + backward
  through the CFG UNet, batch 2 for guidance).
* trace: ``fisher_trace('dftm')`` (one CFG UNet and one trace-net evaluation) vs ``fisher_trace('vjp')``
  (d VJPs). At SD size d = 16384 VJPs are too many to run, so ``--vjp-probes`` of them are timed and the
  time scaled by d/probes (column ``extrapolated``).

    .venv/bin/python benchmarks/bench_sd.py                 # tiny pipeline, CPU, a few seconds
    .venv/bin/python benchmarks/bench_sd.py --sd-size       # + SD-sized random UNet (use a GPU)

Writes ``results/benchmarks/sd.csv``; its ``device`` column holds the GPU's name (or ``cpu``).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import timing  # noqa: E402  (benchmarks/timing.py, next to this script)
import torch
from common import device_name, sd15_unet  # noqa: E402  (benchmarks/common.py)

from dfcore.device import resolve_device
from dfcore.fisher.common import jacobian_quadratic_forms
from dfcore.fisher.trace import fisher_trace
from dfcore.fisher.vp import fvp_estimator_from
from dfcore.integrations import diffusers as sd
from dfcore.integrations.tiny_sd import build_tiny_pipeline
from dfcore.io import write_csv
from dfcore.schedules import DiscreteSchedule


def _time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Fastest of ``repeats`` single calls after a warm-up call."""
    return timing.best_time(fn, device, repeats)


def bench_model(
    name: str,
    unet: torch.nn.Module,
    schedule: DiscreteSchedule,
    context_dim: int,
    ctx_len: int,
    device: torch.device,
    dtype: torch.dtype,
    repeats: int,
    vjp_probes: int | None,
) -> list[dict]:
    unet = unet.to(device=device, dtype=dtype).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    cond = torch.randn(1, ctx_len, context_dim, generator=gen).to(device, dtype)
    uncond = torch.randn(1, ctx_len, context_dim, generator=gen).to(device, dtype)
    den = sd.CFGDenoiser(unet, schedule, cond, uncond, guidance_scale=7.5)
    size = int(unet.config.sample_size)
    shape = (1, 4, size, size)
    dim = 4 * size * size
    z, lam, x0 = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(3))
    t, s = (
        torch.tensor([0.5], device=device, dtype=torch.float64),
        torch.tensor([0.45], device=device, dtype=torch.float64),
    )
    a_t, s_t = (v.item() for v in schedule(t))
    a_s, s_s = (v.item() for v in schedule(s))
    with torch.no_grad():
        ybar = den.posterior_mean(z, t)
    trace_net = sd.build_latent_trace_model(
        (4, size, size), sd.CFGDenoiser(unet, schedule, uncond, None, 1.0), 1.0, (32, 64, 64), 1, 8
    )
    trace_net.module.to(device=device, dtype=dtype).eval().requires_grad_(False)

    def step(method: str) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            fvp = fvp_estimator_from(method, {"schedule": schedule, "denoiser": den, "x0": x0})
            fv = fvp(z, t, lam, ybar=ybar)
            return a_s / a_t * lam + (s_s - a_s * s_t / a_t) * s_t * fv

        return run

    rows = []
    t_dfea, t_vjp = _time(step("dfea"), device, repeats), _time(step("vjp"), device, repeats)
    base = {
        "model": name,
        "latent_shape": "x".join(map(str, shape[1:])),
        "device": device_name(device),
        "dtype": str(dtype).replace("torch.", ""),
    }
    rows += [
        {**base, "quantity": "adjoint_step", "method": "dfea", "seconds": t_dfea, "extrapolated": False},
        {**base, "quantity": "adjoint_step", "method": "vjp", "seconds": t_vjp, "extrapolated": False},
    ]

    t_dftm = _time(lambda: fisher_trace("dftm", z, t, denoiser=den, trace_model=trace_net), device, repeats)
    probes = dim if vjp_probes is None else min(vjp_probes, dim)
    if probes == dim:
        t_exact = _time(lambda: fisher_trace("vjp", z, t, denoiser=den, chunk_size=64), device, max(1, repeats // 2))
    else:  # time `probes` basis-vector VJPs and scale to d of them
        basis = torch.zeros(probes, *shape, device=device, dtype=dtype)
        basis.view(probes, -1)[torch.arange(probes), torch.arange(probes)] = 1.0
        t_part = _time(lambda: jacobian_quadratic_forms(lambda x: den.eps(x, t), z, basis, None), device, 1)
        t_exact = t_part * dim / probes
    rows += [
        {**base, "quantity": "trace", "method": "dftm", "seconds": t_dftm, "extrapolated": False},
        {**base, "quantity": "trace", "method": "vjp_exact", "seconds": t_exact, "extrapolated": probes != dim},
    ]
    for row in rows:
        ref = t_dfea if row["quantity"] == "adjoint_step" else t_dftm
        row["ratio_vs_df"] = row["seconds"] / ref
    return rows


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--sd-size", action="store_true", help="also a random SD-1.5-sized UNet at 4x64x64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vjp-probes", type=int, default=16, help="VJPs timed for the SD-size exact trace")
    parser.add_argument("--out", default="results/benchmarks/sd.csv")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pipe = sd.load_pipeline(build_tiny_pipeline(Path(tmp) / "pipe"))
        schedule = DiscreteSchedule.from_scheduler(pipe.scheduler)
        rows += bench_model(
            "tiny", pipe.unet, schedule, 16, pipe.tokenizer.model_max_length, device, torch.float32, args.repeats, None
        )
    if args.sd_size:
        torch.manual_seed(0)
        rows += bench_model(
            "sd15_random", sd15_unet(device, dtype), schedule, 768, 77, device, dtype, args.repeats, args.vjp_probes
        )
    frame = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_csv(frame, args.out)
    print(frame.to_string(index=False))
    return frame


if __name__ == "__main__":
    main()
