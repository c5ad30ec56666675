"""Atomic, provenance-stamped outputs: Zarr datasets (through xarray), CSV, text and checkpoints.

Every writer writes to a temporary sibling and renames it into place, so an interrupted job never
leaves a half-written file or store that a later run could take as done.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import xarray as xr

__all__ = [
    "git_revision",
    "provenance",
    "write_zarr",
    "save_figure",
    "read_zarr",
    "write_csv",
    "write_text",
    "save_checkpoint",
    "load_checkpoint",
]


def git_revision() -> str:
    """The current git commit (with ``-dirty`` if the tree has changes), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=here, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        return rev or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(config: dict[str, Any] | None = None, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """Attributes stamped on every output: config (as JSON), seed, git revision, torch version."""
    attrs: dict[str, Any] = {"git_revision": git_revision(), "torch_version": torch.__version__}
    if config is not None:
        attrs["config"] = json.dumps(config, sort_keys=True, default=str)
    if seed is not None:
        attrs["seed"] = int(seed)
    for key, value in extra.items():
        attrs[key] = value if isinstance(value, (int, float, str)) else json.dumps(value, default=str)
    return attrs


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    os.unlink(name)
    return Path(name)


def _replace(tmp: Path, path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        old = _tmp_sibling(path, ".old")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def write_zarr(ds: xr.Dataset, path: str | os.PathLike[str], attrs: dict[str, Any] | None = None) -> None:
    """Write ``ds`` to a Zarr store at ``path`` atomically (temporary store, then rename)."""
    path = Path(path)
    if attrs:
        ds = ds.assign_attrs(**attrs)
    tmp = _tmp_sibling(path)
    try:
        ds.to_zarr(tmp, mode="w", consolidated=True)
        _replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_zarr(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open a Zarr store written by :func:`write_zarr`, loading it into memory; clear error if missing or broken."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Zarr store not found: {path}")
    try:
        with xr.open_zarr(path, consolidated=True) as ds:
            return ds.load()
    except Exception as err:  # zarr raises many types for a damaged store
        raise ValueError(f"cannot read Zarr store {path} (corrupted or incomplete?): {err}") from err


def write_csv(df: pd.DataFrame, path: str | os.PathLike[str], **kwargs: Any) -> None:
    """Write a CSV atomically."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        df.to_csv(tmp, index=False, **kwargs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(text: str, path: str | os.PathLike[str]) -> None:
    """Write a text file atomically."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """``torch.save`` atomically. Keep ``state`` to tensors, numbers, strings, lists and dicts so
    that :func:`load_checkpoint` can read it with ``weights_only=True``."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 120) -> None:
    """Save a matplotlib figure atomically (temporary sibling, then rename; the format follows the
    suffix of ``path``) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
        _replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code execution)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot load checkpoint {path} (corrupted, or not a weights-only checkpoint): {err}") from err
