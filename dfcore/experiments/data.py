"""The data stage: build one data set from its ``datasets`` config entry and write its Zarr store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from dfcore.data.datasets import make_dataset
from dfcore.data.store import write_dataset

__all__ = ["prepare_dataset"]


def prepare_dataset(name: str, spec: dict[str, Any] | None, out: str | Path) -> Tensor:
    """Build data set ``name`` from its config entry ``spec`` (None: not configured) and write it to ``out``."""
    if spec is None:
        raise ValueError(f"dataset {name!r} is not defined in the config's 'datasets' section")
    x, mixture, attrs = make_dataset(spec)
    write_dataset(out, x, name=name, mixture=mixture, attrs=attrs, config=spec, seed=spec.get("seed"))
    return x
