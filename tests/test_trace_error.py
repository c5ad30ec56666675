"""Table 2 (dfcore.experiments.trace_error): with the exact denoiser and trace model every exact estimator has zero
error; a trace model whose posterior variance is off by a known factor gives exactly the relative error
computed independently from the mixture; further DF-TM rows (other trace-net targets) leave the other rows
unchanged; the markdown table, the CSV and the Zarr layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfcore.experiments.trace_error import markdown_table, trace_errors
from dfcore.mixtures import DiracMixture
from dfcore.models.base import ExactDenoiser, ExactTraceModel, TraceModel
from dfcore.schedules import get_schedule

TIMES = [1.0, 0.4, 0.0]


@pytest.fixture(scope="module")
def setup():
    data = torch.randn(30, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    schedule = get_schedule("VE", sigma_min=0.01, sigma_max=5.0)
    mixture = DiracMixture(data)
    return data, schedule, mixture


class ScaledVariance(TraceModel):
    """E[||x0||^2|x_t]/d with the posterior variance multiplied by ``factor``."""

    def __init__(self, mixture: DiracMixture, schedule, factor: float, target: str = "") -> None:
        self.mixture, self.schedule, self.factor = mixture, schedule, factor
        if target:
            self.target = target

    def mean_sq_norm(self, x, t):
        mean = self.mixture.posterior_mean(x, t, self.schedule)
        var = self.mixture.posterior_variance(x, t, self.schedule)
        return (mean.pow(2).sum(1) + self.factor * var) / x.shape[1]


def test_exact_networks_give_zero_error_and_the_table_has_one_row_per_estimator(setup):
    data, schedule, mixture = setup
    ds = trace_errors(
        data,
        schedule,
        ExactDenoiser(mixture, schedule),
        ExactTraceModel(mixture, schedule),
        times=TIMES,
        t_zero=1e-3,
        methods=["vjp", "dftm"],
        num_points=64,
        seed=1,
    )
    assert ds["rel_error"].dims == ("estimator", "t")
    assert float(ds["rel_error"].max()) < 1e-6
    # rel_error is ||est - true|| / ||true|| over the points, in %
    est, truth = ds["estimate"].sel(estimator="dftm").values, ds["analytic"].values
    np.testing.assert_allclose(
        ds["rel_error"].sel(estimator="dftm").values,
        100 * np.linalg.norm(est - truth, axis=-1) / np.linalg.norm(truth, axis=-1),
    )
    table = markdown_table(ds)
    assert "| VJP" in table and "| DF-TM" in table and "t = 0.0+" in table


@pytest.mark.parametrize("factor", [0.9, 1.2])
def test_a_biased_variance_gives_the_independently_computed_error(setup, factor):
    """dftm = d/s^2 - (a^2/s^4) * factor * V, so its error is |1 - factor| (a^2/s^4) V against the exact
    trace; recomputed here from Prop. 5 by explicit softmax weights over the data."""
    data, schedule, mixture = setup
    model = ScaledVariance(mixture, schedule, factor)
    ds = trace_errors(
        data,
        schedule,
        ExactDenoiser(mixture, schedule),
        model,
        times=TIMES,
        t_zero=1e-3,
        methods=["dftm"],
        num_points=64,
        seed=2,
    )
    np.testing.assert_allclose(
        ds["rel_error"].sel(estimator="dftm").values, _expected_errors(data, schedule, factor, 2), rtol=1e-6, atol=1e-9
    )


def _expected_errors(
    data, schedule, factor: float, seed: int, num_points: int = 64, probes_per_t: int = 0
) -> np.ndarray:
    """The relative error (%) of a DF-TM whose posterior variance is ``factor`` times the exact one, per t of TIMES,
    on the test points trace_errors draws with ``seed`` (skipping the ``probes_per_t`` Rademacher draws of a
    hutchinson row after each t), from Prop. 5 by explicit softmax weights over the data."""
    gen = torch.Generator().manual_seed(seed)
    errors = []
    for label in TIMES:
        t = label if label > 0 else 1e-3
        alpha, sigma = schedule(torch.tensor(t, dtype=torch.float64))
        y = data[torch.randint(len(data), (num_points,), generator=gen)]
        x = alpha * y + sigma * torch.randn(y.shape, generator=gen, dtype=torch.float64)
        if probes_per_t:
            torch.randint(0, 2, (probes_per_t, *x.shape), generator=gen)
        w = torch.softmax(-(x[:, None] - alpha * data[None]).pow(2).sum(-1) / (2 * sigma**2), 1)
        var = (w * (data[None] - (w @ data)[:, None]).pow(2).sum(-1)).sum(1)
        exact = 2 / sigma**2 - alpha**2 / sigma**4 * var
        errors.append(float(100 * abs(1 - factor) * (alpha**2 / sigma**4 * var).norm() / exact.norm()))
    return np.array(errors)


def test_further_dftm_rows_follow_dftm_and_leave_the_other_rows_unchanged(setup, tmp_path):
    """Rows dftm_<target> from other trace models: placed after dftm, each with its own error (checked against
    the independent computation above), the trace_target coordinate and CSV column naming the target, and the
    vjp / dftm / hutchinson rows bit-identical to a table without them (DF-TM draws no random numbers)."""
    import pandas as pd

    from dfcore.experiments.trace_error import write_trace_error

    data, schedule, mixture = setup
    den = ExactDenoiser(mixture, schedule)
    main = ScaledVariance(mixture, schedule, 1.0, target="dataset_posterior")
    kwargs = dict(times=TIMES, t_zero=1e-3, methods=["vjp", "dftm", "hutchinson"], num_points=64, seed=5)
    alone = trace_errors(data, schedule, den, main, **kwargs)
    extra = {
        "dftm_sq_norm": ScaledVariance(mixture, schedule, 0.8, target="sq_norm"),
        "dftm_residual": ScaledVariance(mixture, schedule, 1.3, target="residual"),
    }
    ds = trace_errors(data, schedule, den, main, extra_trace_models=extra, **kwargs)
    assert list(ds["estimator"].values) == ["vjp", "dftm", "dftm_sq_norm", "dftm_residual", "hutchinson"]
    assert list(ds["trace_target"].values) == ["", "dataset_posterior", "sq_norm", "residual", ""]
    for m in ("vjp", "dftm", "hutchinson"):
        np.testing.assert_array_equal(ds["estimate"].sel(estimator=m).values, alone["estimate"].sel(estimator=m).values)
    for label, factor in (("dftm_sq_norm", 0.8), ("dftm_residual", 1.3)):
        # the hutchinson row draws one (1, 64, 2) Rademacher probe after each t's test points
        np.testing.assert_allclose(
            ds["rel_error"].sel(estimator=label).values,
            _expected_errors(data, schedule, factor, 5, probes_per_t=1),
            rtol=1e-6,
            atol=1e-9,
        )
    paths = {k: tmp_path / f"table.{k}" for k in ("csv", "md", "png", "zarr")}
    write_trace_error(ds, csv=paths["csv"], markdown=paths["md"], figure=paths["png"], zarr=paths["zarr"])
    frame = pd.read_csv(paths["csv"], keep_default_na=False)
    assert set(frame.loc[frame["estimator"] == "dftm_sq_norm", "trace_target"]) == {"sq_norm"}
    assert set(frame.loc[frame["estimator"] == "vjp", "trace_target"]) == {""}
    table = paths["md"].read_text()
    assert "| DF-TM [dataset_posterior]" in table and "| DF-TM [sq_norm]" in table and "| DF-TM [residual]" in table
    with pytest.raises(ValueError, match="clash"):
        trace_errors(data, schedule, den, main, extra_trace_models={"vjp": main}, **kwargs)


def test_run_trace_error_labels_further_rows_by_the_checkpoints_target(tmp_path):
    """The workflow entry point: a further checkpoint's row is dftm_<its trace_net.target>; a second net with the
    main net's target, or one trained on another denoiser, is refused."""
    from dfcore.data.datasets import make_checkerboard
    from dfcore.data.store import write_dataset
    from dfcore.experiments.trace_error import run_trace_error
    from dfcore.experiments.train import train_denoiser, train_trace

    data = make_checkerboard(32, seed=0)
    write_dataset(tmp_path / "cb.zarr", data, name="checkerboard")
    schedule = get_schedule("VE", sigma_min=0.01, sigma_max=5.0)
    den_cfg = {
        "arch": "auto",
        "prediction": "x0",
        "steps": 2,
        "batch_size": 8,
        "lr": 1e-3,
        "warmup_steps": 0,
        "t_min": 1e-3,
        "checkpoint_every": 500,
        "mlp": {"hidden": 8, "layers": 1, "emb_dim": 8, "fourier_levels": 2},
    }
    den = train_denoiser(data, schedule, den_cfg, tmp_path / "den.pt", progress=False)
    other = train_denoiser(data, schedule, den_cfg, tmp_path / "den2.pt", seed=1, progress=False)
    trace_cfg = {
        "steps": 2,
        "batch_size": 8,
        "lr": 1e-3,
        "warmup_steps": 0,
        "t_min": 1e-3,
        "time_power": 1.0,
        "checkpoint_every": 500,
        "share_trunk": False,
        "head_hidden": 128,
        "backbone": {},
        "ema_decay": 0.0,
        "divergence_probes": 1,
        "divergence_exact_max_dim": 16,
        "parameterization": "variance",
    }
    for name, target, denoiser in (
        ("main", "dataset_posterior", den),
        ("sq", "sq_norm", den),
        ("res", "residual", den),
        ("dup", "dataset_posterior", den),
        ("foreign", "residual", other),
    ):
        train_trace(data, denoiser, {**trace_cfg, "target": target}, tmp_path / f"{name}.pt", progress=False)
    config = {
        "dataset": "checkerboard",
        "schedule": "VE",
        "times": TIMES,
        "t_zero": 1e-3,
        "methods": ["dftm"],
        "num_points": 8,
        "num_probes": 1,
        "seed": 3,
    }
    out = {k: tmp_path / f"t.{v}" for k, v in (("csv", "csv"), ("markdown", "md"), ("figure", "png"), ("zarr", "zarr"))}
    ds = run_trace_error(
        config,
        tmp_path / "cb.zarr",
        tmp_path / "main.pt",
        **out,
        device="cpu",
        extra_trace_paths=[tmp_path / "sq.pt", tmp_path / "res.pt"],
    )
    assert list(ds["estimator"].values) == ["dftm", "dftm_sq_norm", "dftm_residual"]
    assert list(ds["trace_target"].values) == ["dataset_posterior", "sq_norm", "residual"]
    assert (ds["rel_error"] > 0).all()
    with pytest.raises(ValueError, match="second trace network"):
        run_trace_error(
            config,
            tmp_path / "cb.zarr",
            tmp_path / "main.pt",
            **out,
            device="cpu",
            extra_trace_paths=[tmp_path / "dup.pt"],
        )
    with pytest.raises(ValueError, match="another denoiser"):
        run_trace_error(
            config,
            tmp_path / "cb.zarr",
            tmp_path / "main.pt",
            **out,
            device="cpu",
            extra_trace_paths=[tmp_path / "foreign.pt"],
        )
