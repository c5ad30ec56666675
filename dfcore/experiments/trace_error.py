r"""Table 2 of Wang et al. (2025): relative error of Fisher-trace estimates against the analytic trace.

Test points are :math:`x_t = \alpha_t y + \sigma_t \varepsilon` with :math:`y` drawn from the training set.
The ground truth is the exact trace of the data set's distribution (:func:`dfcore.data.store.load_mixture`): the
Dirac mixture over the training set (Prop. 5), which is what a perfectly trained denoiser and trace network
would give, or, for a store with an exact Gaussian mixture, that continuous mixture (Prop. 3). For each t and method the relative error is

.. math:: \mathrm{err} = \|\widehat{\operatorname{tr}F} - \operatorname{tr}F\|_2 \,/\, \|\operatorname{tr}F\|_2

over the test points (in %); the mean and median of the per-point ratios are stored too. ``t = 0.0``
in the table stands for ``t_zero`` (the "0.0+" of the paper; the networks are trained on
:math:`t \ge t_{min}`).

Several trace networks, trained on different regression targets of Alg. 1 (``trace_net.target``), can be
compared in one table: the estimator ``dftm`` is the main trace network, and each further one is the
estimator ``dftm_<target>`` (Eq. 17 with that network). The coordinate ``trace_target`` along ``estimator``
names the target each DF-TM row was trained on (empty for the other estimators).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from dfcore.data.store import load_dataset, load_mixture, store_dim
from dfcore.device import resolve_device
from dfcore.experiments.common import section_seed
from dfcore.fisher.trace import (
    TRACE_ESTIMATORS,
    AnalyticTrace,
    DFTMTrace,
    HutchinsonTrace,
    VJPTrace,
    trace_estimator_from,
)
from dfcore.io import expect_model, provenance, write_csv, write_text, write_zarr
from dfcore.mixtures import DiracMixture, Mixture
from dfcore.models.base import Denoiser, TraceModel
from dfcore.models.networks import load_trace_model, same_weights
from dfcore.plots import plot_trace_errors
from dfcore.schedules import Schedule

__all__ = [
    "trace_errors",
    "estimator_order",
    "dftm_label",
    "markdown_table",
    "write_trace_error",
    "section_trace_errors",
    "run_trace_error",
    "PAPER_TABLE2",
]


def dftm_label(target: str) -> str:
    """Estimator label of a further DF-TM row whose trace network was trained on ``target``: ``dftm_<target>``."""
    return f"dftm_{target}"


def estimator_order(methods: Sequence[str], extra_dftm: Sequence[str]) -> list[str]:
    """``methods`` with the labels ``extra_dftm`` inserted right after ``dftm`` (appended when ``dftm`` is absent)."""
    order = list(methods)
    at = order.index(DFTMTrace.name) + 1 if DFTMTrace.name in order else len(order)
    return order[:at] + list(extra_dftm) + order[at:]


def trace_errors(
    data: torch.Tensor,
    schedule: Schedule,
    denoiser: Denoiser,
    trace_model: TraceModel | None,
    *,
    times: Sequence[float],
    t_zero: float = 1e-3,
    methods: Sequence[str] = (VJPTrace.name, DFTMTrace.name, HutchinsonTrace.name),
    num_points: int = 256,
    num_probes: int = 1,
    seed: int = 0,
    mixture: Mixture | None = None,
    extra_trace_models: Mapping[str, TraceModel] | None = None,
) -> xr.Dataset:
    """Estimates and errors for every (method, t): a Dataset with dims ``estimator``, ``t``, ``point``. The
    ground truth is ``mixture``'s exact trace (default: the Dirac mixture over ``data``).

    ``extra_trace_models`` maps further estimator labels (e.g. ``dftm_sq_norm``) to trace models; each is
    evaluated by Eq. 17 (:class:`~dfcore.fisher.trace.DFTMTrace`) with ``denoiser`` on the same test points, and its row
    follows ``dftm``. DF-TM draws no random numbers, so the other rows are the same with or without them.

    The dimension is not called ``method``: ``Dataset.sel(method=...)`` is xarray's keyword for inexact
    matching, so ``ds.sel(method="dftm")`` would silently select nothing and return every estimator."""
    extra = dict(extra_trace_models or {})
    clash = sorted(set(extra) & set(methods))
    if clash:
        raise ValueError(f"extra DF-TM labels {clash} clash with the estimators in methods")
    labels = estimator_order(methods, list(extra))
    models = {label: extra.get(label, trace_model) for label in labels}
    kinds = {label: DFTMTrace.name if label in extra else label for label in labels}
    mixture = DiracMixture(data.to(torch.float64)) if mixture is None else mixture
    truth_label = f"exact trace of the {type(mixture).__name__} of the data set"
    gen = torch.Generator().manual_seed(int(seed))
    dtype = next(denoiser.module.parameters()).dtype if hasattr(denoiser, "module") else torch.float64
    estimates = np.zeros((len(labels), len(times), num_points))
    truth = np.zeros((len(times), num_points))
    for j, t_label in enumerate(times):
        t = float(t_label) if t_label > 0 else float(t_zero)
        tt = torch.tensor(t, dtype=torch.float64)
        alpha, sigma = schedule(tt)
        y = data[torch.randint(len(data), (num_points,), generator=gen)].to(torch.float64)
        x = (alpha * y + sigma * torch.randn(y.shape, generator=gen, dtype=torch.float64)).to(dtype)
        truth[j] = AnalyticTrace(mixture, schedule)(x.to(torch.float64), t).numpy()
        for i, label in enumerate(labels):
            pool = {
                "schedule": schedule,
                "denoiser": denoiser,
                "trace_model": models[label],
                "num_probes": num_probes,
                "generator": gen,
            }
            estimates[i, j] = trace_estimator_from(kinds[label], pool)(x, t).numpy()
    targets = [str(getattr(models[label], "target", "")) if kinds[label] == DFTMTrace.name else "" for label in labels]
    return _error_dataset(estimates, truth, labels, targets, times, t_zero, schedule, truth_label)


def _error_dataset(
    estimates: np.ndarray,
    truth: np.ndarray,
    labels: Sequence[str],
    targets: Sequence[str],
    times: Sequence[float],
    t_zero: float,
    schedule: Schedule,
    truth_label: str,
) -> xr.Dataset:
    """The estimates (estimator, t, point) and the exact traces (t, point) with their relative errors in %."""
    diff = estimates - truth[None]
    rel_l2 = 100 * np.linalg.norm(diff, axis=-1) / np.linalg.norm(truth, axis=-1)[None]
    ratio = 100 * np.abs(diff) / np.abs(truth)[None]
    t_eval = np.array([t if t > 0 else t_zero for t in times], dtype=float)
    ds = xr.Dataset(
        {
            "rel_error": (
                ("estimator", "t"),
                rel_l2,
                {"units": "%", "description": "||est - true||_2 / ||true||_2 over points"},
            ),
            "mean_rel_error": (("estimator", "t"), ratio.mean(-1), {"units": "%"}),
            "median_rel_error": (("estimator", "t"), np.median(ratio, -1), {"units": "%"}),
            "estimate": (("estimator", "t", "point"), estimates),
            "analytic": (("t", "point"), truth, {"description": truth_label}),
            "sigma": (("t",), schedule.sigma(torch.as_tensor(t_eval)).numpy()),
            "t_eval": (("t",), t_eval),
        },
        coords={
            "estimator": list(labels),
            "trace_target": ("estimator", list(targets)),
            "t": np.asarray(times, dtype=float),
            "point": np.arange(estimates.shape[-1]),
        },
    )
    ds["trace_target"].attrs["description"] = "trace_net.target the DF-TM row's trace network was trained on"
    return ds


def markdown_table(ds: xr.Dataset, paper: Mapping[str, Sequence[float]] | None = None) -> str:
    """The table laid out like the paper's: one row per method, one column per t (relative error, %)."""
    cols = [f"t = {t:.1f}" + ("+" if t == 0 else "") for t in ds["t"].values]
    labels = {name: cls.label for name, cls in TRACE_ESTIMATORS.items()}
    targets = (
        dict(zip(ds["estimator"].values.tolist(), ds["trace_target"].values.tolist()))
        if "trace_target" in ds.coords
        else {}
    )
    several = sum(1 for target in targets.values() if target) > 1

    def label(m: str) -> str:
        # with several DF-TM rows each names its trace-net target
        if targets.get(m) and (several or m != DFTMTrace.name):
            return f"{DFTMTrace.label} [{targets[m]}]"
        return labels.get(m, m)

    rows = {
        label(str(m)): [f"{float(v):.2f}" for v in ds["rel_error"].sel(estimator=m).values]
        for m in ds["estimator"].values
    }
    for name, values in (paper or {}).items():
        rows[f"{name} (paper)"] = [f"{v:.2f}" for v in values]
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=cols)
    frame.index.name = "relative error (%)"
    return frame.to_markdown() + "\n"


