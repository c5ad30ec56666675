"""The object API of a loaded pipeline folder: ``model.log_likelihood(images, method=...)`` and
``model.guided_sample(reward, ...)`` (dfcore.integrations.pretrained_likelihood, pretrained_guidance), on a tiny
random DDPM saved with save_pretrained."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_pipelines import T, tiny_scheduler, tiny_unet, write_images

from dfcore.cli import main
from dfcore.experiments.pretrained_images import read_images
from dfcore.integrations.pretrained import load_model


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from diffusers import DDPMPipeline

    root = tmp_path_factory.mktemp("pretrained_api")
    DDPMPipeline(unet=tiny_unet(), scheduler=tiny_scheduler()).save_pretrained(str(root / "model"))
    return root / "model", write_images(root / "images")


@pytest.mark.parametrize("method", ["vjp", "hutchinson"])
def test_log_likelihood_is_the_cli_protocol(pipeline, tmp_path, method):
    """The method gives the CLI's bits/dim per image (same dequantisation seed, same probes, same solver), and by
    hand from the solve's log q: bpd = -(log q + d log a)/(d ln 2), a = 1/127.5."""
    model_dir, images = pipeline
    out = tmp_path / "cli.csv"
    argv = ["likelihood", "--model", str(model_dir), "--images", str(images), "--out", str(out), "--quiet"]
    assert main([*argv, "--method", method, "--num-steps", "4", "--seed", "5", "--device", "cpu"]) == 0
    cli = pd.read_csv(out)["bpd"].to_numpy()
    model = load_model(model_dir)
    uint8 = read_images(images, model.sample_shape)[1]
    got = model.log_likelihood(uint8, method, num_steps=4, seed=5)
    np.testing.assert_allclose(got.bpd.numpy(), cli, rtol=0, atol=1e-9)
    assert got.dequantization == "uniform" and got.t_min == pytest.approx(1 / T) and got.dim == 64

    from dfcore.dequantize import dequantize
    from dfcore.integrations.pretrained_likelihood import model_log_likelihood

    x = dequantize(uint8, torch.Generator().manual_seed(5)).float()
    log_q = model_log_likelihood(
        model, x, method=method, t_min=1 / T, solver="rk4", num_steps=4, generator=torch.Generator().manual_seed(6)
    ).log_q.double()
    by_hand = -(log_q + 64 * np.log(1 / 127.5)) / (64 * np.log(2.0))
    np.testing.assert_allclose(got.bpd.numpy(), by_hand.numpy(), rtol=0, atol=1e-9)


def test_log_likelihood_refuses_a_trace_net_without_dftm_and_dftm_without_one(pipeline):
    model_dir, images = pipeline
    model = load_model(model_dir)
    uint8 = read_images(images, model.sample_shape)[1]
    with pytest.raises(ValueError, match="trace net"):
        model.log_likelihood(uint8, "dftm")
    with pytest.raises(ValueError, match="trace net"):
        model.log_likelihood(uint8, "vjp", trace=object())


class _MeanBrightness(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(1, 2, 3))


@pytest.mark.parametrize("method", ["vjp", "dfea"])
def test_guided_sample_raises_the_reward_of_the_same_noise(pipeline, method):
    """With the same initial noise, guidance towards a brighter image ends brighter than the unguided sample
    (step size 0), and the reported loss is minus the reward of the final sample, recomputed here."""
    model = load_model(pipeline[0], dtype=torch.float64)
    reward = _MeanBrightness()
    kw = dict(num_samples=3, num_steps=10, seed=2, update_steps=(5, 3), normalize="grad")
    plain = model.guided_sample(reward, method=method, step_size=0.0, **kw)
    guided = model.guided_sample(reward, method=method, step_size=0.5, **kw)
    torch.testing.assert_close(guided.final_loss, -reward(model.decode(guided.x_final)), rtol=0, atol=1e-12)
    assert (reward(guided.x_final) > reward(plain.x_final) + 1e-3).all()
    assert not guided.diverged.any() and guided.fvp_calls > 0


def test_the_readme_block_runs_on_a_pipeline_folder(pipeline, tmp_path, monkeypatch):
    """The README's ``python your-model`` block, with its folder names pointed at a tiny pipeline and 30 training
    steps: DF-TM's bits/dim is finite, and no trace it evaluated is above d/sigma^2."""
    import sys
    from pathlib import Path

    from dfcore.experiments import pretrained

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from markdown_blocks import PIPELINE_TAG, code_blocks

    readme = Path(__file__).resolve().parents[1] / "README.md"
    (block,) = [b for b in code_blocks(readme, "python") if PIPELINE_TAG in b.tags]
    model_dir, images = pipeline
    code = block.code.replace('"my-model"', repr(str(model_dir))).replace('"my-images"', repr(str(images)))
    code = code.replace('"my-trace"', repr(str(tmp_path / "trace")))
    monkeypatch.setitem(pretrained.DEFAULTS["trace"], "steps", 30)
    namespace: dict[str, object] = {}
    exec(compile(code, block.name, "exec"), namespace)  # noqa: S102 (the documented code)
    model, uint8 = namespace["model"], namespace["images"]
    trace = pretrained.load_trace(tmp_path / "trace", model)
    bpd = model.log_likelihood(uint8, method="dftm", trace=trace).bpd
    assert torch.isfinite(bpd).all() and trace.counts["evaluations"] > 0
    assert trace.counts["lower"] == 0
