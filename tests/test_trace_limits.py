"""The regression optimum of each ground-truth-free trace target (dfcore.trace_limits) against independent
computations: explicit posterior-weighted sums over the training points, autograd Jacobians, and the exact
posterior variance when the denoiser is exact."""

from __future__ import annotations

import pytest
import torch

from dfcore.fisher.trace import DFTMTrace, VJPTrace
from dfcore.mixtures import DiracMixture
from dfcore.models.base import Denoiser, ExactDenoiser
from dfcore.schedules import get_schedule
from dfcore.trace_limits import TARGET_OPTIMA, TargetOptimum


class _Perturbed(Denoiser):
    """The exact denoiser of ``mixture`` with a smooth error added to its epsilon."""

    def __init__(self, mixture, schedule, weight):
        self.exact = ExactDenoiser(mixture, schedule)
        self.schedule = schedule
        self.weight = weight

    def eps(self, x, t):
        return self.exact.eps(x, t) + 0.3 * torch.tanh(x @ self.weight)


@pytest.fixture(scope="module")
def setup():
    gen = torch.Generator().manual_seed(3)
    points = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    schedule = get_schedule("VP")
    mixture = DiracMixture(points)
    t = torch.tensor([0.05, 0.2, 0.5, 0.9], dtype=torch.float64)
    alpha, sigma = schedule(t)
    y = points[torch.randint(30, (4,), generator=gen)]
    x = alpha[:, None] * y + sigma[:, None] * torch.randn(4, 3, generator=gen, dtype=torch.float64)
    weight = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    return points, schedule, mixture, x, t, _Perturbed(mixture, schedule, weight)


def _weights(points, schedule, x, t):
    """Posterior weights over the points, from their Gaussian likelihoods written out (no mixture method)."""
    alpha, sigma = schedule(t)
    sq = ((x[:, None, :] - alpha[:, None, None] * points[None]) ** 2).sum(-1)
    return torch.softmax(-sq / (2 * sigma[:, None] ** 2), dim=1)


def test_with_the_exact_denoiser_every_optimum_is_the_posterior_variance(setup):
    points, schedule, mixture, x, t, _ = setup
    exact = ExactDenoiser(mixture, schedule)
    want = mixture.posterior_variance(x, t, schedule)
    for target in TARGET_OPTIMA:
        got = TargetOptimum(target, mixture, schedule).posterior_variance(x, t, exact)
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12)


def test_sq_norm_and_residual_optima_are_the_posterior_means_of_their_targets(setup):
    points, schedule, mixture, x, t, den = setup
    w = _weights(points, schedule, x, t)
    ybar_theta = den.posterior_mean(x, t)
    sq_norm = (w * ((points**2).sum(-1)[None] - (ybar_theta**2).sum(-1)[:, None])).sum(1)
    residual = (w * ((points[None] - ybar_theta[:, None]) ** 2).sum(-1)).sum(1)
    for target, want in (("sq_norm", sq_norm), ("residual", residual)):
        got = TargetOptimum(target, mixture, schedule).posterior_variance(x, t, den)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    exact = mixture.posterior_variance(x, t, schedule)
    assert (residual - exact).abs().min() > 1e-4  # the perturbation moves the optima off the exact value


def test_the_divergence_optimum_is_the_models_own_trace(setup):
    points, schedule, mixture, x, t, den = setup
    got = TargetOptimum("divergence", mixture, schedule).posterior_variance(x, t, den)
    alpha, sigma = schedule(t)
    for i in range(len(x)):
        jac = torch.autograd.functional.jacobian(lambda z: den.posterior_mean(z[None], t[i : i + 1])[0], x[i])
        torch.testing.assert_close(got[i], sigma[i] ** 2 / alpha[i] * torch.trace(jac), rtol=1e-10, atol=1e-12)
    dftm = DFTMTrace(den, TargetOptimum("divergence", mixture, schedule))
    for i in range(len(x)):
        torch.testing.assert_close(dftm(x[i : i + 1], t[i]), VJPTrace(den)(x[i : i + 1], t[i]), rtol=1e-8, atol=0)


def test_an_unknown_target_and_a_missing_denoiser_are_refused(setup):
    points, schedule, mixture, x, t, _ = setup
    with pytest.raises(ValueError, match="dataset_posterior"):
        TargetOptimum("dataset_posterior", mixture, schedule)
    with pytest.raises(ValueError, match="denoiser"):
        TargetOptimum("residual", mixture, schedule).posterior_variance(x, t)
