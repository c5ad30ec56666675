"""No silent wrong numbers: the mixtures' stored parameters under calls in other dtypes, half-precision inputs,
the extremes of t, a meta-device input, and the API edges that must be refused with a ValueError."""

from __future__ import annotations

import math

import pytest
import torch

from dfcore.mixtures import DiracMixture, GaussianMixture
from dfcore.schedules import get_schedule

SCHEDULES = ["VE", "VP", "subVP", "EDM"]


def _dirac() -> DiracMixture:
    gen = torch.Generator().manual_seed(3)
    return DiracMixture(torch.randn(40, 3, generator=gen, dtype=torch.float64) * 2.0 + 1.0)


def _gaussian() -> GaussianMixture:
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(3, 3, 3, generator=gen, dtype=torch.float64)
    covs = a @ a.transpose(1, 2) + 0.1 * torch.eye(3, dtype=torch.float64)
    means = torch.randn(3, 3, generator=gen, dtype=torch.float64) * 3.0
    return GaussianMixture(torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), means, covs)


MIXTURES = {"dirac": _dirac, "gaussian": _gaussian}

CALLS = {
    "log_prob": lambda m, x, t, s: m.log_prob(x, t, s),
    "score": lambda m, x, t, s: m.score(x, t, s),
    "posterior_mean": lambda m, x, t, s: m.posterior_mean(x, t, s),
    "posterior_variance": lambda m, x, t, s: m.posterior_variance(x, t, s),
    "fisher": lambda m, x, t, s: m.fisher(x, t, s),
    "fisher_trace": lambda m, x, t, s: m.fisher_trace(x, t, s),
    "fisher_vp": lambda m, x, t, s: m.fisher_vp(x, t, torch.ones_like(x), s),
}


