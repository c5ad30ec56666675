"""Tests of the Fisher-vector products (analytic, dfea, vjp), the PF-ODE sampler and its discrete adjoint.

Every check compares against an independent computation: explicit matrices for Eq. 20, autograd
Jacobians of the exact mixture score, autograd through the whole sampler, and the closed-form
probability-flow map of a single Gaussian.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dfcore.adjoint import autograd_adjoint, cosine_and_relative_error, discrete_adjoint, guided_sample
from dfcore.fisher import DFEA, FVP_ESTIMATORS, AnalyticFVP, DFEACentered, FisherVectorProduct, fisher_vp
from dfcore.mixtures import DiracMixture, GaussianMixture
from dfcore.models.base import ExactDenoiser
from dfcore.sampling import CountingDenoiser, sample_trajectory, with_posterior_mean
from dfcore.schedules import get_schedule
from dfcore.sde import time_grid


@pytest.fixture(autouse=True)
def _float64_default():
    """Reference math in float64; restore the default so other test modules are unaffected."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _dirac(n: int = 12, d: int = 3, seed: int = 0) -> DiracMixture:
    g = torch.Generator().manual_seed(seed)
    return DiracMixture(torch.randn(n, d, generator=g))


def _gmm(d: int = 3, seed: int = 1) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(2, d, d, generator=g)
    covs = a @ a.transpose(1, 2) / d + 0.1 * torch.eye(d)
    return GaussianMixture(torch.tensor([0.3, 0.7]), 2 * torch.randn(2, d, generator=g), covs)


# --- fisher_vp: dfea against Eq. 20 built as an explicit matrix -------------------------------


@pytest.mark.parametrize("shape", [(5, 4), (3, 2, 3, 3)])
def test_dfea_matches_eq20_matrix(shape):
    g = torch.Generator().manual_seed(0)
    schedule = get_schedule("VP")
    x, v, x0, ybar = (torch.randn(*shape, generator=g) for _ in range(4))
    t = torch.rand(shape[0], generator=g) * 0.9 + 0.05
    out = fisher_vp("dfea", x, t, v, schedule=schedule, x0=x0, ybar=ybar)

    b, d = shape[0], math.prod(shape[1:])
    a, s = schedule.alpha(t), schedule.sigma(t)
    xf, yf, vf = x0.reshape(b, d), ybar.reshape(b, d), v.reshape(b, d)
    mat = torch.eye(d) / s[:, None, None] ** 2 - (a**2 / s**4)[:, None, None] * (
        xf[:, :, None] * xf[:, None, :] - yf[:, :, None] * yf[:, None, :]
    )
    ref = torch.einsum("bij,bi->bj", mat, vf)  # F^T v
    torch.testing.assert_close(out.reshape(b, d), ref, rtol=1e-12, atol=1e-10)


def test_dfea_centered_matches_its_matrix_and_eq20_in_expectation():
    g = torch.Generator().manual_seed(1)
    schedule = get_schedule("VE")
    x, v, x0, ybar = (torch.randn(4, 3, generator=g) for _ in range(4))
    t = torch.full((4,), 0.3)
    a, s = schedule.alpha(t), schedule.sigma(t)
    dev = x0 - ybar
    mat = torch.eye(3) / s[:, None, None] ** 2 - (a**2 / s**4)[:, None, None] * dev[:, :, None] * dev[:, None, :]
    out = fisher_vp("dfea_centered", x, t, v, schedule=schedule, x0=x0, ybar=ybar)
    torch.testing.assert_close(out, torch.einsum("bij,bi->bj", mat, v))
    # Averaged over endpoints x0 drawn around ybar (mean ybar), both forms give the same operator.
    draws = ybar[:1] + torch.randn(20000, 3, generator=g)
    kw = dict(schedule=schedule, ybar=ybar[:1].expand(20000, 3))
    vv, xx, tt = v[:1].expand(20000, 3), x[:1].expand(20000, 3), t[:1].expand(20000)
    m_c = fisher_vp("dfea_centered", xx, tt, vv, x0=draws, **kw).mean(0)
    m_e = fisher_vp("dfea", xx, tt, vv, x0=draws, **kw).mean(0)
    assert (m_c - m_e).norm() < 0.05 * m_e.norm()


