"""The diffusers adapter (dfcore.integrations.pretrained) on tiny random UNets saved with save_pretrained."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dfcore.integrations.pretrained import PretrainedDenoiser, load_model
from dfcore.schedules import DiscreteSchedule

T = 100  # training steps of the tiny schedulers


def _unet(seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )


def _scheduler(prediction_type: str = "epsilon"):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=T, beta_start=1e-3, beta_end=0.1, prediction_type=prediction_type)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers import DDPMPipeline

    path = tmp_path_factory.mktemp("ddpm")
    DDPMPipeline(unet=_unet(), scheduler=_scheduler()).save_pretrained(str(path))
    return path


class _Fixed(torch.nn.Module):
    """A stand-in network whose output is a prescribed tensor, whatever it is called with."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, x, step, **_):
        return self.out


def test_load_model_reads_the_folder(folder):
    model = load_model(folder, dtype=torch.float64)
    assert model.sample_shape == (1, 8, 8) and model.dim == 64 and model.vae is None
    assert model.prediction_type == "epsilon"
    ac = torch.cumprod(1 - torch.linspace(1e-3, 0.1, T, dtype=torch.float32), 0).double()
    knots = torch.arange(1, T + 1, dtype=torch.float64) / T
    torch.testing.assert_close(model.schedule.alpha(knots) ** 2, ac, rtol=1e-6, atol=0)
    # the adapter calls the UNet at the timestep tT - 1 and returns its output as eps
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64)
    direct = model.unet(x, t * T - 1).sample
    torch.testing.assert_close(model.denoiser.eps(x, t), direct, rtol=0, atol=1e-12)
    assert torch.equal(model.encode(x), x) and torch.equal(model.decode(x), x)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_each_prediction_type_against_diffusers(prediction_type):
    """A network that outputs exactly eps, v or x0 (computed by diffusers' own add_noise/get_velocity at integer
    steps) must give back the eps that made x."""
    scheduler = _scheduler(prediction_type)
    gen = torch.Generator().manual_seed(1)
    steps = torch.tensor([0, 17, 60, 99])
    x0 = torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64)
    eps = torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64)
    x = scheduler.add_noise(x0, eps, steps)
    out = {"epsilon": eps, "v_prediction": scheduler.get_velocity(x0, eps, steps), "sample": x0}[prediction_type]
    den = PretrainedDenoiser(_Fixed(out), DiscreteSchedule.from_scheduler(scheduler), prediction_type)
    got = den.eps(x, (steps + 1).double() / T)
    torch.testing.assert_close(got, eps, rtol=0, atol=1e-9)
    # and the posterior mean is the x0 that made x
    torch.testing.assert_close(den.posterior_mean(x, (steps + 1).double() / T), x0, rtol=0, atol=1e-9)


def test_converted_networks_agree(folder, tmp_path):
    """The same eps network reinterpreted as a v- and a sample-model (exact wrappers) gives the same eps,
    also after a save_pretrained round trip of the converted folder."""
    from diffusers import DDPMPipeline

    from dfcore.integrations.pretrained_train import convert_prediction_type

    base = load_model(folder, dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64)
    t = torch.tensor([1.0 / T, 0.137, 0.6, 1.0], dtype=torch.float64)
    ref = base.denoiser.eps(x, t)
    for kind in ("v_prediction", "sample"):
        unet, scheduler = convert_prediction_type(base.unet, base.scheduler, kind)
        assert scheduler.config.prediction_type == kind
        den = PretrainedDenoiser(unet, DiscreteSchedule.from_scheduler(scheduler), kind)
        raw = den.output(x, t)
        assert (raw - ref).abs().max() > 1e-2  # the wrapper really outputs something else
        torch.testing.assert_close(den.eps(x, t), ref, rtol=0, atol=1e-6)
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(tmp_path / kind))
        loaded = load_model(tmp_path / kind, dtype=torch.float64)
        assert loaded.prediction_type == kind and loaded.parts["unet"] == "ConvertedUNet2DModel"
        torch.testing.assert_close(loaded.denoiser.eps(x, t), ref, rtol=0, atol=1e-6)


def test_unknown_prediction_type_is_refused(folder, tmp_path):
    import shutil

    with pytest.raises(ValueError, match="'flow'"):
        PretrainedDenoiser(_unet(), DiscreteSchedule([0.9, 0.5]), "flow")
    copy = tmp_path / "bad"
    shutil.copytree(folder, copy)
    cfg_path = copy / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "prediction_type": "flow_matching"}))
    with pytest.raises(ValueError, match="flow_matching"):
        load_model(copy)


def test_missing_parts_are_named(folder, tmp_path):
    import shutil

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    copy = tmp_path / "noscheduler"
    shutil.copytree(folder, copy)
    shutil.rmtree(copy / "scheduler")
    with pytest.raises(FileNotFoundError, match="scheduler/scheduler_config.json"):
        load_model(copy)
    copy = tmp_path / "noweights"
    shutil.copytree(folder, copy)
    for file in (copy / "unet").glob("diffusion_pytorch_model.*"):
        file.unlink()
    with pytest.raises(FileNotFoundError, match="no weights in unet/"):
        load_model(copy)


def _cond_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(3)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=4,
    ).double()


