"""``python -m dfcore likelihood --model DIR --images DIR`` and ``python -m dfcore train-trace`` on tiny random
diffusers pipeline folders saved with save_pretrained and a folder of three 8x8 PNG images."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_pipelines import SIZE, T, tiny_conditional_unet, tiny_scheduler, tiny_unet, write_images

from dfcore.cli import main


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A tiny unconditional DDPM pipeline folder and three grayscale PNGs of its sample size."""
    from diffusers import DDPMPipeline

    root = tmp_path_factory.mktemp("pretrained_cli")
    DDPMPipeline(unet=tiny_unet(), scheduler=tiny_scheduler()).save_pretrained(str(root / "model"))
    return root / "model", write_images(root / "images")


def _likelihood(model, images, out, *extra):
    argv = ["likelihood", "--model", str(model), "--images", str(images), "--out", str(out), "--quiet", *extra]
    assert main([*argv, "--device", "cpu", "--num-steps", "4"]) == 0
    return pd.read_csv(out)


def test_vjp_matches_the_python_api_and_hutchinson(pipeline, tmp_path):
    from dfcore.dequantize import dequantize_images, image_bits_per_dim
    from dfcore.experiments.pretrained_images import read_images
    from dfcore.integrations.pretrained import load_model
    from dfcore.integrations.pretrained_likelihood import model_log_likelihood

    model_dir, images = pipeline
    vjp = _likelihood(model_dir, images, tmp_path / "vjp.csv", "--method", "vjp", "--seed", "3")
    assert list(vjp["image"]) == ["img0.png", "img1.png", "img2.png"] and set(vjp["method"]) == {"vjp"}
    assert np.isfinite(vjp["bpd"]).all() and (vjp["seconds"] > 0).all()
    assert set(vjp["dequantization"]) == {"uniform"} and np.allclose(vjp["t_min"], 1 / T)
    record = json.loads((tmp_path / "vjp.json").read_text())
    assert record["dim"] == SIZE * SIZE and record["trace"] is None

    # the same quantity through the Python API: same dequantisation noise (seed 3), same solver settings
    model = load_model(model_dir)
    deq = dequantize_images(read_images(images, model.sample_shape)[1], torch.Generator().manual_seed(3))
    res = model_log_likelihood(
        model, deq.x.float(), method="vjp", t_min=1 / T, solver="rk4", num_steps=4, time_warp="log"
    )
    expected = image_bits_per_dim(res.log_q.to(torch.float64), deq, 1 / T).bpd.numpy()
    np.testing.assert_allclose(vjp["bpd"], expected, rtol=0, atol=1e-4)

    # Hutchinson, one Rademacher probe per draw, 16 dequantisation draws per image: the mean over draws has a
    # spread of about 0.15 bits/dim here (the dequantisation noise itself moves vjp by less than 0.01)
    hutch = _likelihood(
        model_dir, images, tmp_path / "h.csv", "--method", "hutchinson", "--seed", "3", "--num-draws", "16"
    )
    assert np.isfinite(hutch["bpd"]).all() and (hutch["num_draws"] == 16).all()
    gap = np.abs(hutch["bpd"] - vjp["bpd"])
    assert gap.max() < 0.5 and abs(hutch["bpd"].mean() - vjp["bpd"].mean()) < 0.3, gap


def test_train_trace_then_dftm(pipeline, tmp_path, capsys, caplog):
    model_dir, images = pipeline
    trace = tmp_path / "trace"
    argv = ["train-trace", "--model", str(model_dir), "--images", str(images), "--out", str(trace)]
    with caplog.at_level(logging.INFO):
        calibration = ["--calibration-images", "2", "--calibration-bins", "3", "--calibration-probes", "1"]
        assert main([*argv, "--steps", "3", "--batch-size", "4", "--target", "residual", *calibration]) == 0
    # one line says where the trace net went (with its training time and final loss)
    lines = [*capsys.readouterr().out.splitlines(), *(r.getMessage() for r in caplog.records)]
    assert [line for line in lines if str(trace) in line] == [
        next(r.getMessage() for r in caplog.records if r.getMessage().startswith("trained the trace net"))
    ], lines
    meta = json.loads((trace / "trace.json").read_text())
    assert (trace / "unet" / "config.json").is_file() and len(pd.read_csv(trace / "loss.csv")) == 3
    assert meta["images"] == str(images) and meta["num_images"] == 3 and meta["trace"]["target"] == "residual"
    assert len(meta["calibration"]["offset"]) == 3 and len(pd.read_csv(trace / "calibration.csv")) == 3
    table = _likelihood(model_dir, images, tmp_path / "dftm.csv", "--method", "dftm", "--trace", str(trace))
    assert len(table) == 3 and np.isfinite(table["bpd"]).all() and set(table["method"]) == {"dftm"}
    counts = json.loads((tmp_path / "dftm.json").read_text())["trace"]["counts"]
    assert counts["evaluations"] > 0 and counts["lower"] == 0  # no tr F above d/sigma^2
    # --anchors: the dftm rows of the same solves unchanged, and the rows dftm_anchored next to them
    anchored = _likelihood(
        model_dir, images, tmp_path / "anch.csv", "--method", "dftm", "--trace", str(trace), "--anchors", "2"
    )
    by = anchored.pivot(index="image", columns="method", values="bpd")
    assert set(by.columns) == {"dftm", "dftm_anchored"} and (anchored["anchors"] == 2).all()
    np.testing.assert_allclose(by["dftm"].to_numpy(), table.set_index("image")["bpd"].to_numpy(), rtol=0, atol=1e-9)
    assert np.isfinite(by["dftm_anchored"]).all() and (by["dftm_anchored"] != by["dftm"]).all()


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # vmapped attention backward
def test_conditional_unet_with_zero_conditioning(tmp_path):
    tiny_conditional_unet(channels=3).save_pretrained(str(tmp_path / "model" / "unet"))
    tiny_scheduler().save_pretrained(str(tmp_path / "model" / "scheduler"))
    images = write_images(tmp_path / "images", count=2)  # grayscale, converted to RGB
    table = _likelihood(tmp_path / "model", images, tmp_path / "c.csv", "--method", "vjp", "--num-steps", "2")
    assert len(table) == 2 and np.isfinite(table["bpd"]).all()
    assert all(math.isfinite(v) for v in table["seconds"])


