r"""Datasets of the experiments, written as Zarr stores with dims ``(sample, dim)``.

Three kinds (config word ``kind`` of each entry of the ``datasets`` section):

* ``checkerboard`` — the 2-D chessboard of Table 2: uniform on the 8 black squares of a 4x4 board
  over :math:`[-2, 2]^2` (square side 1; a square with integer corner ``(i, j)`` is black when
  ``i + j`` is even).
* ``gaussian_mixture`` — :math:`q_0 = \sum_k \pi_k \mathcal N(\mu_k, s_k^2 I)` with parameters from the
  config, so the exact density (and Fisher) is known: :func:`make_dataset` also returns the
  :class:`~dfcore.mixture.GaussianMixture`, and the store keeps its parameters
  (``mixture_weights``, ``mixture_means``, ``mixture_covs``) so :func:`load_mixture` rebuilds it.
* ``digits`` — scikit-learn's bundled 8x8 digit images (1797 of them, no download),
  :math:`d = 64`, pixel values 0..16 mapped affinely to :math:`[-1, 1]` (``x / 8 - 1``); the image
  shape is stored in the attribute ``image_shape`` = ``[1, 8, 8]``.

The sample values are stored in float64 in the variable ``x``. Every draw uses a
``torch.Generator`` seeded from the config, so a dataset is bit-identical across runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from dfcore.io import provenance, read_zarr, write_zarr
from dfcore.mixture import DiracMixture, GaussianMixture, Mixture

__all__ = [
    "DATASET_KINDS",
    "make_checkerboard",
    "make_gaussian_mixture",
    "make_digits",
    "make_dataset",
    "write_dataset",
    "load_dataset",
    "load_mixture",
    "dataset_attrs",
    "image_shape",
    "prepare_dataset",
    "prepare_dataset_entry",
]

DATASET_KINDS = ("checkerboard", "gaussian_mixture", "digits")


def make_checkerboard(num_samples: int, seed: int = 0) -> Tensor:
    """Uniform samples on the black squares of a 4x4 chessboard over [-2, 2]^2, shape (n, 2), float64."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive; got {num_samples}")
    gen = torch.Generator().manual_seed(int(seed))
    corners = torch.tensor([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], dtype=torch.float64)
    square = torch.randint(len(corners), (num_samples,), generator=gen)
    offset = torch.rand(num_samples, 2, generator=gen, dtype=torch.float64)
    return corners[square] + offset - 2.0