PAPER_TABLE2 = {"VJP": [6.68, 5.79, 10.46, 20.13, 51.14, 70.95], "DF-TM": [3.41, 4.56, 4.13, 4.28, 5.33, 5.81]}


def write_trace_error(
    ds: xr.Dataset,
    *,
    csv: str | Path,
    markdown: str | Path,
    figure: str | Path,
    zarr: str | Path,
    config: dict[str, Any] | None = None,
    seed: int | None = None,
    title: str = "",
    paper_rows: bool = True,
) -> None:
    """Write the CSV (long format), markdown table (with the paper's row unless ``paper_rows`` is false, e.g. for a
    data set the paper did not use), figure and Zarr store."""
    frame = ds[["rel_error", "mean_rel_error", "median_rel_error", "sigma"]].to_dataframe().reset_index()
    write_csv(frame, csv)
    paper = PAPER_TABLE2 if paper_rows and len(ds["t"]) == 6 else None
    write_text(f"# {title}\n\n" + markdown_table(ds, paper), markdown)
    plot_trace_errors(ds, figure, title)
    write_zarr(ds, zarr, attrs=provenance(config, seed, title=title))


def section_trace_errors(
    section: Mapping[str, Any],
    data_path: str | Path,
    denoiser: Denoiser,
    trace_model: TraceModel | None,
    *,
    seed: int,
    extra_trace_models: Mapping[str, TraceModel] | None = None,
    methods: Sequence[str] | None = None,
    mixture: Mixture | None = None,
) -> xr.Dataset:
    """:func:`trace_errors` on the store ``data_path`` with the settings of a ``trace_error`` section (its times,
    ``t_zero``, ``methods`` unless ``methods`` is given, ``num_points`` and ``num_probes``), the job's ``seed``
    (the section's offset already added) and the store's exact distribution as the truth (``mixture``, default
    :func:`~dfcore.data.store.load_mixture` of the store): so every caller evaluates Table 2's test points."""
    return trace_errors(
        load_dataset(data_path),
        denoiser.schedule,
        denoiser,
        trace_model,
        times=section["times"],
        t_zero=float(section["t_zero"]),
        methods=section["methods"] if methods is None else methods,
        num_points=int(section["num_points"]),
        num_probes=int(section["num_probes"]),
        seed=seed,
        mixture=load_mixture(data_path) if mixture is None else mixture,
        extra_trace_models=extra_trace_models,
    )


