"""The floor that the physical bound sets for any positive trace net: how far a DDPM's own likelihood moves when its
exact trace is held at or below d/sigma^2.

A trace net with a positive posterior variance gives tr F < d/sigma^2 (Prop. 1 with a covariance >= 0). Where a
model's own divergence implies a negative posterior variance, its exact (``vjp``) trace exceeds that bound, and no
such net can follow it. This script measures the held-out digits of ``python -m dfcore.experiments.pretrained
measure`` (same protocol: dequantisation, t_min = 1/T, RK4 with ``--num-steps`` log-time steps, float32 UNet) with
``vjp`` and with ``vjp_bounded``, the same exact trace clamped to d/sigma^2 (registered for this process only), and
reports per model folder the mean and largest per-image |bits/dim(vjp_bounded) - bits/dim(vjp)|, and the share of
ODE evaluations whose trace exceeded the bound.

Writes results/benchmarks/bound_floor.csv. Run, with one or more model folders:
``python benchmarks/bound_floor.py R/ddpm8k R/ddpm8k_v``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
import torch

from dfcore.experiments.pretrained import measure
from dfcore.fisher.trace import TRACE_ESTIMATORS, VJPTrace
from dfcore.io import write_csv


class BoundedVJPTrace(VJPTrace):
    """:class:`~dfcore.fisher.trace.VJPTrace` with the trace clamped to d/sigma^2; counts the clamped evaluations."""

    name = "vjp_bounded"
    label = "vjp, clamped to d/sigma^2"
    evaluations = 0
    clamped = 0

    def eps_and_trace(self, x: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        eps, trace = super().eps_and_trace(x, t)
        tt = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
        bound = x[0].numel() / self.schedule.sigma(tt) ** 2
        BoundedVJPTrace.evaluations += trace.numel()
        BoundedVJPTrace.clamped += int((trace > bound).sum())
        return eps, torch.minimum(trace, bound)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help="save_pretrained DDPM folders (the in-project model)")
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--num-steps", type=int, default=20)
    parser.add_argument("--out", default="results/benchmarks/bound_floor.csv")
    args = parser.parse_args()
    TRACE_ESTIMATORS[BoundedVJPTrace.name] = BoundedVJPTrace
    section = {
        "methods": ["vjp", BoundedVJPTrace.name],
        "num_images": args.num_images,
        "num_steps": args.num_steps,
        "solver_study": None,
        "dtype": "float32",
    }
    rows = []
    for model in args.models:
        BoundedVJPTrace.evaluations = BoundedVJPTrace.clamped = 0
        with tempfile.TemporaryDirectory() as tmp:
            measure(model, tmp, section)
            bpd = pd.read_csv(Path(tmp) / "bpd.csv").pivot(index="image", columns="method", values="bpd")
        gap = bpd[BoundedVJPTrace.name] - bpd["vjp"]
        rows.append(
            {
                "model": model,
                "bpd_vjp": float(bpd["vjp"].mean()),
                "floor_mean_abs": float(gap.abs().mean()),
                "floor_max_abs": float(gap.abs().max()),
                "floor_signed": float(gap.mean()),
                "share_clamped": BoundedVJPTrace.clamped / max(BoundedVJPTrace.evaluations, 1),
                "num_images": args.num_images,
                "num_steps": args.num_steps,
            }
        )
        print(rows[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_csv(pd.DataFrame(rows), args.out)


if __name__ == "__main__":
    main()
