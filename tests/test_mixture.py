"""Exact mixture Fisher against autograd on independently written log-densities (float64).

The references below share no code with dfcore.mixtures: the Dirac log-density is a direct
log-sum-exp over explicit differences ``x - alpha*y`` (no norm expansion, no chunking), the
Gaussian one is built from torch.distributions. Score = autograd gradient, Fisher = minus the
autograd Hessian (torch.func), so every formula of Prop. 1, 3 and 5 is checked independently.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal
from torch.func import grad, hessian, vmap

from dfcore.mixtures import DiracMixture, GaussianMixture
from dfcore.schedules import SCHEDULES, get_schedule

DIMS = [1, 2, 5, 16]
TIMES = [1e-3, 0.02, 0.2, 0.6, 1.0]
RTOL = 1e-8


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def dirac_log_density(points, schedule):
    """log q_t(x) for one x (d,) and scalar t, by direct summation."""

    def log_q(x, t):
        alpha, sigma = schedule(t)
        diff = x[None, :] - alpha * points
        logits = -(diff**2).sum(-1) / (2 * sigma**2)
        n, d = points.shape
        return torch.logsumexp(logits, 0) - math.log(n) - 0.5 * d * torch.log(2 * math.pi * sigma**2)

    return log_q


def gaussian_log_density(weights, means, covs, schedule):
    def log_q(x, t):
        alpha, sigma = schedule(t)
        eye = torch.eye(means.shape[1], dtype=means.dtype)
        comps = [
            MultivariateNormal(
                alpha * means[k], covariance_matrix=alpha**2 * covs[k] + sigma**2 * eye, validate_args=False
            ).log_prob(x)
            for k in range(means.shape[0])
        ]
        return torch.logsumexp(torch.stack(comps) + torch.log(weights / weights.sum()), 0)

    return log_q


def noisy_inputs(x0, t, schedule, generator, far=False):
    alpha, sigma = schedule(torch.tensor(t, dtype=torch.float64))
    x = alpha * x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    if far:
        x[0] = x[0] + 30.0  # far from all data relative to sigma
    return x


def check_against_autograd(mixture, log_q, x, t, schedule, generator):
    tt = torch.full((x.shape[0],), t, dtype=torch.float64)
    ref_logp = vmap(log_q)(x, tt)
    ref_score = vmap(grad(log_q))(x, tt)
    ref_fisher = -vmap(hessian(log_q))(x, tt)
    v = torch.randn(x.shape, generator=generator, dtype=torch.float64)

    assert rel_err(mixture.log_prob(x, t, schedule), ref_logp) < RTOL
    assert rel_err(mixture.score(x, t, schedule), ref_score) < RTOL
    alpha, sigma = schedule(tt)
    ref_mean = (x + sigma[:, None] ** 2 * ref_score) / alpha[:, None]  # Tweedie
    assert rel_err(mixture.posterior_mean(x, t, schedule), ref_mean) < RTOL
    fisher = mixture.fisher(x, t, schedule)
    assert rel_err(fisher, ref_fisher) < RTOL
    assert rel_err(mixture.fisher_trace(x, t, schedule), ref_fisher.diagonal(dim1=1, dim2=2).sum(1)) < RTOL
    assert rel_err(mixture.fisher_vp(x, t, v, schedule), (ref_fisher @ v[:, :, None]).squeeze(-1)) < RTOL
    if isinstance(mixture, DiracMixture):  # Prop. 5: (a^2/s^4) tr Cov[x0|xt] = d/s^2 - tr F
        var = mixture.posterior_variance(x, t, schedule)
        ref_dev = x.shape[1] / sigma**2 - ref_fisher.diagonal(dim1=1, dim2=2).sum(1)
        # absolute scale d/s^2: where the posterior has collapsed the reference is a cancellation of O(d/s^2) terms
        assert ((alpha**2 / sigma**4 * var - ref_dev).abs() <= RTOL * (x.shape[1] / sigma**2 + ref_dev.abs())).all()
        assert (var >= 0).all()
    # The per-sample-t path gives the same numbers as the scalar-t path.
    assert rel_err(mixture.fisher_trace(x, tt, schedule), mixture.fisher_trace(x, t, schedule)) < 1e-14


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_dirac_mixture_matches_autograd(d, name):
    gen = torch.Generator().manual_seed(d * 31 + len(name))
    schedule = get_schedule(name)
    points = torch.randn(24, d, generator=gen, dtype=torch.float64) + 1.5
    mixture = DiracMixture(points, chunk_elements=40)  # several chunks
    log_q = dirac_log_density(points, schedule)
    for t in TIMES:
        x = noisy_inputs(points[torch.arange(6) % 24], t, schedule, gen, far=True)
        check_against_autograd(mixture, log_q, x, t, schedule, gen)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_gaussian_mixture_matches_autograd(d, name):
    gen = torch.Generator().manual_seed(d * 17 + len(name))
    schedule = get_schedule(name)
    k = 3
    weights = torch.rand(k, generator=gen, dtype=torch.float64) + 0.2
    means = 2 * torch.randn(k, d, generator=gen, dtype=torch.float64)
    root = torch.randn(k, d, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
    covs = root @ root.transpose(-1, -2) + 0.05 * torch.eye(d, dtype=torch.float64)
    mixture = GaussianMixture(weights, means, covs)
    log_q = gaussian_log_density(weights, means, covs, schedule)
    for t in TIMES:
        x = noisy_inputs(mixture.sample(6, generator=gen), t, schedule, gen)
        check_against_autograd(mixture, log_q, x, t, schedule, gen)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_single_gaussian_has_constant_fisher(name):
    gen = torch.Generator().manual_seed(3)
    schedule = get_schedule(name)
    d = 4
    root = torch.randn(d, d, generator=gen, dtype=torch.float64)
    cov = root @ root.T + 0.1 * torch.eye(d, dtype=torch.float64)
    mean = torch.randn(d, generator=gen, dtype=torch.float64)
    mixture = GaussianMixture(torch.ones(1), mean[None], cov[None])
    for t in (0.01, 0.5, 1.0):
        alpha, sigma = schedule(torch.tensor(t, dtype=torch.float64))
        expected = torch.linalg.inv(alpha**2 * cov + sigma**2 * torch.eye(d, dtype=torch.float64))
        x = 10 * torch.randn(5, d, generator=gen, dtype=torch.float64)
        fisher = mixture.fisher(x, t, schedule)
        for b in range(5):
            assert rel_err(fisher[b], expected) < 1e-10
        assert (
            rel_err(
                mixture.fisher_trace(x, t, schedule), torch.full((5,), expected.trace().item(), dtype=torch.float64)
            )
            < 1e-10
        )


def test_chunked_equals_unchunked():
    gen = torch.Generator().manual_seed(0)
    schedule = get_schedule("VP")
    points = torch.randn(1000, 7, generator=gen, dtype=torch.float64)
    whole = DiracMixture(points, chunk_elements=10**9)
    pieces = DiracMixture(points, chunk_elements=37)  # uneven chunks of one or a few points
    x = torch.randn(9, 7, generator=gen, dtype=torch.float64)
    v = torch.randn(9, 7, generator=gen, dtype=torch.float64)
    t = torch.linspace(0.05, 1.0, 9, dtype=torch.float64)
    for method in ("log_prob", "score", "posterior_mean", "fisher", "fisher_trace"):
        a = getattr(whole, method)(x, t, schedule)
        b = getattr(pieces, method)(x, t, schedule)
        assert rel_err(b, a) < 1e-12, method
    assert rel_err(pieces.fisher_vp(x, t, v, schedule), whole.fisher_vp(x, t, v, schedule)) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_finite_everywhere_including_small_sigma_and_far_points(dtype, name):
    gen = torch.Generator().manual_seed(1)
    schedule = get_schedule(name)
    points = torch.randn(300, 3, generator=gen).to(dtype)
    mixture = DiracMixture(points, chunk_elements=1000)
    x = torch.cat([points[:4], 1e3 * torch.ones(2, 3, dtype=dtype), -1e4 * torch.ones(1, 3, dtype=dtype)])
    v = torch.ones_like(x)
    for t in (1e-4, 1e-3, 0.1, 1.0):
        outs = [
            mixture.log_prob(x, t, schedule),
            mixture.score(x, t, schedule),
            mixture.posterior_mean(x, t, schedule),
            mixture.fisher(x, t, schedule),
            mixture.fisher_trace(x, t, schedule),
            mixture.fisher_vp(x, t, v, schedule),
        ]
        for out in outs:
            assert out.dtype == dtype
            assert torch.isfinite(out).all(), (name, t)
        # F is positive semi-definite on a point mass: F = I/σ² minus a small PSD term.
        assert (outs[4] <= 3 / schedule.sigma(torch.tensor(t, dtype=torch.float64)).item() ** 2 * (1 + 1e-5)).all()


def test_point_mass_limit_gives_isotropic_fisher():
    """At a data point and tiny σ the posterior is a point mass, so F = I/σ² exactly."""
    schedule = get_schedule("VE")
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    mixture = DiracMixture(points)
    t = 1e-3
    sigma = schedule.sigma(torch.tensor(t, dtype=torch.float64))
    fisher = mixture.fisher(points, t, schedule)
    torch.testing.assert_close(fisher, torch.eye(2, dtype=torch.float64).expand(3, 2, 2) / sigma**2)
    var = mixture.posterior_variance(points, t, schedule)
    assert ((var >= 0) & (var < 1e-150)).all()  # no O(1) cancellation left


def test_bad_inputs_raise_value_errors():
    schedule = get_schedule("VE")
    mixture = DiracMixture(torch.randn(10, 3, dtype=torch.float64))
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3\); got \(4, 2\)"):
        mixture.fisher_trace(torch.randn(4, 2, dtype=torch.float64), 0.5, schedule)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3\); got \(3,\)"):
        mixture.fisher(torch.randn(3, dtype=torch.float64), 0.5, schedule)
    with pytest.raises(ValueError, match=r"t must lie in \(0, 1\]"):
        mixture.fisher(x, 0.0, schedule)
    with pytest.raises(ValueError, match=r"t must lie in \(0, 1\]"):
        mixture.score(x, torch.tensor([0.5, 0.5, 1.2, 0.1]), schedule)
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(4,\)"):
        mixture.log_prob(x, torch.tensor([0.5, 0.5]), schedule)
    with pytest.raises(ValueError, match="v must have the shape of x"):
        mixture.fisher_vp(x, 0.5, torch.randn(4, 2), schedule)
    with pytest.raises(ValueError, match="points must have shape"):
        DiracMixture(torch.randn(5))
    with pytest.raises(ValueError, match="NaN or Inf"):
        DiracMixture(torch.tensor([[0.0, math.nan]]))
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\)"):
        GaussianMixture(torch.ones(3), torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2))
    with pytest.raises(ValueError, match="covs must be symmetric"):
        GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.tensor([[[1.0, 0.5], [0.0, 1.0]]]))
    with pytest.raises(ValueError, match="unknown schedule"):
        get_schedule("linear")


def test_sampling_matches_parameters():
    gen = torch.Generator().manual_seed(5)
    means = torch.tensor([[0.0, 0.0], [4.0, 1.0]], dtype=torch.float64)
    covs = torch.stack([torch.eye(2), torch.tensor([[1.0, 0.8], [0.8, 1.0]])]).to(torch.float64)
    mixture = GaussianMixture(torch.tensor([1.0, 3.0]), means, covs)
    x = mixture.sample(40_000, generator=gen)
    expected_mean = 0.25 * means[0] + 0.75 * means[1]
    torch.testing.assert_close(x.mean(0), expected_mean, atol=0.05, rtol=0)
    dirac = DiracMixture(means)
    y = dirac.sample(100, generator=gen)
    assert ((y[:, None, :] - means[None]).abs().sum(-1).min(1).values < 1e-12).all()


@pytest.mark.slow
def test_million_points_d784_fit_in_a_few_gigabytes():
    """N = 10⁶, d = 784 in float32: the data take 3.1 GB; temporaries stay bounded by chunking."""
    import resource
    import subprocess
    import sys

    code = (
        "import torch, resource\n"
        "from dfcore import DiracMixture, get_schedule\n"
        "g = torch.Generator().manual_seed(0)\n"
        "pts = torch.rand(1_000_000, 784, generator=g)\n"
        "q = DiracMixture(pts); del pts\n"
        "x = torch.rand(64, 784, generator=g)\n"
        "tr = q.fisher_trace(x, 0.5, get_schedule('VP'))\n"
        "assert torch.isfinite(tr).all()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak_gb = int(out.stdout.strip().splitlines()[-1]) / 1024**2
    del resource
    assert peak_gb < 8.0, f"peak RSS {peak_gb:.2f} GB"


def test_posterior_sq_norm_and_exact_models_match_direct_sums():
    """E[||x0||^2 | x_t] (Prop. 6 optimum) and the ideal denoiser against explicit softmax sums."""
    from dfcore.models.base import ExactDenoiser, ExactTraceModel

    gen = torch.Generator().manual_seed(11)
    schedule = get_schedule("VP")
    points = torch.randn(50, 3, generator=gen, dtype=torch.float64) + 2.0
    mixture = DiracMixture(points, chunk_elements=64)
    t = torch.tensor([0.05, 0.3, 0.9, 1.0], dtype=torch.float64)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    alpha, sigma = schedule(t)
    logits = -((x[:, None, :] - alpha[:, None, None] * points) ** 2).sum(-1) / (2 * sigma[:, None] ** 2)
    w = torch.softmax(logits, 1)
    expected_sq = w @ points.pow(2).sum(1)
    assert rel_err(mixture.posterior_sq_norm(x, t, schedule), expected_sq) < 1e-12
    assert rel_err(ExactTraceModel(mixture, schedule).mean_sq_norm(x, t), expected_sq / 3) < 1e-12
    denoiser = ExactDenoiser(mixture, schedule)
    assert rel_err(denoiser.posterior_mean(x, t), w @ points) < 1e-12
    assert rel_err(denoiser.score(x, t), mixture.score(x, t, schedule)) < 1e-12


def test_score_is_differentiable_and_its_jacobian_is_minus_fisher():
    """autograd and torch.func go through the chunked code (the VJP baselines rely on it)."""
    gen = torch.Generator().manual_seed(2)
    schedule = get_schedule("EDM")
    mixture = DiracMixture(torch.randn(30, 3, generator=gen, dtype=torch.float64), chunk_elements=20)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    fisher = mixture.fisher(x, 0.01, schedule)
    jac = vmap(torch.func.jacrev(lambda z: mixture.score(z[None], 0.01, schedule)[0]))(x)
    assert rel_err(-jac, fisher) < 1e-10
