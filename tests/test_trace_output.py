"""The two parameterisations of a trace net's output (dfcore.models.trace_output), each checked against closed
forms: the Gaussian reference's Fisher trace d / (alpha^2 (sigma~^2 + s_d^2)), the bound d / sigma^2, the minimiser
of a squared loss (the mean of the targets) and the models that use them."""

from __future__ import annotations

import math

import pytest
import torch

from dfcore.models.trace_output import (
    TRACE_PARAMETERIZATIONS,
    fit_offsets,
    loss_scale,
    offset_at,
    output_loss,
    output_variance,
    reference_variance,
)

D, SD = 16, 0.4


def _gaussian_trace(s: torch.Tensor, alpha: torch.Tensor | float = 1.0) -> torch.Tensor:
    """tr F of data N(mu, SD^2 I) in D dimensions at sigma~ = s: the Hessian of -log N(x; alpha mu, (alpha^2 SD^2 +
    sigma^2) I)."""
    sigma = s * alpha
    return D / (alpha**2 * SD**2 + sigma**2)


def _trace(v: torch.Tensor, s: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Eq. 17: d / sigma^2 - (alpha^2 / sigma^4) V."""
    sigma = s * alpha
    return D / sigma**2 - alpha**2 / sigma**4 * v


def test_fisher_output_zero_is_the_gaussian_and_variance_output_needs_log_e_minus_1():
    s = torch.tensor([1e-4, 1e-2, 0.3, 1.0, 30.0], dtype=torch.float64)
    for alpha in (1.0, 0.6):
        fisher = _trace(output_variance(torch.zeros(5), s, SD, D, "fisher"), s, alpha)
        torch.testing.assert_close(fisher, _gaussian_trace(s, alpha), rtol=1e-8, atol=0)  # Eq. 17 cancels 1e7-fold
        h = torch.full((5,), math.log(math.e - 1))
        variance = _trace(output_variance(h, s, SD, D, "variance"), s, alpha)
        torch.testing.assert_close(variance[1:], _gaussian_trace(s, alpha)[1:], rtol=1e-6, atol=0)
    torch.testing.assert_close(reference_variance(s, SD, D), D * s**2 * SD**2 / (s**2 + SD**2))


def test_fisher_output_moves_the_trace_by_a_factor_at_small_t_and_the_variance_output_does_not():
    """A shift delta of h multiplies the trace by about e^delta where the trace is far below its bound
    (sigma~ << s_d); the same shift of the variance output moves the trace by a multiple of d / sigma^2."""
    s = torch.tensor([1e-3], dtype=torch.float64)
    delta = 0.05
    ref = _gaussian_trace(s)
    moved = _trace(output_variance(torch.tensor([delta]), s, SD, D, "fisher"), s) / ref
    assert abs(moved.item() - math.exp(delta)) < 1e-5
    h0 = math.log(math.e - 1)
    moved = _trace(output_variance(torch.tensor([h0 + delta]), s, SD, D, "variance"), s) / ref
    assert abs(moved.item()) > 1e3  # a 5 % shift of h is a thousand times the trace itself


@pytest.mark.parametrize("parameterization", TRACE_PARAMETERIZATIONS)
def test_every_output_keeps_the_variance_inside_the_bounds(parameterization):
    s = torch.logspace(-4, 2, 13, dtype=torch.float64).repeat_interleave(5)
    h = torch.tensor([-60.0, -5.0, 0.0, 5.0, 60.0]).repeat(13)
    v = output_variance(h, s, SD, D, parameterization)
    assert torch.isfinite(v).all() and (v >= 0).all()
    if parameterization == "fisher":
        assert (v <= D * s**2).all()  # 0 <= tr F
        assert (_trace(v, s) >= -1e-12 * D / s**2).all()  # up to Eq. 17's round-off
    assert (_trace(v, s) <= D / s**2 * (1 + 1e-12)).all()


@pytest.mark.parametrize("parameterization", TRACE_PARAMETERIZATIONS)
def test_the_loss_is_minimised_at_the_mean_target(parameterization):
    """One shared h fitted to noisy targets by LBFGS: V(h*) is their mean (the regression's conditional mean)."""
    s = torch.full((200,), 2e-3, dtype=torch.float64)
    mean_v = 0.7 * D * s[0] ** 2
    noise = torch.randn(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = mean_v * (1 + 0.1 * (noise - noise.mean()) / noise.std())
    h = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [h], max_iter=500, tolerance_grad=1e-16, tolerance_change=1e-20, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = output_loss(h.expand(200), target, s, SD, D, parameterization)
        loss.backward()
        return loss

    opt.step(closure)
    v = output_variance(h.detach(), s[:1], SD, D, parameterization)
    torch.testing.assert_close(v, mean_v.reshape(1), rtol=1e-6, atol=0)


def test_the_loss_scales():
    s = torch.tensor([1e-3, 0.5, 10.0], dtype=torch.float64)
    c = D * s**2 * SD**2 / (s**2 + SD**2)
    torch.testing.assert_close(loss_scale(s, SD, D, "variance"), c)
    # fisher: the Gaussian's sigma~^4 tr F = d sigma~^2 - c
    torch.testing.assert_close(loss_scale(s, SD, D, "fisher"), s**4 * _gaussian_trace(s))
    h, target = torch.tensor([0.2, -0.1, 0.4]), torch.tensor([1e-5, 0.3, 50.0], dtype=torch.float64)
    v = output_variance(h, s, SD, D, "fisher")
    expected = ((v - target) / (D * s**4 / (s**2 + SD**2))).pow(2).mean()
    torch.testing.assert_close(output_loss(h, target, s, SD, D, "fisher").double(), expected)
    with pytest.raises(ValueError, match="'logit'"):
        output_variance(h, s, SD, D, "logit")


def test_learned_trace_model_keeps_its_parameterization_through_a_checkpoint(tmp_path):
    from dfcore.io import save_checkpoint
    from dfcore.models.networks import load_trace_model, trace_model_from_state

    den = {"kind": "denoiser", "arch": "mlp", "hparams": {"dim": 2, "hidden": 16, "layers": 2, "fourier_levels": 3}}
    den |= {"schedule": {"name": "VP", "params": {}}, "prediction": "x0", "sigma_data": 0.8, "state_dict": None}
    state = {"kind": "trace", "share_trunk": False, "hparams": {"head_hidden": 8}, "target": "divergence"}
    state |= {"denoiser": den, "state_dict": None, "parameterization": "fisher"}
    torch.manual_seed(0)
    model = trace_model_from_state(state)
    x, t = torch.randn(6, 2, dtype=torch.float64), torch.rand(6, dtype=torch.float64) * 0.9 + 0.05
    s = model.denoiser.precondition(t).noise
    v = model.posterior_variance(x, t)
    torch.testing.assert_close(v, output_variance(model.head(x, t), s, model.denoiser.sigma_data, 2, "fisher"))
    assert (v > 0).all() and (v < 2 * s.double() ** 2).all()
    save_checkpoint({"model": model.state()}, tmp_path / "trace.pt")
    again = load_trace_model(tmp_path / "trace.pt")
    assert again.parameterization == "fisher"
    torch.testing.assert_close(again.posterior_variance(x, t), v)


@pytest.mark.parametrize("parameterization", TRACE_PARAMETERIZATIONS)
def test_fitted_offsets_match_each_bins_mean_target(parameterization):
    """Per bin, the mean of V(h + delta_b) equals the mean target (recomputed sample by sample); a bin whose targets
    are V(h + c) for one constant c gets exactly c; an empty bin gets 0; a bin whose mean target is negative, which
    no V > 0 reaches, gets the end of the span that comes closer."""
    gen = torch.Generator().manual_seed(4)
    n = 400
    s = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-5, 1, generator=gen))
    h = torch.randn(n, generator=gen, dtype=torch.float64)
    bins = torch.randint(0, 3, (n,), generator=gen)
    bins[bins == 2] = 4  # bins 2 and 3 stay empty
    noise = 0.3 * torch.randn(n, generator=gen, dtype=torch.float64)
    target = output_variance(h + 0.7 * noise, s, SD, D, parameterization)
    target[bins == 1] = output_variance(h - 1.25, s, SD, D, parameterization)[bins == 1]
    target[bins == 4] = -reference_variance(s, SD, D)[bins == 4]
    delta = fit_offsets(h, target, s, bins, 5, SD, D, parameterization)
    fitted = output_variance(h + delta[bins], s, SD, D, parameterization)
    for b in (0, 1):
        m = bins == b
        torch.testing.assert_close(fitted[m].mean(), target[m].mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(delta[1], torch.tensor(-1.25, dtype=torch.float64), rtol=0, atol=1e-12)
    assert delta[2] == delta[3] == 0
    lowest = 8.0 if parameterization == "fisher" else -8.0  # V falls as h rises for fisher, rises for variance
    assert delta[4] == lowest


def test_offsets_are_interpolated_linearly_in_log_t():
    """Against numpy's interp on log t, constant beyond the ends; one knot gives a constant."""
    import numpy as np

    knots = torch.tensor([-6.0, -3.0, -1.0, 0.0], dtype=torch.float64)
    values = torch.tensor([0.5, -0.2, 0.1, 0.3], dtype=torch.float64)
    t = torch.tensor([1e-4, 0.002, 0.05, 0.3, 0.9, 1.0], dtype=torch.float64)
    expected = np.interp(np.log(t.numpy()), knots.numpy(), values.numpy())
    torch.testing.assert_close(offset_at(knots, values, t), torch.from_numpy(expected), rtol=0, atol=1e-14)
    one = offset_at(knots[:1], values[:1], t)
    torch.testing.assert_close(one, torch.full_like(t, 0.5), rtol=0, atol=0)