def run_trace_error(
    section: dict[str, Any],
    data_path: str | Path,
    trace_path: str | Path,
    *,
    csv: str | Path,
    markdown: str | Path,
    figure: str | Path,
    zarr: str | Path,
    seed: int = 0,
    device: str = "auto",
    extra_trace_paths: Sequence[str | Path] = (),
    heading: str | None = None,
    paper_rows: bool = True,
) -> xr.Dataset:
    """The trace_error stage (Table 2; ``section`` = the ``trace_error`` config section, or ``likelihood.table2``).

    ``trace_path`` is the main trace network (estimator ``dftm``; its denoiser is used by every estimator);
    each of ``extra_trace_paths`` adds the row ``dftm_<target>``, the target read from the checkpoint itself.
    The title is ``heading`` (default: "Relative trace error, <dataset>") and the schedule's name; ``paper_rows``
    adds the paper's Table 2 rows to the markdown (only meaningful for its checkerboard)."""
    cfg = section
    dev = resolve_device(device)
    trace_model = expect_model(load_trace_model(trace_path, dev), trace_path, dim=store_dim(data_path))
    denoiser = trace_model.denoiser
    extra: dict[str, TraceModel] = {}
    for path in extra_trace_paths:
        model = load_trace_model(path, dev)
        label = dftm_label(model.target)
        if label in extra or model.target == trace_model.target:
            raise ValueError(f"{path}: a second trace network trained on target {model.target!r}")
        if not same_weights(model.denoiser.module, denoiser.module):
            raise ValueError(f"{path}: its trace network was trained on another denoiser than {trace_path}'s")
        extra[label] = model
    seed = section_seed(seed, cfg)
    ds = section_trace_errors(cfg, data_path, denoiser, trace_model, seed=seed, extra_trace_models=extra)
    heading = heading or f"Relative trace error, {cfg['dataset']}"
    title = f"{heading} / {denoiser.schedule.name}"
    write_trace_error(
        ds,
        csv=csv,
        markdown=markdown,
        figure=figure,
        zarr=zarr,
        config=cfg,
        seed=seed,
        title=title,
        paper_rows=paper_rows,
    )
    return ds
