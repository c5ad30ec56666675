"""Cost of a Fisher-trace evaluation and of a full NLL: DF-TM vs exact VJP trace vs Hutchinson, side by side.

Settings (random-weight networks; the cost does not depend on training):
  * d = 2     — the MLP denoiser of the 2-D experiments, shared-trunk trace head;
  * d = 64    — the same MLP at the digits' dimension;
  * d = 4096  — a diffusers UNet2DModel on 4x32x32 latents (the SD-latent shape), shared-trunk trace head.

Per trace evaluation: median wall time over repeats for a batch. ``vjp`` needs d VJPs; at d = 4096
on a CPU we time ``VJP_SUBSET`` basis vectors and scale linearly to d (marked ``extrapolated``).
Per full NLL: the PF-ODE + Eq. 14 with fixed-step RK4 (``NLL_STEPS`` steps, so the same number of
evaluations for every method); vjp at d = 4096 is extrapolated from its per-evaluation time.

With ``--gpu`` (meant for a GPU, ``--device auto``) the 4096 VJPs of the UNet's trace evaluation are all run
(``measured``), not extrapolated; its NLL row stays extrapolated from that per-evaluation time.

Writes results/benchmarks/trace.csv, with the device's name (or ``cpu``) in its ``device`` column. Run:
``python benchmarks/bench_trace.py`` (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import timing  # noqa: E402  (benchmarks/timing.py, next to this script)
import torch
from common import device_name  # noqa: E402  (benchmarks/common.py)

from dfcore.device import resolve_device
from dfcore.fisher import trace_estimator_from
from dfcore.fisher.common import jacobian_quadratic_forms
from dfcore.io import write_csv
from dfcore.likelihood import gaussian_log_prior, log_likelihood
from dfcore.models.networks import trace_model_from_state

VJP_SUBSET = 32
NLL_STEPS = 4


def _models(arch: str, dim: int, device: torch.device):
    hp = (
        {"dim": dim, "hidden": 256, "layers": 4, "fourier_levels": 6 if dim <= 2 else 0}
        if arch == "mlp"
        else {"dim": dim, "image_shape": [4, 32, 32], "block_out_channels": [32, 64, 64], "layers_per_block": 1}
    )
    state = {
        "kind": "denoiser",
        "arch": arch,
        "hparams": hp,
        "schedule": {"name": "VP", "params": {}},
        "prediction": "x0",
        "sigma_data": 0.5,
        "state_dict": None,
    }
    torch.manual_seed(0)
    trace = trace_model_from_state(
        {"kind": "trace", "share_trunk": True, "hparams": {}, "denoiser": state, "state_dict": None}, device
    )
    return trace.denoiser, trace


def _time(fn, repeats: int, device: torch.device) -> float:
    """Median of ``repeats`` single calls after a warm-up call."""
    return timing.best_time(fn, device, repeats, reduce=statistics.median)


def bench(
    setting: str,
    arch: str,
    dim: int,
    batch: int,
    repeats: int,
    full_vjp: bool,
    nll_batch: int,
    device: torch.device,
    nll_vjp: bool | None = None,
) -> list[dict]:
    """Rows of one setting; ``full_vjp`` runs all d VJPs of a trace evaluation, ``nll_vjp`` (default:
    ``full_vjp``) the VJP trace inside the NLL too."""
    nll_vjp = full_vjp if nll_vjp is None else nll_vjp
    den, trace = _models(arch, dim, device)
    x = torch.randn(batch, dim).to(device)
    t = torch.full((batch,), 0.5, device=device)
    rows = []
    per_eval = {}
    for method in ("dftm", "hutchinson", "vjp"):
        kw = dict(denoiser=den, trace_model=trace, num_probes=1, chunk_size=64)
        if method == "vjp" and not full_vjp:
            basis = torch.eye(dim, device=device)[:VJP_SUBSET]
            vectors = basis[:, None, :].expand(VJP_SUBSET, batch, dim).contiguous()

            def run():
                jacobian_quadratic_forms(lambda z: den.eps(z, t), x, vectors, 64)

            seconds = _time(run, max(1, repeats // 5), device) * dim / VJP_SUBSET
            how = f"extrapolated from {VJP_SUBSET} of {dim} VJPs"
        else:
            seconds = _time(lambda: trace_estimator_from(method, kw)(x, t), repeats, device)
            how = "measured"
        per_eval[method] = seconds
        rows.append(
            {
                "setting": setting,
                "dim": dim,
                "method": method,
                "quantity": "trace_eval",
                "batch": batch,
                "seconds": seconds,
                "how": how,
            }
        )
    for method in ("dftm", "hutchinson", "vjp"):
        if method == "vjp" and not nll_vjp:
            nfe = 4 * NLL_STEPS
            seconds = per_eval["vjp"] * nll_batch / batch * nfe
            how = f"extrapolated: {nfe} evaluations x per-eval time"
        else:
            xs = (torch.randn(nll_batch, dim, dtype=torch.float64) * 0.5).to(device)
            timing.sync(device)
            start = time.perf_counter()
            out = log_likelihood(
                xs,
                trace_estimator_from(method, {"denoiser": den, "trace_model": trace}),
                log_prior=gaussian_log_prior(den.schedule),
                t_min=1e-3,
                solver="rk4",
                num_steps=NLL_STEPS,
            )
            timing.sync(device)
            seconds, nfe, how = time.perf_counter() - start, out.nfe, "measured"
        rows.append(
            {
                "setting": setting,
                "dim": dim,
                "method": method,
                "quantity": f"nll_rk4_{NLL_STEPS}steps",
                "batch": nll_batch,
                "seconds": seconds,
                "how": how,
                "nfe": nfe,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/benchmarks/trace.csv")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 avoids oversubscription on shared nodes)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--gpu", action="store_true", help="all 4096 VJPs of the UNet's trace evaluation (use a GPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    common = dict(repeats=args.repeats, device=device)
    rows = []
    rows += bench("MLP d=2", "mlp", 2, batch=256, full_vjp=True, nll_batch=64, **common)
    rows += bench("MLP d=64", "mlp", 64, batch=64, full_vjp=True, nll_batch=16, **common)
    unet = dict(batch=2, full_vjp=args.gpu, nll_batch=1, nll_vjp=False, device=device)
    rows += bench("UNet 4x32x32", "unet", 4096, repeats=max(2, args.repeats // 2), **unet)
    frame = pd.DataFrame(rows).assign(device=device_name(device))
    vjp = frame[frame.method == "vjp"].set_index(["setting", "quantity"])["seconds"]
    frame["vjp_over_method"] = [vjp[(s, q)] / sec for s, q, sec in zip(frame.setting, frame.quantity, frame.seconds)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_csv(frame, args.out)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(frame.to_string(index=False))


if __name__ == "__main__":
    main()
