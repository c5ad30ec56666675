r"""Table 3 of Wang et al. (2025) and its checks: the driver of the ``ot`` stage.

:func:`run_table3` runs Algorithm 2 (:func:`dfcore.ot.fundamental_matrix`) for every schedule x data
set of the ``ot`` config section, summarises the asymmetry index over the start points, confirms
the verdict (i) by the autograd Jacobian of the same Euler map and (ii) by the POT optimal-transport
gap, and writes the CSV, a markdown table laid out like the paper's, a seaborn heatmap, and Zarr
stores with the fundamental matrices and trajectories. :func:`run_convergence` measures the
asymmetry and the Alg. 2 vs autograd discrepancy against the step count.

Command line: ``python -m dfcore ot ...`` (:mod:`dfcore.cli`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
import xarray as xr
from tqdm.auto import tqdm

from dfcore.data.ot_mixtures import make_ot_mixture, sample_prior
from dfcore.device import resolve_device
from dfcore.experiments.common import Stopwatch, section_seed
from dfcore.io import provenance, write_csv, write_text, write_zarr
from dfcore.mixtures import DiracMixture, GaussianMixture, Mixture
from dfcore.ot import (
    ASYMMETRY_FLOOR,
    FundamentalResult,
    asymmetry_index,
    flow_jacobian,
    fundamental_matrix,
    min_sym_eigenvalue,
    pairing_gap,
)
from dfcore.ot_official import OfficialName, OfficialResult, OfficialSchedule, official_fundamental, official_start
from dfcore.plots import plot_ot_convergence, plot_table3_heatmap
from dfcore.schedules import Schedule, get_schedule
from dfcore.sde import time_grid

__all__ = ["is_affine", "run_table3", "run_convergence", "table3_markdown"]

log = logging.getLogger(__name__)

PAPER_TABLE3 = {"VE": 25.28, "VP": 23.36, "subVP": 13.84, "EDM": 27.09}  # non-affine Asym. (%), Table 3 of the paper


def is_affine(mixture: Mixture, tol: float = 1e-12) -> bool:
    """Whether the data are affine in the paper's sense: a single Gaussian, or Diracs on one line."""
    if isinstance(mixture, GaussianMixture):
        return mixture.num_components == 1
    if isinstance(mixture, DiracMixture):
        pts = mixture.points - mixture.points.mean(0)
        if mixture.num_points <= 2:
            return True
        sv = torch.linalg.svdvals(pts)
        return bool(sv[1] <= tol * max(sv[0].item(), 1e-300))
    return False


def _setup(
    ot_cfg: Mapping[str, Any], schedules_cfg: Mapping[str, Any], device: str
) -> tuple[torch.device, dict[str, Schedule]]:
    dev = resolve_device(device)
    schedules = {name: get_schedule(name, **dict(schedules_cfg.get(name, {}))) for name in ot_cfg["schedules"]}
    return dev, schedules


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1).clamp_min(1e-300)


def _asymmetry_floor(ot_cfg: Mapping[str, Any]) -> float:
    """The config's ot.asymmetry_floor (see dfcore.ot.asymmetry_index)."""
    return float(ot_cfg["asymmetry_floor"])


def _autograd_check(
    mixture: Mixture,
    schedule: Schedule,
    x_start: torch.Tensor,
    times: torch.Tensor,
    a_mat: torch.Tensor,
    floor: float = ASYMMETRY_FLOOR,
) -> tuple[float, torch.Tensor]:
    r"""Max relative error of Alg. 2's A against :math:`(\alpha_{end}/\alpha_1)^2 J^{-T}` (autograd), and index(J)."""
    _, jac = flow_jacobian(mixture, schedule, x_start, times)
    alpha = schedule(times[[0, -1]].to(x_start.dtype))[0]
    ref = (alpha[1] / alpha[0]) ** 2 * torch.linalg.inv(jac).transpose(-1, -2)
    return float(_relative_error(a_mat, ref).max()), asymmetry_index(jac, floor=floor)


