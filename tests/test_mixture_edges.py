"""The mixtures at their edges: non-finite inputs, empty batches, bad Gaussian-mixture parameters, and precision
against 50-digit references (mpmath) where float64 formulas cancel: the Dirac log-sum-exp at small sigma and the
Gaussian-mixture posterior mean at small alpha and large |x|."""

from __future__ import annotations

import math

import mpmath
import pytest
import torch

from dfcore.fisher.trace import fisher_trace
from dfcore.fisher.vp import fisher_vp
from dfcore.mixtures import DiracMixture, GaussianMixture
from dfcore.schedules import get_schedule

DIGITS = 50


def _t_for_sigma(schedule, target: float) -> float:
    """A time whose sigma is ``target`` (to a few digits), by bisection in log t."""
    lo, hi = math.log(1e-30), 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float(schedule.sigma(torch.tensor(math.exp(mid), dtype=torch.float64))) < target:
            lo = mid
        else:
            hi = mid
    return math.exp(hi)


def _reference_log_prob(points: torch.Tensor, x: torch.Tensor, alpha: float, sigma: float) -> list[mpmath.mpf]:
    r"""log q_t(x) of the Dirac mixture, with 50 digits, for the float64 inputs as given (exact binary values)."""
    with mpmath.workdps(DIGITS):
        a, s = mpmath.mpf(alpha), mpmath.mpf(sigma)
        n, d = points.shape
        ys = [[mpmath.mpf(v) for v in y] for y in points.tolist()]
        out = []
        for row in x.tolist():
            xs = [mpmath.mpf(v) for v in row]
            logits = [-mpmath.fsum((xk - a * yk) ** 2 for xk, yk in zip(xs, y)) / (2 * s * s) for y in ys]
            top = max(logits)
            lse = top + mpmath.log(mpmath.fsum(mpmath.exp(v - top) for v in logits))
            out.append(lse - mpmath.log(n) - mpmath.mpf(d) / 2 * mpmath.log(2 * mpmath.pi * s * s))
        return out


