"""Trace target ``divergence``: (sigma^2/alpha) div ybar by second-order Tweedie. With the exact posterior mean of a
Gaussian mixture it is unbiased (probes) or exact (small d) for the posterior variance; it agrees with an
autograd Jacobian; a trace net trained on it approaches the model's own exact trace; the config carries its keys."""

from __future__ import annotations

import pytest
import torch

from dfcore.config import full_schema
from dfcore.data.datasets import make_checkerboard
from dfcore.io import save_checkpoint
from dfcore.mixtures import GaussianMixture
from dfcore.models.networks import TRACE_TARGETS, divergence_target, load_trace_model
from dfcore.registries import registry_names
from dfcore.schedules import get_schedule
from dfcore.train import build_denoiser, build_trace_model, train_loop

D = 8
TIMES = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.9], dtype=torch.float64)


@pytest.fixture(scope="module")
def mixture():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, D, D, generator=g, dtype=torch.float64)
    covs = a @ a.transpose(-1, -2) / D + 0.05 * torch.eye(D, dtype=torch.float64)
    means = 2.0 * torch.randn(3, D, generator=g, dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), means, covs)


@pytest.fixture(scope="module")
def points(mixture):
    g = torch.Generator().manual_seed(1)
    return torch.randn(len(TIMES), D, generator=g, dtype=torch.float64) * 2.0


@pytest.mark.parametrize("schedule_name", ["VP", "VE"])
def test_exact_branch_is_the_posterior_variance(mixture, points, schedule_name):
    schedule = get_schedule(schedule_name)
    value = divergence_target(
        lambda y, t: mixture.posterior_mean(y, t, schedule), points, TIMES, schedule, probes=1, exact_max_dim=D
    )
    want = mixture.posterior_variance(points, TIMES, schedule)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, want, rtol=1e-8, atol=0.0)


def test_probe_estimate_is_unbiased_for_the_posterior_variance(mixture, points):
    """One probe per row over 2,000 copies of each point: the mean is within 4 standard errors of the exact
    posterior variance, and the single-probe values do vary (the estimate is not the exact branch)."""
    schedule = get_schedule("VP")
    copies = 2000
    x, t = points.repeat(copies, 1), TIMES.repeat(copies)
    g = torch.Generator().manual_seed(2)
    samples = divergence_target(
        lambda y, s: mixture.posterior_mean(y, s, schedule), x, t, schedule, 1, exact_max_dim=0, generator=g
    ).reshape(copies, len(TIMES))
    mean, stderr = samples.mean(0), samples.std(0) / copies**0.5
    want = mixture.posterior_variance(points, TIMES, schedule)
    assert (stderr > 0).all()
    assert ((mean - want).abs() < 4 * stderr).all(), (mean, want, stderr)
    # k probes average k single-probe estimates: the variance falls as 1/k
    many = divergence_target(
        lambda y, s: mixture.posterior_mean(y, s, schedule), x, t, schedule, 8, exact_max_dim=0, generator=g
    ).reshape(copies, len(TIMES))
    ratio = samples.var(0) / many.var(0)
    assert ((ratio > 5.5) & (ratio < 11.5)).all(), ratio


def test_agrees_with_the_autograd_jacobian_trace(mixture, points):
    """(sigma^2/alpha) tr of torch.autograd.functional.jacobian of the posterior mean, point by point."""
    schedule = get_schedule("VP")
    alpha, sigma = schedule(TIMES)
    want = []
    for i in range(len(TIMES)):
        jac = torch.autograd.functional.jacobian(
            lambda y: mixture.posterior_mean(y[None], TIMES[i : i + 1], schedule)[0], points[i]
        )
        want.append(sigma[i] ** 2 / alpha[i] * torch.diagonal(jac).sum())
    value = divergence_target(
        lambda y, t: mixture.posterior_mean(y, t, schedule), points, TIMES, schedule, 1, exact_max_dim=D
    )
    torch.testing.assert_close(value, torch.stack(want), rtol=1e-10, atol=0.0)


