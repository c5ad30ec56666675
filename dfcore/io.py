"""Atomic, provenance-stamped outputs: Zarr datasets (through xarray), CSV, text and checkpoints.

Every writer writes to a temporary sibling and renames it into place, so an interrupted job never
leaves a half-written file or store that a later run could take as done. Zarr stores are written
with every chunk and a checksum per chunk, and :func:`read_zarr` refuses a store with a missing or
damaged chunk, naming the store and the array.

Artefacts carry what they are. A checkpoint holds a ``record`` (:func:`checkpoint_record`: kind, schedule spec,
dimension, image shape, data set where known, and the digest of the config section that made it), and a data
store the same in its attributes (:mod:`dfcore.data.store`). Every load can be told what the caller expects
(:func:`check_record`, :func:`expect_model`); a mismatch is a ``ValueError`` naming the file and both values.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
import zarr
from zarr.codecs import ZstdCodec
from zarr.errors import UnstableSpecificationWarning, ZarrUserWarning

__all__ = [
    "git_revision",
    "provenance",
    "write_zarr",
    "save_figure",
    "read_zarr",
    "check_zarr_chunks",
    "IncompleteStoreError",
    "check_finite",
    "write_csv",
    "write_text",
    "save_checkpoint",
    "load_checkpoint",
    "config_digest",
    "schedule_spec",
    "checkpoint_record",
    "check_record",
    "check_finite_weights",
    "checkpoint_errors",
    "expect_model",
]


def git_revision() -> str:
    """The current git commit (with ``-dirty`` if the tree has changes), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
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
    """Write ``ds`` to a Zarr store at ``path`` atomically (temporary store, then rename).

    Every chunk is written, also one that holds only the fill value, so that a chunk missing from the
    store always means damage (see :func:`check_zarr_chunks`). Every array is compressed with zstd with
    its content checksum on, so that a changed byte fails the read instead of changing a value.
    """
    path = Path(path)
    if attrs:
        ds = ds.assign_attrs(**attrs)
    ds = ds.copy(deep=False)  # the encodings below are set on the copy, not on the caller's variables
    for var in ds.variables.values():
        var.encoding = {**var.encoding, "compressors": (ZstdCodec(level=0, checksum=True),)}
    tmp = _tmp_sibling(path)
    try:
        with warnings.catch_warnings():
            # Harmless for these stores, which only zarr-python reads back (read_zarr, checksummed chunks): string
            # coordinates are fixed-length UTF-32, a dtype that the Zarr v3 spec does not define yet, and
            # consolidated metadata is zarr-python's extension of Zarr v3.
            warnings.filterwarnings("ignore", r"The data type \(FixedLengthUTF32", UnstableSpecificationWarning)
            warnings.filterwarnings("ignore", "Consolidated metadata is currently not part", ZarrUserWarning)
            ds.to_zarr(tmp, mode="w", consolidated=True, write_empty_chunks=True)
        _replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class IncompleteStoreError(ValueError):
    """A chunk of a Zarr store is missing; the message names the store, the array and the chunk."""


def _arrays(group: zarr.Group, prefix: str = "") -> Iterator[tuple[str, zarr.Array]]:
    """``(path inside the store, array)`` for every array of ``group`` and of its subgroups."""
    for name, member in group.members():
        if isinstance(member, zarr.Group):
            yield from _arrays(member, f"{prefix}{name}/")
        else:
            yield f"{prefix}{name}", member


def check_zarr_chunks(path: str | os.PathLike[str]) -> None:
    """Check that every array of the local Zarr store ``path`` has a file for every chunk of its chunk
    grid. Zarr reads a missing chunk as the fill value; this raises ``ValueError`` naming the store,
    the array and the first missing chunk key instead."""
    path = Path(path)
    for name, array in _arrays(zarr.open_group(path, mode="r")):
        grid = itertools.product(*(range(n) for n in array.cdata_shape))
        missing = [key for key in map(array.metadata.encode_chunk_key, grid) if not (path / name / key).is_file()]
        if missing:
            raise IncompleteStoreError(
                f"Zarr store {path}: array {name!r} is missing {len(missing)} of {array.nchunks} chunks "
                f"(first: {missing[0]}); the store is incomplete, rebuild it"
            )