def test_classifier_free_guidance():
    unet = _cond_unet()
    schedule = DiscreteSchedule.from_scheduler(_scheduler())
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 1, 8, 8, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    cond = torch.randn(1, 5, 8, generator=gen, dtype=torch.float64)
    uncond = torch.randn(1, 5, 8, generator=gen, dtype=torch.float64)
    step = t * T - 1
    eps_c = unet(x, step, encoder_hidden_states=cond.expand(2, 5, 8)).sample
    eps_u = unet(x, step, encoder_hidden_states=uncond.expand(2, 5, 8)).sample
    assert (eps_c - eps_u).abs().max() > 1e-4

    def guided(w: float, **kw):
        return PretrainedDenoiser(unet, schedule, cond=cond, uncond=uncond, guidance_scale=w, **kw).eps(x, t)

    torch.testing.assert_close(guided(1.0), eps_c, rtol=0, atol=1e-10)
    torch.testing.assert_close(guided(0.0), eps_u, rtol=0, atol=1e-10)
    torch.testing.assert_close(guided(3.0), eps_u + 3.0 * (eps_c - eps_u), rtol=0, atol=1e-10)
    # a callable hook receives (x, t) and may return per-sample states
    hook = PretrainedDenoiser(unet, schedule, cond=lambda z, s: cond.expand(z.shape[0], 5, 8))
    torch.testing.assert_close(hook.eps(x, t), eps_c, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="cond="):
        PretrainedDenoiser(unet, schedule)
    with pytest.raises(ValueError, match="uncond="):
        PretrainedDenoiser(unet, schedule, cond=cond, guidance_scale=2.0)
    with pytest.raises(ValueError, match="no encoder_hidden_states"):
        PretrainedDenoiser(_unet(), schedule, cond=cond)


def test_latent_pipeline_folder(tmp_path):
    """A folder with unet/ (conditional), scheduler/ and vae/: loaded with a conditioning tensor; encode is the
    VAE posterior mean times scaling_factor and decode its inverse map."""
    from diffusers import AutoencoderKL

    unet = _cond_unet().float()
    unet.save_pretrained(str(tmp_path / "unet"))
    _scheduler().save_pretrained(str(tmp_path / "scheduler"))
    torch.manual_seed(5)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=1,
        block_out_channels=(8, 8),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        sample_size=16,
    )
    vae.save_pretrained(str(tmp_path / "vae"))
    cond = torch.randn(1, 5, 8, dtype=torch.float64)
    model = load_model(tmp_path, dtype=torch.float64, cond=cond)
    assert model.vae is not None and model.parts["vae"] == "AutoencoderKL"
    images = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1
    z = model.encode(images)
    vae = vae.double()
    expected = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-10)
    assert z.shape == (2, *model.sample_shape)
    torch.testing.assert_close(model.decode(z), vae.decode(z / vae.config.scaling_factor).sample, rtol=0, atol=1e-10)
    eps = model.denoiser.eps(z, torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert eps.shape == z.shape and torch.isfinite(eps).all() and not math.isnan(float(eps.sum()))

    # reward guidance through the decoder: brighter decoded images than the unguided sample of the same noise
    def brightness(x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))

    kw = dict(num_samples=2, num_steps=6, seed=1, update_steps=(3, 2), method="vjp")
    plain = model.guided_sample(brightness, step_size=0.0, **kw)
    guided = model.guided_sample(brightness, step_size=0.5, **kw)
    assert guided.x_final.shape == (2, *model.sample_shape)
    assert (brightness(model.decode(guided.x_final)) > brightness(model.decode(plain.x_final))).all()
    with pytest.raises(ValueError, match="latent pipeline"):
        model.log_likelihood(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))


