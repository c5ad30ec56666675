"""Likelihood through the PF-ODE (Eq. 14) against exact log-densities: Gaussian mixtures (log q_0) and
Dirac mixtures (log q_eps at a small eps), for the analytic trace and for DF-TM with exact models."""

from __future__ import annotations

import math

import pytest
import torch

from dfcore.data.datasets import make_gaussian_mixture
from dfcore.fisher import AnalyticTrace, DFTMTrace
from dfcore.likelihood import (
    bits_per_dim,
    gaussian_log_prior,
    gaussian_mixture_log_q0,
    log_likelihood,
    moment_matched_prior,
    prior_log_prob,
)
from dfcore.mixtures import DiracMixture
from dfcore.models.base import ExactDenoiser, ExactTraceModel
from dfcore.schedules import get_schedule


@pytest.fixture(scope="module")
def gmm():
    x, mixture = make_gaussian_mixture(8, [0.3, 0.7], [[-1.0, 0.0], [1.0, 1.0]], [0.3, 0.5], seed=3)
    big, _ = make_gaussian_mixture(20000, [0.3, 0.7], [[-1.0, 0.0], [1.0, 1.0]], [0.3, 0.5], seed=4)
    return x, mixture, big.mean(0), torch.cov(big.T)


@pytest.mark.parametrize(
    "name, params, t_min",
    [
        ("VP", {}, 1e-5),
        ("VE", {"sigma_min": 1e-3}, 1e-5),
        pytest.param("subVP", {}, 1e-5, marks=pytest.mark.slow),
        pytest.param("EDM", {}, 2.5e-5, marks=pytest.mark.slow),
    ],
)
def test_gaussian_mixture_nll_matches_exact_log_q0(gmm, name, params, t_min):
    """log q_{t_min} ~ log q_0 needs sigma(t_min) << the component widths: VE's default sigma_min = 0.01
    alone shifts log q by ~1e-3 nats/dim, so VE runs with sigma_min = 1e-3 here."""
    x, mixture, mean, cov = gmm
    schedule = get_schedule(name, **params)
    result = log_likelihood(
        x,
        AnalyticTrace(mixture, schedule),
        log_prior=gaussian_log_prior(schedule, mean=mean, cov=cov),
        t_min=t_min,
        rtol=1e-6,
        atol=1e-6,
    )
    exact = gaussian_mixture_log_q0(mixture, x)
    assert ((result.log_q - exact).abs() / x.shape[1]).max() < 1e-3


def test_dirac_mixture_log_q_eps(gmm):
    points = gmm[0]
    mixture = DiracMixture(points)
    schedule = get_schedule("VE")
    t_min = 0.1  # sigma = 0.023: the Dirac mixture has no density at t = 0
    x = points[:4] + 0.01
    result = log_likelihood(
        x,
        AnalyticTrace(mixture, schedule),
        log_prior=moment_matched_prior(schedule, points),
        t_min=t_min,
        rtol=1e-7,
        atol=1e-7,
    )
    exact = mixture.log_prob(x, t_min, schedule)
    assert ((result.log_q - exact).abs() / 2).max() < 1e-3


def test_dftm_with_exact_models_gives_the_analytic_nll(gmm):
    points = gmm[0]
    mixture = DiracMixture(points)
    schedule = get_schedule("VP")
    x = points[:3] + 0.05
    kw = dict(log_prior=gaussian_log_prior(schedule), t_min=0.05, solver="rk4", num_steps=10)
    ref = log_likelihood(x, AnalyticTrace(mixture, schedule), **kw)
    est = log_likelihood(x, DFTMTrace(ExactDenoiser(mixture, schedule), ExactTraceModel(mixture, schedule)), **kw)
    torch.testing.assert_close(est.log_q, ref.log_q, rtol=1e-9, atol=1e-8)
    torch.testing.assert_close(est.log_q, est.prior + est.delta, rtol=0, atol=0)
    torch.testing.assert_close(est.bpd, -est.log_q / (2 * math.log(2)))
    assert est.nfe == 4 * 10  # rk4: four drift evaluations per step


def test_fixed_step_rk4_converges_to_the_adaptive_answer(gmm):
    x, mixture, mean, cov = gmm
    schedule = get_schedule("VP")
    kw = dict(t_min=1e-3, log_prior=gaussian_log_prior(schedule, mean=mean, cov=cov))
    trace = AnalyticTrace(mixture, schedule)
    x = x[:4]
    adaptive = log_likelihood(x, trace, solver="dopri5", rtol=1e-7, atol=1e-7, **kw).log_q
    coarse = log_likelihood(x, trace, solver="rk4", num_steps=8, **kw).log_q
    fine = log_likelihood(x, trace, solver="rk4", num_steps=64, **kw).log_q
    assert (fine - adaptive).abs().max() < 0.1 * (coarse - adaptive).abs().max() + 1e-6
    assert (fine - adaptive).abs().max() < 1e-3


