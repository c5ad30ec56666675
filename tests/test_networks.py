"""Networks: preconditioning identities (Tweedie, EDM loss weighting), the trace parameterisation, and
checkpoint round trips through load_denoiser / load_trace_model (weights_only=True)."""

from __future__ import annotations

import pytest
import torch

from dfcore.io import save_checkpoint
from dfcore.models.networks import (
    LearnedDenoiser,
    denoiser_from_state,
    load_denoiser,
    load_trace_model,
    trace_model_from_state,
)


def _mlp_state(schedule="VE", prediction="x0", dim=2):
    return {
        "kind": "denoiser",
        "arch": "mlp",
        "hparams": {"dim": dim, "hidden": 16, "layers": 2, "fourier_levels": 3},
        "schedule": {"name": schedule, "params": {}},
        "prediction": prediction,
        "sigma_data": 0.8,
        "state_dict": None,
    }


@pytest.mark.parametrize("schedule", ["VE", "VP", "subVP", "EDM"])
@pytest.mark.parametrize("prediction", ["x0", "eps"])
def test_eps_and_posterior_mean_satisfy_tweedie(schedule, prediction):
    torch.manual_seed(0)
    den = denoiser_from_state(_mlp_state(schedule, prediction))
    x = torch.randn(6, 2, dtype=torch.float64)
    t = torch.tensor([1e-5, 0.01, 0.1, 0.4, 0.7, 1.0], dtype=torch.float64)
    alpha, sigma = den.schedule(t)
    ybar, eps = den.posterior_mean(x, t), den.eps(x, t)
    assert ybar.dtype == eps.dtype == torch.float64
    torch.testing.assert_close(ybar, (x - sigma[:, None] * eps) / alpha[:, None])
    torch.testing.assert_close(den.score(x, t), -eps / sigma[:, None])


