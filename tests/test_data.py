"""Datasets: the checkerboard's support and balance, mixture moments, digits scaling, and the Zarr round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfcore.data.datasets import make_checkerboard, make_dataset, make_digits, make_gaussian_mixture
from dfcore.data.store import image_shape, load_dataset, load_mixture, write_dataset
from dfcore.experiments.data import prepare_dataset
from dfcore.io import read_zarr
from dfcore.mixtures import DiracMixture, GaussianMixture


def test_checkerboard_lies_on_black_squares_and_is_balanced():
    x = make_checkerboard(16000, seed=3)
    assert x.shape == (16000, 2) and x.dtype == torch.float64
    assert (x >= -2).all() and (x <= 2).all()
    cell = torch.floor(x + 2).long().clamp(0, 3)
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()
    counts = torch.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16).float()
    black = counts[counts > 0]
    assert len(black) == 8
    # multinomial counts: 2000 expected per square, std ~ 42
    assert (black - 2000).abs().max() < 250
    # uniform within a square: the offset's mean is 1/2 and its variance 1/12
    off = x + 2 - cell
    assert torch.allclose(off.mean(0), torch.full((2,), 0.5, dtype=torch.float64), atol=0.01)
    assert torch.allclose(off.var(0), torch.full((2,), 1 / 12, dtype=torch.float64), atol=0.005)


def test_same_seed_same_data_and_different_seed_differs():
    assert torch.equal(make_checkerboard(50, 7), make_checkerboard(50, 7))
    assert not torch.equal(make_checkerboard(50, 7), make_checkerboard(50, 8))


def test_gaussian_mixture_samples_match_their_parameters():
    x, mixture = make_gaussian_mixture(40000, [0.25, 0.75], [[-2.0, 0.0], [2.0, 1.0]], [0.5, 0.3], seed=1)
    assert isinstance(mixture, GaussianMixture)
    mean = 0.25 * torch.tensor([-2.0, 0.0]) + 0.75 * torch.tensor([2.0, 1.0])
    assert torch.allclose(x.mean(0).float(), mean, atol=0.03)
    left = x[:, 0] < 0
    assert abs(left.double().mean().item() - 0.25) < 0.01
    assert abs(x[left, 1].std().item() - 0.5) < 0.01 and abs(x[~left, 1].std().item() - 0.3) < 0.01


def test_gaussian_mixture_rejects_inconsistent_parameters():
    with pytest.raises(ValueError, match="same length"):
        make_gaussian_mixture(10, [1.0], [[0.0, 0.0], [1.0, 1.0]], [0.5, 0.5])
    with pytest.raises(ValueError, match="positive"):
        make_gaussian_mixture(10, [1.0], [[0.0, 0.0]], [-0.5])


def test_digits_are_sklearn_images_scaled_to_unit_interval():
    from sklearn.datasets import load_digits

    x = make_digits()
    raw = load_digits().data
    assert x.shape == (1797, 64)
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(x.numpy(), raw / 8.0 - 1.0)
    sub = make_digits(100, seed=0)
    assert sub.shape == (100, 64) and torch.equal(sub, make_digits(100, seed=0))


def test_zarr_round_trip_keeps_samples_dims_and_mixture(tmp_path):
    x, mixture, attrs = make_dataset(
        {
            "kind": "gaussian_mixture",
            "num_samples": 30,
            "seed": 0,
            "weights": [1, 2],
            "means": [[0.0, 1.0], [1.0, 0.0]],
            "stds": [0.2, 0.4],
        }
    )
    path = tmp_path / "gmm.zarr"
    write_dataset(path, x, name="gmm", mixture=mixture, attrs=attrs)
    ds = read_zarr(path)
    assert ds["x"].dims == ("sample", "dim") and ds.attrs["dataset"] == "gmm" and "git_revision" in ds.attrs
    assert torch.equal(load_dataset(path), x)
    rebuilt = load_mixture(path)
    assert isinstance(rebuilt, GaussianMixture)
    torch.testing.assert_close(rebuilt.weights, mixture.weights)
    torch.testing.assert_close(rebuilt.covs, mixture.covs)
    assert image_shape(path) is None


def test_dirac_mixture_and_image_shape_from_store(tmp_path):
    config = {
        "datasets": {
            "digits": {"kind": "digits", "num_samples": 20, "seed": 1},
            "board": {"kind": "checkerboard", "num_samples": 10, "seed": 0},
        }
    }
    prepare_dataset("digits", config["datasets"]["digits"], tmp_path / "digits.zarr")
    prepare_dataset("board", config["datasets"]["board"], tmp_path / "board.zarr")
    assert image_shape(tmp_path / "digits.zarr") == (1, 8, 8)
    board = load_mixture(tmp_path / "board.zarr")
    assert isinstance(board, DiracMixture)
    torch.testing.assert_close(board.points, make_checkerboard(10, 0))
    with pytest.raises(ValueError, match="'absent' is not defined in the config's 'datasets' section"):
        prepare_dataset("absent", config["datasets"].get("absent"), tmp_path / "x.zarr")


def test_cli_make_data_writes_the_configured_dataset(tmp_path):
    from pathlib import Path

    from dfcore.cli import main

    config = Path(__file__).resolve().parent.parent / "config" / "test.yaml"
    out = tmp_path / "board.zarr"
    assert main(["make-data", "--configfile", str(config), "--name", "checkerboard", "--out", str(out)]) == 0
    from dfcore.config import load_config

    spec = load_config(config)["datasets"]["checkerboard"]
    assert torch.equal(load_dataset(out), make_checkerboard(spec["num_samples"], spec["seed"]))