def test_dfea_is_exact_for_a_single_point():
    """With one data point y the posterior is a point mass: x0 = ybar = y, and F = I / sigma^2 exactly."""
    y = torch.tensor([[0.7, -1.2, 0.4]])
    mix = DiracMixture(y)
    schedule = get_schedule("VE")
    x, v = torch.randn(4, 3), torch.randn(4, 3)
    t = torch.full((4,), 0.4)
    ybar = mix.posterior_mean(x, t, schedule)
    dfea = fisher_vp("dfea", x, t, v, schedule=schedule, x0=y.expand(4, 3), ybar=ybar)
    exact = fisher_vp("analytic", x, t, v, schedule=schedule, mixture=mix)
    torch.testing.assert_close(dfea, exact, rtol=1e-10, atol=1e-10)


# --- fisher_vp: analytic and vjp against autograd on the exact score ---------------------------


@pytest.mark.parametrize("make", [_dirac, _gmm])
@pytest.mark.parametrize("sched", ["VE", "VP"])
def test_analytic_and_vjp_match_autograd_hessian(make, sched):
    mix, schedule = make(), get_schedule(sched)
    g = torch.Generator().manual_seed(3)
    x, v = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    t = torch.linspace(0.1, 0.9, 6)
    # Independent: F = -d(score)/dx by autograd, one sample at a time.
    ref = torch.stack(
        [
            -torch.autograd.functional.jacobian(lambda z: mix.score(z[None], t[i : i + 1], schedule)[0], x[i]).T @ v[i]
            for i in range(6)
        ]
    )
    analytic = fisher_vp("analytic", x, t, v, schedule=schedule, mixture=mix)
    vjp = fisher_vp("vjp", x, t, v, schedule=schedule, denoiser=ExactDenoiser(mix, schedule))
    torch.testing.assert_close(analytic, ref, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(vjp, ref, rtol=1e-8, atol=1e-8)


def test_fisher_vp_rejects_bad_input():
    x = torch.zeros(2, 3)
    schedule = get_schedule("VP")
    assert set(FVP_ESTIMATORS) == {"analytic", "dfea", "dfea_centered", "vjp"}
    assert all(issubclass(cls, FisherVectorProduct) for cls in FVP_ESTIMATORS.values())
    with pytest.raises(ValueError, match="unknown fisher_vp method"):
        fisher_vp("exact", x, 0.5, x, schedule=schedule)
    with pytest.raises(TypeError, match="x0"):
        fisher_vp("dfea", x, 0.5, x, schedule=schedule)
    with pytest.raises(ValueError, match="shape of x"):
        fisher_vp("dfea", x, 0.5, torch.zeros(2, 4), schedule=schedule, x0=x, ybar=x)
    with pytest.raises(ValueError, match="schedule"):  # neither a schedule nor a denoiser that has one
        DFEA(x)
    with pytest.raises(ValueError, match="ybar"):  # no cached posterior mean and no denoiser to compute it
        DFEA(x, schedule=schedule)(x, 0.5, x)
    with pytest.raises(TypeError, match="x0"):  # the vjp product reads no endpoint
        fisher_vp("vjp", x, 0.5, x, denoiser=ExactDenoiser(DiracMixture(x + 1), schedule), x0=x)
    with pytest.raises(TypeError, match="mixtur"):  # misspelt
        AnalyticFVP(mixtur=DiracMixture(x), schedule=schedule)


def test_dfea_without_a_cached_mean_asks_the_denoiser():
    mix = DiracMixture(torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    schedule = get_schedule("VP")
    den = ExactDenoiser(mix, schedule)
    x = torch.randn(4, 3, dtype=torch.float64)
    v = torch.randn(4, 3, dtype=torch.float64)
    t = torch.full((4,), 0.3, dtype=torch.float64)
    x0 = torch.randn(4, 3, dtype=torch.float64)
    for cls in (DFEA, DFEACentered):
        cached = cls(x0, schedule=schedule)(x, t, v, ybar=den.posterior_mean(x, t))
        torch.testing.assert_close(cls(x0, denoiser=den)(x, t, v), cached, rtol=1e-12, atol=0)


# --- sampler ------------------------------------------------------------------------------------


def _gaussian_flow(schedule, mu, s2, z, t):
    """Exact PF-ODE state of a single Gaussian N(mu, s2 I): x_t = a mu + sqrt(a^2 s2 + sigma^2) z."""
    a, sg = schedule.alpha(t), schedule.sigma(t)
    return a * mu + torch.sqrt(a**2 * s2 + sg**2) * z


def test_ddim_step_formula_and_sampler_orders():
    schedule = get_schedule("VP")
    mu, s2 = torch.tensor([1.0, -0.5]), 0.3
    mix = GaussianMixture(torch.ones(1), mu[None], s2 * torch.eye(2)[None])
    den = ExactDenoiser(mix, schedule)
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    t_max, t_min = 0.8, 0.05
    xT = _gaussian_flow(schedule, mu, s2, z, torch.tensor(t_max))
    exact = _gaussian_flow(schedule, mu, s2, z, torch.tensor(t_min))

    times = time_grid(1, t_min, t_max=t_max)
    one = sample_trajectory(den, xT, times, "ddim").x_final
    tb = torch.full((4,), t_max)
    eps = den.eps(xT, tb)
    ybar = (xT - schedule.sigma(tb)[:, None] * eps) / schedule.alpha(tb)[:, None]
    torch.testing.assert_close(
        one, schedule.alpha(torch.tensor(t_min)) * ybar + schedule.sigma(torch.tensor(t_min)) * eps
    )

    errs = {}
    for sampler in ("ddim", "heun"):
        errs[sampler] = [
            (sample_trajectory(den, xT, time_grid(n, t_min, t_max=t_max), sampler).x_final - exact).norm().item()
            for n in (10, 20)
        ]
    assert 1.6 < errs["ddim"][0] / errs["ddim"][1] < 2.5  # first order
    assert 3.2 < errs["heun"][0] / errs["heun"][1] < 5.0  # second order
    assert errs["heun"][1] < 0.2 * errs["ddim"][1]


# --- discrete adjoint against autograd through the sampler --------------------------------------


def _target_loss(x0):
    return 0.5 * (x0 - torch.tensor([1.0, 0.5, -0.5])).pow(2).sum(1)


@pytest.mark.parametrize("sampler", ["ddim", "heun"])
@pytest.mark.parametrize("sched", ["VE", "VP"])
def test_discrete_adjoint_analytic_matches_autograd(sampler, sched):
    mix, schedule = _dirac(n=8, d=3), get_schedule(sched)
    den = ExactDenoiser(mix, schedule)
    times = time_grid(12, 0.05, t_max=1.0)
    xT = torch.randn(5, 3, generator=torch.Generator().manual_seed(1)) * schedule.sigma(torch.tensor(1.0))
    truth, loss = autograd_adjoint(den, xT, times, _target_loss, sampler)
    traj = sample_trajectory(den, xT, times, sampler)
    lam_final = traj.x_final - torch.tensor([1.0, 0.5, -0.5])
    for method, kwargs in (("analytic", {"mixture": mix}), ("vjp", {"denoiser": den})):
        lams = discrete_adjoint(traj, lam_final, method, schedule=schedule, **kwargs)
        for k in range(len(times)):
            cos, rel = cosine_and_relative_error(lams[k], truth[k])
            assert cos.min() > 0.999999, (method, k)
            assert rel.max() < 1e-6, (method, k)
    torch.testing.assert_close(loss, _target_loss(traj.x_final))


def test_checkpointed_ground_truth_equals_plain_autograd():
    mix, schedule = _gmm(d=3), get_schedule("VP")
    den = ExactDenoiser(mix, schedule)
    times = time_grid(6, 0.05, t_max=1.0)
    xT = torch.randn(3, 3, generator=torch.Generator().manual_seed(2))
    a, _ = autograd_adjoint(den, xT, times, _target_loss, "heun", use_checkpoint=True)
    b, _ = autograd_adjoint(den, xT, times, _target_loss, "heun", use_checkpoint=False)
    for u, w in zip(a, b):
        torch.testing.assert_close(u, w)


def test_dfea_adjoint_is_the_product_of_eq20_step_matrices_and_calls_no_network():
    """lambda_T by DF-EA equals the product of explicit DDIM step Jacobians built from Eq. 20 matrices."""
    mix, schedule = _dirac(n=6, d=2, seed=4), get_schedule("VP")
    den = CountingDenoiser(ExactDenoiser(mix, schedule))
    times = time_grid(8, 0.01, t_max=1.0)
    xT = torch.randn(3, 2, generator=torch.Generator().manual_seed(5))
    traj = sample_trajectory(den, xT, times)
    lam_final = torch.randn(3, 2, generator=torch.Generator().manual_seed(6))
    den.reset()
    dfea = discrete_adjoint(traj, lam_final, "dfea", schedule=schedule, denoiser=den)
    assert den.calls == 0
    x0, lam = traj.caches[-1].ybar, lam_final.clone()  # the denoised endpoint
    for k in range(7, -1, -1):
        t, s = times[k], times[k + 1]
        a_t, s_t, a_s, s_s = schedule.alpha(t), schedule.sigma(t), schedule.alpha(s), schedule.sigma(s)
        yb = traj.caches[k].ybar
        mats = torch.eye(2) / s_t**2 - a_t**2 / s_t**4 * (
            x0[:, :, None] * x0[:, None, :] - yb[:, :, None] * yb[:, None, :]
        )
        jac = a_s / a_t * torch.eye(2) + (s_s - a_s * s_t / a_t) * s_t * mats  # dx_s/dx_t (symmetric)
        lam = torch.einsum("bij,bi->bj", jac, lam)
        torch.testing.assert_close(dfea[k], lam, rtol=1e-9, atol=1e-12)


# --- guidance ------------------------------------------------------------------------------------


def test_guided_sample_lowers_loss_and_counts_evaluations():
    mix, schedule = _dirac(n=64, d=2, seed=7), get_schedule("VP")
    den = CountingDenoiser(ExactDenoiser(mix, schedule))
    times = time_grid(20, 0.001, t_max=1.0)
    xT = torch.randn(16, 2, generator=torch.Generator().manual_seed(8))
    target = torch.tensor([1.0, 1.0])

    def loss(x0):
        return 0.5 * (x0 - target).pow(2).sum(1)

    before = loss(sample_trajectory(den, xT, times).x_final)
    den.reset()
    out = guided_sample(
        den, xT, times, loss, method="analytic", update_steps=(10, 5), step_size=0.5, mixture=mix, normalize="none"
    )
    assert out.final_loss.mean() < before.mean()
    assert den.calls == 20 + 10 + 5  # forward pass + look-aheads; analytic makes no network call
    assert len(out.xs) == 21 and out.fvp_calls == 15


def test_guided_sample_rejects_non_finite_updates_and_flags_them():
    """A non-finite adjoint must not poison the sample: the update is skipped and the sample is flagged."""
    mix, schedule = _dirac(n=32, d=2, seed=9), get_schedule("VP")
    den = ExactDenoiser(mix, schedule)
    times = time_grid(10, 0.01, t_max=1.0)
    xT = torch.randn(6, 2, generator=torch.Generator().manual_seed(10))
    target = torch.tensor([1.0, 1.0])
    poisoned = torch.tensor([True, False, False, True, False, False])

    def loss(x0):
        # finite value, but d/du sqrt(|u|) at u = 0 is NaN: the gradient of the poisoned samples is not finite
        shift = (~poisoned).to(x0.dtype)  # sqrt(|u| + 1) - 1 has a finite gradient at u = 0
        kink = ((x0[:, 0] - x0[:, 0].detach()).abs() + shift).sqrt() - shift
        return 0.5 * (x0 - target).pow(2).sum(1) + kink

    base = sample_trajectory(den, xT, times).x_final
    out = guided_sample(
        den, xT, times, loss, method="analytic", update_steps=(5, 2), step_size=0.5, mixture=mix, normalize="none"
    )
    assert out.diverged.tolist() == poisoned.tolist()
    assert torch.isfinite(out.final_loss).all() and torch.isfinite(out.x_final).all()
    torch.testing.assert_close(out.x_final[poisoned], base[poisoned])  # never moved
    assert not torch.allclose(out.x_final[~poisoned], base[~poisoned])


@pytest.mark.parametrize("normalize", ["grad", "rms"])
def test_guided_sample_normalized_step_length(normalize):
    """With normalize, the update moves x_t by eta * ||grad L(x_0)|| (grad) or eta * sqrt(d) (rms), whatever the method."""
    mix, schedule = _dirac(n=32, d=3, seed=11), get_schedule("VP")
    den = ExactDenoiser(mix, schedule)
    times = time_grid(10, 0.01, t_max=1.0)
    xT = torch.randn(5, 3, generator=torch.Generator().manual_seed(12))
    target = torch.tensor([1.0, 0.5, -0.5])
    eta, u = 0.3, 4
    k = len(times) - 1 - u
    plain = sample_trajectory(den, xT, times)
    lookahead = sample_trajectory(den, plain.xs[k], times[k:]).x_final
    want = eta * ((lookahead - target).norm(dim=1) if normalize == "grad" else torch.full((5,), 3**0.5))
    for method in ("analytic", "dfea"):
        out = guided_sample(
            den,
            xT,
            times,
            _target_loss,
            method=method,
            update_steps=(u,),
            step_size=eta,
            mixture=mix,
            normalize=normalize,
        )
        torch.testing.assert_close((out.xs[k] - plain.xs[k]).norm(dim=1), want)
    with pytest.raises(ValueError, match="normalize"):
        guided_sample(den, xT, times, _target_loss, method="analytic", mixture=mix, normalize="unit")


# --- classifier, config and the task runner ----------------------------------------------------------


def test_labelled_digits_match_the_data_stage_scaling():
    from dfcore.data.datasets import labelled_digits, make_digits

    x, labels = labelled_digits()
    torch.testing.assert_close(x, make_digits())
    assert labels.shape == (1797,) and set(labels.tolist()) == set(range(10))


def test_classifier_learns_and_round_trips(tmp_path):
    from dfcore.data.datasets import labelled_digits
    from dfcore.io import save_checkpoint
    from dfcore.models.classifier import class_nll, classifier_state, load_classifier, train_classifier

    x, labels = labelled_digits()
    model, metrics = train_classifier(x, labels, hidden=64, epochs=4, seed=0, progress=False)
    assert metrics["test_accuracy"] > 0.6  # chance is 0.1
    save_checkpoint(classifier_state(model, metrics), tmp_path / "c.pt")
    again = load_classifier(tmp_path / "c.pt")
    xb = x[:5]
    torch.testing.assert_close(again(xb), model(xb))
    ref = -torch.log_softmax(model(xb), 1)[:, 3].double()
    torch.testing.assert_close(class_nll(again, xb, 3), ref)


def test_adjoint_config_errors_name_the_key():
    from dfcore.config import ConfigError, validate_config

    with pytest.raises(ConfigError, match="adjoint.sampler"):
        validate_config({"adjoint": {"sampler": "euler"}})
    with pytest.raises(ConfigError, match="adjoint.mixture.methods"):
        validate_config({"adjoint": {"mixture": {"methods": ["exact"]}}})
    cfg = validate_config({})
    assert cfg["adjoint"]["update_steps"] == [10, 5] and cfg["adjoint"]["num_steps"] == 20
    assert cfg["adjoint"]["t_min"] == 0.05 and cfg["adjoint"]["normalize"] == "grad"
    with pytest.raises(ConfigError, match="adjoint.normalize"):
        validate_config({"adjoint": {"normalize": "unit"}})


def test_mixture_task_outputs(tmp_path):
    """Task (a) end to end on a tiny checkerboard: analytic and vjp agree with autograd and with each other."""
    import pandas as pd

    from dfcore.config import validate_config
    from dfcore.data.datasets import make_checkerboard
    from dfcore.data.store import write_dataset
    from dfcore.experiments.adjoint import run_mixture_task
    from dfcore.io import read_zarr

    write_dataset(tmp_path / "cb.zarr", make_checkerboard(100), name="checkerboard")
    cfg = validate_config(
        {"adjoint": {"num_steps": 6, "update_steps": [3], "lambda_samples": 4, "mixture": {"num_samples": 8}}}
    )
    names = {
        "metrics": "metrics.csv",
        "agreement": "agreement.csv",
        "trajectories": "t.zarr",
        "loss_plot": "l.png",
        "agreement_plot": "a.png",
        "lambda_exact": "lambda_exact.csv",
    }
    out = {k: tmp_path / v for k, v in names.items()}
    metrics = run_mixture_task(
        cfg["adjoint"],
        cfg["schedules"],
        schedule_name="VP",
        data_path=tmp_path / "cb.zarr",
        out=out,
        seed=0,
        device="cpu",
        progress=False,
    )
    m = metrics.set_index("method")
    assert m.loc["analytic", "lambda_T_cosine"] > 0.999999 and m.loc["vjp", "lambda_T_cosine"] > 0.999999
    assert m.loc["analytic", "loss_after"] < m.loc["analytic", "loss_before"]
    assert m.loc["analytic", "loss_after"] == pytest.approx(m.loc["vjp", "loss_after"], rel=1e-9)
    assert m.loc["vjp", "nfe_vjp"] == 3 and m.loc["dfea", "nfe_vjp"] == 0
    assert m.loc["analytic", "improvement_vs_vjp"] == pytest.approx(1.0, rel=1e-9)
    assert m.loc["analytic", "lambda_update_cosine"] > 0.999999
    assert not m["diverged"].any() and (m["diverged_fraction"] == 0).all() and (m["finite_fraction"] == 1).all()
    assert metrics[["loss_after", "improvement", "lambda_T_cosine"]].notna().all().all()
    ds = read_zarr(out["trajectories"])
    assert ds["x"].dims == ("guidance", "step", "sample", "dim") and ds.sizes["step"] == 7
    assert list(ds["guidance"].values) == ["unguided", "analytic", "dfea", "dfea_centered", "vjp"]
    assert len(pd.read_csv(out["agreement"])) == 4 * 7
    # the exact-mean table: same samples as agreement.csv; the exact denoiser's ybar is already the posterior mean
    # (Tweedie), so its dfea / dfea_centered cosines are those of agreement.csv to round-off
    exact = pd.read_csv(out["lambda_exact"])
    assert list(exact.columns[:4]) == ["schedule", "method", "step", "steps_to_go"] and set(exact["schedule"]) == {"VP"}
    agreement = pd.read_csv(out["agreement"]).set_index(["method", "step"])
    for method in ("dfea", "dfea_centered"):
        rows = exact[exact["method"] == method].set_index("step")
        np.testing.assert_allclose(rows["cosine_mean"], agreement.loc[method, "cosine_mean"].sort_index(), atol=1e-8)
    assert out["loss_plot"].stat().st_size > 0 and out["agreement_plot"].stat().st_size > 0


# --- DF-EA with the exact posterior mean: method error without training error ---------------------------


def _brute_force_cosines(points: torch.Tensor, schedule, x_T: torch.Tensor, times: torch.Tensor, target: torch.Tensor):
    """Per-step cosines of Eq. 20's and the centered form's adjoint against autograd, written out here from
    scratch: DDIM with the posterior mean by explicit softmax weights, autograd through that loop, and both
    adjoint recursions with ybar the same explicit posterior mean and x_0 the last step's ybar."""

    def mean(x, t):
        alpha, sigma = schedule(t)
        w = torch.softmax(-(x[:, None] - alpha * points[None]).pow(2).sum(-1) / (2 * sigma**2), 1)
        return w @ points

    xs = [x_T.clone().requires_grad_(True)]
    for k in range(len(times) - 1):
        (a_t, s_t), (a_s, s_s) = schedule(times[k]), schedule(times[k + 1])
        x = xs[-1]
        ybar = mean(x, times[k])
        x_next = a_s * ybar + s_s * (x - a_t * ybar) / s_t
        x_next.retain_grad()
        xs.append(x_next)
    (0.5 * (xs[-1] - target).pow(2).sum()).backward()
    truth = [x.grad.detach() for x in xs]
    states = [x.detach() for x in xs]
    ybars = [mean(states[k], times[k]) for k in range(len(times) - 1)]
    x0 = ybars[-1]
    out = {}
    for method in ("dfea", "dfea_centered"):
        lam = states[-1] - target
        cosines = [None] * len(times)
        cosines[-1] = torch.ones(len(x_T))
        for k in range(len(times) - 2, -1, -1):
            (a_t, s_t), (a_s, s_s) = schedule(times[k]), schedule(times[k + 1])
            yb = ybars[k]
            fv = lam / s_t**2
            if method == "dfea":
                fv = fv - a_t**2 / s_t**4 * (
                    (x0 * lam).sum(1, keepdim=True) * x0 - (yb * lam).sum(1, keepdim=True) * yb
                )
            else:
                dev = x0 - yb
                fv = fv - a_t**2 / s_t**4 * (dev * lam).sum(1, keepdim=True) * dev
            lam = a_s / a_t * lam + (s_s - a_s * s_t / a_t) * s_t * fv
            cosines[k] = (lam * truth[k]).sum(1) / (lam.norm(dim=1) * truth[k].norm(dim=1))
        out[method] = cosines
    return out


@pytest.mark.parametrize("sched", ["VP", "VE"])
def test_exact_mean_lambda_cosines_match_a_brute_force_recomputation(sched):
    from dfcore.experiments.adjoint import exact_mean_lambda_agreement

    g = torch.Generator().manual_seed(4)
    points = torch.randn(7, 2, generator=g)
    mixture = DiracMixture(points)
    schedule = get_schedule(sched)
    sigma1 = float(schedule.sigma(torch.tensor(1.0)))
    x_T = sigma1 * torch.randn(9, 2, generator=g)
    times = time_grid(6, 0.05, t_max=1.0)
    target = torch.tensor([1.5, 1.5])
    frame = exact_mean_lambda_agreement(mixture, schedule, x_T, lambda x: 0.5 * (x - target).pow(2).sum(1), times)
    assert list(frame.columns[:7]) == [
        "method",
        "step",
        "steps_to_go",
        "t",
        "cosine_mean",
        "cosine_median",
        "cosine_min",
    ]
    assert set(frame["method"]) == {"analytic", "dfea", "dfea_centered"} and len(frame) == 3 * 7
    np.testing.assert_allclose(frame.loc[frame["method"] == "analytic", "cosine_min"], 1.0, atol=1e-10)
    brute = _brute_force_cosines(points, schedule, x_T, times, target)
    for method, cosines in brute.items():
        rows = frame[frame["method"] == method].sort_values("step")
        np.testing.assert_allclose(rows["cosine_mean"], [float(c.mean()) for c in cosines], rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(rows["cosine_median"], [float(c.median()) for c in cosines], rtol=1e-7, atol=1e-9)
        assert (rows["steps_to_go"] == 6 - rows["step"]).all()
    # the exact mean matters: Eq. 20's direction is not that of autograd at every step
    assert frame.loc[frame["method"] == "dfea", "cosine_min"].min() < 0.999


def test_with_posterior_mean_replaces_ybar_only():
    mixture = _dirac(6, 2)
    schedule = get_schedule("VP")
    den = ExactDenoiser(mixture, schedule)
    times = time_grid(4, 0.05, t_max=1.0)
    x_T = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    for sampler in ("ddim", "heun"):
        traj = sample_trajectory(den, x_T, times, sampler)
        exact = with_posterior_mean(traj, mixture, schedule)
        assert all(torch.equal(a, b) for a, b in zip(exact.xs, traj.xs))
        for k, cache in enumerate(exact.caches):
            t = times[k].expand(5)
            torch.testing.assert_close(cache.ybar, mixture.posterior_mean(traj.xs[k], t, schedule), rtol=0, atol=0)
            assert torch.equal(cache.eps, traj.caches[k].eps)
            # Tweedie through the exact denoiser's eps agrees with the posterior mean to round-off
            torch.testing.assert_close(cache.ybar, traj.caches[k].ybar, rtol=1e-9, atol=1e-9)
            if sampler == "heun":
                torch.testing.assert_close(
                    cache.ybar_pred, mixture.posterior_mean(traj.caches[k].x_pred, times[k + 1].expand(5), schedule)
                )