def _unreadable_array(path: Path) -> str | None:
    """The name of the first array of the store ``path`` whose chunks do not decode, or None."""
    try:
        arrays = list(_arrays(zarr.open_group(path, mode="r")))
    except Exception:  # the metadata itself is unreadable: no array to name
        return None
    for name, array in arrays:
        try:
            array[...]
        except Exception:
            return name
    return None


def read_zarr(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open a Zarr store written by :func:`write_zarr` and load it into memory.

    Checked: the store exists (else ``FileNotFoundError``); every chunk of every array is present
    (:func:`check_zarr_chunks`); every chunk decodes and passes its checksum. A failed check raises
    a one-line ``ValueError`` naming the store and, where it can be told, the array."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Zarr store not found: {path}")
    try:
        check_zarr_chunks(path)
        with xr.open_zarr(path, consolidated=True) as ds:
            return ds.load()
    except IncompleteStoreError:
        raise
    except Exception as err:  # zarr raises many types for a damaged store
        bad = _unreadable_array(path)
        where = f", array {bad!r}" if bad is not None else ""
        detail = " ".join(str(err).split())
        raise ValueError(f"cannot read Zarr store {path}{where} (corrupted or incomplete?): {detail}") from err


def check_finite(ds: xr.Dataset, names: Iterable[str], path: str | os.PathLike[str]) -> None:
    """Check that the variables ``names`` of ``ds`` (read from the store ``path``) hold no NaN or Inf;
    otherwise raise ``ValueError`` naming the store, the variable, the count and the first bad index."""
    for name in names:
        values = np.asarray(ds[name].values)
        bad = ~np.isfinite(values)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"Zarr store {path}: {name!r} holds {int(bad.sum())} non-finite value(s) of {values.size}, "
                f"the first at index {first}"
            )


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