def test_image_shaped_inputs_and_no_gradient(points):
    """Inputs of any shape (B, C, H, W) give (B,); the target is detached even when the denoiser has gradients."""
    schedule = get_schedule("VE")
    weight = torch.randn(D, D, dtype=torch.float64, requires_grad=True)

    def mean(y, t):
        return torch.tanh(y.flatten(1) @ weight).reshape(y.shape)

    x = points.reshape(len(TIMES), 2, 2, 2)
    exact = divergence_target(mean, x, TIMES, schedule, 1, exact_max_dim=D)
    assert exact.shape == (len(TIMES),) and not exact.requires_grad
    g = torch.Generator().manual_seed(0)
    probed = divergence_target(mean, x, TIMES, schedule, 3, exact_max_dim=0, generator=g)
    assert probed.shape == (len(TIMES),) and not probed.requires_grad
    with pytest.raises(ValueError, match="divergence_probes"):
        divergence_target(mean, x, TIMES, schedule, 0, exact_max_dim=0)


def _own_trace_error(model, den, schedule, data):
    """Mean over test points of ((V_theta - T) / c)^2, c the Gaussian posterior variance, against the model's exact
    T = (sigma^2/alpha) div ybar_theta."""
    g = torch.Generator().manual_seed(7)
    x0 = data[torch.randint(len(data), (512,), generator=g)].float()
    t = 0.02 + 0.98 * torch.rand(512, generator=g, dtype=torch.float64)
    alpha, sigma = schedule(t)
    x = (alpha[:, None] * x0.double() + sigma[:, None] * torch.randn(512, 2, generator=g, dtype=torch.float64)).float()
    exact = divergence_target(den.posterior_mean, x, t.float(), schedule, 1, exact_max_dim=2)
    with torch.no_grad():
        v = model.posterior_variance(x, t.float())
    s2 = model.denoiser.precondition(t.float()).noise ** 2
    sd2 = model.denoiser.sigma_data**2
    return float(((v - exact) / (2 * s2 * sd2 / (s2 + sd2))).pow(2).mean())


def test_a_trace_net_trained_on_probes_approaches_the_models_own_trace():
    """A single-probe target (the exact branch off) on an untrained 2-D denoiser: the trace net's error against
    the denoiser's own exact (sigma^2/alpha) div ybar_theta falls from 0 to 100 to 400 steps."""
    schedule = get_schedule("VP")
    data = make_checkerboard(256, seed=0)
    backbone = {"hidden": 16, "layers": 1, "emb_dim": 8, "fourier_levels": 0}
    den = build_denoiser("mlp", 2, schedule, 1.0, backbone=backbone, seed=0)
    errors = []
    for steps in (0, 100, 400):
        model = build_trace_model(
            den, target="divergence", share_trunk=False, head_hidden=16, seed=1, divergence_exact_max_dim=0
        )
        if steps:
            train_loop(model, data.float(), steps=steps, batch_size=64, lr=5e-3, warmup_steps=20, progress=False)
        errors.append(_own_trace_error(model, den, schedule, data))
    assert errors[2] < errors[1] < errors[0], errors
    assert errors[2] < 0.5 * errors[0], errors


def test_registry_schema_and_checkpoint_carry_the_divergence_settings(tmp_path):
    assert "divergence" in TRACE_TARGETS
    assert "divergence" in registry_names()["trace_targets"]
    trace_net = full_schema()["properties"]["trace_net"]["properties"]
    assert "divergence" in trace_net["target"]["enum"]
    assert trace_net["divergence_probes"]["default"] >= 1
    assert trace_net["divergence_exact_max_dim"]["default"] >= 0
    assert 0 <= trace_net["ema_decay"]["default"] < 1
    den = build_denoiser("mlp", 2, get_schedule("VE"), 1.0, backbone={"hidden": 8, "layers": 1, "emb_dim": 8})
    model = build_trace_model(den, target="divergence", head_hidden=8, divergence_probes=3, divergence_exact_max_dim=0)
    save_checkpoint({"model": model.state()}, tmp_path / "trace.pt")
    loaded = load_trace_model(tmp_path / "trace.pt")
    assert (loaded.target, loaded.divergence_probes, loaded.divergence_exact_max_dim) == ("divergence", 3, 0)


