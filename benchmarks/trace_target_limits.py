"""How low each ground-truth-free DF-TM row of Table 2 can go: the Table 2 error of each target's regression optimum.

A trace net trained on target T converges, with unlimited steps and capacity, to E[T | x_t] under the training
data's posterior (:mod:`dfcore.trace_limits`). For Table 2's data set (the checkerboard's N training points, a
Dirac mixture) that optimum has a closed form in the workflow's own denoiser, so its error at every t of Table 2
is the floor that no training budget goes below. This script evaluates, on Table 2's test points and seed (the
``trace_error`` section of the config, so its VJP, DF-TM and Hutchinson rows reproduce
``results/trace_error/<dataset>_<schedule>.csv``):

- the rows of Table 2, the trained nets of ``trace_error.trace_targets`` included;
- ``optimum_<target>`` for sq_norm, residual and divergence (divergence's optimum is the VJP trace itself);
- the paper's DF-TM row and the bar of twice it;
- with ``--denoisers``, the VJP and optimum rows of other denoisers of the same data set (e.g. trained longer),
  named ``<file stem>:<estimator>``: how the floors move with the denoiser's accuracy; with ``--trace-nets``, the
  same for the denoiser of each trace net given, and that net's DF-TM row.

Writes ``trace_target_limits.csv`` (estimator, t, rel_error in %, as Table 2) and ``trace_target_limits.md`` to
``--out`` (default ``<results>/benchmarks``). Run after ``make run``:
``python benchmarks/trace_target_limits.py --results results``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd
import xarray as xr

from dfcore.config import load_config
from dfcore.data.store import load_mixture
from dfcore.experiments.common import section_seed
from dfcore.experiments.trace_error import PAPER_TABLE2, dftm_label, section_trace_errors
from dfcore.io import write_csv, write_text
from dfcore.mixtures import Mixture
from dfcore.models.base import TraceModel
from dfcore.models.networks import load_denoiser, load_trace_model
from dfcore.schedules import Schedule
from dfcore.trace_limits import TARGET_OPTIMA, TargetOptimum


def _optima(mixture: Mixture, schedule: Schedule) -> dict[str, TraceModel]:
    """The rows ``optimum_<target>`` of every target with a closed-form optimum."""
    return {f"optimum_{target}": TargetOptimum(target, mixture, schedule) for target in TARGET_OPTIMA}


def _frame(ds: xr.Dataset) -> pd.DataFrame:
    return ds["rel_error"].to_dataframe().reset_index()[["estimator", "t", "rel_error"]]


def _rows(cfg: dict[str, Any], results: Path) -> pd.DataFrame:
    """Table 2's rows and the optima's, long format (estimator, t, rel_error), with the paper's DF-TM row and the
    bar of twice it."""
    te = cfg["trace_error"]
    stem = results / "models" / f"{te['dataset']}_{te['schedule']}_trace"
    data_path = results / "data" / f"{te['dataset']}.zarr"
    main = load_trace_model(f"{stem}.pt")
    denoiser, mixture = main.denoiser, load_mixture(data_path)
    extra: dict[str, TraceModel] = {
        dftm_label(target): load_trace_model(f"{stem}_{target}.pt")
        for target in te["trace_targets"]
        if target != main.target
    }
    extra.update(_optima(mixture, denoiser.schedule))
    seed = section_seed(cfg["seed"], te)
    ds = section_trace_errors(te, data_path, denoiser, main, seed=seed, extra_trace_models=extra, mixture=mixture)
    frame = _frame(ds)
    frame["estimator"] = frame["estimator"].replace({"dftm": f"dftm_{main.target}"})
    paper = PAPER_TABLE2["DF-TM"]
    times = sorted(frame["t"].unique(), reverse=True)
    for name, factor in (("paper_dftm", 1.0), ("bar_2x_paper_dftm", 2.0)):
        frame = pd.concat(
            [frame, pd.DataFrame({"estimator": name, "t": times, "rel_error": [factor * v for v in paper]})]
        )
    return frame


def _denoiser_rows(cfg: dict[str, Any], results: Path, path: str, trace: bool) -> pd.DataFrame:
    """For another denoiser of the same data set and schedule (``path``; with ``trace``, a trace net's checkpoint,
    whose own denoiser is used and whose DF-TM row is added): its VJP and Hutchinson rows and the optima's rows
    (long format), on Table 2's test points, each estimator named ``<file stem>:<estimator>``."""
    te = cfg["trace_error"]
    data_path = results / "data" / f"{te['dataset']}.zarr"
    net = load_trace_model(path) if trace else None
    denoiser = net.denoiser if net is not None else load_denoiser(path)
    mixture = load_mixture(data_path)
    # without a net no dftm row; Hutchinson's draws keep Table 2's test points
    methods = [m for m in te["methods"] if trace or m != "dftm"]
    seed = section_seed(cfg["seed"], te)
    extra = _optima(mixture, denoiser.schedule)
    ds = section_trace_errors(
        te, data_path, denoiser, net, seed=seed, extra_trace_models=extra, methods=methods, mixture=mixture
    )
    frame = _frame(ds)
    frame["estimator"] = Path(path).stem + ":" + frame["estimator"]
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", help="the workflow's results folder (after make run)")
    parser.add_argument("--config", default="config/config.yaml", help="the config the results were made with")
    parser.add_argument("--out", default=None, help="output folder (default: <results>/benchmarks)")
    parser.add_argument(
        "--denoisers", nargs="*", default=[], help="further denoiser checkpoints of the data set: their VJP and optima"
    )
    parser.add_argument(
        "--trace-nets",
        nargs="*",
        default=[],
        help="further trace-net checkpoints: as --denoisers, with their DF-TM row",
    )
    args = parser.parse_args()
    cfg, results = load_config(args.config), Path(args.results)
    others = [(path, False) for path in args.denoisers] + [(path, True) for path in args.trace_nets]
    frame = pd.concat([_rows(cfg, results), *(_denoiser_rows(cfg, results, path, trace) for path, trace in others)])
    out = Path(args.out or Path(args.results) / "benchmarks")
    write_csv(frame, out / "trace_target_limits.csv")
    table = frame.pivot(index="estimator", columns="t", values="rel_error")
    table = table[sorted(table.columns, reverse=True)].reindex(frame["estimator"].drop_duplicates())
    table.columns = [f"t = {t:g}" for t in table.columns]
    write_text(
        "# Table 2 error (%) of each target's optimum\n\n" + table.to_markdown(floatfmt=".2f") + "\n",
        out / "trace_target_limits.md",
    )
    print(table.to_string(float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