def config_digest(section: Any) -> str:
    """SHA-256 (first 16 hex digits) of a config section as canonical JSON (keys sorted): equal for equal values,
    whatever the order of the keys."""
    text = json.dumps(section, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def schedule_spec(schedule: Any) -> dict[str, Any]:
    """``{"name": ..., "params": {...}}`` of a schedule object, or the spec itself when given a mapping."""
    if isinstance(schedule, Mapping):
        return {"name": schedule["name"], "params": dict(schedule.get("params", {}))}
    return {"name": schedule.name, "params": dict(schedule.params())}


def checkpoint_record(state: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """What a checkpoint holds, derived from its ``model`` state (a denoiser, trace or classifier state) and its
    ``meta`` (the config section it was trained with), plus ``extra`` (e.g. ``dataset``)."""
    found = state.get("model", state)
    model: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    nested = model.get("denoiser")
    inner: Mapping[str, Any] = nested if isinstance(nested, Mapping) else model
    hparams = inner.get("hparams", {}) if isinstance(inner.get("hparams"), Mapping) else {}
    record: dict[str, Any] = {"kind": model.get("kind", state.get("kind"))}
    if isinstance(inner.get("schedule"), Mapping):
        record["schedule"] = schedule_spec(inner["schedule"])
    dim = hparams.get("dim", state.get("dim"))
    if dim is not None:
        record["dim"] = int(dim)
    if hparams.get("image_shape") is not None:
        record["image_shape"] = [int(v) for v in hparams["image_shape"]]
    meta = state.get("meta")
    if isinstance(meta, Mapping) and "config" in meta:
        record["config_digest"] = config_digest(meta["config"])
    record.update({k: v for k, v in extra.items() if v is not None})
    return {k: v for k, v in record.items() if v is not None}


def _comparable(key: str, value: Any) -> Any:
    if key == "schedule" and value is not None and not isinstance(value, (str, Mapping)):
        return schedule_spec(value)
    if key == "image_shape" and value is not None:
        return [int(v) for v in value]
    return value


def check_record(record: Mapping[str, Any], where: str, **expected: Any) -> None:
    """Check the artefact ``record`` (read from ``where``) against ``expected`` values (None: not checked; a key
    the record lacks, from an artefact written before it was recorded, is not checked either). A schedule may be
    given as an object or a spec. A mismatch raises ``ValueError`` naming ``where``, the key and both values."""
    for key, want in expected.items():
        if want is None or key not in record:
            continue
        have, want = _comparable(key, record[key]), _comparable(key, want)
        if key == "schedule" and isinstance(want, str):
            have = have["name"] if isinstance(have, Mapping) else have
        if have != want:
            raise ValueError(f"{where}: {key} is {have!r}, but {want!r} is expected here")


def _tensors(value: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _tensors(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{prefix}.{i}")


def check_finite_weights(state: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Raise ``ValueError`` "checkpoint FILE has non-finite weights in <param>" when a floating tensor of a
    ``state_dict`` (at any depth of ``state``) holds NaN or Inf."""
    for name, tensor in _tensors(state):
        if ".state_dict." not in f".{name}." and not name.startswith("state_dict."):
            continue
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            param = name.replace("state_dict.", "")
            raise ValueError(f"checkpoint {path} has non-finite weights in {param}")


@contextlib.contextmanager
def checkpoint_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an error while rebuilding a model from the checkpoint ``path`` (missing key, state-dict keys or shapes
    that do not match the architecture it names) into a ``ValueError`` that names the file."""
    try:
        yield
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"checkpoint {path}: {' '.join(str(err).split())}") from err
    except (RuntimeError, KeyError, TypeError) as err:
        detail = " ".join(str(err).split())
        raise ValueError(
            f"checkpoint {path} does not rebuild the model it describes (another architecture?): {detail}"
        ) from err


def expect_model(model: Any, path: str | os.PathLike[str], **expected: Any) -> Any:
    """Check a model loaded from ``path`` against what the caller uses it for and return it: ``schedule`` (object,
    spec or name), ``dim``, ``image_shape``, ``kind``. The model's schedule is its own (or its denoiser's), its
    dimension that of its hyper-parameters. A mismatch raises ``ValueError`` naming the file and both values."""
    inner = getattr(model, "denoiser", model)
    hparams = getattr(inner, "hparams", {}) or {}
    record: dict[str, Any] = {}
    if getattr(inner, "schedule", None) is not None:
        record["schedule"] = schedule_spec(inner.schedule)
    if "dim" in hparams:
        record["dim"] = int(hparams["dim"])
    if hparams.get("image_shape") is not None:
        record["image_shape"] = [int(v) for v in hparams["image_shape"]]
    check_record(record, f"checkpoint {path}", **expected)
    return model


def _plain(value: Any) -> Any:
    """``value`` with every mapping a plain ``dict`` (a dict subclass such as the workflow's canonical params
    would otherwise be pickled by its class, which ``weights_only`` loading refuses)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    return value


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str], **record: Any) -> None:
    """``torch.save`` atomically, with ``state["record"]`` = :func:`checkpoint_record` (``record``: further
    entries, e.g. ``dataset``). Keep ``state`` to tensors, numbers, strings, lists and dicts so that
    :func:`load_checkpoint` can read it with ``weights_only=True``."""
    path = Path(path)
    state = _plain({**state, "record": checkpoint_record(state, **record)})
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


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu", **expected: Any
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code execution). Its weights must be finite
    (:func:`check_finite_weights`), and its record must match ``expected`` (:func:`check_record`: ``kind``,
    ``schedule``, ``dim``, ``image_shape``, ``dataset``, ``config_digest``); else ``ValueError`` naming the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot load checkpoint {path} (corrupted, or not a weights-only checkpoint): {err}") from err
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, not a mapping")
    check_finite_weights(state, path)
    if expected:
        record = state.get("record")
        check_record(
            record if isinstance(record, Mapping) else checkpoint_record(state), f"checkpoint {path}", **expected
        )
    return state