def _cluster_points() -> tuple[torch.Tensor, torch.Tensor]:
    """24 points in 3-D away from the origin, eight near-copies of the first at distances 1e-1 ... 1e-8, and an
    exact copy of the fourth: at every sigma some queries see a posterior spread over several points."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(24, 3, generator=gen, dtype=torch.float64) + torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    u = torch.nn.functional.normalize(torch.randn(3, generator=gen, dtype=torch.float64), dim=0)
    cluster = torch.stack([base[0] + 10.0**-k * u for k in range(1, 9)])
    return torch.cat([base, cluster, base[3:4]]), cluster


@pytest.mark.parametrize("name, params", [("VE", {"sigma_min": 1e-9}), ("VP", {}), ("subVP", {}), ("EDM", {})])
def test_dirac_log_prob_agrees_with_a_50_digit_reference_down_to_sigma_1e_7(name, params):
    """Within 5 sigma of the data the error is <= 1e-8 nats. Far from it log q ~ -dist^2 / 2 sigma^2 is huge and
    ill-conditioned (a relative change eps of y moves it by eps |y| dist / sigma^2), and the error stays at that level."""
    points, cluster = _cluster_points()
    mixture = DiracMixture(points, chunk_elements=64)  # several chunks
    schedule = get_schedule(name, **params)
    gen = torch.Generator().manual_seed(1)
    for target in (1e-1, 1e-3, 1e-5, 1e-6, 1e-7):
        t = _t_for_sigma(schedule, target)
        alpha, sigma = (float(v) for v in schedule(torch.tensor(t, dtype=torch.float64)))
        centres = torch.cat([points[::3], 0.5 * (points[:1] + cluster)])  # data points and midpoints of near-copies
        x = alpha * centres + sigma * torch.randn(centres.shape, generator=gen, dtype=torch.float64)
        got = mixture.log_prob(x, t, schedule)
        ref = _reference_log_prob(points, x, alpha, sigma)
        err = torch.tensor([float(mpmath.mpf(g) - r) for g, r in zip(got.tolist(), ref)], dtype=torch.float64)
        dist = torch.cdist(x, alpha * points).min(1).values
        near = dist <= 5 * sigma
        assert near.sum() >= 12
        assert err[near].abs().max() <= 1e-8, (name, sigma, err[near].abs().max())
        # Far away, rounding the inputs by eps moves log q by about eps |y| dist / sigma^2 (its condition).
        condition = torch.finfo(torch.float64).eps * alpha * points.norm(dim=1).max() * dist / sigma**2
        assert (err[~near].abs() <= 1e-8 + 16 * condition[~near]).all(), (name, sigma, (err / condition)[~near])


def test_dirac_log_prob_keeps_the_gemm_pass_and_refines_few_rows():
    """The refinement touches only the rows whose posterior is spread over points closer than the rounding of
    the products can resolve; at moderate sigma, and for isolated points, no row is refined."""
    points, _ = _cluster_points()
    mixture = DiracMixture(points)
    calls = []
    refine = mixture._refined_log_z
    mixture._refined_log_z = lambda x, *args: calls.append(x.shape[0]) or refine(x, *args)
    schedule = get_schedule("VE", sigma_min=1e-9)
    gen = torch.Generator().manual_seed(2)
    x = points[4:24] + 0.01 * torch.randn(20, 3, generator=gen, dtype=torch.float64)
    mixture.log_prob(x, 0.9, schedule)
    assert calls == []
    t = _t_for_sigma(schedule, 1e-7)
    x = points[[0, 3, 5, 7]] + 1e-7 * torch.randn(4, 3, generator=gen, dtype=torch.float64)
    mixture.log_prob(x, t, schedule)
    assert calls and calls[-1] <= 2  # the copy of point 3, and the first point with its near-copy at 1e-7


# --------------------------------------------------------------------------------------------- #
# Gaussian mixture: the posterior mean without Tweedie's division by alpha


def _reference_posterior_mean(weights, means, covs, x, alpha: float, sigma: float) -> list[list[mpmath.mpf]]:
    """E[x_0 | x_t = x] = sum_k gamma_k (mu_k + alpha S_k C_k^{-1} (x - alpha mu_k)), with 50 digits."""
    with mpmath.workdps(DIGITS):
        a, s = mpmath.mpf(alpha), mpmath.mpf(sigma)
        k, d = means.shape
        pis = [mpmath.mpf(w) for w in (weights / weights.sum()).tolist()]
        out = []
        for row in x.tolist():
            xv = mpmath.matrix([mpmath.mpf(v) for v in row])
            logs, posts = [], []
            for j in range(k):
                mu = mpmath.matrix([mpmath.mpf(v) for v in means[j].tolist()])
                cov = mpmath.matrix([[mpmath.mpf(v) for v in r] for r in covs[j].tolist()])
                c = a * a * cov + s * s * mpmath.eye(d)
                resid = xv - a * mu
                sol = mpmath.lu_solve(c, resid)
                quad = sum(resid[i] * sol[i] for i in range(d))
                logs.append(mpmath.log(pis[j]) - quad / 2 - mpmath.log(mpmath.det(c)) / 2)
                posts.append(mu + a * (cov * sol))
            top = max(logs)
            ws = [mpmath.exp(v - top) for v in logs]
            total = mpmath.fsum(ws)
            out.append([mpmath.fsum(w * p[i] for w, p in zip(ws, posts)) / total for i in range(d)])
        return out


def test_gaussian_mixture_posterior_mean_at_small_alpha_and_large_x():
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64)
    means = torch.tensor([[-1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    covs = torch.stack([torch.tensor([[0.09, 0.02], [0.02, 0.05]]), 0.25 * torch.eye(2)]).to(torch.float64)
    mixture = GaussianMixture(weights, means, covs)
    schedule = get_schedule("VP")
    gen = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(8, 2, generator=gen, dtype=torch.float64), dim=1) * 1e3
    alpha, sigma = (float(v) for v in schedule(torch.tensor(1.0, dtype=torch.float64)))
    got = mixture.posterior_mean(x, 1.0, schedule)
    ref = torch.tensor(
        [[float(v) for v in row] for row in _reference_posterior_mean(weights, means, covs, x, alpha, sigma)],
        dtype=torch.float64,
    )
    assert ((got - ref).norm(dim=1) / ref.norm(dim=1)).max() < 1e-9  # Tweedie: 4e-6


# --------------------------------------------------------------------------------------------- #
# non-finite inputs, empty batches, bad parameters


def _mixtures() -> list:
    gen = torch.Generator().manual_seed(4)
    points = torch.randn(10, 2, generator=gen, dtype=torch.float64)
    gmm = GaussianMixture(
        torch.tensor([0.4, 0.6]),
        torch.randn(2, 2, generator=gen, dtype=torch.float64),
        torch.stack([torch.eye(2), 0.5 * torch.eye(2)]).to(torch.float64),
    )
    return [DiracMixture(points), gmm]


CALLS = {
    "log_prob": lambda m, x, v, s: m.log_prob(x, 0.5, s),
    "score": lambda m, x, v, s: m.score(x, 0.5, s),
    "posterior_mean": lambda m, x, v, s: m.posterior_mean(x, 0.5, s),
    "fisher": lambda m, x, v, s: m.fisher(x, 0.5, s),
    "fisher_trace": lambda m, x, v, s: m.fisher_trace(x, 0.5, s),
    "fisher_vp": lambda m, x, v, s: m.fisher_vp(x, 0.5, v, s),
    "estimator_trace": lambda m, x, v, s: fisher_trace("analytic", x, 0.5, schedule=s, mixture=m),
    "estimator_vp": lambda m, x, v, s: fisher_vp("analytic", x, 0.5, v, schedule=s, mixture=m),
}


@pytest.mark.parametrize("kind", ["dirac", "gaussian"])
@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_x_is_refused(kind, call, bad):
    mixture = _mixtures()[kind == "gaussian"]
    x = torch.zeros(3, 2, dtype=torch.float64)
    x[1, 0] = bad
    with pytest.raises(ValueError, match=r"^x contains NaN or Inf \(in 1 of 3 rows\)"):
        CALLS[call](mixture, x, torch.ones_like(x), get_schedule("VP"))


@pytest.mark.parametrize("kind", ["dirac", "gaussian"])
@pytest.mark.parametrize("call", ["fisher_vp", "estimator_vp"])
def test_non_finite_v_is_refused(kind, call):
    mixture = _mixtures()[kind == "gaussian"]
    x = torch.zeros(3, 2, dtype=torch.float64)
    v = torch.ones_like(x)
    v[2, 1] = math.nan
    with pytest.raises(ValueError, match=r"^v contains NaN or Inf"):
        CALLS[call](mixture, x, v, get_schedule("VP"))


@pytest.mark.parametrize("call", sorted(CALLS))
def test_an_empty_batch_gives_empty_results_for_both_mixtures(call):
    x = torch.zeros(0, 2, dtype=torch.float64)
    shapes = {tuple(CALLS[call](m, x, x.clone(), get_schedule("VP")).shape) for m in _mixtures()}
    expected = {"log_prob": (0,), "fisher_trace": (0,), "estimator_trace": (0,), "fisher": (0, 2, 2)}.get(call, (0, 2))
    assert shapes == {expected}


@pytest.mark.parametrize(
    "weights, means, covs, match",
    [
        ([], torch.zeros(0, 2), torch.zeros(0, 2, 2), "K >= 1"),
        ([1.0], [[math.nan, 0.0]], [[[1.0, 0.0], [0.0, 1.0]]], "means contain NaN or Inf"),
        ([math.inf, 1.0], [[0.0, 0.0], [1.0, 1.0]], [[[1.0, 0.0], [0.0, 1.0]]] * 2, "weights contain NaN or Inf"),
        ([-1.0, 2.0], [[0.0, 0.0], [1.0, 1.0]], [[[1.0, 0.0], [0.0, 1.0]]] * 2, "weights must be positive"),
        ([1.0], [[0.0, 0.0]], [[[1.0, 0.0], [0.0, math.inf]]], "covs contain NaN or Inf"),
        (
            [1.0, 1.0],
            [[0.0, 0.0], [1.0, 1.0]],
            [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 2.0], [2.0, 1.0]]],
            "positive semi-definite; component 1 has eigenvalue -1",
        ),
    ],
)
def test_gaussian_mixture_refuses_bad_parameters(weights, means, covs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(
            torch.as_tensor(weights, dtype=torch.float64),
            torch.as_tensor(means, dtype=torch.float64),
            torch.as_tensor(covs, dtype=torch.float64),
        )


def test_gaussian_mixture_accepts_a_singular_covariance():
    """Positive semi-definite is enough (C_k = alpha^2 S_k + sigma^2 I is definite for t > 0); round-off that makes
    a zero eigenvalue slightly negative is accepted."""
    rot = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64))[0]
    cov = rot @ torch.diag(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)) @ rot.T
    mixture = GaussianMixture(torch.ones(1), torch.zeros(1, 3, dtype=torch.float64), cov[None])
    assert torch.isfinite(mixture.log_prob(torch.zeros(2, 3, dtype=torch.float64), 0.1, get_schedule("VP"))).all()
