"""Stable Diffusion path (dfcore.integrations.diffusers, dfcore.experiments.sd) on a tiny random pipeline built locally: no weights,
no network. Every formula is checked against an independent computation (the pipeline's own UNet call,
dense autograd Jacobians, finite differences, a closed-form Gaussian likelihood)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from fixtures.tiny_sd import build_tiny_clip, build_tiny_pipeline, run_tiny

from dfcore.fisher import trace as sd_trace
from dfcore.fisher.trace import fisher_trace
from dfcore.fisher.vp import fisher_vp
from dfcore.integrations import diffusers as sd
from dfcore.io import read_zarr
from dfcore.mixtures import GaussianMixture
from dfcore.models.base import ExactDenoiser, TraceModel
from dfcore.sampling import seeded_noise
from dfcore.schedules import DiscreteSchedule


class MeanBrightness(torch.nn.Module):
    """A user reward module for the 'module' reward path: mean pixel value per image."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    build_tiny_pipeline(root / "pipeline")
    build_tiny_clip(root / "clip")
    return root


@pytest.fixture(scope="module")
def pipe64(tiny):
    return sd.load_pipeline(tiny / "pipeline", dtype=torch.float64)


def test_offline_load_errors_name_the_problem(tmp_path):
    with pytest.raises(sd.SDWeightsError, match="set the config key sd.pipeline"):
        sd.load_pipeline("")
    with pytest.raises(sd.SDWeightsError, match="does not exist.*sd.pipeline"):
        sd.load_pipeline(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(sd.SDWeightsError, match="model_index.json"):
        sd.load_pipeline(tmp_path / "empty")
    (tmp_path / "empty" / "model_index.json").write_text("{}")
    with pytest.raises(sd.SDWeightsError, match="lacks weights for: unet, vae, text_encoder, tokenizer"):
        sd.load_pipeline(tmp_path / "empty")
    with pytest.raises(sd.SDWeightsError, match="config.json"):
        sd.load_reward("clip", None, clip_path=str(tmp_path / "empty"))


def test_schedule_matches_ddim_table(pipe64):
    ac = pipe64.scheduler.alphas_cumprod.double()
    assert pipe64.scheduler.config.beta_schedule == "scaled_linear"
    sched = DiscreteSchedule.from_scheduler(pipe64.scheduler)
    idx = torch.tensor([0, 10, 500, 999])
    t = (idx + 1).double() / 1000
    torch.testing.assert_close(sched.alpha(t) ** 2, ac[idx])
    torch.testing.assert_close(sched.timestep(t), idx.double())


@pytest.mark.parametrize("scale", [1.0, 7.5])
def test_cfg_denoiser_matches_pipeline_unet_call(pipe64, scale):
    """ε of the wrapper at t = (i+1)/T equals the pipeline's own CFG combination at timestep i."""
    prompt, i = "a cat on the moon", 600
    den = sd.CFGDenoiser.from_pipeline(pipe64, prompt, scale)
    z = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = den.eps(z, torch.full((2,), (i + 1) / 1000, dtype=torch.float64))
    cond, uncond = pipe64.encode_prompt(prompt, "cpu", 2, True, negative_prompt="")
    with torch.no_grad():
        e_c = pipe64.unet(z, i, encoder_hidden_states=cond).sample
        e_u = pipe64.unet(z, i, encoder_hidden_states=uncond).sample
    want = e_c if scale == 1.0 else e_u + scale * (e_c - e_u)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_a_v_prediction_pipeline_is_read_as_v(pipe64):
    """SD goes through the diffusers adapter: with the scheduler set to v_prediction, ε of the wrapper is
    α o + σ x for the UNet's output o (Salimans & Ho, 2022), computed here from the pipeline's own UNet call."""
    from diffusers import DDIMScheduler

    i = 300
    v_pipe = type(pipe64)(
        **{
            **pipe64.components,
            "scheduler": DDIMScheduler.from_config(pipe64.scheduler.config, prediction_type="v_prediction"),
        }
    )
    den = sd.CFGDenoiser.from_pipeline(v_pipe, "a cat", 1.0)
    assert den.prediction_type == "v_prediction"
    z = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    t = torch.full((2,), (i + 1) / 1000, dtype=torch.float64)
    cond, _ = pipe64.encode_prompt("a cat", "cpu", 2, False)
    with torch.no_grad():
        o = pipe64.unet(z, i, encoder_hidden_states=cond).sample
    abar = pipe64.scheduler.alphas_cumprod[i].double()
    torch.testing.assert_close(den.eps(z, t), abar.sqrt() * o + (1 - abar).sqrt() * z, rtol=1e-9, atol=1e-9)


def test_sampler_matches_diffusers_ddim(pipe64):
    """Our DDIM steps on t = (i+1)/T reproduce DDIMScheduler.step on the same timesteps (η = 0)."""
    den = sd.CFGDenoiser.from_pipeline(pipe64, "a cat", 3.0)
    sched = pipe64.scheduler
    sched.set_timesteps(5)
    z = torch.randn(1, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = z.clone()
    cond, uncond = pipe64.encode_prompt("a cat", "cpu", 1, True, negative_prompt="")
    for step in sched.timesteps:
        with torch.no_grad():
            e = pipe64.unet(torch.cat([ref, ref]), step, encoder_hidden_states=torch.cat([uncond, cond])).sample
        e_u, e_c = e.chunk(2)
        ref = sched.step(e_u + 3.0 * (e_c - e_u), step, ref, eta=0.0).prev_sample
    from dfcore.sampling import sample_trajectory

    times = torch.tensor([(int(s) + 1) / 1000 for s in sched.timesteps] + [1e-9], dtype=torch.float64)
    # final DDIM step of diffusers goes to alpha_bar = final_alpha_cumprod (= alphas_cumprod[0] here)
    times[-1] = 1 / 1000
    ours = sample_trajectory(den, z, times, "ddim").x_final
    # diffusers takes sqrt(alpha_bar) of its float32 table in float32: agreement to ~1e-7
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert (ours - z).abs().max() > 1e-2  # and the sampler did move


def test_vjp_through_unet_and_dfea_formula(pipe64):
    den = sd.CFGDenoiser.from_pipeline(pipe64, "the moon", 7.5)
    gen = torch.Generator().manual_seed(2)
    z, v, x0 = (torch.randn(1, 4, 8, 8, dtype=torch.float64, generator=gen) for _ in range(3))
    t = torch.tensor([0.4], dtype=torch.float64)
    alpha, sigma = den.schedule(t)
    jac = torch.autograd.functional.jacobian(lambda x: den.eps(x, t), z).reshape(256, 256)  # dε/dz
    got = fisher_vp("vjp", z, t, v, schedule=den.schedule, denoiser=den)
    torch.testing.assert_close(got.flatten(), jac.T @ v.flatten() / sigma, rtol=1e-8, atol=1e-8)
    # DF-EA (Eq. 20) against the dense matrix I/σ² − (α²/σ⁴)(x0 x0ᵀ − ȳ ȳᵀ)
    ybar = den.posterior_mean(z, t)
    a, s = alpha.item(), sigma.item()
    dense = torch.eye(256, dtype=torch.float64) / s**2 - a**2 / s**4 * (
        torch.outer(x0.flatten(), x0.flatten()) - torch.outer(ybar.flatten(), ybar.flatten())
    )
    got = fisher_vp("dfea", z, t, v, schedule=den.schedule, x0=x0, ybar=ybar)
    torch.testing.assert_close(got.flatten(), dense @ v.flatten(), rtol=1e-10, atol=1e-8)
    # exact VJP trace = tr(dε/dz)/σ
    tr = fisher_trace("vjp", z, t, denoiser=den, chunk_size=64)
    torch.testing.assert_close(tr, (torch.trace(jac) / sigma).reshape(1), rtol=1e-8, atol=1e-6)


def _uncond(pipe):
    return sd.CFGDenoiser.from_pipeline(pipe, "", 1.0)


def test_trace_net_dftm_and_checkpoint_roundtrip(pipe64):
    """The latent trace net's posterior variance is c(t) softplus(h), DF-TM (Eq. 17) is formed from it, and a
    checkpoint (weights-only) rebuilds the same model."""
    den = _uncond(pipe64)
    model = sd.build_latent_trace_model((4, 8, 8), den, 0.5, (8, 16), 1, 4, seed=3)
    model.module.double()
    gen = torch.Generator().manual_seed(3)
    zt = torch.randn(3, 4, 8, 8, dtype=torch.float64, generator=gen)
    t = torch.tensor([0.002, 0.5, 0.9], dtype=torch.float64)
    alpha, sigma = den.schedule(t)
    d = 256
    with torch.no_grad():
        var = model.posterior_variance(zt, t)
        h = model.head(zt, t)
    s2 = (sigma / alpha) ** 2
    torch.testing.assert_close(var, d * s2 * 0.25 / (s2 + 0.25) * torch.nn.functional.softplus(h))
    cfg_den = sd.CFGDenoiser.from_pipeline(pipe64, "a cat", 2.0)
    want = d / sigma**2 - alpha**2 / sigma**4 * var
    torch.testing.assert_close(fisher_trace("dftm", zt, t, denoiser=cfg_den, trace_model=model), want)


def test_latent_trace_checkpoint_roundtrip(pipe64, tmp_path):
    """save_checkpoint / load_checkpoint (weights_only) of latent_trace_state rebuilds an identical model; a
    pipeline on another schedule is refused."""
    from dfcore.io import load_checkpoint, save_checkpoint

    den = _uncond(pipe64)
    model = sd.build_latent_trace_model((4, 8, 8), den, 0.3, (8, 16), 1, 4, target="sq_norm", seed=5)
    with torch.no_grad():  # move the weights away from their seeded initialisation
        for p in model.module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    save_checkpoint({"model": sd.latent_trace_state(model)}, tmp_path / "trace.pt")
    again = sd.latent_trace_model_from_state(load_checkpoint(tmp_path / "trace.pt")["model"], den)
    assert (again.sigma_data, again.target) == (0.3, "sq_norm")
    zt = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    t = torch.tensor([0.01, 0.2, 0.6, 1.0], dtype=torch.float64)
    model.module.eval()
    with torch.no_grad():
        torch.testing.assert_close(again.posterior_variance(zt, t), model.posterior_variance(zt, t), rtol=0, atol=0)
    other = sd.CFGDenoiser(den.unet, DiscreteSchedule(den.schedule.alphas_cumprod * 0.99), den.cond, guidance_scale=1.0)
    with pytest.raises(ValueError, match="another schedule"):
        sd.latent_trace_model_from_state(sd.latent_trace_state(model), other)


@pytest.mark.parametrize("raw", [-1e6, 1e6])
def test_extreme_head_output_keeps_the_trace_below_d_over_sigma2(pipe64, raw):
    """With the head's last layer set so that its raw output h is hugely negative or positive, the DF-TM trace
    stays at or below d/σ² at every t (the posterior variance is c(t) softplus(h) >= 0)."""
    den = _uncond(pipe64)
    model = sd.build_latent_trace_model((4, 8, 8), den, 0.5, (8, 16), 1, 4)
    model.module.double()
    conv_out = model.module.conv_out
    with torch.no_grad():
        conv_out.weight.zero_()
        conv_out.bias.fill_(raw)
    z = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    for t in torch.linspace(1e-3, 1.0, 12, dtype=torch.float64):
        with torch.no_grad():
            assert torch.all(model.head(z, t) == raw)
        trace = fisher_trace("dftm", z, t, denoiser=den, trace_model=model)
        assert torch.isfinite(trace).all() and (trace <= 256 / den.schedule.sigma(t) ** 2).all()
    counter = sd.TraceBoundCounter(sd_trace.DFTMTrace(den, model))
    res = sd.latent_log_likelihood(z, den, model, method=counter, num_steps=2)
    assert torch.isfinite(res.log_q).all() and counter.evaluations == 8 and counter.above.tolist() == [0, 0]


def test_bound_counter_counts_traces_above_d_over_sigma2(pipe64):
    """The counter flags, from the values returned alone, traces above d/σ² (a trace model whose variance is
    negative, which a PositiveTraceModel cannot be)."""

    class NegativeVariance(TraceModel):
        def __init__(self, schedule):
            self.schedule = schedule

        def mean_sq_norm(self, x, t):
            raise NotImplementedError

        def posterior_variance(self, x, t, denoiser=None):
            return -torch.ones(x.shape[0], dtype=torch.float64)

    den = _uncond(pipe64)
    z = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    counter = sd.TraceBoundCounter(sd_trace.DFTMTrace(den, NegativeVariance(den.schedule)))
    sd.latent_log_likelihood(z, den, None, method=counter, num_steps=2)
    assert counter.evaluations == 8 and counter.above.tolist() == [8, 8]


class _GaussianTrace(TraceModel):
    r"""Exact E[‖x0‖²|x_t]/d for data N(0, s² I): posterior variance plus squared posterior mean."""

    def __init__(self, schedule, s2):
        self.schedule, self.s2 = schedule, s2

    def mean_sq_norm(self, x, t):
        a, sg = self.schedule(t)
        c = a**2 * self.s2 + sg**2
        mean = (a * self.s2 / c).view(-1, 1) * x.flatten(1)
        return self.s2 * sg**2 / c + mean.pow(2).mean(1)


def test_latent_nll_exact_for_gaussian_latents(pipe64):
    """With the exact denoiser and trace model of N(0, s² I) data DF-TM is exact, so the PF-ODE NLL must equal
    the closed-form log N(z; 0, (α² s² + σ²) I) at t_min."""
    sched = DiscreteSchedule.from_scheduler(pipe64.scheduler)
    d, s2 = 16, 0.25
    mix = GaussianMixture(
        torch.ones(1, dtype=torch.float64),
        torch.zeros(1, d, dtype=torch.float64),
        s2 * torch.eye(d, dtype=torch.float64)[None],
    )
    den = ExactDenoiser(mix, sched)
    z = 0.5 * torch.randn(3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    t_min = 0.05
    res = sd.latent_log_likelihood(
        z, den, _GaussianTrace(sched, s2), t_min=t_min, solver="rk4", num_steps=400, data_var=s2
    )
    a, sg = (v.item() for v in sched(torch.tensor(t_min, dtype=torch.float64)))
    var = a**2 * s2 + sg**2
    want = -0.5 * (z.pow(2).sum(1) / var + d * math.log(2 * math.pi * var))
    torch.testing.assert_close(res.log_q, want, rtol=0, atol=2e-3)
    torch.testing.assert_close(res.bpd, -want / (d * math.log(2)), rtol=0, atol=1e-3)


def test_rewards_are_differentiable(tiny, pipe64):
    z = torch.randn(1, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    v = torch.randn_like(z)
    for reward in (
        sd.load_reward("clip", pipe64, clip_path=str(tiny / "clip")),
        sd.load_reward("module", pipe64, module="test_sd:MeanBrightness"),
    ):
        reward.double()
        reward.set_prompt("a cat")
        zg = z.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(reward(zg).sum(), zg)
        h = 1e-4
        with torch.no_grad():
            fd = (reward(z + h * v) - reward(z - h * v)) / (2 * h)
        torch.testing.assert_close((grad * v).sum().reshape(1), fd, rtol=1e-3, atol=1e-7)
    with pytest.raises(ValueError, match="package.module:Name"):
        sd.load_reward("module", pipe64, module="no_colon")


def test_cli_end_to_end(tmp_path):
    """tiny -> trace net (resumable) -> NLL (Zarr, CSV, plots) -> adjoint (DF-EA and VJP) on the tiny pipeline."""
    from dfcore.config import validate_config
    from dfcore.experiments import sd as sd_cli

    cfg = validate_config(
        {
            "sd": {
                "enabled": True,
                "tiny": True,
                "prompts": ["a cat"],
                "num_steps": 2,
                "tiny_images": 2,
                "trace_net": {
                    "steps": 4,
                    "batch_size": 2,
                    "checkpoint_every": 2,
                    "block_out_channels": [8],
                    "norm_num_groups": 4,
                },
                "nll": {"guidance_scales": [1.0, 4.0], "seeds": [0, 1], "num_steps": 2, "thumbnail_size": 8},
                "adjoint": {"seeds": [0], "num_steps": 2, "update_steps": [1], "step_size": 1.0},
            }
        }
    )["sd"]
    run_tiny(cfg, str(tmp_path / "pipe"), str(tmp_path / "clip"), str(tmp_path / "images"))
    assert len(list((tmp_path / "images").glob("*.png"))) == 2
    model = sd_cli.run_trace_net(
        cfg,
        str(tmp_path / "pipe"),
        str(tmp_path / "images"),
        str(tmp_path / "trace.pt"),
        str(tmp_path / "loss.csv"),
        device="cpu",
        resume=str(tmp_path / "resume.pt"),
    )
    # every step is logged; a finished run removes its resume checkpoint (it only exists mid-run)
    assert len(pd.read_csv(tmp_path / "loss.csv")) == 4 and not (tmp_path / "resume.pt").exists()
    state = torch.load(tmp_path / "trace.pt", weights_only=True)["model"]
    assert state["hparams"]["latent_shape"] == [4, 8, 8] and state["target"] == "residual"
    assert model.sigma_data == pytest.approx(
        float(sd.encode_image_folder(sd.load_pipeline(tmp_path / "pipe"), tmp_path / "images").double().std())
    )
    out = tmp_path / "nll"
    out.mkdir()
    frame = sd_cli.run_sd_nll(
        cfg,
        str(tmp_path / "pipe"),
        str(tmp_path / "trace.pt"),
        str(out / "nll.zarr"),
        str(out / "nll.csv"),
        str(out / "g.png"),
        str(out / "s.png"),
        device="cpu",
    )
    ds = read_zarr(out / "nll.zarr")
    assert ds["nll"].dims == ("method", "prompt", "guidance_scale", "seed") and ds["nll"].shape == (1, 1, 2, 2)
    assert list(frame.method) == ["dftm"] * 4 and (frame.trace_above_bound == 0).all()
    assert ds["thumbnail"].shape == (1, 2, 2, 8, 8, 3) and ds.attrs["stage"] == "sd_nll"
    np.testing.assert_allclose(np.sort(ds["nll"].values.ravel()), np.sort(frame["nll_nats"].values))
    assert np.isfinite(frame["nll_nats"]).all() and (out / "g.png").stat().st_size and (out / "s.png").stat().st_size
    metrics = sd_cli.run_adjoint(
        cfg,
        str(tmp_path / "pipe"),
        str(tmp_path / "adj.csv"),
        str(tmp_path / "adj.png"),
        clip_path=str(tmp_path / "clip"),
        device="cpu",
    )
    assert list(metrics.method) == ["dfea", "vjp"] and (metrics.seconds > 0).all()
    assert np.isfinite(metrics[["score_before", "score_after", "peak_mem_mb"]].to_numpy()).all()
    assert (metrics.score_after != metrics.score_before).all()  # the guidance moved the sample


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """The test config's tiny pipeline, images and trace net (sd.trace_net of config/test.yaml)."""
    from pathlib import Path

    import yaml

    from dfcore.config import validate_config
    from dfcore.experiments import sd as sd_cli

    root = tmp_path_factory.mktemp("sd_trained")
    test_yaml = Path(__file__).resolve().parents[1] / "config" / "test.yaml"
    cfg = validate_config(yaml.safe_load(test_yaml.read_text()))["sd"]
    run_tiny(cfg, str(root / "pipe"), str(root / "clip"), str(root / "images"))
    model = sd_cli.run_trace_net(
        cfg, str(root / "pipe"), str(root / "images"), str(root / "trace.pt"), str(root / "loss.csv"), device="cpu"
    )
    pipe = sd.load_pipeline(root / "pipe")
    den = sd_cli.unconditional_denoiser(pipe, cfg)
    z_T = torch.cat([seeded_noise(s, (1, *sd_cli.latent_shape(pipe))) for s in (0, 1)])
    return cfg, model, den, sd.sample_latents(den, z_T, int(cfg["num_steps"]))


def test_trained_latent_trace_net_stays_below_d_over_sigma2(trained_tiny):
    """After the test config's short training, DF-TM's trace never exceeds d/σ² on a grid of t from 1/T to 1,
    along the solve no evaluation exceeds it, and the NLL is finite."""
    cfg, model, den, z0 = trained_tiny
    d = z0[0].numel()
    for t in torch.cat([torch.logspace(-3, 0, 16, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)]):
        trace = fisher_trace("dftm", z0, t, denoiser=den, trace_model=model)
        assert torch.isfinite(trace).all() and (trace <= d / den.schedule.sigma(t) ** 2).all()
    counter = sd.TraceBoundCounter(sd_trace.DFTMTrace(den, model))
    res = sd.latent_log_likelihood(z0, den, model, method=counter, num_steps=int(cfg["nll"]["num_steps"]))
    assert torch.isfinite(res.bpd).all() and counter.above.tolist() == [0, 0]


def test_trained_dftm_bits_per_dim_within_factor_3_of_vjp(trained_tiny):
    """DF-TM's bits/dim (mean over two latents) is within a factor 3 of the exact model trace's (vjp) on the same
    latents, with the same solver."""
    cfg, model, den, z0 = trained_tiny
    steps = int(cfg["nll"]["num_steps"])
    dftm = sd.latent_log_likelihood(z0, den, model, num_steps=steps).bpd.mean().item()
    vjp = sd.latent_log_likelihood(z0, den, None, method="vjp", num_steps=steps, chunk_size=256).bpd.mean().item()
    assert dftm > 0 and vjp > 0
    assert 1 / 3 <= dftm / vjp <= 3, (dftm, vjp)