def _table3_row(
    ot_cfg: Mapping[str, Any],
    s_name: str,
    d_name: str,
    mixture: Any,
    res: OfficialResult | FundamentalResult,
    checks: dict[str, Any],
    floor: float,
) -> dict[str, Any]:
    """The row of Table 3 of one (schedule, data set) pair from Alg. 2's result and the ``checks`` of
    :func:`_table3_pair` (asymmetry, eigenvalues, POT gap, autograd check, timers)."""
    official = checks["official"]
    tol, pot_tol = float(ot_cfg["tolerance"]), float(ot_cfg["pot_tolerance"])
    asym, lam, gap, n_auto = checks["asym"], checks["lam"], checks["gap"], checks["autograd_starts"]
    auto_err, auto_asym = checks["autograd_rel_err"], checks["autograd_asym"]
    monge = bool((asym <= tol).all() and (lam > 0).all())
    pot_optimal = gap["relative_gap"] <= pot_tol
    auto_monge = bool((auto_asym <= tol).all()) if n_auto > 0 else None
    inv_t = torch.linalg.inv(res.fundamental).transpose(-1, -2)  # proportional to J
    return {
        "schedule": s_name,
        "dataset": d_name,
        "kind": ot_cfg["datasets"][d_name]["kind"],
        "affine_data": is_affine(mixture),
        "dim": int(ot_cfg["dim"]),
        "num_starts": int(ot_cfg["num_starts"]),
        "num_steps": int(ot_cfg["num_steps"]),
        "protocol": "official" if official else "ours",
        "spacing": "ddim_linspace" if official else ot_cfg["spacing"],
        "update": "euler" if official else ot_cfg["update"],
        "t_min": checks["t_min"],
        "asym_mean": float(asym.mean()),
        "asym_median": float(asym.median()),
        "asym_max": float(asym.max()),
        "frac_above_tol": float((asym > tol).double().mean()),
        "asym_full_mean": float(asymmetry_index(res.fundamental, zero_diagonal=False, floor=floor).mean()),
        "asym_jacobian_mean": float(asymmetry_index(inv_t, floor=floor).mean()),
        "frac_sym_pd": float((lam > 0).double().mean()),
        "min_sym_eig": float(lam.min()),
        "min_step_eig": float(res.min_step_eigenvalue.min()),
        "verdict": "Monge" if monge else "not Monge",
        "pot_points": checks["pot_points"],
        "pot_pairing_cost": gap["pairing_cost"],
        "pot_optimal_cost": gap["optimal_cost"],
        "pot_gap": gap["gap"],
        "pot_rel_gap": gap["relative_gap"],
        "pot_verdict": "optimal" if pot_optimal else "not optimal",
        "autograd_starts": min(n_auto, int(ot_cfg["num_starts"])),
        "autograd_rel_err": auto_err,
        "autograd_asym_mean": float(auto_asym.mean()),
        "autograd_verdict": None if auto_monge is None else ("Monge" if auto_monge else "not Monge"),
        "verdicts_agree": (monge == pot_optimal) and (auto_monge is None or auto_monge == monge),
        "seconds_alg2": checks["alg2"].seconds,
        "seconds_pot": checks["pot"].seconds,
        "seconds_autograd": checks["autograd"].seconds,
    }


