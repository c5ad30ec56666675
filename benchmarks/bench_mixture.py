"""Benchmark: exact Dirac-mixture Fisher trace and Fisher-vector product against autograd.

For each (d, N) with B query points, side by side in one process:

- ``fisher_trace`` and ``fisher_vp`` of :class:`dfcore.DiracMixture` (chunked, one pass);
- the autograd baseline: the trace of the Hessian of the exact log-density
  ``logsumexp_i(-||x - a y_i||^2 / 2s^2)``, by d double-backward passes (one per basis vector,
  batched over B). Where d passes would take too long, ``--max-columns`` of them are timed and the
  time is scaled by d / columns (the passes are identical in cost); the CSV says so;
- the GEMM bound: one ``torch.matmul`` of the same (B, d) x (d, N) shape. ``gemm_fraction`` =
  t_matmul / t_method; the trace needs two such products, so 0.5 is its ceiling;
- the same as rates: the trace does two (B, d + 2) x (d + 2, N) products, 4 B N (d + 2) floating-point operations
  (``trace_tflops``: that count over its time), the matmul 2 B N d (``matmul_tflops``); ``matmul_bound_fraction``
  is their ratio, the share of the matmul's rate that the trace reaches. Its bar (``bar``, ``meets_bar``) is
  0.3 at N = 1e5, d = 784.

Writes ``results/benchmarks/mixture.csv``.

    python benchmarks/bench_mixture.py [--device auto] [--dtype float32] [--quick | --gpu]

``--gpu`` measures the GPU-sized case only: d = 784, N = 1e5, B = 1024.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
import timing  # noqa: E402  (benchmarks/timing.py, next to this script)
import torch
from common import device_name as name_of  # noqa: E402  (benchmarks/common.py)

from dfcore import DiracMixture, get_schedule
from dfcore.device import resolve_device, resolve_dtype
from dfcore.io import write_csv

BAR, BAR_SIZE = 0.3, (784, 100_000)  # the trace reaches >= 30 % of the matmul's FLOP rate at d = 784, N = 1e5


def best_time(fn, device: torch.device, repeats: int = 3, min_time: float = 0.2) -> float:
    """Minimum over ``repeats`` rounds of the mean time per call (each round at least ``min_time``, at most 50 calls)."""
    return timing.best_time(fn, device, repeats, min_time=min_time, max_calls=50)


def autograd_trace_time(points, x, alpha, sigma, max_columns: int, device) -> tuple[float, int, torch.Tensor]:
    """Time the Hessian trace by double backward through the exact log-density."""
    d = x.shape[1]
    columns = min(d, max_columns)
    y_sq = points.pow(2).sum(1)

    def log_q(z: torch.Tensor) -> torch.Tensor:
        logits = -(z.pow(2).sum(1, keepdim=True) - 2 * alpha * z @ points.T + alpha**2 * y_sq) / (2 * sigma**2)
        return torch.logsumexp(logits, 1)

    def run() -> torch.Tensor:
        z = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(log_q(z).sum(), z, create_graph=True)
        diag = []
        for i in range(columns):
            (row,) = torch.autograd.grad(g[:, i].sum(), z, retain_graph=i < columns - 1)
            diag.append(row[:, i])
        return -torch.stack(diag, 1).sum(1)

    partial = run()
    seconds = best_time(run, device, repeats=1, min_time=0.0)
    return seconds * d / columns, columns, partial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", help="float32 (speed) or float64 (reference)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64, 784])
    parser.add_argument("--points", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--max-columns", type=int, default=8, help="autograd passes timed before scaling by d")
    parser.add_argument("--out", default="results/benchmarks/mixture.csv")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--gpu", action="store_true", help="the GPU-sized case only: d = 784, N = 1e5, B = 1024")
    args = parser.parse_args()
    if args.quick:
        args.dims, args.points, args.batch = [2, 64], [1_000], 64
    if args.gpu:
        args.dims, args.points, args.batch = [784], [100_000], 1024

    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    device_name = name_of(device)
    schedule = get_schedule("VP")
    t = 0.3
    gen = torch.Generator(device="cpu").manual_seed(0)
    rows = []
    for d in args.dims:
        for n in args.points:
            points = torch.rand(n, d, generator=gen).to(device=device, dtype=dtype) * 2 - 1
            mixture = DiracMixture(points)
            x0 = points[torch.randint(n, (args.batch,), generator=gen).to(device)]
            alpha, sigma = (float(c) for c in schedule(torch.tensor(t, dtype=torch.float64)))
            x = alpha * x0 + sigma * torch.randn(x0.shape, generator=gen).to(device=device, dtype=dtype)
            v = torch.randn(x.shape, generator=gen).to(device=device, dtype=dtype)

            t_trace = best_time(lambda: mixture.fisher_trace(x, t, schedule), device)
            t_vp = best_time(lambda: mixture.fisher_vp(x, t, v, schedule), device)
            t_gemm = best_time(lambda: x @ points.T, device)
            t_auto, cols, partial = autograd_trace_time(points, x, alpha, sigma, args.max_columns, device)
            # Check the two agree on the columns that were differentiated.
            if cols == d:
                err = ((mixture.fisher_trace(x, t, schedule) - partial).abs().max() / partial.abs().max()).item()
            else:
                err = math.nan
            trace_flops = 4.0 * args.batch * n * (d + 2)
            matmul_flops = 2.0 * args.batch * n * d
            bar = BAR if (d, n) == BAR_SIZE else math.nan
            row = {
                "device": device_name,
                "dtype": args.dtype,
                "d": d,
                "N": n,
                "B": args.batch,
                "fisher_trace_ms": 1e3 * t_trace,
                "fisher_vp_ms": 1e3 * t_vp,
                "autograd_trace_ms": 1e3 * t_auto,
                "autograd_columns_timed": cols,
                "autograd_extrapolated": cols < d,
                "matmul_ms": 1e3 * t_gemm,
                "speedup_trace_vs_autograd": t_auto / t_trace,
                "speedup_vp_vs_autograd_trace": t_auto / t_vp,
                "trace_gemm_fraction": t_gemm / t_trace,
                "vp_gemm_fraction": t_gemm / t_vp,
                "trace_rel_diff_vs_autograd": err,
                "trace_tflops": trace_flops / t_trace / 1e12,
                "matmul_tflops": matmul_flops / t_gemm / 1e12,
                "matmul_bound_fraction": (trace_flops / t_trace) / (matmul_flops / t_gemm),
                "bar": bar,
                "meets_bar": "" if math.isnan(bar) else str(trace_flops / t_trace >= bar * matmul_flops / t_gemm),
            }
            rows.append(row)
            print(
                f"d={d:4d} N={n:7d}: trace {row['fisher_trace_ms']:9.3f} ms, vp {row['fisher_vp_ms']:9.3f} ms, "
                f"autograd {row['autograd_trace_ms']:11.1f} ms{' (extrap.)' if cols < d else ''}, "
                f"speedup {row['speedup_trace_vs_autograd']:8.1f}x, GEMM fraction {row['trace_gemm_fraction']:.2f}, "
                f"{row['trace_tflops']:.3g} TFLOP/s = {row['matmul_bound_fraction']:.2f} of the matmul's rate",
                flush=True,
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(pd.DataFrame(rows), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
