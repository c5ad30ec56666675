"""Seconds per NLL (PF-ODE + Eq. 14) of DF-TM against the exact VJP trace, at d = 64 and d = 256, same solver.

Every method integrates the same ODE with the same fixed-step RK4 grid (``--steps`` steps, 4 evaluations each), so
they make the same number of network evaluations and the ratios are per-evaluation cost ratios of the trace:
``vjp`` needs the d VJPs of the denoiser (vectorised), ``dftm`` one pass of the trace network (its own backbone,
``share_trunk: false``), ``dftm_shared`` a head of width ``--head-hidden`` on the denoiser's own trunk
(``share_trunk: true``, as ``config/likelihood_dftm.yaml`` trains it: the drift's pass also gives the trace),
``hutchinson1/4/16`` one VJP per probe, and ``floor`` no trace at all (:class:`~dfcore.fisher.trace.ZeroTrace`: the denoiser's forward passes of the ODE solve alone, the
unit of ``time_vs_floor``). The networks are the likelihood stage's MLP denoiser (width 256, 4 blocks) with random
weights: the cost does not depend on training. Batches of 1 point (one NLL at a time), 16 and 128 (a test set
evaluated in batches). On a CPU a batch of one is latency-bound: two small MLP passes cost nearly what the d VJPs
cost when vmap stacks them into one batch of d rows, so the ratio grows with the batch until both sides are
GEMM-bound. The bars of the likelihood benchmark are a ratio vjp/dftm of at least 10 at d = 64 and 30 at d = 256.

Each time is the median of ``--repeats`` solves after one untimed warm-up on the same batch
(:func:`dfcore.experiments.common.median_seconds`), as in the likelihood stage. ``--solver dopri5`` integrates as the
likelihood stage does instead (rtol = atol = 1e-5, ``step_control: state``: the steps are set by x alone, so every
method still makes the same evaluations, and the solver's own work per step is included). ``--methods`` picks rows;
the floor always runs. The ``hutchinson1`` row's ``time_vs_floor`` bounds what any trace can save against it: a
trace that cost nothing beyond the drift would run at 1/time_vs_floor of one-probe Hutchinson's time.

Writes results/benchmarks/likelihood.csv, with the device's name (or ``cpu``) in its ``device`` column. Run:
``python benchmarks/bench_likelihood.py`` (about 10 minutes on 2 cores); ``--gpu`` (with ``--device auto``)
measures batch 128 only, the GPU-sized case.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
import torch
from common import device_name  # noqa: E402  (benchmarks/common.py)

from dfcore.device import resolve_device
from dfcore.experiments.common import median_seconds
from dfcore.experiments.likelihood_methods import FLOOR_METHOD, own_estimator
from dfcore.io import write_csv
from dfcore.likelihood import gaussian_log_prior, log_likelihood
from dfcore.models.networks import trace_model_from_state

BARS = {64: 10.0, 256: 30.0}
METHODS = (FLOOR_METHOD, "dftm", "dftm_shared", "hutchinson1", "hutchinson4", "hutchinson16", "vjp")


def _models(dim: int, device: torch.device, head_hidden: int = 128):
    hp = {"dim": dim, "hidden": 256, "layers": 4, "emb_dim": 64, "fourier_levels": 0}
    state = {
        "kind": "denoiser",
        "arch": "mlp",
        "hparams": hp,
        "schedule": {"name": "VP", "params": {}},
        "prediction": "x0",
        "sigma_data": 0.5,
        "state_dict": None,
    }
    torch.manual_seed(0)
    trace = trace_model_from_state(
        {"kind": "trace", "share_trunk": False, "hparams": {}, "denoiser": state, "state_dict": None}, device
    )
    head = {"kind": "trace", "share_trunk": True, "hparams": {"head_hidden": head_hidden}, "state_dict": None}
    shared = trace_model_from_state({**head, "denoiser": state}, device, denoiser=trace.denoiser)
    return trace.denoiser, {"dftm": trace, "dftm_shared": shared}


def bench(
    dim: int, batch: int, steps: int, repeats: int, device: torch.device, solver: str, methods: list[str], head: int
) -> list[dict]:
    den, traces = _models(dim, device, head)
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    # dopri5 as the likelihood stage runs it; rk4 on a fixed grid of ``steps`` steps
    solve = {"solver": "dopri5", "step_control": "state"} if solver == "dopri5" else {"solver": "rk4"}
    rows = []
    for method in [FLOOR_METHOD, *(m for m in methods if m != FLOOR_METHOD)]:
        trace = traces.get(method, traces["dftm"])
        estimator = own_estimator("dftm" if method in traces else method, {"denoiser": den, "trace_model": trace})

        def run():
            return log_likelihood(
                x, estimator, log_prior=gaussian_log_prior(den.schedule), t_min=1e-4, num_steps=steps, **solve
            )

        out, seconds, _ = median_seconds(run, device, repeats)
        rows.append(
            {
                "dim": dim,
                "batch": batch,
                "method": method,
                "solver": solver,
                "steps": steps if solver == "rk4" else None,
                "nfe": out.nfe,
                "repeats": repeats,
                "seconds_per_nll": seconds / batch,
                "device": device_name(device),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="timed solves per method; the median is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: least disturbed on a shared machine)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 128])
    parser.add_argument("--gpu", action="store_true", help="batch 128 only (the GPU-sized case)")
    parser.add_argument("--solver", choices=["rk4", "dopri5"], default="rk4")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--head-hidden", type=int, default=128, help="width of dftm_shared's head")
    parser.add_argument("--out", default="results/benchmarks/likelihood.csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    batches = [128] if args.gpu else args.batches
    rows = []
    for dim in (64, 256):
        for batch in batches:
            rows += bench(dim, batch, args.steps, args.repeats, device, args.solver, args.methods, args.head_hidden)
    frame = pd.DataFrame(rows)
    base = frame[frame["method"] == "dftm"].set_index(["dim", "batch"])["seconds_per_nll"]
    floor = frame[frame["method"] == FLOOR_METHOD].set_index(["dim", "batch"])["seconds_per_nll"]
    frame["ratio_to_dftm"] = [r.seconds_per_nll / base.get((r.dim, r.batch), math.nan) for r in frame.itertuples()]
    frame["time_vs_floor"] = [r.seconds_per_nll / floor[(r.dim, r.batch)] for r in frame.itertuples()]
    # the bar applies to the vjp rows (their ratio is vjp seconds over dftm seconds); blank elsewhere
    frame["bar"] = [BARS[r.dim] if r.method == "vjp" else float("nan") for r in frame.itertuples()]
    frame["meets_bar"] = [str(bool(r.ratio_to_dftm >= r.bar)) if r.method == "vjp" else "" for r in frame.itertuples()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_csv(frame, args.out)
    print(frame.to_string(index=False))


if __name__ == "__main__":
    main()