def _table3_pair(
    ot_cfg: Mapping[str, Any], s_name: str, schedule: Schedule, mixture: Any, *, seed: int, dev: torch.device
) -> tuple[OfficialResult | FundamentalResult, dict[str, Any]]:
    """Alg. 2 on one (schedule, data set) pair (``ot_cfg["protocol"]``: ``ours`` or ``official``), then its checks:
    the asymmetry and smallest symmetric eigenvalue of A, the POT pairing gap and the autograd check, each timed."""
    official = ot_cfg["protocol"] == "official"
    dim, n_starts, n_steps = int(ot_cfg["dim"]), int(ot_cfg["num_starts"]), int(ot_cfg["num_steps"])
    keep, floor = int(ot_cfg["keep_paths"]), _asymmetry_floor(ot_cfg)
    res: OfficialResult | FundamentalResult
    if official:
        schedule = OfficialSchedule(cast(OfficialName, s_name))  # OfficialSchedule checks the name
        x_start = official_start(n_starts, dim, seed=seed + 1, device=dev)
        mixture.to(device=dev, dtype=torch.float32)
        with Stopwatch(dev) as alg2:
            res = official_fundamental(mixture, schedule, x_start, n_steps, keep=keep)
            times, t_min = res.times, 0.0
            asym, lam = asymmetry_index(res.fundamental, floor=floor), min_sym_eigenvalue(res.fundamental)
    else:
        t_min = float(ot_cfg["t_min"][s_name])
        times = time_grid(n_steps, t_min, spacing=ot_cfg["spacing"], rho=float(ot_cfg["rho"]), schedule=schedule)
        x_start = sample_prior(mixture, schedule, n_starts, seed=seed + 1, device=dev)  # CPU generator
        mixture.to(device=dev)
        with Stopwatch(dev) as alg2:
            res = fundamental_matrix(mixture, schedule, x_start, times, update=ot_cfg["update"], keep=keep)
            asym, lam = asymmetry_index(res.fundamental, floor=floor), min_sym_eigenvalue(res.fundamental)
    with Stopwatch(dev) as pot:
        n_pot = min(n_starts, int(ot_cfg["pot_max_points"]))
        gap = pairing_gap(res.x_start[:n_pot], res.x_end[:n_pot])
    # Protocol official has no autograd check: its last DDIM step lands on sigma = 0 for VE and EDM, where the
    # map is the posterior mean and its Jacobian is singular, and its subVP A is not the Jacobian flow of its map.
    n_auto = 0 if official else int(ot_cfg["autograd_starts"])
    auto_err, auto_asym = math.nan, torch.full((1,), math.nan)
    with Stopwatch(dev) as autograd:
        if n_auto > 0:
            m = min(n_auto, n_starts)
            auto_err, auto_asym = _autograd_check(mixture, schedule, x_start[:m], times, res.fundamental[:m], floor)
    checks = {
        "official": official,
        "t_min": t_min,
        "asym": asym,
        "lam": lam,
        "gap": gap,
        "pot_points": n_pot,
        "autograd_starts": n_auto,
        "autograd_rel_err": auto_err,
        "autograd_asym": auto_asym,
        "alg2": alg2,
        "pot": pot,
        "autograd": autograd,
    }
    return res, checks