def _x(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(9)
    return (torch.randn(5, 3, generator=gen, dtype=torch.float64) * 2.0).to(dtype)


def _stored(mixture) -> list[torch.Tensor]:
    if isinstance(mixture, DiracMixture):
        return [mixture._table.clone(), mixture.center.clone()]
    return [getattr(mixture, n).clone() for n in ("log_weights", "means", "covs", "evals", "evecs")]


# ------------------------------------------------------------------------------------------------------------- #
# precision


@pytest.mark.parametrize("kind", sorted(MIXTURES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_call_in_another_dtype_leaves_the_float64_results_and_the_stored_tables_unchanged(kind, dtype):
    mixture, schedule = MIXTURES[kind](), get_schedule("VP")
    x = _x()
    before = {name: call(mixture, x, 0.3, schedule) for name, call in CALLS.items()}
    stored = _stored(mixture)
    for call in CALLS.values():
        call(mixture, x.to(dtype), 0.3, schedule)
    for old, new in zip(stored, _stored(mixture)):
        assert new.dtype == old.dtype and torch.equal(new, old)
    for name, call in CALLS.items():
        assert torch.equal(call(mixture, x, 0.3, schedule), before[name]), name


@pytest.mark.parametrize("kind", sorted(MIXTURES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_half_precision_inputs_give_the_float64_result_rounded_to_their_dtype(kind, dtype, name):
    """Half-precision x is computed in float64 and only the result is rounded: it equals the float64 result at the
    same (rounded) x, rounded to the input's dtype."""
    mixture, schedule = MIXTURES[kind](), get_schedule("VP")
    x = _x(dtype)
    out = CALLS[name](mixture, x, 0.3, schedule)
    reference = CALLS[name](mixture, x.to(torch.float64), 0.3, schedule)
    assert out.dtype == dtype
    assert torch.equal(out, reference.to(dtype))


def test_a_half_precision_result_beyond_the_dtype_range_is_refused():
    """tr F ~ d / sigma^2 exceeds float16's 65504 at small t, and so does log q far out: an error, not inf."""
    schedule = get_schedule("VP")
    with pytest.raises(ValueError, match=r"DiracMixture.fisher_trace.*beyond the range of torch.float16"):
        _dirac().fisher_trace(_x(torch.float16), 1e-4, schedule)
    with pytest.raises(ValueError, match=r"GaussianMixture.log_prob.*beyond the range of torch.float16"):
        _gaussian().log_prob(torch.full((2, 3), 6e4, dtype=torch.float16), 0.01, schedule)


@pytest.mark.parametrize("kind", sorted(MIXTURES))
@pytest.mark.parametrize("schedule_name", SCHEDULES)
@pytest.mark.parametrize("t", [1e-300, 5e-324, 1.0])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_extreme_times_give_finite_results(kind, schedule_name, t, name):
    mixture, schedule = MIXTURES[kind](), get_schedule(schedule_name)
    out = CALLS[name](mixture, _x(), t, schedule)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind", sorted(MIXTURES))
@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_a_tiny_time_is_the_time_of_the_sigma_floor(kind, schedule_name):
    """Below the floor sigma_t = tiny ** (1/8) of the dtype every t gives the result of the floor itself, and the
    Dirac trace there is d / sigma^2 at a point of the data (the posterior sits on that point), sigma the larger
    of sigma_t and the floor."""
    mixture, schedule = MIXTURES[kind](), get_schedule(schedule_name)
    tiny_t = torch.tensor(1e-300, dtype=torch.float64)
    sigma = max(float(schedule.sigma(tiny_t)), torch.finfo(torch.float64).tiny ** 0.125)
    x = mixture.sample(4, torch.Generator().manual_seed(0)).to(torch.float64)
    if isinstance(mixture, DiracMixture):
        x = x * float(schedule.alpha(tiny_t))
        tr = mixture.fisher_trace(x, 1e-300, schedule)
        torch.testing.assert_close(tr, torch.full_like(tr, 3 / sigma**2), rtol=1e-12, atol=0)
    a, b = (mixture.fisher_trace(x, t, schedule) for t in (1e-300, 1e-200))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", sorted(MIXTURES))
def test_a_meta_device_input_is_refused_and_the_mixture_still_works(kind):
    mixture, schedule = MIXTURES[kind](), get_schedule("VP")
    x = _x()
    before = mixture.fisher_trace(x, 0.3, schedule)
    with pytest.raises(ValueError, match="meta"):
        mixture.fisher_trace(x.to("meta"), 0.3, schedule)
    assert torch.equal(mixture.fisher_trace(x, 0.3, schedule), before)


@pytest.mark.parametrize("kind", sorted(MIXTURES))
@pytest.mark.parametrize("n", [-1, 2.5, True])
def test_sample_refuses_a_negative_or_non_integer_count(kind, n):
    with pytest.raises(ValueError, match="n must be"):
        MIXTURES[kind]().sample(n)


@pytest.mark.parametrize("kind", sorted(MIXTURES))
def test_sample_of_zero_is_empty(kind):
    assert MIXTURES[kind]().sample(0).shape == (0, 3)


def test_float32_results_are_unchanged_by_a_float64_call_in_between():
    mixture, schedule = _dirac(), get_schedule("VP")
    x = _x(torch.float32)
    first = mixture.fisher_trace(x, 0.2, schedule)
    mixture.fisher_trace(x.double(), 0.2, schedule)
    assert torch.equal(mixture.fisher_trace(x, 0.2, schedule), first)
    assert math.isfinite(float(first.sum()))


# ------------------------------------------------------------------------------------------------------------- #
# artefacts used with the wrong partner

TRAIN = {
    "arch": "mlp",
    "prediction": "x0",
    "seed": 0,
    "steps": 2,
    "batch_size": 16,
    "lr": 1e-3,
    "warmup_steps": 0,
    "t_min": 1e-3,
    "mlp": {"hidden": 16, "layers": 1},
    "checkpoint_every": 100,
}
TRACE = {
    **TRAIN,
    "share_trunk": False,
    "head_hidden": 8,
    "backbone": {},
    "target": "residual",
    "time_power": 1.0,
    "ema_decay": 0.0,
    "divergence_probes": 1,
    "divergence_exact_max_dim": 16,
    "parameterization": "variance",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A VP denoiser and its trace net on 2-D data, a VE denoiser on 3-D data, and their data stores."""
    from dfcore.data.datasets import make_checkerboard
    from dfcore.data.store import write_dataset
    from dfcore.experiments.train import train_denoiser, train_trace

    root = tmp_path_factory.mktemp("artefacts")
    data2 = make_checkerboard(64, seed=0)
    spec = {"kind": "checkerboard", "num_samples": 64, "seed": 0}
    write_dataset(root / "checkerboard.zarr", data2, name="checkerboard", config=spec, attrs={"kind": "checkerboard"})
    den = train_denoiser(data2, get_schedule("VP"), TRAIN, root / "vp_den.pt", device="cpu", progress=False)
    train_trace(data2, den, TRACE, root / "vp_trace.pt", progress=False)
    data3 = torch.randn(64, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    train_denoiser(data3, get_schedule("VE"), TRAIN, root / "ve3_den.pt", device="cpu", progress=False)
    gspec = {"kind": "gaussian_mixture", "num_samples": 64, "weights": [1.0], "means": [[0.0, 0.0, 0.0]], "stds": [1.0]}
    write_dataset(root / "gmm3.zarr", data3, name="gmm3", config=gspec)
    return root


def test_a_denoiser_under_another_schedule_is_refused(trained):
    from dfcore.fisher.trace import fisher_trace
    from dfcore.fisher.vp import fisher_vp
    from dfcore.models.networks import load_denoiser

    den = load_denoiser(trained / "vp_den.pt")
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"schedule is VESchedule.*trained under VPSchedule"):
        fisher_trace("vjp", x, 0.3, denoiser=den, schedule=get_schedule("VE"))
    with pytest.raises(ValueError, match="trained under VPSchedule"):
        fisher_vp("vjp", x, 0.3, torch.ones_like(x), denoiser=den, schedule=get_schedule("VP", beta_max=10.0))
    same = fisher_trace("vjp", x, 0.3, denoiser=den, schedule=get_schedule("VP"))
    assert torch.equal(same, fisher_trace("vjp", x, 0.3, denoiser=den))


def test_nll_of_a_trace_net_under_another_schedule_is_refused_naming_the_file(trained, tmp_path):
    from dfcore.experiments.nll import run_nll

    section = {"num_points": 4, "t_min": 1e-3, "solver": "rk4", "rtol": 1e-5, "atol": 1e-5, "num_steps": 4}
    section.update(num_probes=1, seed=0)
    kwargs = {"dataset": "checkerboard", "schedule_name": "VE", "method": "dftm", "device": "cpu"}
    with pytest.raises(ValueError, match=r"vp_trace.pt: schedule is .*'VP'.*but .*'VE'.* is expected"):
        run_nll(
            section,
            trained / "checkerboard.zarr",
            tmp_path / "nll.csv",
            schedule=get_schedule("VE"),
            trace_path=trained / "vp_trace.pt",
            **kwargs,
        )
    assert not (tmp_path / "nll.csv").exists()


def test_a_store_of_another_data_set_is_refused_by_the_analytic_nll(trained, tmp_path):
    from dfcore.experiments.nll import run_nll

    section = {"num_points": 4, "t_min": 1e-3, "solver": "rk4", "rtol": 1e-5, "atol": 1e-5, "num_steps": 4}
    section["seed"] = 0
    with pytest.raises(ValueError, match=r"gmm3.zarr: dataset is 'gmm3', but 'checkerboard' is expected"):
        run_nll(
            {**section, "num_probes": 1},
            trained / "gmm3.zarr",
            tmp_path / "nll.csv",
            dataset="checkerboard",
            schedule_name="VP",
            schedule=get_schedule("VP"),
            method="analytic",
        )


def test_a_store_is_checked_against_the_callers_dimension(trained):
    from dfcore.data.store import load_dataset, load_mixture

    with pytest.raises(ValueError, match=r"checkerboard.zarr: dim is 2, but 3 is expected"):
        load_dataset(trained / "checkerboard.zarr", dim=3)
    with pytest.raises(ValueError, match=r"gmm3.zarr: dim is 3, but 2 is expected"):
        load_mixture(trained / "gmm3.zarr", dim=2)
    assert load_dataset(trained / "gmm3.zarr", dataset="gmm3", dim=3).shape == (64, 3)


def test_a_store_that_disagrees_with_its_own_config_is_refused(tmp_path):
    from dfcore.data.store import load_dataset, write_dataset

    x = torch.randn(50, 2, dtype=torch.float64)
    spec = {"kind": "checkerboard", "num_samples": 80, "seed": 0}
    write_dataset(tmp_path / "short.zarr", x, name="c", config=spec)
    with pytest.raises(ValueError, match=r"short.zarr: holds 50 samples, but its config attribute makes 80"):
        load_dataset(tmp_path / "short.zarr")
    write_dataset(tmp_path / "wide.zarr", torch.randn(80, 3, dtype=torch.float64), name="c", config=spec)
    with pytest.raises(ValueError, match=r"wide.zarr: its samples have dim 3, but its config attribute makes dim 2"):
        load_dataset(tmp_path / "wide.zarr")


def test_a_store_whose_recorded_count_disagrees_with_its_samples_is_refused(tmp_path):
    from dfcore.data.store import load_dataset, write_dataset
    from dfcore.io import read_zarr, write_zarr

    write_dataset(tmp_path / "s.zarr", torch.randn(10, 2, dtype=torch.float64), name="s")
    ds = read_zarr(tmp_path / "s.zarr")
    assert (ds.attrs["dim"], ds.attrs["num_samples"], ds.attrs["artefact"]) == (2, 10, "dataset")
    write_zarr(ds.isel(sample=slice(0, 6)), tmp_path / "s.zarr")
    with pytest.raises(ValueError, match=r"s.zarr: its attribute num_samples is 10, but x holds 6"):
        load_dataset(tmp_path / "s.zarr")


def test_a_trace_net_of_another_data_shape_is_refused_naming_the_file(trained, tmp_path):
    from dfcore.experiments.trace_error import run_trace_error

    section = {"times": [0.5], "t_zero": 1e-3, "methods": ["dftm"], "num_points": 4, "num_probes": 1}
    with pytest.raises(ValueError, match=r"checkpoint .*vp_trace.pt: dim is 2, but 3 is expected"):
        out = {k: tmp_path / f"t.{k}" for k in ("csv", "markdown", "figure", "zarr")}
        run_trace_error(section, trained / "gmm3.zarr", trained / "vp_trace.pt", **out)


def test_a_checkpoint_whose_weights_do_not_fit_its_architecture_names_the_file(trained, tmp_path):
    from dfcore.models.networks import load_denoiser, load_trace_model

    state = torch.load(trained / "vp_den.pt", weights_only=True)
    state["model"]["hparams"] = {**state["model"]["hparams"], "hidden": 24}
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"checkpoint .*other.pt does not rebuild the model"):
        load_denoiser(tmp_path / "other.pt")
    state = torch.load(trained / "vp_trace.pt", weights_only=True)
    state["model"]["hparams"] = {**state["model"]["hparams"], "head_hidden": 5}
    torch.save(state, tmp_path / "trace.pt")
    with pytest.raises(ValueError, match=r"checkpoint .*trace.pt does not rebuild the model"):
        load_trace_model(tmp_path / "trace.pt")


def test_nan_weights_are_named_with_the_file_and_the_parameter(trained, tmp_path):
    from dfcore.models.networks import load_trace_model

    state = torch.load(trained / "vp_trace.pt", weights_only=True)
    name = next(iter(state["model"]["state_dict"]))
    state["model"]["state_dict"][name][0] = math.nan
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match=rf"checkpoint .*nan.pt has non-finite weights in model.{name}$"):
        load_trace_model(tmp_path / "nan.pt")


def test_a_checkpoint_records_what_it_is_and_load_checks_it(trained):
    from dfcore.io import config_digest, load_checkpoint

    path = trained / "vp_trace.pt"
    record = torch.load(path, weights_only=True)["record"]
    assert record == {
        "kind": "trace",
        "schedule": {"name": "VP", "params": {"beta_min": 0.1, "beta_max": 20.0}},
        "dim": 2,
        "config_digest": config_digest(TRACE),
    }
    load_checkpoint(path, kind="trace", schedule=get_schedule("VP"), dim=2, config_digest=config_digest(TRACE))
    with pytest.raises(ValueError, match=r"vp_trace.pt: kind is 'trace', but 'denoiser' is expected"):
        load_checkpoint(path, kind="denoiser")
    with pytest.raises(ValueError, match=r"vp_trace.pt: config_digest is '[0-9a-f]{16}', but 'x' is expected"):
        load_checkpoint(path, config_digest="x")
    with pytest.raises(ValueError, match=r"vp_trace.pt: schedule is .*'VP'.*, but .*'subVP'.* is expected"):
        load_checkpoint(path, schedule=get_schedule("subVP"))


def test_a_config_digest_ignores_key_order():
    from dfcore.io import config_digest

    assert config_digest({"a": 1, "b": {"c": 2, "d": 3}}) == config_digest({"b": {"d": 3, "c": 2}, "a": 1})
    assert config_digest({"a": 1}) != config_digest({"a": 2})


# ------------------------------------------------------------------------------------------------------------- #
# API edges


def _ll(**kwargs):
    from dfcore.fisher.trace import AnalyticTrace
    from dfcore.likelihood import gaussian_log_prior, log_likelihood

    schedule = get_schedule("VP")
    args = {
        "x": _x(),
        "trace": AnalyticTrace(_gaussian(), schedule),
        "log_prior": gaussian_log_prior(schedule),
        "solver": "rk4",
        "num_steps": 4,
        "t_min": 1e-3,
    }
    return log_likelihood(**{**args, **kwargs})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rtol": 0.0}, r"rtol must be a finite number > 0; got 0.0"),
        ({"rtol": -1e-5}, r"rtol must be a finite number > 0"),
        ({"atol": 0}, r"atol must be a finite number > 0; got 0"),
        ({"atol": math.nan}, r"atol must be a finite number > 0"),
        ({"num_steps": 0}, r"num_steps must be an integer >= 1; got 0"),
        ({"num_steps": -3}, r"num_steps must be an integer >= 1"),
        ({"x": torch.zeros(0, 3, dtype=torch.float64)}, r"x must be a non-empty batch .* got \(0, 3\)"),
        ({"x": torch.zeros(2, 0, dtype=torch.float64)}, r"x must be a non-empty batch"),
        ({"x": torch.full((2, 3), math.nan, dtype=torch.float64)}, r"x contains NaN or Inf"),
    ],
)
def test_log_likelihood_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _ll(**kwargs)


def test_log_likelihood_accepts_good_arguments():
    from dfcore.likelihood import exact_log_densities

    """With the exact log q_1 at the ODE's endpoint in place of the prior, the integral gives log q_{t_min}."""
    schedule, mixture = get_schedule("VP"), _gaussian()
    out = _ll(solver="dopri5", rtol=1e-7, atol=1e-7)
    exact = exact_log_densities(mixture, _x(), 1e-3, schedule)["log_q_tmin"]
    estimate = out.delta + mixture.log_prob(out.x_T, 1.0, schedule)
    torch.testing.assert_close(estimate, exact, rtol=0, atol=1e-4)


@pytest.mark.parametrize("dim", [0, -2, 1.5, True])
def test_bits_per_dim_refuses_a_dimension_below_one(dim):
    from dfcore.likelihood import bits_per_dim

    with pytest.raises(ValueError, match="dim must be an integer >= 1"):
        bits_per_dim(torch.ones(3), dim)


def test_bits_per_dim_is_nats_over_d_log_2():
    from dfcore.likelihood import bits_per_dim

    assert float(bits_per_dim(torch.tensor(-2.0 * math.log(2.0) * 4), 4)) == pytest.approx(2.0, rel=1e-15)


@pytest.mark.parametrize(
    "name, value, match",
    [
        ("x0", torch.full((4, 2), math.nan, dtype=torch.float64), r"x0 contains NaN or Inf \(in 4 of 4 rows\)"),
        ("x0", torch.zeros(4, 3, dtype=torch.float64), r"x0 must have the shape of x \(4, 2\); got \(4, 3\)"),
        ("x0", torch.zeros(2, dtype=torch.float64), r"x0 must have the shape of x"),
        ("ybar", torch.full((4, 2), math.inf, dtype=torch.float64), r"ybar contains NaN or Inf"),
        ("ybar", torch.zeros(4, 2, 1, dtype=torch.float64), r"ybar must have the shape of x"),
    ],
)
@pytest.mark.parametrize("method", ["dfea", "dfea_centered"])
def test_dfea_refuses_bad_endpoints(method, name, value, match):
    from dfcore.fisher.vp import fisher_vp

    x = torch.randn(4, 2, dtype=torch.float64)
    ends = {"x0": x.clone(), "ybar": x.clone(), name: value}
    with pytest.raises(ValueError, match=match):
        fisher_vp(method, x, 0.3, torch.ones_like(x), schedule=get_schedule("VP"), **ends)


def test_a_trace_model_under_another_schedule_is_refused(trained):
    from dfcore.fisher.trace import fisher_trace
    from dfcore.models.networks import load_denoiser, load_trace_model

    trace = load_trace_model(trained / "vp_trace.pt")
    other = load_denoiser(trained / "ve3_den.pt")
    x = torch.randn(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"schedule is VPSchedule.*the denoiser was trained under VPSchedule"):
        fisher_trace(
            "dftm", x, 0.3, denoiser=trace.denoiser, trace_model=trace, schedule=get_schedule("VP", beta_max=5)
        )
    with pytest.raises(ValueError, match=r"schedule is VESchedule.*the trace model was trained under VPSchedule"):
        fisher_trace("dftm", x, 0.3, denoiser=other, trace_model=trace)


def test_training_a_trace_net_on_data_of_another_dimension_names_the_denoiser(trained, tmp_path):
    from dfcore.experiments.train import run_training

    with pytest.raises(ValueError, match=r"checkpoint .*ve3_den.pt: dim is 3, but 2 is expected"):
        run_training(
            "trace", TRACE, trained / "checkerboard.zarr", tmp_path / "t.pt", denoiser_path=trained / "ve3_den.pt"
        )


def test_a_store_is_checked_against_the_config_entry_of_its_data_set(trained):
    from dfcore.data.store import load_dataset

    spec = {"kind": "gaussian_mixture", "num_samples": 64, "weights": [1.0], "means": [[0.0, 0.0]], "stds": [1.0]}
    with pytest.raises(ValueError, match=r"gmm3.zarr: dim is 3, but the config's data set entry makes 2"):
        load_dataset(trained / "gmm3.zarr", spec=spec)
    with pytest.raises(ValueError, match=r"gmm3.zarr: num_samples is 64, but the config's data set entry makes 65"):
        load_dataset(trained / "gmm3.zarr", spec={**spec, "means": [[0.0] * 3], "num_samples": 65})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_estimators_compute_half_precision_inputs_in_float32(trained, dtype):
    """A half-precision x gives the float32 computation at the same (rounded) x: the trace in float64, F v rounded
    to v's dtype."""
    from dfcore.fisher.trace import fisher_trace
    from dfcore.fisher.vp import fisher_vp
    from dfcore.models.networks import load_denoiser

    den = load_denoiser(trained / "vp_den.pt")
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(2)).to(dtype)
    v = torch.ones_like(x)
    wide = x.to(torch.float32)
    trace = fisher_trace("vjp", x, 0.4, denoiser=den)
    assert trace.dtype == torch.float64
    assert torch.equal(trace, fisher_trace("vjp", wide, 0.4, denoiser=den))
    fv = fisher_vp("vjp", x, 0.4, v, denoiser=den)
    assert fv.dtype == dtype
    assert torch.equal(fv, fisher_vp("vjp", wide, 0.4, v.to(torch.float32), denoiser=den).to(dtype))
    mixture = _gaussian()
    x3 = _x(dtype)
    exact = fisher_vp("analytic", x3, 0.4, torch.ones_like(x3), schedule=get_schedule("VP"), mixture=mixture)
    reference = mixture.fisher_vp(x3.double(), 0.4, torch.ones(5, 3, dtype=torch.float64), get_schedule("VP"))
    assert exact.dtype == dtype
    torch.testing.assert_close(exact.double(), reference, rtol=1e-2, atol=1e-2)
