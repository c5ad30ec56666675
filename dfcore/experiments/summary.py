"""Run summary: one row per final output of the workflow, with a content digest and its provenance.

The table answers "what did this run produce, from which code and seed?" at a glance, and its
digests make reproducibility checkable: two runs with the same seed on the CPU give the same
``digest`` for every output that holds no wall-clock timings. For a Zarr store the digest covers
the values of every data variable and coordinate (names, dims, dtype, bytes) and not the attributes,
so provenance stamps (git revision, timings) do not change it; for any other file it is the SHA-256
of its bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dfcore.io import read_zarr, write_csv

__all__ = ["COLUMNS", "output_digest", "summarize_outputs", "write_summary"]

COLUMNS = ["path", "kind", "bytes", "digest", "variables", "git_revision", "seed"]


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _zarr_digest(path: Path) -> tuple[str, list[str], dict[str, Any]]:
    ds = read_zarr(path)
    h = hashlib.sha256()
    names = sorted(map(str, ds.variables))
    for name in names:
        var = ds.variables[name]
        values = np.ascontiguousarray(var.values)
        h.update(f"{name}|{','.join(map(str, var.dims))}|{values.dtype.str}|{values.shape}|".encode())
        if values.dtype.kind in "OUS":
            h.update("\x1f".join(map(str, values.ravel().tolist())).encode())
        else:
            h.update(values.tobytes())
    return h.hexdigest(), sorted(map(str, ds.data_vars)), dict(ds.attrs)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def output_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of an output's content: of a Zarr store's variables (not attrs), or of a file's bytes."""
    path = Path(path)
    if path.is_dir() and (path.suffix == ".zarr" or (path / "zarr.json").exists() or (path / ".zgroup").exists()):
        return _zarr_digest(path)[0]
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(p.relative_to(path)).encode() + b"\0" + _file_digest(p).encode())
        return h.hexdigest()
    return _file_digest(path)


def summarize_outputs(
    paths: Iterable[str | os.PathLike[str]], root: str | os.PathLike[str] | None = None
) -> pd.DataFrame:
    """One row per output: path (relative to ``root``), kind, size in bytes, digest, and for Zarr
    stores the data variables and the ``git_revision``/``seed`` provenance attributes.

    A missing or unreadable output raises (FileNotFoundError / ValueError naming the path)."""
    rows = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"output not found: {path}")
        kind = path.suffix.lstrip(".") or ("dir" if path.is_dir() else "file")
        variables: list[str] = []
        attrs: dict[str, Any] = {}
        if kind == "zarr":
            digest, variables, attrs = _zarr_digest(path)
        else:
            digest = output_digest(path)
        rel = os.path.relpath(path, root) if root is not None else str(path)
        rows.append(
            {
                "path": rel,
                "kind": kind,
                "bytes": _size(path),
                "digest": digest,
                "variables": " ".join(variables),
                "git_revision": attrs.get("git_revision", ""),
                "seed": attrs.get("seed", ""),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS).sort_values("path", kind="stable").reset_index(drop=True)


def write_summary(
    paths: Iterable[str | os.PathLike[str]], output: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> pd.DataFrame:
    """:func:`summarize_outputs`, written atomically as CSV to ``output``."""
    table = summarize_outputs(paths, root=root)
    write_csv(table, output)
    return table