def run_table3(
    ot_cfg: Mapping[str, Any],
    schedules_cfg: Mapping[str, Any],
    *,
    seed: int = 0,
    device: str = "auto",
    csv_path: str | Path,
    markdown_path: str | Path,
    heatmap_path: str | Path,
    fundamental_zarr: str | Path,
    paths_zarr: str | Path,
    config: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Table 3: every schedule x data set of ``ot_cfg``; returns the table (one row per pair).

    ``ot_cfg["protocol"]`` selects Alg. 2's procedure: ``ours`` (:func:`dfcore.ot.fundamental_matrix`) or
    ``official`` (:func:`dfcore.ot_official.official_fundamental`, the authors' published procedure).
    """
    dev, schedules = _setup(ot_cfg, schedules_cfg, device)
    dim, keep, floor = int(ot_cfg["dim"]), int(ot_cfg["keep_paths"]), _asymmetry_floor(ot_cfg)
    datasets = {name: make_ot_mixture(spec, dim, section_seed(seed, spec)) for name, spec in ot_cfg["datasets"].items()}
    rows: list[dict[str, Any]] = []
    finals: dict[str, list[xr.Dataset]] = {}
    alg2_wall = alg2_cpu = 0.0
    pairs = [(s, d) for s in schedules for d in datasets]
    with Stopwatch(dev) as total:
        for s_name, d_name in tqdm(pairs, desc="Table 3", disable=not progress):
            mixture = datasets[d_name].to(device="cpu", dtype=torch.float64)
            res, checks = _table3_pair(ot_cfg, s_name, schedules[s_name], mixture, seed=seed, dev=dev)
            alg2_wall += checks["alg2"].seconds
            alg2_cpu += checks["alg2"].cpu_seconds
            rows.append(_table3_row(ot_cfg, s_name, d_name, mixture, res, checks, floor))
            log.info(
                "%s/%s: asym mean %.4g, POT rel gap %.3g, autograd rel err %.3g",
                s_name,
                d_name,
                checks["asym"].mean(),
                checks["gap"]["relative_gap"],
                checks["autograd_rel_err"],
            )
            finals.setdefault(s_name, []).append(
                _final_dataset(res, checks["asym"], checks["lam"], d_name, keep, floor)
            )
    wall, cpu = total.seconds, total.cpu_seconds
    table = pd.DataFrame(rows)
    attrs = provenance(config=dict(config) if config is not None else dict(ot_cfg), seed=seed)
    write_csv(table, csv_path, float_format="%.6g")
    timing = {
        "alg2_wall_s": alg2_wall,
        "alg2_cpu_s": alg2_cpu,
        "total_wall_s": wall,
        "total_cpu_s": cpu,
        "threads": torch.get_num_threads(),
    }
    write_text(table3_markdown(table, timing), markdown_path)
    _write_stores(finals, schedules, ot_cfg, fundamental_zarr, paths_zarr, attrs)
    plot_table3_heatmap(table, heatmap_path)
    log.info(
        "Table 3: Alg. 2 %.2f s wall (%.2f s CPU), everything %.2f s wall (%.2f s CPU)", alg2_wall, alg2_cpu, wall, cpu
    )
    return table


def _final_dataset(
    res: Any, asym: torch.Tensor, lam: torch.Tensor, d_name: str, keep: int, floor: float = ASYMMETRY_FLOOR
) -> xr.Dataset:
    def np_(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy()

    kept_asym = asymmetry_index(res.fundamental_path, floor=floor) if keep else res.fundamental_path[..., 0, 0]
    return xr.Dataset(
        {
            "x_start": (("start", "dim"), np_(res.x_start)),
            "x_end": (("start", "dim"), np_(res.x_end)),
            "fundamental": (("start", "row", "col"), np_(res.fundamental)),
            "asymmetry": (("start",), np_(asym)),
            "min_sym_eig": (("start",), np_(lam)),
            "min_step_eig": (("start",), np_(res.min_step_eigenvalue)),
            "path": (("kept", "step", "dim"), np_(res.path)),
            "fundamental_path": (("kept", "step", "row", "col"), np_(res.fundamental_path)),
            "asymmetry_path": (("kept", "step"), np_(kept_asym)),
            "t": (("step",), np_(res.times)),
        }
    ).expand_dims(dataset=[d_name])


def _write_stores(
    finals: dict[str, list[xr.Dataset]],
    schedules: Mapping[str, Schedule],
    ot_cfg: Mapping[str, Any],
    fundamental_zarr: str | Path,
    paths_zarr: str | Path,
    attrs: dict[str, Any],
) -> None:
    per_schedule = [xr.concat(parts, dim="dataset").expand_dims(schedule=[name]) for name, parts in finals.items()]
    ds = xr.concat(per_schedule, dim="schedule")
    grid = ds["t"].isel(dataset=0, drop=True)  # the grid depends on the schedule only
    ds = ds.drop_vars("t").assign_coords(t=grid, t_min=grid.isel(step=-1, drop=True))
    ds["t"].attrs.update(units="1", long_name="diffusion time t (grid from 1 down to t_min)")
    ds["fundamental"].attrs.update(
        long_name="Alg. 2 fundamental matrix A at t_min", note="A = (alpha_tmin/alpha_1)^2 J^{-T} of the Euler flow map"
    )
    ds["asymmetry"].attrs.update(
        long_name="||O - O^T||_F / (sqrt2 ||O||_F), O = A with zeroed diagonal; 0 where ||O||_F <= floor ||A||_F",
        floor=_asymmetry_floor(ot_cfg),
    )
    ds["min_sym_eig"].attrs.update(long_name="smallest eigenvalue of (A + A^T)/2 divided by ||A||_2")
    ds["x_start"].attrs.update(long_name="start points x_1 ~ q_1")
    ds["x_end"].attrs.update(long_name="pushed points x_tmin (Euler PF-ODE)")
    official = ot_cfg["protocol"] == "official"
    store_attrs = {
        **attrs,
        "protocol": "official" if official else "ours",
        "update": "euler" if official else ot_cfg["update"],
        "spacing": "ddim_linspace" if official else ot_cfg["spacing"],
        "schedule_params": {k: v.params() for k, v in schedules.items()},
    }
    final_vars = ["x_start", "x_end", "fundamental", "asymmetry", "min_sym_eig", "min_step_eig"]
    write_zarr(ds[final_vars].drop_vars(["t", "step"], errors="ignore"), fundamental_zarr, attrs=store_attrs)
    write_zarr(ds[["path", "fundamental_path", "asymmetry_path"]], paths_zarr, attrs=store_attrs)


def _fmt_pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def table3_markdown(table: pd.DataFrame, timing: Mapping[str, float] | None = None) -> str:
    """A markdown Table 3: the paper's layout (data x schedule, Asym. in %) and the full per-row table."""
    lines = ["# Table 3: is the PF-ODE map an optimal-transport (Monge) map?", ""]
    lines += [
        "Mean asymmetry index of Alg. 2's fundamental matrix over the start points (in %), with the verdict "
        "(Monge = every start below the tolerance and a positive-definite symmetric part). Paper (Wang et al., 2025): "
        + ", ".join(f"{k} {v:.2f} %" for k, v in PAPER_TABLE3.items())
        + " for non-affine data, 0.00 % for single-Gaussian and affine data.",
        "",
    ]
    wide = table.assign(cell=[f"{_fmt_pct(a)} ({v})" for a, v in zip(table["asym_mean"], table["verdict"])])
    wide = wide.pivot(index="dataset", columns="schedule", values="cell")
    wide = wide.reindex(index=list(dict.fromkeys(table["dataset"])), columns=list(dict.fromkeys(table["schedule"])))
    lines += [wide.to_markdown(), "", "## All rows", ""]
    cols = {
        "schedule": "schedule",
        "dataset": "data",
        "affine_data": "affine",
        "asym_mean": "asym mean",
        "asym_median": "asym median",
        "frac_above_tol": "frac > tol",
        "verdict": "verdict",
        "frac_sym_pd": "frac sym PD",
        "pot_rel_gap": "POT rel. gap",
        "pot_verdict": "POT",
        "autograd_rel_err": "Alg.2 vs autograd",
        "verdicts_agree": "agree",
        "num_steps": "steps",
    }
    short = table[list(cols)].rename(columns=cols)
    for c in ("asym mean", "asym median"):
        short[c] = [_fmt_pct(v) for v in short[c]]
    lines += [short.to_markdown(index=False, floatfmt=".3g"), ""]
    if timing:
        lines += [
            f"Alg. 2 for all {len(table)} rows: {timing['alg2_wall_s']:.2f} s wall, {timing['alg2_cpu_s']:.2f} s CPU "
            f"({timing['threads']} torch threads); with the POT and autograd checks and outputs: "
            f"{timing['total_wall_s']:.2f} s wall, {timing['total_cpu_s']:.2f} s CPU.",
            "",
        ]
    return "\n".join(lines)


def run_convergence(
    ot_cfg: Mapping[str, Any],
    schedules_cfg: Mapping[str, Any],
    *,
    seed: int = 0,
    device: str = "auto",
    csv_path: str | Path,
    plot_path: str | Path,
    progress: bool = True,
) -> pd.DataFrame:
    """Asymmetry (mean over starts) and Alg. 2 vs autograd relative error against the step count, for both updates."""
    conv = ot_cfg["convergence"]
    dev, schedules = _setup(ot_cfg, schedules_cfg, device)
    dim = int(ot_cfg["dim"])
    floor = _asymmetry_floor(ot_cfg)
    rows = []
    jobs = [(s, d, n, u) for s in schedules for d in conv["datasets"] for n in conv["steps"] for u in conv["updates"]]
    for s_name, d_name, n_steps, update in tqdm(jobs, desc="OT convergence", disable=not progress):
        if d_name not in ot_cfg["datasets"]:
            raise ValueError(f"ot.convergence.datasets names {d_name!r}, which is not in ot.datasets")
        spec = ot_cfg["datasets"][d_name]
        schedule = schedules[s_name]
        mixture = make_ot_mixture(spec, dim, section_seed(seed, spec))
        times = time_grid(
            int(n_steps),
            float(ot_cfg["t_min"][s_name]),
            spacing=ot_cfg["spacing"],
            rho=float(ot_cfg["rho"]),
            schedule=schedule,
        )
        x_start = sample_prior(mixture, schedule, int(conv["num_starts"]), seed=seed + 1, device=dev)
        mixture.to(device=dev, dtype=torch.float64)
        w0 = time.perf_counter()
        res = fundamental_matrix(mixture, schedule, x_start, times, update=update)
        seconds = time.perf_counter() - w0
        asym = asymmetry_index(res.fundamental, floor=floor)
        m = min(int(conv["autograd_starts"]), x_start.shape[0])
        err = _autograd_check(mixture, schedule, x_start[:m], times, res.fundamental[:m], floor)[0] if m else math.nan
        rows.append(
            {
                "schedule": s_name,
                "dataset": d_name,
                "num_steps": int(n_steps),
                "update": update,
                "asym_mean": float(asym.mean()),
                "asym_median": float(asym.median()),
                "autograd_rel_err": err,
                "min_step_eig": float(res.min_step_eigenvalue.min()),
                "seconds_alg2": seconds,
            }
        )
    table = pd.DataFrame(rows)
    write_csv(table, csv_path, float_format="%.6g")
    plot_ot_convergence(table, plot_path)
    return table