def test_errors_name_the_problem(pipeline, tmp_path, capsys):
    model_dir, images = pipeline
    wrong = write_images(tmp_path / "wrong", size=SIZE + 2, count=1)
    with pytest.raises(ValueError, match=r"img0\.png: image size 10x10 .* sample size 8x8"):
        _likelihood(model_dir, wrong, tmp_path / "w.csv", "--method", "vjp")
    with pytest.raises(SystemExit) as exit_info:
        _likelihood(model_dir, images, tmp_path / "d.csv", "--method", "dftm")
    assert exit_info.value.code == 2 and "--method dftm needs --trace DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        _likelihood(model_dir, images, tmp_path / "a.csv", "--method", "vjp", "--anchors", "2")
    assert exit_info.value.code == 2 and "--anchors" in capsys.readouterr().err
    (tmp_path / "empty" / "scheduler").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has no unet/config.json"):
        _likelihood(tmp_path / "empty", images, tmp_path / "e.csv", "--method", "vjp")
    with pytest.raises(SystemExit):
        main(["likelihood", "benchmark", "--model", str(model_dir), "--images", str(images), "--method", "vjp"])
    assert "not both" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["likelihood", "benchmark", "--images", str(images)])
    assert "--images, --method and --trace go with --model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["likelihood"])
    assert "give a command" in capsys.readouterr().err
    assert not (tmp_path / "w.csv").exists() and not (tmp_path / "e.csv").exists()


def test_the_tutorial_commands_parse(monkeypatch):
    """Every ``python -m dfcore`` command of docs/your-model.md parses, and reaches the function it documents."""
    import shlex
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from markdown_blocks import code_blocks

    from dfcore.experiments import pretrained_images

    calls: list[str] = []
    empty = pd.DataFrame(columns=["image", "method", "bpd", "seconds"])
    monkeypatch.setattr(pretrained_images, "image_likelihood", lambda *a, **k: calls.append(a[2]) or empty)
    monkeypatch.setattr(pretrained_images, "train_image_trace", lambda *a, **k: calls.append("train-trace") or a[2])
    page = Path(__file__).resolve().parent.parent / "docs" / "your-model.md"
    commands = [
        shlex.split(line)[3:]
        for block in code_blocks(page, "bash")
        for line in block.code.splitlines()
        if line.startswith("python -m dfcore ") and "--help" not in line
    ]
    for argv in commands:
        assert main(argv) == 0, argv
    assert calls == ["vjp", "hutchinson", "train-trace", "dftm"]


def test_conditioning_file_is_checked(pipeline, tmp_path):
    """--cond: a (1, L, D) or (L, D) tensor file for a conditional UNet, refused for an unconditional one."""
    from dfcore.experiments.pretrained_images import _conditioning

    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": 8}))
    torch.save(torch.ones(3, 8), tmp_path / "cond.pt")
    assert _conditioning(folder, tmp_path / "cond.pt", torch.float64).shape == (1, 3, 8)
    assert torch.equal(_conditioning(folder, None, torch.float32), torch.zeros(1, 1, 8))
    torch.save(torch.ones(1, 3, 5), tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt: conditioning must be a tensor \(1, L, 8\)"):
        _conditioning(folder, tmp_path / "bad.pt", torch.float32)
    with pytest.raises(ValueError, match="takes no conditioning"):
        _conditioning(pipeline[0], tmp_path / "cond.pt", torch.float32)
