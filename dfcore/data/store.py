r"""Data-set stores: Zarr through xarray, dims ``(sample, dim)``, samples in float64 in the variable ``x``.

A Gaussian-mixture store also keeps the mixture's parameters (``mixture_weights``, ``mixture_means``,
``mixture_covs``) so :func:`load_mixture` rebuilds the exact distribution; an image store carries
``image_shape`` in its attrs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from dfcore.io import check_finite, provenance, read_zarr, write_zarr
from dfcore.mixtures import DiracMixture, GaussianMixture, Mixture

__all__ = ["write_dataset", "load_dataset", "dataset_attrs", "image_shape", "load_mixture"]


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
    extra = {
        "dataset": name,
        **{k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in (attrs or {}).items()},
    }
    write_zarr(ds, path, attrs=provenance(config, seed, **extra))
    return ds


def load_dataset(path: str | Path, dtype: torch.dtype = torch.float64) -> Tensor:
    """The samples of a dataset store written by :func:`write_dataset`, shape (N, d).

    The store is read whole (:func:`dfcore.io.read_zarr`: every chunk present and intact), and the
    samples must be finite: NaN or Inf raises ``ValueError`` naming the store."""
    ds = read_zarr(path)
    if "x" not in ds:
        raise ValueError(f"{path}: not a dataset store (no variable 'x')")
    check_finite(ds, ["x"], path)
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
    Dirac mixture over its samples (the 'analytic' ground truth of Table 2). The values it uses must
    be finite: NaN or Inf raises ``ValueError`` naming the store and the variable."""
    ds = read_zarr(path)
    if "mixture_weights" in ds:
        check_finite(ds, ["mixture_weights", "mixture_means", "mixture_covs"], path)
        return GaussianMixture(
            torch.as_tensor(ds["mixture_weights"].values),
            torch.as_tensor(ds["mixture_means"].values),
            torch.as_tensor(ds["mixture_covs"].values),
        )
    check_finite(ds, ["x"], path)
    return DiracMixture(torch.as_tensor(ds["x"].values, dtype=torch.float64))
