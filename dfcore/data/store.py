r"""Data-set stores: Zarr through xarray, dims ``(sample, dim)``, samples in float64 in the variable ``x``.

A Gaussian-mixture store also keeps the mixture's parameters (``mixture_weights``, ``mixture_means``,
``mixture_covs``) so :func:`load_mixture` rebuilds the exact distribution; an image store carries
``image_shape`` in its attrs.

A store carries what it is: the attributes ``dataset`` (its name), ``artefact`` = ``dataset``, ``dim``,
``num_samples`` and ``config_digest`` (of the ``datasets`` entry that made it, also stored whole as ``config``).
Every read checks the store against itself (the sample count and dimension its own config entry implies, and
its recorded ``num_samples`` and ``dim``) and against what the caller expects (``dataset``, ``dim``); a
mismatch is a ``ValueError`` naming the store and both values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from dfcore.io import check_finite, check_record, config_digest, provenance, read_zarr, write_zarr
from dfcore.mixtures import DiracMixture, GaussianMixture, Mixture

__all__ = [
    "write_dataset",
    "load_dataset",
    "dataset_attrs",
    "image_shape",
    "load_mixture",
    "spec_dim",
    "spec_num_samples",
    "check_store",
    "store_dim",
]

DIGITS_COUNT = 1797  # images in scikit-learn's digits


def spec_dim(spec: dict[str, Any]) -> int | None:
    """The dimension a ``datasets`` config entry gives its samples (None for an unknown kind)."""
    kind = spec.get("kind")
    if kind == "checkerboard":
        return 2
    if kind == "digits":
        return 64
    if kind == "gaussian_mixture" and spec.get("means"):
        return len(spec["means"][0])
    if kind == "gaussian_mixture_lowrank" and "dim" in spec:
        return int(spec["dim"])
    return None


def spec_num_samples(spec: dict[str, Any]) -> int | None:
    """The number of samples a ``datasets`` config entry makes (:func:`dfcore.data.datasets.make_dataset`)."""
    kind, n = spec.get("kind"), spec.get("num_samples")
    if kind in ("checkerboard", "gaussian_mixture", "gaussian_mixture_lowrank"):
        return int(n or 1000)
    if kind != "digits":
        return None
    holdout = float(spec.get("holdout", 0.0))
    total = DIGITS_COUNT
    if holdout > 0:
        test = max(1, round(holdout * DIGITS_COUNT))
        total = test if spec.get("split", "train") == "test" else DIGITS_COUNT - test
    return min(int(n), total) if n is not None else total


def check_store(
    ds: xr.Dataset,
    path: str | Path,
    *,
    dataset: str | None = None,
    dim: int | None = None,
    spec: dict[str, Any] | None = None,
) -> None:
    """Check a dataset store against itself and against the caller's ``dataset`` name, ``dim`` and ``datasets``
    config entry ``spec``: the samples ``x`` (N, d) must agree with the store's recorded ``num_samples`` and
    ``dim`` and with the counts its own ``config`` attribute implies, and with the dimension and count that
    ``spec`` makes. Raise ``ValueError`` naming the store, the key and both values."""
    where = f"data store {path}"
    n, d = (int(v) for v in ds["x"].shape)
    attrs = dict(ds.attrs)
    for key, have in (("num_samples", n), ("dim", d)):
        recorded = attrs.get(key)
        if recorded is not None and int(recorded) != have:
            raise ValueError(f"{where}: its attribute {key} is {int(recorded)}, but x holds {have}")
    if isinstance(attrs.get("config"), str):
        try:
            own = json.loads(attrs["config"])
        except ValueError:
            own = None
        if isinstance(own, dict):
            if "config_digest" in attrs and config_digest(own) != attrs["config_digest"]:
                raise ValueError(
                    f"{where}: config_digest is {attrs['config_digest']!r}, but its config attribute has digest "
                    f"{config_digest(own)!r}"
                )
            want_n, want_d = spec_num_samples(own), spec_dim(own)
            if want_n is not None and want_n != n:
                raise ValueError(f"{where}: holds {n} samples, but its config attribute makes {want_n}")
            if want_d is not None and want_d != d:
                raise ValueError(f"{where}: its samples have dim {d}, but its config attribute makes dim {want_d}")
    if spec is not None:
        for key, want in (("dim", spec_dim(spec)), ("num_samples", spec_num_samples(spec))):
            have = d if key == "dim" else n
            if want is not None and want != have:
                raise ValueError(f"{where}: {key} is {have}, but the config's data set entry makes {want}")
    record = {"dataset": attrs.get("dataset"), "dim": d}
    check_record({k: v for k, v in record.items() if v is not None}, where, dataset=dataset, dim=dim)


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
        "artefact": "dataset",
        "dim": int(x.shape[1]),
        "num_samples": int(x.shape[0]),
        **({"config_digest": config_digest(config)} if config is not None else {}),
        **{k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in (attrs or {}).items()},
    }
    write_zarr(ds, path, attrs=provenance(config, seed, **extra))
    return ds


def _read_store(
    path: str | Path, dataset: str | None, dim: int | None, spec: dict[str, Any] | None = None
) -> xr.Dataset:
    ds = read_zarr(path)
    if "x" not in ds or ds["x"].ndim != 2:
        raise ValueError(f"{path}: not a dataset store (no variable 'x' of dims (sample, dim))")
    check_store(ds, path, dataset=dataset, dim=dim, spec=spec)
    return ds


def load_dataset(
    path: str | Path,
    dtype: torch.dtype = torch.float64,
    *,
    dataset: str | None = None,
    dim: int | None = None,
    spec: dict[str, Any] | None = None,
) -> Tensor:
    """The samples of a dataset store written by :func:`write_dataset`, shape (N, d).

    The store is read whole (:func:`dfcore.io.read_zarr`: every chunk present and intact), checked against
    itself and the caller's ``dataset``, ``dim`` and config entry ``spec`` (:func:`check_store`), and the samples
    must be finite: NaN or Inf raises ``ValueError`` naming the store."""
    ds = _read_store(path, dataset, dim, spec)
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


def store_dim(path: str | Path) -> int:
    """The dimension d of the samples (N, d) of a dataset store (the store is checked as by :func:`load_dataset`)."""
    return int(_read_store(path, None, None)["x"].shape[1])


def load_mixture(
    path: str | Path, *, dataset: str | None = None, dim: int | None = None, spec: dict[str, Any] | None = None
) -> Mixture:
    """The exact data distribution of a store: its Gaussian mixture if it has one, otherwise the
    Dirac mixture over its samples (the 'analytic' ground truth of Table 2). The store is checked as by
    :func:`load_dataset`, and the values it uses must be finite: NaN or Inf raises ``ValueError`` naming the
    store and the variable."""
    ds = _read_store(path, dataset, dim, spec)
    if "mixture_weights" in ds:
        check_finite(ds, ["mixture_weights", "mixture_means", "mixture_covs"], path)
        return GaussianMixture(
            torch.as_tensor(ds["mixture_weights"].values),
            torch.as_tensor(ds["mixture_means"].values),
            torch.as_tensor(ds["mixture_covs"].values),
        )
    check_finite(ds, ["x"], path)
    return DiracMixture(torch.as_tensor(ds["x"].values, dtype=torch.float64))