def test_log_time_warp_is_the_same_ode():
    """The warped schedule's f and g2 are the autograd derivatives of its alpha and sigma in s, and the
    likelihood integrated in log time equals the closed-form density of a Gaussian mixture at t_min."""
    from dfcore.fisher.trace import VJPTrace
    from dfcore.likelihood import gaussian_log_prior, log_likelihood
    from dfcore.mixtures import GaussianMixture
    from dfcore.models.base import ExactDenoiser
    from dfcore.paths import LogTimeWarp
    from dfcore.schedules import VPSchedule

    base = VPSchedule()
    mixture = GaussianMixture(
        torch.tensor([0.3, 0.7], dtype=torch.float64),
        torch.tensor([[1.0, -0.5], [-1.0, 0.5]], dtype=torch.float64),
        torch.stack([0.2 * torch.eye(2, dtype=torch.float64), 0.5 * torch.eye(2, dtype=torch.float64)]),
    )
    t_min = 1e-3
    warp = LogTimeWarp(ExactDenoiser(mixture, base), t_min)
    sched = warp.schedule
    s = torch.tensor([warp.s_min, 0.6, 0.9, 1.0], dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(sched.time(s.detach()[[0, 3]]), torch.tensor([t_min, 1.0], dtype=torch.float64))
    (dlog_alpha,) = torch.autograd.grad(torch.log(sched.alpha(s)).sum(), s)
    (dvar,) = torch.autograd.grad(sched.sigma(s).pow(2).sum(), s)
    s = s.detach()
    torch.testing.assert_close(sched.f(s), dlog_alpha, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sched.g2(s), dvar - 2 * sched.f(s) * sched.sigma(s) ** 2, rtol=1e-10, atol=1e-12)
    x = torch.tensor([[0.9, -0.4], [-1.2, 0.3], [0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(warp.eps(x, torch.tensor(0.7)), warp.base.eps(x, sched.time(torch.tensor(0.7))))
    pi, means = mixture.weights, mixture.means
    mean = pi @ means
    second = (pi[:, None, None] * (mixture.covs + means[:, :, None] * means[:, None, :])).sum(0)
    prior = gaussian_log_prior(sched, mean=mean, cov=second - torch.outer(mean, mean))
    # the exact trace of the warped denoiser's Jacobian, so the drift and the trace both go through the warp
    res = log_likelihood(x, VJPTrace(warp), log_prior=prior, t_min=warp.s_min, solver="rk4", num_steps=40)
    exact = mixture.log_prob(x, t_min, base)
    torch.testing.assert_close(res.log_q, exact, rtol=0, atol=2e-5)


def test_experiment_train_convert_measure(tmp_path):
    """The experiment end to end on a tiny model: folders written with save_pretrained, the converted folders agree
    with the ε folder, and the tables hold finite bits/dim with the protocol stated."""
    import pandas as pd

    from dfcore.experiments import pretrained as exp

    train = {"block_out_channels": [8, 16], "norm_num_groups": 4, "steps": 3, "batch_size": 8, "warmup_steps": 1}
    model_dir = exp.train_model({**train, "num_train_timesteps": 50}, tmp_path / "ddpm", tmp_path / "loss.csv")
    assert (model_dir / "model_index.json").is_file() and len(pd.read_csv(tmp_path / "loss.csv")) == 3
    for kind in ("v_prediction", "sample"):
        exp.convert_model(model_dir, tmp_path / f"ddpm_{kind}", kind)
    study = {
        "method": "hutchinson",
        "reference": {"solver": "rk4", "num_steps": 4, "time_warp": "log"},
        "settings": [{"solver": "rk4", "num_steps": 1, "time_warp": "log"}],
    }
    measure = {"num_images": 2, "num_steps": 1, "solver_study": study, "methods": ["vjp", "hutchinson"]}
    summary = exp.measure(model_dir, tmp_path / "out", measure)
    bpd = pd.read_csv(tmp_path / "out" / "bpd.csv")
    assert len(bpd) == 4 and bpd["bpd"].notna().all() and set(bpd["method"]) == {"vjp", "hutchinson"}
    assert summary["protocol"]["dequantization"] == "uniform" and summary["protocol"]["t_min"] == 1 / 50
    solvers = pd.read_csv(tmp_path / "out" / "solvers.csv")
    assert solvers["max_abs_err_bpd"].iloc[0] == 0 and solvers["max_abs_err_bpd"].iloc[1] > 0
    types = pd.read_csv(tmp_path / "out" / "prediction_types.csv")
    assert set(types["prediction_type"]) == {"v_prediction", "sample"} and (types["max_abs_eps_diff"] < 1e-6).all()


class _Constant(torch.nn.Module):
    """A stand-in trace head whose per-sample output is a constant h."""

    def __init__(self, h: float) -> None:
        super().__init__()
        self.h = torch.nn.Parameter(torch.tensor(h, dtype=torch.float64))

    def forward(self, x, t):
        return self.h.expand(x.shape[0], 1)


def test_positive_trace_model_on_gaussian_data():
    """For data N(0, s_d^2 I) the posterior variance is exactly c(t), i.e. softplus(h) = 1: DF-TM with that head
    equals the analytic Fisher trace of the Gaussian; any head keeps tr F <= d/sigma^2; the loss is Alg. 1's."""
    from dfcore.fisher import fisher_trace
    from dfcore.integrations.pretrained import PositiveTraceModel
    from dfcore.mixtures import GaussianMixture
    from dfcore.models.base import ExactDenoiser
    from dfcore.schedules import VPSchedule

    d, sd = 3, 0.7
    gauss = GaussianMixture(
        torch.ones(1, dtype=torch.float64), torch.zeros(1, d, dtype=torch.float64), sd**2 * torch.eye(d)[None].double()
    )
    schedule = VPSchedule()
    den = ExactDenoiser(gauss, schedule)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(4, d, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.01, 0.1, 0.5, 0.9], dtype=torch.float64)
    exact = PositiveTraceModel(_Constant(math.log(math.e - 1)), den, sd, box_width=0.1)
    dftm = fisher_trace("dftm", x, t, denoiser=den, trace_model=exact)
    analytic = fisher_trace("analytic", x, t, mixture=gauss, schedule=schedule)
    torch.testing.assert_close(dftm, analytic, rtol=1e-10, atol=1e-10)
    # a head far off in either direction stays within the physical bound tr F <= d / sigma^2
    sigma = schedule.sigma(t)
    for h in (-50.0, 50.0):
        tm = PositiveTraceModel(_Constant(h), den, sd, box_width=0.1)
        assert (fisher_trace("dftm", x, t, denoiser=den, trace_model=tm) <= d / sigma**2 + 1e-12).all()
    assert tm.counts["lower"] == 0 and tm.counts["evaluations"] == 4 and tm.counts["upper"] == 4  # V > d w^2/4
    # the loss, recomputed: ((V - T) / c)^2 with V = c softplus(h), c the Gaussian posterior variance and
    # T = |x0|^2 - |ybar|^2, and with likelihood_weight ((V - T) / (d sigma^2/alpha^2))^2
    x0 = sd * torch.randn(4, d, generator=gen, dtype=torch.float64)
    noise = torch.randn(4, d, generator=gen, dtype=torch.float64)
    alpha, sigma = schedule(t)
    xt = alpha[:, None] * x0 + sigma[:, None] * noise
    ybar = den.posterior_mean(xt, t)
    s2 = (sigma / alpha) ** 2
    c = d * s2 * sd**2 / (s2 + sd**2)
    h = 0.3
    v = c * torch.nn.functional.softplus(torch.tensor(h, dtype=torch.float64))
    loss = PositiveTraceModel(_Constant(h), den, sd).loss(x0, t, noise)
    expected = ((v - (x0.pow(2).sum(1) - ybar.pow(2).sum(1))) / c).pow(2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    loss = PositiveTraceModel(_Constant(h), den, sd, likelihood_weight=True).loss(x0, t, noise)
    expected = ((v - (x0.pow(2).sum(1) - ybar.pow(2).sum(1))) / (d * s2)).pow(2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    loss = PositiveTraceModel(_Constant(h), den, sd, target="residual").loss(x0, t, noise)
    expected = ((v - (x0 - ybar).pow(2).sum(1)) / c).pow(2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="'l1'"):
        PositiveTraceModel(_Constant(h), den, sd, target="l1")


def test_positive_trace_model_divergence_target_is_the_gaussian_posterior_variance():
    """Target divergence, (sigma^2/alpha) v^T (d ybar/dx) v, needs no x0: for Gaussian data with a diagonal
    covariance the Jacobian of the exact posterior mean is diagonal, so every Rademacher probe gives its trace
    exactly, and the target equals the closed-form posterior variance sum_i sigma^2 s_i^2 / (alpha^2 s_i^2 + sigma^2)."""
    from dfcore.integrations.pretrained import PositiveTraceModel
    from dfcore.mixtures import GaussianMixture
    from dfcore.models.base import ExactDenoiser
    from dfcore.schedules import VESchedule, VPSchedule

    var = torch.tensor([0.2, 0.5, 1.3, 2.0], dtype=torch.float64)
    d = var.numel()
    gauss = GaussianMixture(
        torch.ones(1, dtype=torch.float64), torch.zeros(1, d, dtype=torch.float64), torch.diag(var)[None]
    )
    gen = torch.Generator().manual_seed(3)
    for schedule in (VPSchedule(), VESchedule()):
        den = ExactDenoiser(gauss, schedule)
        t = torch.tensor([0.01, 0.1, 0.5, 0.9], dtype=torch.float64)
        x0 = var.sqrt() * torch.randn(4, d, generator=gen, dtype=torch.float64)
        noise = torch.randn(4, d, generator=gen, dtype=torch.float64)
        alpha, sigma = schedule(t)
        xt = alpha[:, None] * x0 + sigma[:, None] * noise
        closed = (sigma[:, None] ** 2 * var / (alpha[:, None] ** 2 * var + sigma[:, None] ** 2)).sum(1)
        torch.testing.assert_close(closed, gauss.posterior_variance(xt, t, schedule), rtol=1e-12, atol=0)
        model = PositiveTraceModel(_Constant(0.3), den, 0.9, target="divergence", divergence_probes=2)
        model.probe_generator = torch.Generator().manual_seed(0)
        s2 = (sigma / alpha) ** 2
        c = d * s2 * 0.81 / (s2 + 0.81)  # the Gaussian posterior variance at sigma_data = 0.9
        v = c * torch.nn.functional.softplus(torch.tensor(0.3, dtype=torch.float64))
        expected = (v - closed) / c
        torch.testing.assert_close(model.loss(x0, t, noise), expected.pow(2).mean(), rtol=1e-10, atol=1e-12)
        assert model.state()["divergence_probes"] == 2
    with pytest.raises(ValueError, match="divergence_probes"):
        PositiveTraceModel(_Constant(0.3), den, 0.9, target="divergence", divergence_probes=0)


def test_positive_trace_model_exact_divergence_target_is_the_correlated_gaussian_posterior_variance():
    """With d <= divergence_exact_max_dim the divergence target is the exact Jacobian trace: for Gaussian data with a
    full covariance S (where one Rademacher probe is not exact) it equals tr(sigma^2 S (alpha^2 S + sigma^2 I)^-1)
    to round-off, for any probe count and generator."""
    from dfcore.integrations.pretrained import POSITIVE_TRACE_TARGETS, PositiveTraceModel
    from dfcore.mixtures import GaussianMixture
    from dfcore.models.base import ExactDenoiser
    from dfcore.schedules import VPSchedule

    gen = torch.Generator().manual_seed(5)
    d = 5
    root = torch.randn(d, d, generator=gen, dtype=torch.float64)
    cov = root @ root.T / d + 0.1 * torch.eye(d, dtype=torch.float64)
    gauss = GaussianMixture(torch.ones(1, dtype=torch.float64), torch.zeros(1, d, dtype=torch.float64), cov[None])
    schedule = VPSchedule()
    den = ExactDenoiser(gauss, schedule)
    t = torch.tensor([0.002, 0.05, 0.4, 0.95], dtype=torch.float64)
    x0 = torch.randn(4, d, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    noise = torch.randn(4, d, generator=gen, dtype=torch.float64)
    alpha, sigma = schedule(t)
    xt = alpha[:, None] * x0 + sigma[:, None] * noise
    eye = torch.eye(d, dtype=torch.float64)
    closed = torch.stack(
        [torch.trace(s**2 * cov @ torch.linalg.inv(a**2 * cov + s**2 * eye)) for a, s in zip(alpha, sigma)]
    )
    exact = PositiveTraceModel(_Constant(0.3), den, 0.9, target="divergence", divergence_exact_max_dim=d)
    probe = PositiveTraceModel(_Constant(0.3), den, 0.9, target="divergence", divergence_exact_max_dim=d - 1)
    for model in (exact, probe):
        model.probe_generator = torch.Generator().manual_seed(0)
    ybar = den.posterior_mean(xt, t)
    torch.testing.assert_close(POSITIVE_TRACE_TARGETS["divergence"](exact, x0, xt, t, ybar), closed, rtol=1e-10, atol=0)
    assert not torch.allclose(POSITIVE_TRACE_TARGETS["divergence"](probe, x0, xt, t, ybar), closed, rtol=1e-3)
    assert exact.state()["divergence_exact_max_dim"] == d


def test_the_shared_optimiser_ends_with_the_moving_average_of_its_iterates():
    """ema_decay > 0: the module's final weights are W_ema <- decay W_ema + (1 - decay) W over the iterates (the
    first update copies W), recomputed here from the weights recorded after every step."""
    from dfcore.integrations.pretrained_train import _optimise

    torch.manual_seed(0)
    module = torch.nn.Linear(3, 1)
    iterates: list[torch.Tensor] = []
    data = torch.randn(8, 3)

    def batch_loss(net: torch.nn.Module) -> tuple[torch.Tensor, int]:
        return (net(data) - 1.0).pow(2).mean(), 8

    original = torch.optim.Adam.step

    def record(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        iterates.append(torch.nn.utils.parameters_to_vector(module.parameters()).detach().clone())
        return out

    torch.optim.Adam.step = record
    try:
        _optimise(module, batch_loss, steps=6, lr=0.1, warmup_steps=0, grad_clip=10.0, name="toy", ema_decay=0.7)
    finally:
        torch.optim.Adam.step = original
    expected = iterates[0]
    for w in iterates[1:]:
        expected = 0.7 * expected + 0.3 * w
    torch.testing.assert_close(torch.nn.utils.parameters_to_vector(module.parameters()), expected)
    assert not torch.allclose(expected, iterates[-1])


def test_the_shared_optimiser_follows_the_project_schedule_and_stops_on_a_non_finite_loss():
    """Both in-project trainers run through one loop: its learning rate at every step is dfcore.train's warm-up and
    cosine schedule, and a non-finite loss stops it with the trainer's name and the step."""
    from dfcore.integrations.pretrained_train import _optimise
    from dfcore.train import learning_rate

    module = torch.nn.Linear(2, 1)
    opt_lrs: list[float] = []

    def batch_loss(net: torch.nn.Module) -> tuple[torch.Tensor, int]:
        assert net is module  # one process: the module itself, no DistributedDataParallel
        return net(torch.ones(1, 2)).pow(2).sum(), 1

    original = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        opt_lrs.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    torch.optim.Adam.step = spy
    try:
        losses = _optimise(module, batch_loss, steps=7, lr=0.1, warmup_steps=2, grad_clip=1.0, name="toy")
    finally:
        torch.optim.Adam.step = original
    assert len(losses) == 7 and not module.training
    assert opt_lrs == [learning_rate(step, 7, 0.1, 2) for step in range(7)]

    calls = iter([1.0, 2.0, float("nan")])
    with pytest.raises(FloatingPointError, match="toy: non-finite loss at step 3 of 5"):
        _optimise(
            torch.nn.Linear(2, 1),
            lambda net: (torch.tensor(next(calls), requires_grad=True), 1),
            steps=5,
            lr=0.1,
            warmup_steps=1,
            grad_clip=1.0,
            name="toy",
        )


def test_a_trace_net_starts_from_the_weights_of_an_init_folder(tmp_path):
    """Setting trace.init copies a saved trace net into the new one exactly; a folder without a net, or a net of
    another architecture, is an error that names init."""
    from dfcore.experiments.pretrained import _load_trace_weights
    from dfcore.integrations.pretrained_train import build_trace_unet

    saved = build_trace_unet((1, 8, 8), (8, 16), 4, seed=1)
    saved.save_pretrained(str(tmp_path / "trace" / "unet"))
    fresh = build_trace_unet((1, 8, 8), (8, 16), 4, seed=0)
    assert not torch.equal(fresh.conv_in.weight, saved.conv_in.weight)
    _load_trace_weights(fresh, tmp_path / "trace")
    for name, value in saved.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    with pytest.raises(ValueError, match="init: .* holds no trace net"):
        _load_trace_weights(fresh, tmp_path)
    with pytest.raises(ValueError, match="init: .* another architecture"):
        _load_trace_weights(build_trace_unet((1, 8, 8), (8, 8), 4), tmp_path / "trace")


def _gaussian_denoiser(d: int, sd: float):
    from dfcore.mixtures import GaussianMixture
    from dfcore.models.base import ExactDenoiser
    from dfcore.schedules import VPSchedule

    gauss = GaussianMixture(
        torch.ones(1, dtype=torch.float64), torch.zeros(1, d, dtype=torch.float64), sd**2 * torch.eye(d)[None].double()
    )
    return ExactDenoiser(gauss, VPSchedule())


def test_likelihood_path_states_follow_the_closed_form_flow_and_are_the_likelihood_solve_states():
    """For Gaussian data N(0, s^2 I) the probability-flow ODE map is x(t) = x(t0) sqrt(v(t)/v(t0)) with
    v = alpha^2 s^2 + sigma^2: every step-start state agrees with it to RK4's error, on a shifted grid too; and with
    no shift the states are exactly those at which log_likelihood evaluates its trace estimator."""
    from dfcore.fisher.trace import VJPTrace
    from dfcore.likelihood import gaussian_log_prior, log_likelihood
    from dfcore.paths import LogTimeWarp, likelihood_path_states

    d, sd, batch, steps, t_min = 3, 0.6, 5, 30, 1e-3
    den = _gaussian_denoiser(d, sd)
    x0 = sd * torch.randn(batch, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for offset in (0.0, 0.37):
        x, t = likelihood_path_states(den, x0, t_min=t_min, num_steps=steps, offset=offset)
        evals = 4 * (steps + (offset > 0))
        assert x.shape == (evals * batch, d) and t.shape == (evals * batch,)
        starts = x.reshape(evals, batch, d)[::4]
        times = t.reshape(evals, batch)[::4, 0]
        alpha, sigma = den.schedule(times)
        var = alpha**2 * sd**2 + sigma**2
        closed = x0[None] * (var / var[0]).sqrt()[:, None, None]
        torch.testing.assert_close(starts, closed, rtol=3e-5, atol=1e-7)  # RK4 error: 4e-6 relative
        if offset:
            warp = LogTimeWarp(den, t_min)
            width = (1 - warp.s_min) / steps
            torch.testing.assert_close(times[1], warp.schedule.time(torch.tensor(warp.s_min + offset * width).double()))
    warp = LogTimeWarp(den, t_min)
    seen: list[torch.Tensor] = []

    class Recording(VJPTrace):
        def eps_and_trace(self, x, t):
            seen.append(x.detach().clone())
            return super().eps_and_trace(x, t)

    log_likelihood(
        x0,
        Recording(warp),
        log_prior=gaussian_log_prior(warp.schedule, 1.0),
        t_min=warp.s_min,
        solver="rk4",
        num_steps=steps,
    )
    x, _ = likelihood_path_states(den, x0, t_min=t_min, num_steps=steps, offset=0.0)
    torch.testing.assert_close(x, torch.cat(seen), rtol=0, atol=0)


def test_ode_states_train_only_the_divergence_target_and_its_loss_needs_no_x0():
    """loss_at without x0 is ((V - T)/c)^2 with T the Gaussian posterior variance (the exact divergence target); the
    targets that need x0 refuse to run without it, and train_trace_model refuses states 'ode' for them."""
    from dfcore.integrations.pretrained import PositiveTraceModel
    from dfcore.integrations.pretrained_train import train_trace_model

    d, sd = 4, 0.6
    den = _gaussian_denoiser(d, sd)
    t = torch.tensor([0.003, 0.05, 0.4, 0.9], dtype=torch.float64)
    x = torch.randn(4, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    alpha, sigma = den.schedule(t)
    s2 = (sigma / alpha) ** 2
    c = d * s2 * sd**2 / (s2 + sd**2)  # = the exact posterior variance of this Gaussian
    h = 0.3
    model = PositiveTraceModel(_Constant(h), den, 0.9, target="divergence", divergence_exact_max_dim=d)
    v = d * s2 * 0.81 / (s2 + 0.81) * torch.nn.functional.softplus(torch.tensor(h, dtype=torch.float64))
    expected = ((v - c) / (d * s2 * 0.81 / (s2 + 0.81))).pow(2).mean()
    torch.testing.assert_close(model.loss_at(x, t), expected, rtol=1e-10, atol=1e-12)
    residual = PositiveTraceModel(_Constant(h), den, sd, target="residual")
    with pytest.raises(ValueError, match="'residual' needs the clean x0"):
        residual.loss_at(x, t)
    images = torch.zeros(8, d, dtype=torch.uint8)
    with pytest.raises(ValueError, match="states 'ode' needs target 'divergence'"):
        train_trace_model(residual, images, steps=1, t_min=1e-3, states="ode")
    with pytest.raises(ValueError, match="unknown states 'path'"):
        train_trace_model(model, images, steps=1, t_min=1e-3, states="path")


def test_a_trace_net_trained_on_ode_states_learns_the_gaussian_posterior_variance():
    """Trained on the likelihood's own states with the exact divergence target, a constant head converges to the
    Gaussian's posterior variance, which is c(t) exactly when sigma_data is the data's (softplus(h) -> 1)."""
    from dfcore.integrations.pretrained import PositiveTraceModel
    from dfcore.integrations.pretrained_train import train_trace_model

    d = 4
    images = torch.randint(0, 256, (64, d), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    sd = 0.6
    den = _gaussian_denoiser(d, sd)
    model = PositiveTraceModel(_Constant(2.0), den, sd, target="divergence", divergence_exact_max_dim=d)
    losses = train_trace_model(
        model, images, steps=150, t_min=1e-3, batch_size=16, lr=0.05, warmup_steps=5, states="ode", ode_num_steps=5
    )
    target = math.log(math.e - 1)  # softplus(h) = 1
    assert losses[0] > 0.5 and losses[-1] < 1e-4
    assert abs(model.module.h.item() - target) < 0.01


def test_positive_trace_model_with_the_fisher_output_on_gaussian_data():
    """h = 0 is the Gaussian's exact Fisher trace (against the analytic estimator); its divergence-target loss is
    recomputed from the closed-form posterior variance; the parameterisation survives the constructor's check."""
    from dfcore.fisher import fisher_trace
    from dfcore.integrations.pretrained import PositiveTraceModel

    d, sd = 3, 0.7
    den = _gaussian_denoiser(d, sd)
    gauss = den.mixture
    x = torch.randn(4, d, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    t = torch.tensor([0.001, 0.1, 0.5, 0.9], dtype=torch.float64)
    model = PositiveTraceModel(_Constant(0.0), den, sd, parameterization="fisher")
    dftm = fisher_trace("dftm", x, t, denoiser=den, trace_model=model)
    analytic = fisher_trace("analytic", x, t, mixture=gauss, schedule=den.schedule)
    torch.testing.assert_close(dftm, analytic, rtol=1e-9, atol=0)
    assert model.state()["parameterization"] == "fisher"
    alpha, sigma = den.schedule(t)
    s2 = (sigma / alpha) ** 2
    h = 0.3
    div = PositiveTraceModel(
        _Constant(h), den, sd, target="divergence", divergence_exact_max_dim=d, parameterization="fisher"
    )
    v = d * s2 * torch.sigmoid(-torch.tensor(h, dtype=torch.float64) - torch.log(s2 / sd**2))
    exact = d * s2 * sd**2 / (s2 + sd**2)  # the Gaussian's posterior variance, which the exact divergence equals
    expected = ((v - exact) / (d * s2**2 / (s2 + sd**2))).pow(2).mean()
    torch.testing.assert_close(div.loss_at(x, t).double(), expected, rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match="unknown trace parameterization 'log'"):
        PositiveTraceModel(_Constant(h), den, sd, parameterization="log")


def test_a_fisher_output_trained_on_ode_states_learns_the_gaussian():
    """On the likelihood's own states with the exact divergence target, a constant fisher head converges to the
    Gaussian's h = 0."""
    from dfcore.integrations.pretrained import PositiveTraceModel
    from dfcore.integrations.pretrained_train import train_trace_model

    d, sd = 4, 0.6
    images = torch.randint(0, 256, (64, d), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    den = _gaussian_denoiser(d, sd)
    model = PositiveTraceModel(
        _Constant(1.5), den, sd, target="divergence", divergence_exact_max_dim=d, parameterization="fisher"
    )
    losses = train_trace_model(
        model, images, steps=150, t_min=1e-3, batch_size=16, lr=0.05, warmup_steps=5, states="ode", ode_num_steps=5
    )
    assert losses[0] > 0.5 and losses[-1] < 1e-4
    assert abs(model.module.h.item()) < 0.01


def test_calibration_removes_a_constant_output_error_on_the_likelihood_paths():
    """A fisher head off by a constant (h = 0.3, where the Gaussian's exact posterior variance is h = 0) gets the
    offset -0.3 in every bin from the exact divergence target, after which DF-TM gives the analytic trace; the
    calibration survives state(); bad arguments are refused."""
    from dfcore.calibration import calibrate_along_paths
    from dfcore.dequantize import dequantize
    from dfcore.fisher import fisher_trace
    from dfcore.integrations.pretrained import PositiveTraceModel

    d, sd = 4, 0.6
    images = torch.randint(0, 256, (12, d), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    den = _gaussian_denoiser(d, sd)
    model = PositiveTraceModel(_Constant(0.3), den, sd, parameterization="fisher")
    records = calibrate_along_paths(
        model,
        images,
        t_min=1e-3,
        ode_num_steps=6,
        num_bins=5,
        exact_max_dim=d,
        batch_points=5,
        prepare=lambda x, gen: dequantize(x, generator=gen),
    )
    assert [r["count"] for r in records] and all(r["count"] > 0 for r in records)
    assert sum(r["count"] for r in records) == 12 * 4 * 7  # 3 batches, RK4 on a shifted grid of 6 steps
    for r in records:
        assert (
            abs(r["offset"] + 0.3) < 1e-9 and abs(r["bias_after"]) < 1e-10 and r["bias_before"] > 0
        )  # the trace too high
    x = torch.randn(4, d, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    t = torch.tensor([0.001, 0.02, 0.4, 0.95], dtype=torch.float64)
    dftm = fisher_trace("dftm", x, t, denoiser=den, trace_model=model)
    analytic = fisher_trace("analytic", x, t, mixture=den.mixture, schedule=den.schedule)
    torch.testing.assert_close(dftm, analytic, rtol=1e-8, atol=0)
    knots, offsets = model.state()["calibration"]
    assert len(knots) == len(offsets) == 5 and knots == sorted(knots)
    with pytest.raises(ValueError, match="num_bins >= 1"):
        calibrate_along_paths(model, images, t_min=1e-3, num_bins=0)


def test_train_trace_calibrates_and_the_folder_keeps_the_calibration(folder, tmp_path):
    """train_trace with calibration_images writes the table to trace.json and calibration.csv; load_trace's net
    outputs h + delta(t) exactly (delta interpolated in log t, against numpy); calibrating the uncalibrated net of
    the same training afterwards (calibrate_trace) gives the same table."""
    import numpy as np
    import pandas as pd

    from dfcore.experiments.pretrained import calibrate_trace, load_model, load_trace, train_trace

    images = torch.randint(0, 256, (6, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    section = {"steps": 2, "batch_size": 4, "warmup_steps": 0, "block_out_channels": [8, 16], "norm_num_groups": 4}
    section |= {"target": "divergence", "parameterization": "fisher", "ode_num_steps": 3}
    calib = {"calibration_images": 3, "calibration_bins": 4, "calibration_probes": 1}
    model = load_model(folder)
    train_trace(folder, tmp_path / "cal", section | calib, images, model=model)
    train_trace(folder, tmp_path / "raw", section, images, model=model)
    meta = json.loads((tmp_path / "cal" / "trace.json").read_text())
    table = meta["calibration"]
    assert len(table["log_t"]) == len(table["offset"]) == 4 and table["images"] == 3
    rows = pd.read_csv(tmp_path / "cal" / "calibration.csv")
    assert len(rows) == 4 and rows["count"].sum() == 3 * 4 * 4  # 3 images, RK4 on a shifted grid of 3 steps
    assert not (tmp_path / "raw" / "calibration.csv").exists()
    cal, raw = load_trace(tmp_path / "cal", model), load_trace(tmp_path / "raw", model)
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([1e-3, 0.01, 0.1, 0.5, 1.0], dtype=torch.float64)
    delta = np.interp(np.log(t.numpy()), table["log_t"], table["offset"])
    with torch.no_grad():
        shift = cal.head(x, t).double() - raw.head(x, t).double()
    torch.testing.assert_close(shift, torch.from_numpy(delta), rtol=0, atol=1e-5)
    calibrate_trace(folder, tmp_path / "raw", tmp_path / "after", calib, images)
    after = json.loads((tmp_path / "after" / "trace.json").read_text())["calibration"]
    torch.testing.assert_close(torch.tensor(after["offset"]), torch.tensor(table["offset"]), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="calibration_images must be positive"):
        calibrate_trace(folder, tmp_path / "raw", tmp_path / "none", None, images)
    from dfcore.experiments.pretrained import digits_uint8, main

    (tmp_path / "cal.json").write_text(json.dumps(calib | {"calibration_images": 10}))
    skip = len(digits_uint8("test")) - 2
    argv = ["calibrate-trace", "--model", str(folder), "--trace", str(tmp_path / "raw"), "--out", str(tmp_path / "ho")]
    main([*argv, "--config", str(tmp_path / "cal.json"), "--split", "test", "--skip", str(skip)])
    assert json.loads((tmp_path / "ho" / "trace.json").read_text())["calibration"]["images"] == 2  # the last two


class _Recorder(torch.nn.Module):
    """A stand-in trace head that keeps its last input and outputs h = 0.1 times the input's per-sample mean."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.1, dtype=torch.float64))
        self.seen: torch.Tensor | None = None

    def forward(self, x, t):
        self.seen = x.detach().clone()
        return self.scale * x.flatten(1).mean(1, keepdim=True)


def test_the_denoiser_input_is_the_closed_form_posterior_mean_and_comes_from_the_drift_pass():
    """With denoiser_input the net's extra channels are the posterior mean divided by sigma_data: for data
    N(0, s^2 I) that is alpha s^2 x / (alpha^2 s^2 + sigma^2) / s; eps_and_posterior_variance returns the
    denoiser's eps and the same variance as posterior_variance, for the model and through the log-time warp."""
    from dfcore.integrations.pretrained import PositiveTraceModel, WarpedTraceModel
    from dfcore.paths import LogTimeWarp

    d, sd = 3, 0.7
    den = _gaussian_denoiser(d, sd)
    x = torch.randn(4, d, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    t = torch.tensor([0.001, 0.1, 0.5, 0.9], dtype=torch.float64)
    module = _Recorder()
    model = PositiveTraceModel(module, den, sd, denoiser_input=True)
    var = model.posterior_variance(x, t)
    alpha, sigma = den.schedule(t)
    c_in = 1 / torch.sqrt(alpha**2 * sd**2 + sigma**2)
    ybar = (alpha * sd**2 / (alpha**2 * sd**2 + sigma**2))[:, None] * x
    torch.testing.assert_close(module.seen, torch.cat([c_in[:, None] * x, ybar / sd], 1), rtol=1e-12, atol=0)
    eps, one_pass = model.eps_and_posterior_variance(x, t, den)
    torch.testing.assert_close(one_pass, var, rtol=1e-12, atol=0)
    torch.testing.assert_close(eps, den.eps(x, t), rtol=0, atol=0)
    warp = LogTimeWarp(den, 1e-3)
    warped = WarpedTraceModel(model, warp)
    s = torch.tensor([0.5, 0.7, 0.9, 1.0], dtype=torch.float64)
    w_eps, w_var = warped.eps_and_posterior_variance(x, s, warp)
    torch.testing.assert_close(w_var, warped.posterior_variance(x, s, warp), rtol=1e-12, atol=0)
    torch.testing.assert_close(w_eps, warp.eps(x, s), rtol=0, atol=0)
    assert model.state()["denoiser_input"] is True
    plain = PositiveTraceModel(_Recorder(), den, sd)
    plain.posterior_variance(x, t)
    assert plain.module.seen.shape == (4, d)


def test_train_trace_with_the_denoiser_input_saves_a_two_channel_net(folder, tmp_path):
    """train_trace builds a net with twice the image's channels for denoiser_input, and load_trace rebuilds the same
    model: its variance equals the trained model's."""
    from dfcore.experiments.pretrained import load_model, load_trace, train_trace

    images = torch.randint(0, 256, (6, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    section = {"steps": 2, "batch_size": 4, "warmup_steps": 0, "block_out_channels": [8, 16], "norm_num_groups": 4}
    model = load_model(folder)
    train_trace(folder, tmp_path / "in", section | {"denoiser_input": True}, images, model=model)
    loaded = load_trace(tmp_path / "in", model)
    assert loaded.denoiser_input and loaded.module.config.in_channels == 2
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.01, 0.2, 0.8], dtype=torch.float64)
    with torch.no_grad():
        ybar = model.denoiser.posterior_mean(x, t)
        torch.testing.assert_close(loaded.posterior_variance(x, t), loaded.posterior_variance(x, t, ybar=ybar))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_prediction_target_is_what_the_adapter_reads_as_the_true_noise(prediction_type):
    """The training target of each prediction type, read back through the adapter's ε conversion at
    x = α x0 + σ ε, gives the ε that made x (VP: α² + σ² = 1, as in the DDPM's tables)."""
    from dfcore.integrations.pretrained import eps_from_output
    from dfcore.integrations.pretrained_train import prediction_target

    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 1, 8, 8, generator=gen), torch.randn(5, 1, 8, 8, generator=gen)
    alpha = torch.tensor([0.9999, 0.9, 0.5, 0.1, 0.006], dtype=torch.float64).sqrt()
    sigma = (1 - alpha**2).sqrt()
    x0, noise = x0.double(), noise.double()
    x = alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * noise
    target = prediction_target(prediction_type, x0, noise, alpha.view(-1, 1, 1, 1), sigma.view(-1, 1, 1, 1))
    torch.testing.assert_close(eps_from_output(target, x, alpha, sigma, prediction_type), noise, rtol=0, atol=1e-9)


def test_trained_v_prediction_model_says_so_in_its_scheduler(tmp_path):
    """pretrained.train.prediction_type reaches the saved scheduler, and the loaded model reads it."""
    from dfcore.experiments import pretrained as exp

    train = {"block_out_channels": [8, 16], "norm_num_groups": 4, "steps": 2, "batch_size": 4, "warmup_steps": 1}
    cfg = {**train, "num_train_timesteps": 20, "prediction_type": "v_prediction", "ema_decay": 0.5}
    model_dir = exp.train_model(cfg, tmp_path / "ddpm")
    assert (
        json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"
    )
    assert load_model(model_dir).denoiser.prediction_type == "v_prediction"


def test_measure_with_anchors_adds_the_anchored_row_from_the_same_solve(folder, tmp_path):
    """anchors > 0: the dftm rows are those of a measurement without anchors (the anchors do not touch the
    solve), dftm_anchored comes from the same evaluations, and the summary compares both with vjp."""
    import pandas as pd

    from dfcore.experiments.pretrained import load_model, measure, train_trace

    images = torch.randint(0, 256, (6, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    section = {"steps": 2, "batch_size": 4, "warmup_steps": 0, "block_out_channels": [8, 16], "norm_num_groups": 4}
    train_trace(folder, tmp_path / "trace", section, images, model=load_model(folder))
    cfg = {"methods": ["vjp", "dftm"], "trace_dir": str(tmp_path / "trace"), "num_images": 2, "num_steps": 3}
    cfg |= {"solver_study": None, "dtype": "float64"}
    plain = measure(folder, tmp_path / "plain", cfg)
    anchored = measure(folder, tmp_path / "anchored", cfg | {"anchors": 2})
    a = pd.read_csv(tmp_path / "anchored" / "bpd.csv").pivot(index="image", columns="method", values="bpd")
    p = pd.read_csv(tmp_path / "plain" / "bpd.csv").pivot(index="image", columns="method", values="bpd")
    assert set(a.columns) == {"vjp", "dftm", "dftm_anchored"} and set(p.columns) == {"vjp", "dftm"}
    torch.testing.assert_close(torch.tensor(a["dftm"].values), torch.tensor(p["dftm"].values), rtol=0, atol=1e-12)
    assert (a["dftm_anchored"] != a["dftm"]).all()
    assert anchored["methods"]["dftm_anchored"]["nfe"] == anchored["methods"]["dftm"]["nfe"] == 12
    assert "dftm_anchored_vs_vjp" in anchored and "dftm_anchored_vs_vjp" not in plain
