"""Benchmark: run time of Table 3 (Alg. 2, 4 schedules x 3 data sets x 1,000 start points), side by side.

In one process, from the ``ot`` section of a config (default ``config/config.yaml``):

- ``table3``: Alg. 2 for every schedule x {single_gaussian, affine, non_affine}, vectorised over the
  start points, with the configured update, wall and CPU seconds (CPU = user + system of this process;
  report both since the machine may be shared);
- the same with the other update (``adjoint`` vs ``euler``), ratio to the first;
- ``loop``: Alg. 2 called once per start point for ``--loop-starts`` starts, scaled to ``num_starts``,
  ratio to the vectorised run (what the batching buys);
- ``pot``: one exact OT problem (``ot.emd2``) on ``num_starts`` pushed points.

Writes ``results/benchmarks/ot.csv`` (the ``device`` column names the GPU, or ``cpu``).

    python benchmarks/bench_ot.py [--config config/config.yaml] [--loop-starts 5]
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import pandas as pd
import torch
from common import device_name  # noqa: E402  (benchmarks/common.py)

from dfcore.config import load_config
from dfcore.data.ot_mixtures import make_ot_mixture, sample_prior
from dfcore.device import resolve_device
from dfcore.io import write_csv
from dfcore.ot import fundamental_matrix, pairing_gap
from dfcore.schedules import get_schedule
from dfcore.sde import time_grid

TABLE3_DATASETS = ["single_gaussian", "affine", "non_affine"]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_alg2(ot_cfg, schedules_cfg, device, update: str, starts: int | None = None, one_by_one: bool = False):
    """Alg. 2 over schedule x Table 3 data; returns (wall s, CPU s, last result)."""
    wall = cpu = 0.0
    res = None
    for s_name in ot_cfg["schedules"]:
        schedule = get_schedule(s_name, **schedules_cfg.get(s_name, {}))
        times = time_grid(
            ot_cfg["num_steps"],
            ot_cfg["t_min"][s_name],
            spacing=ot_cfg["spacing"],
            rho=ot_cfg["rho"],
            schedule=schedule,
        )
        for d_name in TABLE3_DATASETS:
            mixture = make_ot_mixture(ot_cfg["datasets"][d_name], ot_cfg["dim"])
            x1 = sample_prior(mixture, schedule, starts or ot_cfg["num_starts"], seed=1, device=device)
            mixture.to(device=device, dtype=torch.float64)
            w0, c0 = time.perf_counter(), cpu_seconds()
            if one_by_one:
                for i in range(x1.shape[0]):
                    res = fundamental_matrix(mixture, schedule, x1[i : i + 1], times, update=update)
            else:
                res = fundamental_matrix(mixture, schedule, x1, times, update=update)
            wall += time.perf_counter() - w0
            cpu += cpu_seconds() - c0
    return wall, cpu, res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--loop-starts", type=int, default=5)
    parser.add_argument("--out", default="results/benchmarks/ot.csv")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the rules use 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    ot_cfg, device = cfg["ot"], resolve_device(cfg["device"])
    n = ot_cfg["num_starts"]
    rows = []
    base = ot_cfg["update"]
    other = "euler" if base == "adjoint" else "adjoint"
    run_alg2(ot_cfg, cfg["schedules"], device, base, starts=8)  # warm-up (imports, allocator)
    wall, cpu, res = run_alg2(ot_cfg, cfg["schedules"], device, base)
    rows.append({"case": f"table3 ({base})", "wall_s": wall, "cpu_s": cpu, "ratio_to_table3": 1.0})
    w2, c2, _ = run_alg2(ot_cfg, cfg["schedules"], device, other)
    rows.append({"case": f"table3 ({other})", "wall_s": w2, "cpu_s": c2, "ratio_to_table3": w2 / wall})
    w3, c3, _ = run_alg2(ot_cfg, cfg["schedules"], device, base, starts=args.loop_starts, one_by_one=True)
    scale = n / args.loop_starts
    rows.append(
        {
            "case": f"loop over starts ({base}, scaled from {args.loop_starts})",
            "wall_s": w3 * scale,
            "cpu_s": c3 * scale,
            "ratio_to_table3": w3 * scale / wall,
        }
    )
    w0, c0 = time.perf_counter(), cpu_seconds()
    pairing_gap(res.x_start, res.x_end)
    rows.append(
        {
            "case": f"one ot.emd2 on {n} points",
            "wall_s": time.perf_counter() - w0,
            "cpu_s": cpu_seconds() - c0,
            "ratio_to_table3": float("nan"),
        }
    )
    table = pd.DataFrame(rows).assign(
        schedules=len(ot_cfg["schedules"]),
        datasets=len(TABLE3_DATASETS),
        num_starts=n,
        num_steps=ot_cfg["num_steps"],
        torch_threads=torch.get_num_threads(),
        device=device_name(device),
        cpu=platform.processor() or platform.machine(),
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_csv(table, args.out, float_format="%.4g")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
