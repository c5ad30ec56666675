"""benchmarks/trace_ensemble.py: the average of K trace nets gives the average of their log-likelihoods exactly
(checked on a Gaussian mixture's closed-form posterior variance), and the per-subset summary of bpd.csv files."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from stand_ins import ScaledPosteriorVariance

from dfcore.fisher.trace import DFTMTrace
from dfcore.likelihood import gaussian_log_prior, log_likelihood
from dfcore.mixtures import GaussianMixture
from dfcore.models.base import ExactDenoiser
from dfcore.schedules import get_schedule

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import trace_ensemble  # noqa: E402  (benchmarks/trace_ensemble.py)


@pytest.mark.parametrize("solver", ["rk4", "dopri5"])
def test_the_average_of_two_nets_gives_the_average_of_their_log_likelihoods(solver):
    """The premise of the benchmark: the state follows the denoiser alone and the trace enters linearly, so a net
    whose posterior variance is the mean of two nets' gives the mean of their log q, on rk4's fixed grid and with
    dopri5 when its error control watches the state only (``step_control="state"``)."""
    g = torch.Generator().manual_seed(1)
    covs = torch.stack([torch.eye(3) * s for s in (0.2, 0.5)]).to(torch.float64)
    mixture = GaussianMixture(
        torch.tensor([0.3, 0.7], dtype=torch.float64), torch.randn(2, 3, generator=g).double(), covs
    )
    schedule = get_schedule("VP")
    denoiser = ExactDenoiser(mixture, schedule)
    x = mixture.sample(4, generator=g).to(torch.float64)
    factors = [lambda t: torch.full_like(t, 1.3), lambda t: 0.8 + 0.5 * t]
    kw = dict(log_prior=gaussian_log_prior(schedule, 1.0), t_min=1e-3, solver=solver, num_steps=10)
    kw |= {"step_control": "state", "rtol": 1e-6, "atol": 1e-6} if solver == "dopri5" else {}
    single = [
        log_likelihood(x, DFTMTrace(denoiser, ScaledPosteriorVariance(mixture, schedule, f)), **kw).log_q
        for f in factors
    ]
    mean = ScaledPosteriorVariance(mixture, schedule, lambda t: 0.5 * (factors[0](t) + factors[1](t)))
    together = log_likelihood(x, DFTMTrace(denoiser, mean), **kw).log_q
    assert (single[0] - single[1]).abs().min() > 1e-3
    torch.testing.assert_close(together, 0.5 * (single[0] + single[1]), rtol=0, atol=1e-9)


def _measure_folder(root: Path, name: str, vjp: list[float], dftm: list[float]) -> Path:
    folder = root / name
    folder.mkdir()
    rows = [{"image": i, "method": "vjp", "bpd": b} for i, b in enumerate(vjp)]
    rows += [{"image": i, "method": "dftm", "bpd": b} for i, b in enumerate(dftm)]
    pd.DataFrame(rows).to_csv(folder / "bpd.csv", index=False)
    return folder


def test_subsets_average_the_nets_per_image(tmp_path):
    vjp = [4.0, 5.0, 6.0]
    a = _measure_folder(tmp_path, "a", vjp, [4.1, 4.9, 6.3])  # errors +0.1, -0.1, +0.3
    b = _measure_folder(tmp_path, "b", vjp, [3.9, 5.1, 6.1])  # errors -0.1, +0.1, +0.1
    table = trace_ensemble.subsets(trace_ensemble.errors_against_vjp([a, b])).set_index("nets")
    assert table.loc["a", "mean_abs"] == pytest.approx(0.5 / 3)
    assert table.loc["a+b", "mean_abs"] == pytest.approx(0.2 / 3)  # errors 0, 0, +0.2
    assert table.loc["a+b", "signed"] == pytest.approx(0.2 / 3) and table.loc["a+b", "max_abs"] == pytest.approx(0.2)
    assert list(table["num_nets"]) == [1, 1, 2]


def test_runs_on_other_images_or_grids_are_refused(tmp_path):
    a = _measure_folder(tmp_path, "a", [4.0, 5.0], [4.1, 5.1])
    b = _measure_folder(tmp_path, "b", [4.0, 5.01], [4.1, 5.1])
    with pytest.raises(ValueError, match="vjp rows differ"):
        trace_ensemble.errors_against_vjp([a, b])
    c = tmp_path / "c"
    c.mkdir()
    pd.DataFrame([{"image": 0, "method": "vjp", "bpd": 4.0}]).to_csv(c / "bpd.csv", index=False)
    with pytest.raises(ValueError, match="dftm"):
        trace_ensemble.errors_against_vjp([a, c])
