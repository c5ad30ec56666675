"""Zarr stores are read whole or not at all: a missing chunk, a damaged chunk or a flipped byte raises an
error that names the store and the array, and data sets with NaN or Inf are refused at load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from dfcore.data.datasets import make_gaussian_mixture
from dfcore.data.store import load_dataset, load_mixture, write_dataset
from dfcore.io import read_zarr, write_zarr


def _chunks(store: Path, array: str) -> list[Path]:
    """The chunk files of one array (``c`` for a 0-d array, ``c/i/j/...`` otherwise)."""
    root = store / array / "c"
    return [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path) -> Path:
    """A data set store with several chunks in ``x`` and a Gaussian mixture's parameters."""
    x, mixture = make_gaussian_mixture(300, [0.4, 0.6], [[-1.0, 0.0], [1.0, 1.0]], [0.3, 0.5], seed=0)
    path = tmp_path / "gmm.zarr"
    ds = write_dataset(path, x, name="gmm", mixture=mixture)
    ds["x"].encoding["chunks"] = (100, 2)
    write_zarr(ds, path)  # the same data, with x in three chunks
    assert len(_chunks(path, "x")) == 3
    return path


def _arrays(path: Path) -> list[str]:
    return sorted(p.parent.name for p in path.glob("*/zarr.json"))


def test_every_array_of_a_data_set_store_is_checked_for_missing_chunks(store):
    arrays = _arrays(store)
    assert {"x", "sample", "dim", "mixture_weights", "mixture_means", "mixture_covs"} <= set(arrays)
    for name in arrays:
        chunk = _chunks(store, name)[-1]
        saved = chunk.read_bytes()
        chunk.unlink()
        with pytest.raises(ValueError) as err:
            read_zarr(store)
        message = str(err.value)
        assert str(store) in message and f"array {name!r}" in message, message
        assert chunk.relative_to(store / name).as_posix() in message, message  # the missing chunk's key
        assert "\n" not in message
        chunk.write_bytes(saved)
    read_zarr(store)  # whole again


def test_a_missing_chunk_is_not_read_as_fill_values(store):
    _chunks(store, "x")[1].unlink()
    with pytest.raises(ValueError, match=r"gmm\.zarr.*array 'x'.*missing"):
        load_dataset(store)


def test_a_damaged_chunk_names_the_array(store):
    _chunks(store, "mixture_means")[0].write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=r"cannot read Zarr store .*gmm\.zarr.*array 'mixture_means'"):
        read_zarr(store)


def test_a_flipped_byte_fails_the_checksum(tmp_path):
    path = tmp_path / "noise.zarr"
    values = np.random.default_rng(0).standard_normal((64, 8))  # incompressible: zstd stores it raw
    write_zarr(xr.Dataset({"v": (("i", "j"), values)}), path)
    chunk = _chunks(path, "v")[0]
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    chunk.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"cannot read Zarr store .*noise\.zarr.*array 'v'.*checksum"):
        read_zarr(path)


def test_stores_are_written_with_checksums(store):
    for name in _arrays(store):
        codecs = json.loads((store / name / "zarr.json").read_text())["codecs"]
        assert {"name": "zstd", "configuration": {"level": 0, "checksum": True}} in codecs, (name, codecs)


def test_arrays_of_fill_values_are_written_and_read_back(tmp_path):
    """Chunks equal to the fill value are written too, so that a missing chunk always means damage."""
    path = tmp_path / "empty.zarr"
    ds = xr.Dataset({"nan": (("i",), np.full(5, np.nan)), "zero": (("i",), np.zeros(5)), "s": ((), np.nan)})
    write_zarr(ds, path)
    back = read_zarr(path)
    assert np.isnan(back["nan"].values).all() and (back["zero"].values == 0).all() and np.isnan(back["s"].values)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_data_set_with_non_finite_values_is_refused_at_load(tmp_path, bad):
    x = torch.randn(20, 2, dtype=torch.float64)
    x[7, 1] = bad
    path = tmp_path / "bad.zarr"
    write_dataset(path, x, name="bad")
    with pytest.raises(ValueError, match=r"bad\.zarr.*'x'.*1 non-finite value.*index \(7, 1\)"):
        load_dataset(path)
    with pytest.raises(ValueError, match=r"bad\.zarr.*'x'.*non-finite"):
        load_mixture(path)


def test_a_mixture_with_non_finite_parameters_is_refused_at_load(store):
    ds = read_zarr(store)
    ds["mixture_means"][0, 0] = np.nan
    write_zarr(ds, store)
    load_dataset(store)  # the samples are fine
    with pytest.raises(ValueError, match=r"gmm\.zarr.*'mixture_means'.*non-finite"):
        load_mixture(store)
