"""The likelihood benchmark: the low-rank Gaussian-mixture data sets against autograd and torch.distributions,
their Zarr round trip, the peers' adapters on a case with a closed-form NLL, the benchmark's summary, and the
held-out digits likelihood's summary and split checks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from dfcore.data.datasets import make_dataset, make_gaussian_mixture_lowrank, split_digits
from dfcore.data.store import load_mixture, write_dataset
from dfcore.experiments.likelihood import run_heldout_likelihood, summarize_benchmark, summarize_heldout
from dfcore.integrations.peers import flow_matching_log_likelihood, kdiffusion_log_likelihood, peer_available
from dfcore.mixtures import GaussianMixture
from dfcore.models.base import ExactDenoiser
from dfcore.schedules import get_schedule


def _reference_log_q(mixture: GaussianMixture, x: torch.Tensor, t: float, schedule) -> torch.Tensor:
    """log q_t from torch.distributions with C_k = alpha^2 Sigma_k + sigma^2 I formed densely (independent code)."""
    alpha, sigma = (float(v) for v in schedule(torch.tensor(t, dtype=torch.float64)))
    d = mixture.dim
    covs = alpha**2 * mixture.covs + sigma**2 * torch.eye(d, dtype=torch.float64)
    comps = torch.distributions.MultivariateNormal(alpha * mixture.means, covariance_matrix=covs)
    mix = torch.distributions.Categorical(logits=mixture.log_weights)
    return torch.distributions.MixtureSameFamily(mix, comps).log_prob(x)


@pytest.mark.parametrize("dim", [2, 5, 16])
@pytest.mark.parametrize("t", [0.01, 0.3, 0.9])
def test_lowrank_mixture_log_density_score_and_fisher_match_autograd(dim, t):
    _, mixture = make_gaussian_mixture_lowrank(10, dim, 3, min(2, dim), 0.2, seed=dim)
    schedule = get_schedule("VP")
    x = torch.randn(6, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 1.5
    ref = _reference_log_q(mixture, x, t, schedule)
    torch.testing.assert_close(mixture.log_prob(x, t, schedule), ref, rtol=1e-10, atol=1e-10)
    xr = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(_reference_log_q(mixture, xr, t, schedule).sum(), xr)[0]
    torch.testing.assert_close(mixture.score(x, t, schedule), grad, rtol=1e-8, atol=1e-9)
    hess = torch.stack(
        [
            torch.autograd.functional.hessian(lambda z: _reference_log_q(mixture, z[None], t, schedule)[0], xi)
            for xi in x
        ]
    )
    fisher = mixture.fisher(x, t, schedule)
    torch.testing.assert_close(fisher, -hess, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(
        mixture.fisher_trace(x, t, schedule), -hess.diagonal(dim1=1, dim2=2).sum(1), rtol=1e-7, atol=1e-7
    )
    v = torch.randn(6, dim, dtype=torch.float64)
    torch.testing.assert_close(
        mixture.fisher_vp(x, t, v, schedule), torch.einsum("bde,be->bd", -hess, v), rtol=1e-7, atol=1e-7
    )
    # Tweedie: tr Cov[x0 | x_t] = (sigma^2 / alpha^2) (d - sigma^2 tr F)
    alpha, sigma = (float(s) for s in schedule(torch.tensor(t, dtype=torch.float64)))
    expected = sigma**2 / alpha**2 * (dim - sigma**2 * (-hess.diagonal(dim1=1, dim2=2).sum(1)))
    torch.testing.assert_close(mixture.posterior_variance(x, t, schedule), expected, rtol=1e-6, atol=1e-9)


def test_lowrank_mixture_has_the_stated_anisotropy_and_per_point_times_agree():
    x, mixture = make_gaussian_mixture_lowrank(20000, 16, 4, 2, 0.2, factor_scale=1.0, seed=3)
    evals = torch.linalg.eigvalsh(mixture.covs)
    # two directions of variance (0.5..1.5)^2 + 0.04, fourteen of exactly noise^2 = 0.04
    torch.testing.assert_close(evals[:, :14], torch.full((4, 14), 0.04, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    assert ((evals[:, 14:] > 0.25 + 0.04 - 1e-9) & (evals[:, 14:] < 2.25 + 0.04 + 1e-9)).all()
    assert torch.allclose(x.mean(0), (mixture.weights[:, None] * mixture.means).sum(0), atol=0.05)
    # a batch with one t per point gives what one t at a time gives
    schedule = get_schedule("VE")
    t = torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)
    together = mixture.fisher_trace(x[:3], t, schedule)
    apart = torch.cat([mixture.fisher_trace(x[i : i + 1], float(t[i]), schedule) for i in range(3)])
    torch.testing.assert_close(together, apart, rtol=1e-12, atol=1e-12)


def test_lowrank_store_rebuilds_the_exact_mixture(tmp_path):
    spec = {
        "kind": "gaussian_mixture_lowrank",
        "num_samples": 50,
        "seed": 4,
        "dim": 6,
        "components": 3,
        "rank": 2,
        "noise": 0.3,
    }
    x, mixture, attrs = make_dataset(spec)
    write_dataset(tmp_path / "m.zarr", x, name="m", mixture=mixture, attrs=attrs)
    loaded = load_mixture(tmp_path / "m.zarr")
    assert isinstance(loaded, GaussianMixture)
    for name in ("means", "covs", "log_weights"):
        assert torch.equal(getattr(loaded, name), getattr(mixture, name)), name
    schedule = get_schedule("VP")
    torch.testing.assert_close(
        loaded.log_prob(x, 1e-4, schedule), _reference_log_q(mixture, x, 1e-4, schedule), rtol=1e-10, atol=1e-10
    )
    with pytest.raises(ValueError, match="'rank'"):
        make_dataset({k: v for k, v in spec.items() if k != "rank"})
    with pytest.raises(ValueError, match="rank"):
        make_gaussian_mixture_lowrank(5, 3, 2, 4, 0.1)


def test_digit_split_is_disjoint_complete_and_seeded():
    x = torch.arange(100, dtype=torch.float64)[:, None]
    test, train = split_digits(x, 0.2, "test", 3), split_digits(x, 0.2, "train", 3)
    assert len(test) == 20 and len(train) == 80
    assert sorted(torch.cat([test, train])[:, 0].tolist()) == list(range(100))
    assert torch.equal(test, split_digits(x, 0.2, "test", 3)) and not torch.equal(test, split_digits(x, 0.2, "test", 4))


# ------------------------------------------------------------------------------------------------------------- #
# peers: a single Gaussian N(m, S) with its exact denoiser, where log q_t is closed form


def _gaussian_case(dim: int = 3):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    cov = a @ a.T / dim + 0.3 * torch.eye(dim, dtype=torch.float64)
    mean = torch.randn(dim, generator=gen, dtype=torch.float64)
    mixture = GaussianMixture(torch.ones(1, dtype=torch.float64), mean[None], cov[None])
    schedule = get_schedule("VP")
    x = mixture.sample(5, generator=gen)
    return mixture, schedule, x, mean, cov


def _closed_form_log_q(mean, cov, x, t, schedule):
    alpha, sigma = (float(v) for v in schedule(torch.tensor(t, dtype=torch.float64)))
    c = alpha**2 * cov + sigma**2 * torch.eye(len(mean), dtype=torch.float64)
    return torch.distributions.MultivariateNormal(alpha * mean, covariance_matrix=c).log_prob(x)


@pytest.mark.skipif(peer_available("flow_matching_exact") is not None, reason="flow_matching is not installed")
@pytest.mark.parametrize("exact", [True, False])
def test_flow_matching_adapter_gives_the_closed_form_gaussian_nll(exact):
    mixture, schedule, x, mean, cov = _gaussian_case()
    t_min = 1e-3

    def log_prior(z):  # the exact q_1 (a Gaussian stays Gaussian), so only the solver and divergence remain
        return _closed_form_log_q(mean, cov, z, 1.0, schedule)

    out = flow_matching_log_likelihood(
        x, ExactDenoiser(mixture, schedule), log_prior=log_prior, t_min=t_min, exact=exact, rtol=1e-7, atol=1e-7, seed=1
    )
    truth = _closed_form_log_q(mean, cov, x, t_min, schedule)
    if exact:
        torch.testing.assert_close(out["log_q"], truth, rtol=0, atol=1e-4)
    else:  # Hutchinson: unbiased, with a spread of a few nats in 3-D; the mean over points is close
        assert (out["log_q"] - truth).abs().max() < 10
        assert not torch.allclose(out["log_q"], truth, atol=1e-3)
    assert out["nfe"] > 10 and out["seconds"] > 0


@pytest.mark.skipif(peer_available("kdiffusion_hutchinson") is not None, reason="k-diffusion is not installed")
def test_kdiffusion_adapter_gives_the_closed_form_gaussian_nll():
    mixture, schedule, x, mean, cov = _gaussian_case()
    t_min = 1e-3
    outs = torch.stack(
        [
            kdiffusion_log_likelihood(x, ExactDenoiser(mixture, schedule), t_min=t_min, rtol=1e-7, atol=1e-7, seed=s)[
                "log_q"
            ]
            for s in range(16)
        ]
    )
    truth = _closed_form_log_q(mean, cov, x, t_min, schedule)
    # k-diffusion's prior N(0, sigma_max^2) ignores the data's mean and covariance: O(|m|^2 alpha_T^2) nats, tiny for VP
    assert (outs.mean(0) - truth).abs().max() < 1.0


def test_summary_reports_peer_agreement_against_the_same_estimator():
    rows = []
    for method, shift in [("vjp", 0.0), ("flow_matching_exact", 0.4), ("analytic", 0.0)]:
        rows.append(
            pd.DataFrame(
                {
                    "dataset": "m",
                    "dim": 4,
                    "method": method,
                    "role": "peer" if "flow" in method else "ours",
                    "point": np.arange(3),
                    "nll_nats": np.array([1.0, 2.0, 3.0]) + shift,
                    "abs_error": [0.1, 0.2, 0.3],
                    "seconds_per_sample": 0.5,
                    "nfe": 10,
                    "peak_mem_mb": 1.0,
                }
            )
        )
    bench = summarize_benchmark(pd.concat(rows, ignore_index=True)).set_index("method")
    assert math.isclose(bench.loc["vjp", "abs_error_mean"], 0.2)
    assert math.isclose(bench.loc["vjp", "abs_error_std"], 0.1)
    assert bench.loc["flow_matching_exact", "agreement_with"] == "vjp"
    assert math.isclose(bench.loc["flow_matching_exact", "agreement_nats_per_dim"], 0.1)
    assert math.isnan(bench.loc["analytic", "agreement_nats_per_dim"])
    assert {"dim", "method", "abs_error_mean", "abs_error_std", "seconds_per_sample", "nfe", "peak_mem_mb"} <= set(
        bench.reset_index()
    )


# ------------------------------------------------------------------------------------------------------------- #
# held-out digits


def test_heldout_summary_measures_each_estimator_against_vjp_per_image():
    bpd = {"vjp": [1.0, 2.0, 3.0, 4.0], "dftm": [1.5, 1.5, 3.5, 3.5], "hutchinson1": [0.0, 4.0, 2.0, 6.0]}
    seconds = {"vjp": 8.0, "dftm": 0.5, "hutchinson1": 2.0}
    points = pd.concat(
        [
            pd.DataFrame(
                {
                    "method": m,
                    "trace_target": "sq_norm" if m == "dftm" else "",
                    "image": np.arange(4),
                    "bpd": v,
                    "seconds_per_image": seconds[m],
                    "nfe": 20,
                    "peak_mem_mb": 1.0,
                }
            )
            for m, v in bpd.items()
        ],
        ignore_index=True,
    )
    summary = summarize_heldout(points.sample(frac=1.0, random_state=0)).set_index("method")  # order-free
    assert math.isclose(summary.loc["vjp", "bpd_mean"], 2.5) and summary.loc["vjp", "abs_diff_to_vjp_bpd"] == 0
    assert math.isclose(summary.loc["vjp", "bpd_sem"], np.std([1, 2, 3, 4], ddof=1) / 2)
    assert math.isclose(summary.loc["dftm", "abs_diff_to_vjp_bpd"], 0.5)
    assert math.isclose(summary.loc["hutchinson1", "abs_diff_to_vjp_bpd"], 1.5)
    assert math.isclose(summary.loc["dftm", "speedup_over_vjp"], 16.0)
    assert summary.loc["dftm", "trace_target"] == "sq_norm"


def test_heldout_likelihood_refuses_images_that_are_not_held_out(tmp_path):
    stores = {}
    for name, spec in {
        "train": {"kind": "digits", "seed": 3, "holdout": 0.1, "num_samples": 20},
        "test": {"kind": "digits", "seed": 3, "holdout": 0.1, "split": "test", "num_samples": 4},
        "other": {"kind": "digits", "seed": 3, "holdout": 0.2, "split": "test", "num_samples": 4},
    }.items():
        x, mixture, attrs = make_dataset(spec)
        stores[name] = tmp_path / f"{name}.zarr"
        write_dataset(stores[name], x, name=name, mixture=mixture, attrs=attrs, config=spec, seed=3)
    section = {"heldout": {"methods": ["vjp"], "num_points": 2, "t_min": 1e-3, "seed": 0}}
    outs = dict(points_csv=tmp_path / "p.csv", summary_csv=tmp_path / "s.csv", markdown=tmp_path / "s.md")
    with pytest.raises(ValueError, match="not the 'train' side"):
        run_heldout_likelihood(section, stores["test"], stores["train"], tmp_path / "none.pt", {}, **outs)
    with pytest.raises(ValueError, match="holdout differs"):
        run_heldout_likelihood(section, stores["train"], stores["other"], tmp_path / "none.pt", {}, **outs)
    assert not any(p.exists() for p in outs.values())


# ------------------------------------------------------------------------------------------------------------- #
# fair timing: the floor, the median of repeats, peak memory in a process of its own, Hutchinson's probe counts


def test_the_floor_is_the_full_solve_less_the_integrated_trace():
    """Euler on VE (f = 0): the floor's Eq. 14 term is exactly 0, so its log q is log p_T(x_T) of the same trajectory
    as the full solve, and the full Δ is the Euler sum of ½ g² tr F along that trajectory, recomputed here."""
    from dfcore.fisher.trace import AnalyticTrace, ZeroTrace
    from dfcore.likelihood import log_likelihood
    from dfcore.sde import pf_ode_velocity

    _, mixture = make_gaussian_mixture_lowrank(10, 4, 2, 2, 0.3, seed=2)
    schedule = get_schedule("VE")
    x = mixture.sample(5, generator=torch.Generator().manual_seed(3))
    full_trace = AnalyticTrace(mixture, schedule)
    floor_trace = ZeroTrace(full_trace.denoiser)

    def prior(z):
        return -0.5 * (z**2).sum(1)

    t_min, steps = 1e-3, 12
    kw = dict(log_prior=prior, t_min=t_min, solver="euler", num_steps=steps)
    full, floor = log_likelihood(x, full_trace, **kw), log_likelihood(x, floor_trace, **kw)
    assert full.nfe == floor.nfe == steps
    torch.testing.assert_close(floor.x_T, full.x_T, rtol=0, atol=0)
    assert torch.equal(floor.delta, torch.zeros_like(floor.delta))
    torch.testing.assert_close(floor.log_q, prior(floor.x_T), rtol=0, atol=0)
    h = (1.0 - t_min) / steps
    z, integrated = x.clone(), torch.zeros(len(x), dtype=torch.float64)
    for i in range(steps):
        t = torch.full((len(x),), t_min + i * h, dtype=torch.float64)
        integrated += h * 0.5 * schedule.g2(t) * mixture.fisher_trace(z, t, schedule)
        z = z + h * pf_ode_velocity(z, t, mixture.score(z, t, schedule), schedule)
    assert integrated.abs().min() > 1.0  # the trace is no rounding error here
    torch.testing.assert_close(full.log_q - floor.log_q, integrated, rtol=1e-9, atol=1e-9)


def test_median_seconds_times_repeats_after_an_untimed_warm_up():
    import time

    from dfcore.experiments.common import median_seconds

    pauses = iter([0.3, 0.01, 0.2, 0.02])  # the warm-up is the slowest call; the median ignores it
    calls = []

    def fn():
        calls.append(1)
        time.sleep(next(pauses))
        return len(calls)

    out, median, each = median_seconds(fn, "cpu", 3)
    assert out == 4 and len(calls) == 4 and len(each) == 3
    assert median == sorted(each)[1] and 0.015 < median < 0.15
    assert median_seconds(lambda: 7, "cpu", 2, warmup=False)[0] == 7
    with pytest.raises(ValueError, match="repeats"):
        median_seconds(lambda: None, "cpu", 0)


def _allocate_and_measure(megabytes: int) -> float:
    """Peak MiB of a block that fills a buffer of ``megabytes`` MiB (runs in a child process)."""
    from dfcore.profiling import PeakMemory

    with PeakMemory("cpu") as mem:
        buffer = torch.ones(megabytes * 2**20 // 8, dtype=torch.float64)
        assert float(buffer[-1]) == 1.0
        del buffer
    return mem.peak_bytes / 2**20


def test_peak_memory_in_a_child_counts_what_the_parent_freed_before():
    from dfcore.profiling import run_isolated

    bigger = torch.ones(400 * 2**20 // 8, dtype=torch.float64)  # a method before it: 400 MiB, touched, then freed
    assert float(bigger.sum()) > 0
    del bigger
    peak = run_isolated(_allocate_and_measure, 200)
    assert 150 < peak < 400, peak


def test_hutchinson_rows_by_probe_count_and_more_probes_err_less():
    from dfcore.experiments.likelihood import likelihood_points
    from dfcore.experiments.likelihood_methods import HUTCHINSON_PROBES, OWN_METHODS

    assert {"hutchinson1": 1, "hutchinson4": 4, "hutchinson16": 16}.items() <= HUTCHINSON_PROBES.items()
    assert all(OWN_METHODS[m].estimator == "hutchinson" for m in ("hutchinson1", "hutchinson4", "hutchinson16"))
    _, mixture = make_gaussian_mixture_lowrank(10, 8, 3, 2, 0.3, seed=5)
    schedule = get_schedule("VP")
    x = mixture.sample(6, generator=torch.Generator().manual_seed(6))
    cfg = {"t_min": 1e-3, "rtol": 1e-5, "atol": 1e-5, "solver": "rk4", "num_steps": 8, "step_control": "all"}
    kw = dict(denoiser=ExactDenoiser(mixture, schedule), mixture=mixture, trace_model=None, cfg=cfg)
    kw["log_prior"] = lambda z: -0.5 * (z**2).sum(1)
    exact = likelihood_points(x, "analytic", seed=0, **kw)["log_q"]
    errors = {
        method: torch.stack([likelihood_points(x, method, seed=s, **kw)["log_q"] - exact for s in range(6)])
        for method in ("hutchinson1", "hutchinson16")
    }
    mse = {method: float((err**2).mean()) for method, err in errors.items()}
    assert mse["hutchinson16"] < mse["hutchinson1"] / 4, mse


def test_the_dataset_run_measures_the_floor_and_every_method_in_its_own_process(tmp_path):
    """End to end on a random-weight MLP denoiser: the floor row is there unasked, every time is a median of
    ``repeats`` and every peak memory is positive."""
    from dfcore.experiments.likelihood import run_likelihood_dataset
    from dfcore.io import save_checkpoint
    from dfcore.models.networks import denoiser_from_state

    spec = {"kind": "gaussian_mixture_lowrank", "num_samples": 64, "seed": 4, "dim": 4, "components": 2}
    spec |= {"rank": 2, "noise": 0.3}
    x, mixture, attrs = make_dataset(spec)
    write_dataset(tmp_path / "m.zarr", x, name="m", mixture=mixture, attrs=attrs, config=spec, seed=4)
    hp = {"dim": 4, "hidden": 16, "layers": 1, "emb_dim": 8, "fourier_levels": 0}
    state = {"kind": "denoiser", "arch": "mlp", "hparams": hp, "schedule": {"name": "VP", "params": {}}}
    state |= {"prediction": "x0", "sigma_data": 0.5, "state_dict": None}
    torch.manual_seed(0)
    save_checkpoint({"model": denoiser_from_state(state).state()}, tmp_path / "den.pt")
    section = {
        "methods": ["vjp", "hutchinson4"],
        "solver": "rk4",
        "rtol": 1e-5,
        "atol": 1e-5,
        "num_steps": 4,
        "step_control": "all",
    }
    section |= {"t_min": 1e-3, "num_points": 3, "seed": 0, "repeats": 3}
    frame = run_likelihood_dataset(
        section, tmp_path / "m.zarr", tmp_path / "den.pt", {}, tmp_path / "p.csv", dataset="m"
    )
    assert list(dict.fromkeys(frame["method"])) == ["floor", "vjp", "hutchinson4"]
    assert (
        (frame["repeats"] == 3).all() and (frame["peak_mem_mb"] > 0).all() and (frame["seconds_per_sample"] > 0).all()
    )
    bench = summarize_benchmark(frame).set_index("method")
    assert bench.loc["floor", "time_vs_floor"] == 1.0 and bench.loc["floor", "role"] == "floor"
    seconds = frame.groupby("method")["seconds_per_sample"].first()
    for method in ("vjp", "hutchinson4"):
        assert bench.loc[method, "time_vs_floor"] == pytest.approx(seconds[method] / seconds["floor"], rel=1e-12)
    assert bench.loc["vjp", "nfe"] == bench.loc["floor", "nfe"] == bench.loc["hutchinson4", "nfe"]