def test_a_map_without_forward_derivatives_falls_back_to_reverse_mode():
    """Attention on the CPU has no forward-mode derivative: the exact target of a map that uses it is still
    (sigma^2/alpha) tr(d ybar/dx), against the Jacobian from torch.autograd.functional.jacobian."""
    d = 6
    gen = torch.Generator().manual_seed(9)
    w = torch.randn(3, d, d, generator=gen, dtype=torch.float64) / d

    def posterior_mean(x, t):
        q, k, v = (x @ m for m in w)  # per sample one head, two tokens of width 3
        att = torch.nn.functional.scaled_dot_product_attention(
            q.reshape(-1, 1, 2, 3), k.reshape(-1, 1, 2, 3), v.reshape(-1, 1, 2, 3)
        )
        return x * (1.0 + t[:, None]) + att.reshape(-1, d)

    schedule = get_schedule("VP")
    x = torch.randn(4, d, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.01, 0.1, 0.5, 0.9], dtype=torch.float64)
    with pytest.raises(NotImplementedError):
        torch.func.jvp(lambda y: posterior_mean(y, t), (x,), (x,))
    got = divergence_target(posterior_mean, x, t, schedule, 1, exact_max_dim=d)
    alpha, sigma = schedule(t)
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda y: posterior_mean(y[None], t[i : i + 1])[0], x[i])
        torch.testing.assert_close(got[i], sigma[i] ** 2 / alpha[i] * torch.trace(jac), rtol=1e-12, atol=0)


def _path_error(model, den, data, t_min):
    """Mean over the states of likelihood solves from 64 data points of ((V_theta - T)/c)^2 against the model's
    exact T = (sigma^2/alpha) div ybar_theta, c the Gaussian posterior variance."""
    from dfcore.paths import likelihood_path_states

    x0 = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(9))[:64]].float()
    x, t = likelihood_path_states(den, x0, t_min=t_min, num_steps=6, offset=0.5)
    exact = divergence_target(den.posterior_mean, x, t.float(), den.schedule, 1, exact_max_dim=2)
    with torch.no_grad():
        v = model.posterior_variance(x, t.float())
    s2 = den.precondition(t.float()).noise ** 2
    sd2 = den.sigma_data**2
    return float(((v - exact) / (2 * s2 * sd2 / (s2 + sd2))).pow(2).mean())


def test_a_trace_net_trained_on_the_likelihood_states_learns_the_models_trace_there():
    """OnPathStates trains on the states of likelihood solves (exact divergence target, an untrained 2-D denoiser):
    on such states of other points its error against the model's own exact trace falls with training; the
    adapter's loss is loss_at on PathStates' states, drawn from the loop's generator."""
    from dfcore.paths import PathStates
    from dfcore.train import OnPathStates

    schedule = get_schedule("VP")
    data = make_checkerboard(512, seed=0)
    backbone = {"hidden": 16, "layers": 1, "emb_dim": 8, "fourier_levels": 0}
    den = build_denoiser("mlp", 2, schedule, 1.0, backbone=backbone, seed=0)
    errors = {}
    for states, steps in (("none", 0), ("ode", 300)):
        model = build_trace_model(den, target="divergence", share_trunk=False, head_hidden=16, seed=1)
        trainee = model
        if states == "ode":
            trainee = OnPathStates(model, PathStates(den, data[:256], torch.Generator(), t_min=1e-3, num_steps=6))
        if steps:
            train_loop(
                trainee, data[:256].float(), steps=steps, batch_size=64, lr=5e-3, warmup_steps=20, progress=False
            )
        errors[states] = _path_error(model, den, data[256:], 1e-3)
    assert errors["ode"] < 0.4 * errors["none"], errors
    gen = torch.Generator().manual_seed(4)
    paths = PathStates(den, data, torch.Generator(), t_min=1e-3, num_steps=3)
    adapter = OnPathStates(model, paths)
    adapter.probe_generator = gen
    assert paths.generator is gen and model.probe_generator is gen
    state = gen.get_state()
    x0 = torch.zeros(8, 2)
    loss = adapter.loss(x0, torch.zeros(8), x0)
    gen.set_state(state)
    paths.pool = []
    x, t = paths.take(8, x0)
    torch.testing.assert_close(loss, model.loss_at(x, t), rtol=0, atol=0)
    with pytest.raises(ValueError, match="'residual' needs the clean x0"):
        build_trace_model(den, target="residual", head_hidden=8).loss_at(x, t)