def test_prior_and_units():
    schedule = get_schedule("VE")
    x = torch.randn(5, 3, dtype=torch.float64)
    sigma = 50.0
    closed = -0.5 * x.pow(2).sum(1) / sigma**2 - 1.5 * math.log(2 * math.pi * sigma**2)
    torch.testing.assert_close(prior_log_prob(x, schedule), closed)
    log_q = torch.tensor([-3.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(bits_per_dim(log_q, 4), -log_q / (4 * math.log(2)))
    with pytest.raises(ValueError, match="solver"):
        log_likelihood(
            x, AnalyticTrace(DiracMixture(x), schedule), log_prior=gaussian_log_prior(schedule), solver="magic"
        )


def test_run_nll_reports_the_error_against_log_q0_and_log_q_tmin(tmp_path):
    """For a Gaussian mixture the estimate is of log q_{t_min}: the error against it is the solver's (and the prior's),
    while the error against log q_0 also holds the truncation at t_min; both are reported."""
    from dfcore.data.store import write_dataset
    from dfcore.experiments.nll import run_nll
    from dfcore.likelihood import exact_log_densities

    x, mixture = make_gaussian_mixture(50, [0.3, 0.7], [[-1.0, 0.0], [1.0, 1.0]], [0.3, 0.5], seed=5)
    store = tmp_path / "gmm.zarr"
    write_dataset(store, x, name="gmm", mixture=mixture)
    section = {
        "num_points": 4,
        "solver": "dopri5",
        "rtol": 1e-8,
        "atol": 1e-8,
        "num_steps": 10,
        "num_probes": 1,
        "t_min": 1e-3,
        "seed": 0,
    }
    schedule = get_schedule("VP")
    frame = run_nll(
        section,
        store,
        tmp_path / "nll.csv",
        dataset="gmm",
        schedule_name="VP",
        schedule=schedule,
        method="analytic",
        seed=0,
        device="cpu",
    )
    exact = exact_log_densities(mixture, x[:4], 1e-3, schedule)
    torch.testing.assert_close(torch.tensor(frame["log_q0"].values), gaussian_mixture_log_q0(mixture, x[:4]))
    torch.testing.assert_close(torch.tensor(frame["log_q_tmin"].values), mixture.log_prob(x[:4], 1e-3, schedule))
    torch.testing.assert_close(torch.tensor(frame["log_q_tmin"].values), exact["log_q_tmin"])
    assert ((frame["log_q0"] - frame["log_q_tmin"]).abs() / 2).mean() > 1e-4  # the truncation at t_min
    estimate = -torch.tensor(frame["nll_nats"].values)
    for column, name in (("log_q0", "abs_error_q0_nats_per_dim"), ("log_q_tmin", "abs_error_tmin_nats_per_dim")):
        torch.testing.assert_close(
            torch.tensor(frame[name].values), (estimate - torch.tensor(frame[column].values)).abs() / 2
        )
    assert (frame["abs_error_tmin_nats_per_dim"] < 1e-3).all()


def test_exact_log_densities_of_a_dirac_mixture_have_no_log_q0():
    points = torch.randn(6, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    exact = exact_log_densities_of(DiracMixture(points), points[:3])
    assert exact["log_q0"].isnan().all() and exact["log_q_tmin"].isfinite().all()


def exact_log_densities_of(mixture, x):
    from dfcore.likelihood import exact_log_densities

    return exact_log_densities(mixture, x, 0.1, get_schedule("VE"))


def test_state_step_control_gives_every_estimator_the_steps_of_x_and_the_exact_density(gmm):
    """With dopri5's error measured on x alone, the analytic trace and a one-probe Hutchinson estimate take the
    same steps (x's ODE is theirs alike), the analytic NLL still matches the exact log q0, and the steps are those
    of the floor solve, which has no trace at all."""
    from dfcore.fisher.trace import HutchinsonTrace, ZeroTrace

    x, mixture, mean, cov = gmm
    schedule = get_schedule("VP")
    den = ExactDenoiser(mixture, schedule)
    kw = dict(log_prior=gaussian_log_prior(schedule, mean=mean, cov=cov), t_min=1e-4, rtol=1e-6, atol=1e-6)
    analytic = log_likelihood(x, AnalyticTrace(mixture, schedule), step_control="state", **kw)
    gen = torch.Generator().manual_seed(0)
    hutch = log_likelihood(x, HutchinsonTrace(den, num_probes=1, generator=gen), step_control="state", **kw)
    floor = log_likelihood(x, ZeroTrace(den), step_control="state", **kw)
    assert analytic.nfe == hutch.nfe == floor.nfe
    torch.testing.assert_close(analytic.x_T, floor.x_T, rtol=1e-6, atol=1e-6)
    exact = gaussian_mixture_log_q0(mixture, x)
    assert ((analytic.log_q - exact).abs() / x.shape[1]).max() < 1e-3
    whole = log_likelihood(x, AnalyticTrace(mixture, schedule), **kw)
    assert whole.nfe >= analytic.nfe  # the seminorm never asks for more steps than the whole state
    with pytest.raises(ValueError, match="unknown step_control 'x'"):
        log_likelihood(x, AnalyticTrace(mixture, schedule), step_control="x", **kw)
