"""The workflow stage ``pretrained`` (config section ``pretrained``; rules ``pretrained_*``), one function per rule.

* :func:`run_model`: the in-project DDPM (:func:`dfcore.experiments.pretrained.train_model`) when
  ``pretrained.model`` is null.
* :func:`write_digits`: the digits split of the ``train`` settings as two folders of 8x8 grayscale PNGs (the
  training split whole, the first ``num_images`` held-out digits) when ``pretrained.images`` is null.
* :func:`run_trace`: the positive trace net (:func:`dfcore.experiments.pretrained_images.train_image_trace`).
* :func:`run_bpd`: bits/dim of every image under each trace method
  (:func:`dfcore.experiments.pretrained_images.image_likelihood`, the same dequantisation noise for every method),
  gathered into one table, a summary with DF-TM's out-of-bound trace counts, and a figure.

Every seed of the section is an offset added to the global ``seed``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from dfcore.fisher.trace import DFTMTrace
from dfcore.io import write_csv, write_text

__all__ = ["run_model", "write_digits", "run_trace", "run_bpd"]

log = logging.getLogger(__name__)


def _offset(section: dict[str, Any], seed: int) -> dict[str, Any]:
    """``section`` with its ``seed`` offset by the global ``seed``."""
    return {**section, "seed": int(section["seed"]) + int(seed)}


def run_model(train: dict[str, Any], out: str | Path, loss_csv: str | Path, *, seed: int = 0) -> Path:
    """Train the in-project DDPM with the ``train`` settings and write its pipeline folder ``out`` and loss curve."""
    from dfcore.experiments.pretrained import train_model

    return train_model(_offset(train, seed), out, loss_csv)


def _write_pngs(images: torch.Tensor, folder: Path) -> None:
    """uint8 ``images`` (N, 1, H, W) as ``image_00000.png``, ... in ``folder``, written to a sibling and swapped in."""
    from PIL import Image

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy(), mode="L").save(tmp / f"image_{i:05d}.png")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def write_digits(
    train: dict[str, Any], num_images: int, train_dir: str | Path, test_dir: str | Path, *, seed: int = 0
) -> None:
    """The digits split of the ``train`` settings (``holdout``, ``seed`` offset by ``seed``) as PNG folders: every
    training digit in ``train_dir``, the first ``num_images`` held-out digits in ``test_dir``."""
    from dfcore.experiments.pretrained import digits_uint8

    holdout, split_seed = float(train["holdout"]), int(train["seed"]) + int(seed)
    _write_pngs(digits_uint8("train", holdout, split_seed), Path(train_dir))
    _write_pngs(digits_uint8("test", holdout, split_seed)[: int(num_images)], Path(test_dir))


def run_trace(
    trace: dict[str, Any],
    model_dir: str | Path,
    images_dir: str | Path,
    out: str | Path,
    *,
    cond: str | Path | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> Path:
    """Train the positive trace net of ``model_dir`` on the images of ``images_dir`` into the folder ``out``."""
    from dfcore.experiments.pretrained_images import train_image_trace

    return train_image_trace(model_dir, images_dir, out, _offset(trace, seed), cond=cond, device=device)


def _method_summary(table: pd.DataFrame, record: dict[str, Any]) -> dict[str, Any]:
    """Mean bits/dim, seconds per image and (DF-TM) the trace net's out-of-bound counts of one method."""
    out: dict[str, Any] = {
        "bpd_mean": float(table["bpd"].mean()),
        "bpd_std": float(table["bpd"].std(ddof=0)),
        "seconds_per_image": float(table["seconds"].mean()),
    }
    if record["trace"] is not None:
        out["trace_counts"] = record["trace"]["counts"]
        out["trace_bounds"] = record["trace"]["bounds"]
    return out


def run_bpd(
    measure: dict[str, Any],
    model_dir: str | Path,
    images_dir: str | Path,
    trace_dir: str | Path | None,
    out_csv: str | Path,
    out_json: str | Path,
    out_png: str | Path,
    *,
    cond: str | Path | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Bits/dim of every image of ``images_dir`` under ``model_dir`` for each of ``measure["methods"]`` (dftm with
    the trace net of ``trace_dir``): ``out_csv`` (one row per image and method), ``out_json`` (the protocol and,
    per method, the mean bits/dim, seconds per image and DF-TM's out-of-bound trace counts) and the figure
    ``out_png``; returns the summary."""
    from dfcore.experiments.pretrained_images import image_likelihood
    from dfcore.plots import plot_image_bpd

    settings = {key: measure[key] for key in ("num_draws", "solver", "num_steps", "time_warp", "batch_size")}
    settings |= {"t_min": measure["t_min"], "dtype": measure["dtype"], "seed": int(measure["seed"]) + int(seed)}
    tables, methods = [], {}
    with tempfile.TemporaryDirectory(prefix=".bpd.", dir=Path(out_csv).parent) as tmp:
        for method in measure["methods"]:
            path = Path(tmp) / f"{method}.csv"
            dftm = method == DFTMTrace.name
            trace = trace_dir if dftm else None
            table = image_likelihood(
                model_dir,
                images_dir,
                method,
                path,
                trace_dir=trace,
                cond=cond,
                device=device,
                progress=False,
                anchors=int(measure["anchors"]) if dftm else 0,
                **settings,
            )
            tables.append(table)
            record = json.loads(path.with_suffix(".json").read_text())
            for name, rows in table.groupby("method", sort=False):
                methods[str(name)] = _method_summary(rows, record)
    frame = pd.concat(tables, ignore_index=True)
    protocol = settings | {key: frame[key].iloc[0] for key in ("dequantization", "t_min")}
    summary: dict[str, Any] = {
        "model": str(model_dir),
        "images": str(images_dir),
        "trace": None if trace_dir is None else str(trace_dir),
    }
    summary |= {"num_images": int(frame["image"].nunique()), "protocol": protocol, "methods": methods}
    write_csv(frame, out_csv)
    write_text(json.dumps(summary, indent=2, default=_plain), out_json)
    plot_image_bpd(frame, out_png)
    log.info("bits/dim of %d images, methods %s -> %s", summary["num_images"], list(methods), out_csv)
    return summary


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers in JSON."""
    return value.item() if hasattr(value, "item") else str(value)
