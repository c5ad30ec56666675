r"""Table 3 under both protocols side by side: the driver of ``results/ot/protocols.csv``.

For every protocol (``official``: the authors' published procedure, :mod:`dfcore.ot_official`; ``ours``:
Alg. 2 of :mod:`dfcore.ot` with the ``ot`` section's grid, update and t_min, float64), schedule, data set and
step count of ``ot.protocols``, the asymmetry index :math:`\|O - O^\top\|_F / (\sqrt2 \|O\|_F)` of the
fundamental matrix A (diagonal zeroed) is summarised over the start points by its mean, median and the
Monte Carlo standard error of the mean, :math:`\mathrm{sd}/\sqrt n`.

:func:`protocol_table` computes the table (no file output); :func:`run_protocols` writes the CSV and a figure.

Command line: ``python -m dfcore ot protocols`` (:mod:`dfcore.cli`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pandas as pd
import torch
from tqdm.auto import tqdm

from dfcore.data.ot_mixtures import make_ot_mixture, sample_prior
from dfcore.device import resolve_device
from dfcore.experiments.common import section_seed
from dfcore.experiments.ot import PAPER_TABLE3
from dfcore.io import write_csv
from dfcore.ot import FundamentalResult, asymmetry_index, fundamental_matrix
from dfcore.ot_official import OfficialName, OfficialResult, OfficialSchedule, official_fundamental, official_start
from dfcore.plots import plot_ot_protocols
from dfcore.schedules import get_schedule
from dfcore.sde import time_grid

__all__ = ["PROTOCOLS", "PAPER_TABLE3", "protocol_asymmetry", "protocol_table", "run_protocols"]

log = logging.getLogger(__name__)

PROTOCOLS = ("official", "ours")
COLUMNS = [
    "protocol",
    "schedule",
    "data",
    "num_steps",
    "num_starts",
    "asymmetry_mean",
    "asymmetry_median",
    "asymmetry_sem",
]


def protocol_asymmetry(
    protocol: str,
    schedule_name: str,
    spec: Mapping[str, Any],
    num_steps: int,
    num_starts: int,
    ot_cfg: Mapping[str, Any],
    schedules_cfg: Mapping[str, Any],
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Per-start asymmetry index (num_starts,) of one protocol on one schedule and data set.

    ``official``: :func:`~dfcore.ot_official.official_fundamental` on ``num_steps`` DDIM timesteps, starts
    N(0, I), float32. ``ours``: :func:`~dfcore.ot.fundamental_matrix` with ``num_steps`` Euler steps on the
    ``ot.spacing`` grid down to ``ot.t_min``, update ``ot.update``, starts from q_1, float64.
    Both draw their starts with the seed ``seed + 1``, as Table 3 does.
    """
    dim = int(ot_cfg["dim"])
    mixture = make_ot_mixture(spec, dim, section_seed(seed, spec))
    if protocol == "official":
        x_start = official_start(num_starts, dim, seed=seed + 1, device=device)
        mixture.to(device=device, dtype=torch.float32)
        # OfficialSchedule checks the name at run time
        res: OfficialResult | FundamentalResult = official_fundamental(
            mixture, OfficialSchedule(cast(OfficialName, schedule_name)), x_start, num_steps
        )
        return asymmetry_index(res.fundamental)
    if protocol != "ours":
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {list(PROTOCOLS)}")
    schedule = get_schedule(schedule_name, **dict(schedules_cfg.get(schedule_name, {})))
    times = time_grid(
        num_steps,
        float(ot_cfg["t_min"][schedule_name]),
        spacing=ot_cfg["spacing"],
        rho=float(ot_cfg["rho"]),
        schedule=schedule,
    )
    mixture.to(device="cpu", dtype=torch.float64)
    x_start = sample_prior(mixture, schedule, num_starts, seed=seed + 1, device=device)
    mixture.to(device=device)
    res = fundamental_matrix(mixture, schedule, x_start, times, update=ot_cfg["update"])
    return asymmetry_index(res.fundamental)


def protocol_table(
    ot_cfg: Mapping[str, Any],
    schedules_cfg: Mapping[str, Any],
    *,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> pd.DataFrame:
    """Every protocol x ``ot.schedules`` x ``ot.protocols.datasets`` x ``ot.protocols.steps``: one row each (columns ``COLUMNS``)."""
    cfg = ot_cfg["protocols"]
    steps, starts = [int(s) for s in cfg["steps"]], [int(n) for n in cfg["num_starts"]]
    if len(starts) != len(steps):
        raise ValueError(f"ot.protocols.num_starts has {len(starts)} entries but ot.protocols.steps has {len(steps)}")
    missing = [d for d in cfg["datasets"] if d not in ot_cfg["datasets"]]
    if missing:
        raise ValueError(f"ot.protocols.datasets names {missing}, which are not in ot.datasets")
    dev = resolve_device(device)
    jobs = [
        (p, s, d, n, m)
        for p in PROTOCOLS
        for s in ot_cfg["schedules"]
        for d in cfg["datasets"]
        for n, m in zip(steps, starts)
    ]
    rows = []
    for protocol, s_name, d_name, n_steps, n_starts in tqdm(jobs, desc="OT protocols", disable=not progress):
        asym = (
            protocol_asymmetry(
                protocol,
                s_name,
                ot_cfg["datasets"][d_name],
                n_steps,
                n_starts,
                ot_cfg,
                schedules_cfg,
                seed=seed,
                device=dev,
            )
            .double()
            .cpu()
        )
        rows.append(
            {
                "protocol": protocol,
                "schedule": s_name,
                "data": d_name,
                "num_steps": n_steps,
                "num_starts": n_starts,
                "asymmetry_mean": float(asym.mean()),
                "asymmetry_median": float(asym.median()),
                "asymmetry_sem": float(asym.std() / math.sqrt(n_starts)),
            }
        )
        log.info(
            "%s %s/%s %d steps: asymmetry mean %.4f (sem %.4f)",
            protocol,
            s_name,
            d_name,
            n_steps,
            rows[-1]["asymmetry_mean"],
            rows[-1]["asymmetry_sem"],
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def run_protocols(
    ot_cfg: Mapping[str, Any],
    schedules_cfg: Mapping[str, Any],
    *,
    seed: int = 0,
    device: str = "cpu",
    csv_path: str | Path,
    plot_path: str | Path,
    progress: bool = True,
) -> pd.DataFrame:
    """Compute :func:`protocol_table` and write it to ``csv_path`` and a figure to ``plot_path``."""
    table = protocol_table(ot_cfg, schedules_cfg, seed=seed, device=device, progress=progress)
    write_csv(table, csv_path, float_format="%.6g")
    plot_ot_protocols(table, plot_path, PAPER_TABLE3)
    return table
