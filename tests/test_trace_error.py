"""Table 2 (dfcore.experiments.trace_error): with the exact denoiser and trace model every exact estimator has zero
error; a trace model whose posterior variance is off by a known factor gives exactly the relative error
computed independently from the mixture; the markdown table and the Zarr layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfcore.models.base import ExactDenoiser, ExactTraceModel, TraceModel
from dfcore.mixtures import DiracMixture
from dfcore.schedules import get_schedule
from dfcore.experiments.trace_error import markdown_table, trace_errors

TIMES = [1.0, 0.4, 0.0]


@pytest.fixture(scope="module")
def setup():
    data = torch.randn(30, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    schedule = get_schedule("VE", sigma_min=0.01, sigma_max=5.0)
    mixture = DiracMixture(data)
    return data, schedule, mixture


class ScaledVariance(TraceModel):
    """E[||x0||^2|x_t]/d with the posterior variance multiplied by ``factor``."""

    def __init__(self, mixture: DiracMixture, schedule, factor: float) -> None:
        self.mixture, self.schedule, self.factor = mixture, schedule, factor

    def mean_sq_norm(self, x, t):
        mean = self.mixture.posterior_mean(x, t, self.schedule)
        var = self.mixture.posterior_variance(x, t, self.schedule)
        return (mean.pow(2).sum(1) + self.factor * var) / x.shape[1]


def test_exact_networks_give_zero_error_and_the_table_has_one_row_per_estimator(setup):
    data, schedule, mixture = setup
    ds = trace_errors(data, schedule, ExactDenoiser(mixture, schedule), ExactTraceModel(mixture, schedule),
                      times=TIMES, t_zero=1e-3, methods=["vjp", "dftm"], num_points=64, seed=1)
    assert ds["rel_error"].dims == ("estimator", "t")
    assert float(ds["rel_error"].max()) < 1e-6
    # rel_error is ||est - true|| / ||true|| over the points, in %
    est, truth = ds["estimate"].sel(estimator="dftm").values, ds["analytic"].values
    np.testing.assert_allclose(ds["rel_error"].sel(estimator="dftm").values,
                               100 * np.linalg.norm(est - truth, axis=-1) / np.linalg.norm(truth, axis=-1))
    table = markdown_table(ds)
    assert "| VJP" in table and "| DF-TM" in table and "t = 0.0+" in table


@pytest.mark.parametrize("factor", [0.9, 1.2])
def test_a_biased_variance_gives_the_independently_computed_error(setup, factor):
    """dftm = d/s^2 - (a^2/s^4) * factor * V, so its error is |1 - factor| (a^2/s^4) V against the exact
    trace; recomputed here from Prop. 5 by explicit softmax weights over the data."""
    data, schedule, mixture = setup
    model = ScaledVariance(mixture, schedule, factor)
    ds = trace_errors(data, schedule, ExactDenoiser(mixture, schedule), model, times=TIMES, t_zero=1e-3,
                      methods=["dftm"], num_points=64, seed=2)
    gen = torch.Generator().manual_seed(2)  # the same draw of test points as trace_errors
    for j, label in enumerate(TIMES):
        t = label if label > 0 else 1e-3
        alpha, sigma = schedule(torch.tensor(t, dtype=torch.float64))
        y = data[torch.randint(len(data), (64,), generator=gen)]
        x = alpha * y + sigma * torch.randn(y.shape, generator=gen, dtype=torch.float64)
        w = torch.softmax(-(x[:, None] - alpha * data[None]).pow(2).sum(-1) / (2 * sigma**2), 1)
        var = (w * (data[None] - (w @ data)[:, None]).pow(2).sum(-1)).sum(1)
        exact = 2 / sigma**2 - alpha**2 / sigma**4 * var
        expected = 100 * abs(1 - factor) * (alpha**2 / sigma**4 * var).norm() / exact.norm()
        assert float(ds["rel_error"].isel(t=j).item()) == pytest.approx(float(expected), rel=1e-6, abs=1e-9)