def make_gaussian_mixture(
    num_samples: int,
    weights: list[float],
    means: list[list[float]],
    stds: list[float],
    seed: int = 0,
) -> tuple[Tensor, GaussianMixture]:
    r"""Samples of :math:`\sum_k \pi_k \mathcal N(\mu_k, s_k^2 I)` and the exact mixture object."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive; got {num_samples}")
    means_t = torch.as_tensor(means, dtype=torch.float64)
    if means_t.ndim != 2:
        raise ValueError(f"means must be a list of K vectors of equal length; got shape {tuple(means_t.shape)}")
    k, d = means_t.shape
    if len(weights) != k or len(stds) != k:
        raise ValueError(f"weights ({len(weights)}), means ({k}) and stds ({len(stds)}) must have the same length")
    if any(s <= 0 for s in stds):
        raise ValueError(f"stds must be positive; got {stds}")
    covs = torch.stack([torch.eye(d, dtype=torch.float64) * float(s) ** 2 for s in stds])
    mixture = GaussianMixture(torch.as_tensor(weights, dtype=torch.float64), means_t, covs)
    gen = torch.Generator().manual_seed(int(seed))
    return mixture.sample(num_samples, generator=gen), mixture


def make_digits(num_samples: int | None = None, seed: int = 0) -> Tensor:
    """scikit-learn's 8x8 digits, flattened to (n, 64) and scaled from 0..16 to [-1, 1], float64.

    With ``num_samples`` below 1797 a random subset (seeded) is kept, in the original order.
    """
    from sklearn.datasets import load_digits

    images = torch.as_tensor(load_digits().images.reshape(-1, 64), dtype=torch.float64)
    x = images / 8.0 - 1.0
    if num_samples is not None and num_samples < len(x):
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive; got {num_samples}")
        gen = torch.Generator().manual_seed(int(seed))
        keep = torch.randperm(len(x), generator=gen)[:num_samples].sort().values
        x = x[keep]
    return x


def make_dataset(spec: dict[str, Any]) -> tuple[Tensor, Mixture | None, dict[str, Any]]:
    """Build one dataset from its config entry; return ``(x (N, d), exact mixture or None, attrs)``."""
    kind = spec.get("kind")
    seed = int(spec.get("seed", 0))
    n = spec.get("num_samples")
    if kind == "checkerboard":
        return make_checkerboard(int(n or 1000), seed), None, {"kind": kind}
    if kind == "gaussian_mixture":
        x, mixture = make_gaussian_mixture(int(n or 1000), spec["weights"], spec["means"], spec["stds"], seed)
        return x, mixture, {"kind": kind}
    if kind == "digits":
        return make_digits(n, seed), None, {"kind": kind, "image_shape": [1, 8, 8]}
    raise ValueError(f"unknown dataset kind {kind!r}; choose one of {list(DATASET_KINDS)}")


def write_dataset(
    path: str | Path,
    x: Tensor,
    *,
    name: str,
    mixture: Mixture | None = None,
    attrs: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    seed: int | None = None,
) -> xr.Dataset:
    """Write samples ``x`` (N, d) (and a Gaussian mixture's parameters) to a Zarr store, atomically."""
    x = torch.as_tensor(x, dtype=torch.float64)
    data_vars: dict[str, Any] = {"x": (("sample", "dim"), x.numpy())}
    if isinstance(mixture, GaussianMixture):
        data_vars["mixture_weights"] = (("component",), mixture.weights.double().numpy())
        data_vars["mixture_means"] = (("component", "dim"), mixture.means.double().numpy())
        data_vars["mixture_covs"] = (("component", "dim", "dim_"), mixture.covs.double().numpy())
    ds = xr.Dataset(
        data_vars,
        coords={"sample": np.arange(x.shape[0]), "dim": np.arange(x.shape[1])},
    )
    ds["x"].attrs["description"] = "data samples x_0"
    extra = {"dataset": name, **{k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in (attrs or {}).items()}}
    write_zarr(ds, path, attrs=provenance(config, seed, **extra))
    return ds


def load_dataset(path: str | Path, dtype: torch.dtype = torch.float64) -> Tensor:
    """The samples of a dataset store written by :func:`write_dataset`, shape (N, d)."""
    ds = read_zarr(path)
    if "x" not in ds:
        raise ValueError(f"{path}: not a dataset store (no variable 'x')")
    return torch.as_tensor(ds["x"].values, dtype=dtype)


def dataset_attrs(path: str | Path) -> dict[str, Any]:
    """The attributes of a dataset store (kind, image_shape, provenance)."""
    return dict(read_zarr(path).attrs)


def image_shape(path: str | Path) -> tuple[int, ...] | None:
    """``(C, H, W)`` for an image dataset, else None."""
    shape = dataset_attrs(path).get("image_shape")
    if shape is None:
        return None
    return tuple(json.loads(shape) if isinstance(shape, str) else shape)


def load_mixture(path: str | Path) -> Mixture:
    """The exact data distribution of a store: its Gaussian mixture if it has one, otherwise the
    Dirac mixture over its samples (the 'analytic' ground truth of Table 2)."""
    ds = read_zarr(path)
    if "mixture_weights" in ds:
        return GaussianMixture(
            torch.as_tensor(ds["mixture_weights"].values),
            torch.as_tensor(ds["mixture_means"].values),
            torch.as_tensor(ds["mixture_covs"].values),
        )
    return DiracMixture(torch.as_tensor(ds["x"].values, dtype=torch.float64))


def prepare_dataset(name: str, config: dict[str, Any], out: str | Path) -> Tensor:
    """Build dataset ``name`` from the validated config's ``datasets`` section and write it."""
    specs = config.get("datasets", {})
    if name not in specs:
        raise ValueError(f"dataset {name!r} is not in the config's 'datasets' section; have {sorted(specs)}")
    return prepare_dataset_entry(name, specs[name], out)


def prepare_dataset_entry(name: str, spec: dict[str, Any] | None, out: str | Path) -> Tensor:
    """Entry point of the data rule: build dataset ``name`` from its own entry of the ``datasets`` section
    (None when the config has no such entry) and write it."""
    if spec is None:
        raise ValueError(f"dataset {name!r} is not a key of the config's 'datasets' section")
    x, mixture, attrs = make_dataset(spec)
    write_dataset(out, x, name=name, mixture=mixture, attrs=attrs, config=spec, seed=spec.get("seed"))
    return x
