"""DF-TM rescaled by exact anchors (dfcore.anchors) against the closed-form trace of a Gaussian mixture."""

from __future__ import annotations

import pytest
import torch
from stand_ins import ScaledPosteriorVariance

from dfcore.anchors import anchor_steps, anchored_log_likelihood
from dfcore.fisher.trace import AnalyticTrace, DFTMTrace, VJPTrace
from dfcore.likelihood import gaussian_log_prior, log_likelihood
from dfcore.mixtures import GaussianMixture
from dfcore.models.base import ExactDenoiser
from dfcore.schedules import get_schedule

D, STEPS, T_MIN = 3, 12, 1e-3


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    covs = torch.stack([torch.eye(D) * s for s in (0.2, 0.5)]).to(torch.float64)
    mixture = GaussianMixture(
        torch.tensor([0.4, 0.6], dtype=torch.float64), torch.randn(2, D, generator=g).double(), covs
    )
    schedule = get_schedule("VP")
    x = mixture.sample(5, generator=g).to(torch.float64)
    prior = gaussian_log_prior(schedule, 1.0)
    exact = log_likelihood(
        x, AnalyticTrace(mixture, schedule), log_prior=prior, t_min=T_MIN, solver="rk4", num_steps=STEPS
    )
    return mixture, schedule, x, prior, exact


def _anchored(setup, factor, anchors, solver="rk4"):
    mixture, schedule, x, prior, _ = setup
    denoiser = ExactDenoiser(mixture, schedule)
    dftm = DFTMTrace(denoiser, ScaledPosteriorVariance(mixture, schedule, factor))
    return anchored_log_likelihood(
        x, dftm, VJPTrace(denoiser), anchors=anchors, log_prior=prior, t_min=T_MIN, solver=solver, num_steps=STEPS
    )


@pytest.mark.parametrize("anchors", [1, 3, STEPS])
def test_a_net_off_by_a_constant_factor_is_corrected_exactly(setup, anchors):
    """V_net = 1.3 V: the plain DF-TM solve is off, the anchored one equals the closed-form trace's solve on the
    same grid to round-off, and the scale is 1/1.3 for every sample."""
    *_, exact = setup
    res = _anchored(setup, lambda t: torch.full_like(t, 1.3), anchors)
    assert (res.plain.log_q - exact.log_q).abs().min() > 1e-3
    torch.testing.assert_close(res.anchored.log_q, exact.log_q, rtol=0, atol=1e-8)
    torch.testing.assert_close(res.scale, torch.full_like(res.scale, 1 / 1.3), rtol=0, atol=1e-10)
    assert res.anchored.nfe == res.plain.nfe == 4 * STEPS


def test_anchors_sit_at_the_first_evaluation_of_evenly_spaced_steps(setup):
    res = _anchored(setup, lambda t: torch.ones_like(t), 3)
    h = (1.0 - T_MIN) / STEPS
    expected = torch.tensor([T_MIN + n * h for n in anchor_steps(STEPS, 3)], dtype=torch.float64)
    assert anchor_steps(STEPS, 3) == [0, 4, 8]
    torch.testing.assert_close(res.anchor_times, expected, rtol=0, atol=1e-12)


def test_an_exact_net_is_left_as_it_is_and_a_varying_bias_is_reduced(setup):
    """With V_net = V the scale is 1 and both solves are the closed form's; a bias that varies along the path
    (V_net = (1 + 0.3 t) V) is reduced by the anchors, more with more of them."""
    *_, exact = setup
    same = _anchored(setup, lambda t: torch.ones_like(t), 2)
    torch.testing.assert_close(same.plain.log_q, exact.log_q, rtol=0, atol=1e-8)
    torch.testing.assert_close(same.anchored.log_q, exact.log_q, rtol=0, atol=1e-8)
    errors = []
    for anchors in (1, 4, STEPS):
        res = _anchored(setup, lambda t: 1.0 + 0.3 * t, anchors)
        errors.append(float((res.anchored.log_q - exact.log_q).abs().mean()))
    plain = float((res.plain.log_q - exact.log_q).abs().mean())
    assert errors[-1] < errors[0] < plain, (errors, plain)


def test_anchors_refuse_an_adaptive_solver_and_a_bad_count(setup):
    with pytest.raises(ValueError, match="fixed-step"):
        _anchored(setup, lambda t: torch.ones_like(t), 2, solver="dopri5")
    with pytest.raises(ValueError, match="between 1 and num_steps"):
        anchor_steps(STEPS, STEPS + 1)
