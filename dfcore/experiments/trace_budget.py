"""Training-budget study of the trace network: Table 2's DF-TM error against the number of training steps.

One trace network per (target, budget) is trained on the ``trace_error`` data set and schedule with the
``trace_net`` settings, except ``target`` and the budget: ``steps`` is ``budget`` times ``trace_net.steps``
and ``warmup_steps`` is scaled by the same factor (:func:`budget_section`). Each network is then evaluated
exactly as the DF-TM row of Table 2 (:func:`dfcore.experiments.trace_error.trace_errors` with the
``trace_error`` section's times, test points and seed), so the rows of the study at the full budget are
the rows of Table 2 for the same target. The result is a long table (one row per target, budget and t)
and a log-log figure of the error against the steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from dfcore.config import target_section
from dfcore.data.store import load_dataset, load_mixture, store_dim
from dfcore.device import resolve_device
from dfcore.experiments.common import section_seed
from dfcore.fisher.trace import DFTMTrace
from dfcore.io import expect_model, write_csv
from dfcore.models.networks import LearnedTraceModel, load_trace_model, same_weights

__all__ = ["budget_steps", "budget_section", "budget_runs", "budget_errors", "run_trace_budget", "ERROR_COLUMNS"]

ERROR_COLUMNS = ("rel_error", "mean_rel_error", "median_rel_error")
"""The error columns of the study's table (in %), as in Table 2's CSV."""


def budget_steps(steps: int, budget: float) -> int:
    """The training steps of ``budget`` times a base of ``steps`` (rounded, at least 1)."""
    return max(1, round(float(budget) * int(steps)))


def budget_section(section: Mapping[str, Any], target: str, steps: int) -> dict[str, Any]:
    """The ``trace_net`` section of one network of the study, from ``section`` as its data set sees it: the
    nets of ``target`` (:func:`dfcore.config.target_section`: its ``targets`` entry merged in) at ``steps``,
    with ``warmup_steps`` scaled by the same factor as the steps against the data set's own ``steps`` (so the
    warm-up stays the same fraction of the run; the budgets are multiples of the data set's steps, so a
    ``targets`` entry's ``steps`` and ``warmup_steps`` do not apply here), every other key as given."""
    warmup = round(int(section["warmup_steps"]) * int(steps) / int(section["steps"]))
    return {**target_section(dict(section), target), "steps": int(steps), "warmup_steps": warmup}


def budget_runs(study: Mapping[str, Any], steps: int) -> list[dict[str, Any]]:
    """The networks of the study (config section ``trace_budget``) for a base of ``steps`` training steps:
    one ``{target, budget, steps}`` per target and budget, targets outermost. Two budgets that round to the
    same step count give one network."""
    runs: list[dict[str, Any]] = []
    for target in study["targets"]:
        seen: set[int] = set()
        for budget in study["budgets"]:
            n = budget_steps(steps, budget)
            if n not in seen:
                seen.add(n)
                runs.append({"target": str(target), "budget": float(budget), "steps": n})
    return runs


def _load_nets(paths: Sequence[str | Path], dim: int, device: torch.device) -> list[LearnedTraceModel]:
    """The trace networks at ``paths``, checked to share the first one's denoiser."""
    models = [expect_model(load_trace_model(path, device), path, dim=dim) for path in paths]
    for path, model in zip(paths, models):
        if not same_weights(model.denoiser.module, models[0].denoiser.module):
            raise ValueError(f"{path}: its trace network was trained on another denoiser than {paths[0]}'s")
    return models


def budget_errors(
    section: Mapping[str, Any],
    data_path: str | Path,
    runs: Sequence[Mapping[str, Any]],
    paths: Sequence[str | Path],
    *,
    seed: int = 0,
    device: str = "auto",
) -> pd.DataFrame:
    """Table 2's DF-TM error of each network (``paths``, one per entry of ``runs``) at every t of ``section``
    (the ``trace_error`` config section): columns ``trace_target``, ``budget``, ``steps``, ``t``, ``sigma`` and
    :data:`ERROR_COLUMNS`. Every network is evaluated on the same test points (the seed of Table 2)."""
    # Table 2 and the figures are imported here, not at the top: the Snakefile imports this module for
    # budget_runs and budget_section, and the plotting stack would add seconds to every Snakemake start.
    from dfcore.experiments.trace_error import trace_errors

    if len(runs) != len(paths) or not paths:
        raise ValueError(f"{len(paths)} trace networks for {len(runs)} runs of the budget study")
    models = _load_nets(paths, store_dim(data_path), resolve_device(device))
    data, mixture = load_dataset(data_path), load_mixture(data_path)
    frames = []
    for run, path, model in zip(runs, paths, models):
        if model.target != run["target"]:
            raise ValueError(f"{path}: trained on target {model.target!r}, the study expects {run['target']!r}")
        ds = trace_errors(
            data,
            model.denoiser.schedule,
            model.denoiser,
            model,
            times=section["times"],
            t_zero=float(section["t_zero"]),
            methods=(DFTMTrace.name,),
            num_points=int(section["num_points"]),
            num_probes=int(section["num_probes"]),
            seed=section_seed(seed, section),
            mixture=mixture,
        )
        frame = ds[[*ERROR_COLUMNS, "sigma"]].sel(estimator=DFTMTrace.name).to_dataframe().reset_index()
        frame = frame.assign(trace_target=run["target"], budget=float(run["budget"]), steps=int(run["steps"]))
        frames.append(frame[["trace_target", "budget", "steps", "t", "sigma", *ERROR_COLUMNS]])
    return pd.concat(frames, ignore_index=True)


def run_trace_budget(
    section: Mapping[str, Any],
    data_path: str | Path,
    runs: Sequence[Mapping[str, Any]],
    paths: Sequence[str | Path],
    *,
    csv: str | Path,
    figure: str | Path,
    seed: int = 0,
    device: str = "auto",
) -> pd.DataFrame:
    """The trace_budget stage: :func:`budget_errors`, written as ``csv`` (long format) and ``figure``."""
    from dfcore.plots import plot_trace_budget

    frame = budget_errors(section, data_path, runs, paths, seed=seed, device=device)
    write_csv(frame, csv)
    title = f"DF-TM trace error against training steps, {section['dataset']} / {section['schedule']}"
    plot_trace_budget(frame, figure, title)
    return frame
