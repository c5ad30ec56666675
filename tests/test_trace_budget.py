"""The trace-net training-budget study (config section ``trace_budget``, rules ``train_trace_budget`` and
``trace_budget``): its step arithmetic, its jobs (none when off, one net per target and budget when on), and one
end-to-end run on the test config whose table is checked against Table 2's own error function."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from workflow_helpers import copy_repo, planned_jobs, run_snakemake

from dfcore.config import load_config
from dfcore.data.store import load_dataset, load_mixture
from dfcore.experiments.common import section_seed
from dfcore.experiments.trace_budget import budget_runs, budget_section, budget_steps
from dfcore.experiments.trace_error import trace_errors
from dfcore.models.networks import load_trace_model

CONFIG = "config/test.yaml"
STUDY = {"enabled": True, "targets": ["sq_norm", "residual"], "budgets": [0.5, 1]}


def test_budget_steps_round_and_stay_positive():
    assert [budget_steps(8000, b) for b in (0.25, 0.5, 1, 2, 4)] == [2000, 4000, 8000, 16000, 32000]
    assert budget_steps(30, 0.5) == 15 and budget_steps(3, 0.01) == 1


def test_budget_section_scales_the_warmup_and_keeps_everything_else():
    section = {"target": "dataset_posterior", "steps": 8000, "warmup_steps": 100, "lr": 0.002, "ema_decay": 0.995}
    half = budget_section(section, "sq_norm", 4000)
    assert half == {**section, "target": "sq_norm", "steps": 4000, "warmup_steps": 50}
    assert budget_section(section, "residual", 8000) == {**section, "target": "residual"}
    assert section["target"] == "dataset_posterior"  # not modified in place


def test_budget_runs_are_targets_by_budgets_without_duplicate_steps():
    runs = budget_runs({"targets": ["sq_norm", "divergence"], "budgets": [0.25, 1, 1.0001]}, 100)
    assert [(r["target"], r["steps"]) for r in runs] == [
        ("sq_norm", 25),
        ("sq_norm", 100),
        ("divergence", 25),
        ("divergence", 100),
    ]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A scratch copy of the repository with the study's config next to the test config."""
    repo = copy_repo(tmp_path_factory.mktemp("trace_budget") / "repo")
    (repo / "study.yaml").write_text(yaml.safe_dump({"trace_budget": STUDY}))
    return repo


@pytest.mark.workflow
def test_the_study_is_off_by_default_and_plans_one_net_per_target_and_budget(work):
    off = planned_jobs(work, "--configfile", CONFIG, "--forceall")
    assert "train_trace_budget" not in off and "trace_budget" not in off
    on = planned_jobs(work, "--configfile", CONFIG, "study.yaml", "--forceall")
    assert on["train_trace_budget"] == len(STUDY["targets"]) * len(STUDY["budgets"])
    assert on["trace_budget"] == 1
    assert {k: v for k, v in on.items() if k not in ("train_trace_budget", "trace_budget")} == off


@pytest.mark.workflow
def test_the_study_end_to_end_matches_table2s_error_of_each_net(work):
    csv = "results/trace_error/convergence.csv"
    run_snakemake(work, csv, "--cores", "1", "--configfile", CONFIG, "study.yaml", timeout=300)
    assert (work / "results/trace_error/convergence_steps.png").read_bytes()[:4] == b"\x89PNG"
    frame = pd.read_csv(work / csv)
    cfg = load_config(work / CONFIG)
    section, times = cfg["trace_error"], cfg["trace_error"]["times"]
    steps = [budget_steps(cfg["trace_net"]["steps"], b) for b in STUDY["budgets"]]
    assert len(frame) == len(STUDY["targets"]) * len(steps) * len(times)
    assert set(frame.groupby(["trace_target", "steps", "t"]).size()) == {1}
    assert sorted(frame["steps"].unique()) == steps
    errors = frame[["rel_error", "mean_rel_error", "median_rel_error"]].to_numpy()
    assert np.isfinite(errors).all() and (errors > 0).all()
    data_path = work / "results/data/checkerboard.zarr"
    data, mixture = load_dataset(data_path), load_mixture(data_path)
    for target in STUDY["targets"]:
        net = load_trace_model(work / f"results/models/checkerboard_VE_trace_{target}_steps{steps[0]}.pt")
        assert net.target == target
        ds = trace_errors(
            data,
            net.denoiser.schedule,
            net.denoiser,
            net,
            times=times,
            t_zero=section["t_zero"],
            methods=("dftm",),
            num_points=section["num_points"],
            num_probes=section["num_probes"],
            seed=section_seed(cfg["seed"], section),
            mixture=mixture,
        )
        rows = frame[(frame["trace_target"] == target) & (frame["steps"] == steps[0])].set_index("t")
        expected = ds["rel_error"].sel(estimator="dftm").to_series()
        np.testing.assert_allclose(rows.loc[expected.index, "rel_error"], expected.values, rtol=1e-10)