def test_x0_loss_is_the_edm_weighted_denoising_error():
    r"""For x0 prediction the loss is :math:`\lambda(\sigma)\|D - x_0\|^2` with :math:`\lambda = 1/c_{out}^2` (VE)."""
    torch.manual_seed(1)
    den = denoiser_from_state(_mlp_state("VE", "x0"))
    x0, noise = torch.randn(64, 2), torch.randn(64, 2)
    t = torch.rand(64)
    alpha, sigma = den.schedule(t.double())
    x = x0.double() + sigma[:, None] * noise.double()
    c_out2 = sigma**2 * 0.64 / (sigma**2 + 0.64)
    expected = ((den.posterior_mean(x, t) - x0.double()).pow(2) / c_out2[:, None]).mean()
    torch.testing.assert_close(den.loss(x0, t, noise).double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("schedule", ["VE", "VP", "EDM"])
def test_preconditioning_is_edm_table_1_in_the_scaled_variable(schedule):
    """c_in, c_skip, c_out against EDM's Table 1 written out with sigma~ = sigma/alpha, and the x0 prediction
    D = c_skip x/alpha + c_out F rebuilt from the raw backbone output F."""
    from dfcore.models.networks import precondition

    torch.manual_seed(3)
    den = denoiser_from_state(_mlp_state(schedule, "x0"))
    t = torch.tensor([0.01, 0.3, 0.9], dtype=torch.float64)
    alpha, sigma = den.schedule(t)
    s, sd = sigma / alpha, 0.8
    pre = precondition(den.schedule, t, sd)
    torch.testing.assert_close(pre.c_in, (s**2 + sd**2) ** -0.5, rtol=1e-14, atol=0)
    torch.testing.assert_close(pre.c_skip, sd**2 / (s**2 + sd**2), rtol=1e-14, atol=0)
    torch.testing.assert_close(pre.c_out, s * sd * (s**2 + sd**2) ** -0.5, rtol=1e-14, atol=0)
    x = torch.randn(3, 2, dtype=torch.float64)
    out, pre = den.raw(x, t)
    d = pre.c_skip[:, None] * x / alpha[:, None] + pre.c_out[:, None] * out.double()
    torch.testing.assert_close(den.posterior_mean(x, t), d, rtol=1e-6, atol=1e-6)


def test_eps_loss_is_the_noise_regression():
    torch.manual_seed(2)
    den = denoiser_from_state(_mlp_state("VP", "eps"))
    x0, noise, t = torch.randn(32, 2), torch.randn(32, 2), torch.rand(32) * 0.9 + 0.05
    alpha, sigma = den.schedule(t.double())
    x = alpha[:, None] * x0.double() + sigma[:, None] * noise.double()
    expected = (den.eps(x.float(), t).double() - noise.double()).pow(2).mean()
    torch.testing.assert_close(den.loss(x0, t, noise).double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("share", [True, False])
def test_trace_model_is_ybar_norm_plus_nonnegative_variance(share, tmp_path):
    torch.manual_seed(3)
    state = {
        "kind": "trace",
        "share_trunk": share,
        "hparams": {"head_hidden": 8},
        "target": "residual",
        "denoiser": _mlp_state(),
        "state_dict": None,
    }
    model = trace_model_from_state(state)
    x, t = torch.randn(6, 2, dtype=torch.float64), torch.rand(6, dtype=torch.float64) * 0.9 + 0.05
    ybar = model.denoiser.posterior_mean(x, t)
    var = model.posterior_variance(x, t)
    assert (var >= 0).all()
    torch.testing.assert_close(model.mean_sq_norm(x, t), (ybar.pow(2).sum(1) + var) / 2)
    # round trip through a weights-only checkpoint
    save_checkpoint({"model": model.state()}, tmp_path / "trace.pt")
    again = load_trace_model(tmp_path / "trace.pt")
    torch.testing.assert_close(again.mean_sq_norm(x, t), model.mean_sq_norm(x, t))
    assert again.share_trunk == share


def test_load_denoiser_rebuilds_the_same_function(tmp_path):
    torch.manual_seed(4)
    den = denoiser_from_state(_mlp_state("EDM", "x0"))
    path = tmp_path / "den.pt"
    save_checkpoint({"model": den.state(), "step": 3}, path)
    again = load_denoiser(path, "cpu")
    assert isinstance(again, LearnedDenoiser) and again.schedule.name == "EDM" and again.prediction == "x0"
    assert isinstance(again.module, torch.nn.Module)
    x, t = torch.randn(4, 2), torch.rand(4) * 0.5 + 0.1
    torch.testing.assert_close(again.eps(x, t), den.eps(x, t))
    with pytest.raises(ValueError, match="not a trace checkpoint"):
        load_trace_model(path)


@pytest.mark.slow
def test_unet_denoiser_round_trip(tmp_path):
    state = {
        "kind": "denoiser",
        "arch": "unet",
        "hparams": {"dim": 64, "image_shape": [1, 8, 8], "block_out_channels": [8, 16], "norm_num_groups": 4},
        "schedule": {"name": "VP", "params": {}},
        "prediction": "eps",
        "sigma_data": 0.6,
        "state_dict": None,
    }
    torch.manual_seed(5)
    den = denoiser_from_state(state)
    save_checkpoint({"model": den.state()}, tmp_path / "u.pt")
    again = load_denoiser(tmp_path / "u.pt")
    x, t = torch.randn(3, 64), torch.rand(3)
    torch.testing.assert_close(again.eps(x, t), den.eps(x, t))
    assert again.eps(x.reshape(3, 1, 8, 8), t).shape == (3, 1, 8, 8)


def _brute_force_posterior_variance(x, alpha, sigma, reference):
    """tr Cov[x_0 | x_t] over the rows of ``reference`` (duplicates counted), by explicit softmax weights."""
    logits = -(x[:, None] - alpha[:, None, None] * reference[None]).pow(2).sum(-1) / (2 * sigma[:, None] ** 2)
    w = torch.softmax(logits, 1)
    return (w * (reference[None] - (w @ reference)[:, None]).pow(2).sum(-1)).sum(1)


@pytest.mark.parametrize("target", ["dataset_posterior", "batch_posterior"])
@pytest.mark.parametrize("dim", [2, 5, 80])
@pytest.mark.parametrize("t", [1e-3, 0.2, 0.7])
def test_posterior_targets_are_the_brute_force_posterior_variance(target, dim, t):
    """The loss regresses softplus(G) onto tr Cov[x_0|x_t] / c: over the whole training set
    (dataset_posterior) or over the minibatch's clean samples, a duplicated sample counting twice
    (batch_posterior, Prop. 5's bracket of the batch's empirical distribution); recomputed here by brute force."""
    from dfcore.mixtures import DiracMixture

    g = torch.Generator().manual_seed(5)
    data = torch.randn(40, dim, generator=g, dtype=torch.float64)
    state = {
        "kind": "trace",
        "share_trunk": False,
        "hparams": {"head_hidden": 8},
        "target": target,
        "denoiser": _mlp_state(dim=dim),
        "state_dict": None,
    }
    model = trace_model_from_state(state)
    model.reference = DiracMixture(data)
    x0 = torch.cat([data[:15], data[:1]]).float()  # sample 0 twice
    noise = torch.randn(16, dim, generator=g)
    tt = torch.full((16,), t, dtype=torch.float64)
    alpha, sigma = model.schedule(tt)
    x = (alpha[:, None] * x0.double() + sigma[:, None] * noise.double()).float()
    reference = data if target == "dataset_posterior" else x0.double()
    var = _brute_force_posterior_variance(x.double(), alpha, sigma, reference)
    pred = torch.nn.functional.softplus(model.head(x, tt.float()))
    s2 = model.denoiser.precondition(tt).noise ** 2  # (sigma / alpha)^2
    c = dim * s2 * 0.8**2 / (s2 + 0.8**2)  # the Gaussian posterior variance at the state's sigma_data = 0.8
    expected = (pred - (var / c).float()).pow(2).mean()
    torch.testing.assert_close(model.loss(x0, tt.float(), noise), expected, rtol=1e-5, atol=1e-7)
    if target == "dataset_posterior":
        torch.testing.assert_close(
            model.reference.posterior_variance(x.double(), tt, model.schedule), var, rtol=1e-7, atol=1e-9 * dim
        )
        model.reference = None
        with pytest.raises(ValueError, match="dataset_posterior"):
            model.loss(x0, tt.float(), noise)


def test_unknown_trace_target_is_rejected():
    state = {
        "kind": "trace",
        "share_trunk": True,
        "hparams": {},
        "target": "typo",
        "denoiser": _mlp_state(),
        "state_dict": None,
    }
    with pytest.raises(ValueError, match="typo"):
        trace_model_from_state(state)
