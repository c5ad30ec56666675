r"""Bits/dim of an image folder under a user's diffusers pipeline folder, and its trace net (DF-TM).

* :func:`read_images`: the PNG/JPEG files of a folder, in file-name order, as uint8 (N, C, H, W) in the model's
  channel count (grayscale or RGB conversion by PIL); an image of another size than the model's sample size is
  refused, not resized.
* :func:`image_likelihood`: uniform dequantisation of the images (one generator seeded ``seed`` over all files in
  order, ``num_draws`` draws each, :func:`dfcore.dequantize.dequantize_images`), then
  :func:`dfcore.integrations.pretrained_likelihood.model_log_likelihood` from ``t_min`` (default 1/T) to 1 with the prior
  :math:`\mathcal N(0, \sigma_1^2 I)`, and bits/dim on the [0, 256) scale per image
  (:func:`dfcore.dequantize.image_bits_per_dim`). Writes a CSV with one row per image and a JSON record.
* :func:`train_image_trace`: :func:`dfcore.experiments.pretrained.train_trace` on the image folder.

A ``UNet2DConditionModel`` is conditioned on fixed encoder hidden states: a tensor file (``cond``, shape
(1, L, D) or (L, D)) or, by default, zeros of shape (1, 1, ``cross_attention_dim``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from dfcore.dequantize import dequantize_images, image_bits_per_dim
from dfcore.device import resolve_device, resolve_dtype
from dfcore.fisher.trace import DFTMTrace, HutchinsonTrace, VJPTrace
from dfcore.integrations.pretrained import PretrainedModel, check_model_dir, load_model
from dfcore.integrations.pretrained_likelihood import check_pixel_space
from dfcore.io import write_csv, write_text
from dfcore.models.base import TraceModel

__all__ = ["IMAGE_SUFFIXES", "METHODS", "read_images", "load_for_images", "image_likelihood", "train_image_trace"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
METHODS = (VJPTrace.name, HutchinsonTrace.name, DFTMTrace.name)
_MODES = {1: "L", 3: "RGB"}


def read_images(folder: str | Path, shape: Sequence[int]) -> tuple[list[str], Tensor]:
    """The file names and uint8 pixels (N, C, H, W) of the PNG/JPEG files of ``folder`` (sorted by name), converted
    to C channels (grayscale for 1, RGB for 3). A file whose size is not (H, W) raises a ValueError naming it and
    both sizes."""
    from PIL import Image

    folder = Path(folder)
    channels, height, width = (int(v) for v in shape)
    if channels not in _MODES:
        raise ValueError(f"the model takes {channels} channels; images can be read for 1 (grayscale) or 3 (RGB)")
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"image folder {str(folder)!r} has no PNG or JPEG files")
    arrays = []
    for path in files:
        with Image.open(path) as img:
            if img.size != (width, height):
                raise ValueError(
                    f"{path}: image size {img.size[0]}x{img.size[1]} (width x height) differs from the model's "
                    f"sample size {width}x{height}; resize the images first"
                )
            pixels = torch.frombuffer(bytearray(img.convert(_MODES[channels]).tobytes()), dtype=torch.uint8)
        arrays.append(pixels.reshape(height, width, channels).permute(2, 0, 1))
    return [p.name for p in files], torch.stack(arrays)


def _conditioning(folder: Path, cond: str | Path | None, dtype: torch.dtype) -> Tensor | None:
    """Encoder hidden states (1, L, D) for a conditional UNet of ``folder`` (zeros (1, 1, D) without ``cond``),
    None for an unconditional one."""
    config = json.loads((folder / "unet" / "config.json").read_text())
    dim = config.get("cross_attention_dim")
    if dim is None:
        if cond is not None:
            raise ValueError(f"{folder}/unet takes no conditioning; drop the conditioning file {cond}")
        return None
    if cond is None:
        return torch.zeros(1, 1, int(dim), dtype=dtype)
    states = torch.load(cond, map_location="cpu", weights_only=True)
    if not isinstance(states, Tensor) or states.dim() not in (2, 3) or states.shape[-1] != int(dim):
        got = tuple(states.shape) if isinstance(states, Tensor) else type(states).__name__
        raise ValueError(f"{cond}: conditioning must be a tensor (1, L, {dim}) or (L, {dim}); got {got}")
    return (states if states.dim() == 3 else states[None]).to(dtype)


def load_for_images(
    model_dir: str | Path, *, cond: str | Path | None = None, device: str | torch.device = "cpu", dtype: str = "float32"
) -> PretrainedModel:
    """:func:`~dfcore.integrations.pretrained.load_model` of a pixel-space pipeline folder, conditional UNets on
    the conditioning of the module docstring; a latent pipeline (``vae/``) is refused."""
    folder = Path(model_dir)
    parts = check_model_dir(folder)
    check_pixel_space(folder, "vae" in parts)
    torch_dtype = resolve_dtype(dtype)
    states = _conditioning(folder, cond, torch_dtype)
    return load_model(folder, device=resolve_device(device), dtype=torch_dtype, cond=states)


def _check_method(method: str, trace_dir: str | Path | None) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    if method == DFTMTrace.name and trace_dir is None:
        raise ValueError(f"method {method!r} needs a trace net folder (--trace DIR, written by train-trace)")
    if method != DFTMTrace.name and trace_dir is not None:
        raise ValueError(f"a trace net folder is used by method {DFTMTrace.name!r} only; got it with {method!r}")
    if trace_dir is not None and not (Path(trace_dir) / "trace.json").is_file():
        raise FileNotFoundError(f"trace net folder {str(trace_dir)!r} has no trace.json (write it with train-trace)")


def _solve(
    model: PretrainedModel,
    x: Tensor,
    method: str,
    trace: TraceModel | None,
    settings: dict[str, Any],
    *,
    seed: int,
    batch_size: int,
    progress: bool,
    anchors: int = 0,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Per row name (:func:`~dfcore.experiments.pretrained.method_solves`), log q at t_min of every row of ``x`` (batches of ``batch_size``,
    Hutchinson probes seeded ``seed + 1 +`` the batch's first row) and the wall time of each row (its batch's time
    divided among its rows), with a progress bar over the rows."""
    from dfcore.experiments.pretrained import method_solves

    if batch_size < 1:
        raise ValueError(f"batch size must be positive; got {batch_size}")
    param = next(model.unet.parameters())
    out: dict[str, tuple[Tensor, Tensor]] = {}
    with tqdm(total=len(x), desc=f"{method} bits/dim", unit="draw", disable=not progress) as bar:
        for start in range(0, len(x), batch_size):
            rows = slice(start, min(start + batch_size, len(x)))
            batch = x[rows].to(device=param.device, dtype=param.dtype)
            results = method_solves(
                model, batch, method, trace=trace, anchors=anchors, seed=int(seed) + 1 + start, **settings
            )
            for name, (log_q, _, seconds) in results.items():
                if name not in out:
                    out[name] = (torch.empty(len(x), dtype=torch.float64), torch.empty(len(x), dtype=torch.float64))
                out[name][0][rows] = log_q.detach().to("cpu", torch.float64)
                out[name][1][rows] = seconds / (rows.stop - rows.start)
            bar.update(rows.stop - rows.start)
    return out


def image_likelihood(
    model_dir: str | Path,
    images_dir: str | Path,
    method: str,
    out: str | Path,
    *,
    trace_dir: str | Path | None = None,
    cond: str | Path | None = None,
    t_min: float | None = None,
    num_draws: int = 1,
    solver: str = "rk4",
    num_steps: int = 20,
    time_warp: str = "log",
    batch_size: int = 8,
    dtype: str = "float32",
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    anchors: int = 0,
) -> pd.DataFrame:
    """Bits/dim on the [0, 256) scale of every image of ``images_dir`` under the model of ``model_dir`` with trace
    ``method`` (module docstring). Writes ``out`` (CSV: ``image``, ``method``, ``bpd``, ``seconds`` (the
    solve time of the image's batches divided among its rows), ``dequantization``, ``num_draws``, ``t_min``,
    ``solver``, ``num_steps``, ``time_warp``, ``seed``, ``anchors``) and ``out`` with suffix ``.json`` (the same
    protocol, the folders, and for dftm the counts of the trace net's out-of-bound evaluations); returns the table.
    For dftm, ``anchors`` > 0 adds the rows ``dftm_anchored`` from the same solves, rescaled per image by the
    model's exact trace at that many steps (:mod:`dfcore.anchors`; fixed-step solvers)."""
    from dfcore.experiments.pretrained import load_trace

    _check_method(method, trace_dir)
    if anchors < 0 or (anchors > 0 and method != DFTMTrace.name):
        raise ValueError(f"anchors takes a count >= 0 and is read by method {DFTMTrace.name!r} only; got {method!r}")
    model = load_for_images(model_dir, cond=cond, device=device, dtype=dtype)
    names, images = read_images(images_dir, model.sample_shape)
    t_min = 1.0 / model.schedule.num_steps if t_min is None else float(t_min)
    deq = dequantize_images(images, torch.Generator().manual_seed(int(seed)), int(num_draws))
    trace = load_trace(trace_dir, model) if trace_dir is not None else None
    solve = {"t_min": t_min, "solver": solver, "num_steps": num_steps, "time_warp": time_warp}
    solved = _solve(
        model, deq.x, method, trace, solve, seed=seed, batch_size=batch_size, progress=progress, anchors=anchors
    )
    tables = []
    for name, (log_q, seconds) in solved.items():
        bpd = image_bits_per_dim(log_q, deq, t_min)
        wall = seconds.reshape(deq.num_draws, -1).sum(0)
        tables.append(pd.DataFrame({"image": names, "method": name, "bpd": bpd.bpd.numpy(), "seconds": wall.numpy()}))
    protocol = {
        "dequantization": bpd.dequantization,
        "num_draws": bpd.num_draws,
        "t_min": t_min,
        "solver": solver,
        "num_steps": num_steps,
        "time_warp": time_warp,
        "seed": int(seed),
        "anchors": int(anchors),
    }
    table = pd.concat(tables, ignore_index=True).assign(**protocol)
    write_csv(table, out)
    record: dict[str, Any] = {"model": str(model_dir), "images": str(images_dir), "method": method} | protocol
    means = table.groupby("method")["bpd"].mean()
    record |= {"dim": bpd.dim, "mean_bits_per_dim": float(means[method]), "trace": None}
    if len(means) > 1:
        record["mean_bits_per_dim_by_method"] = {str(k): float(v) for k, v in means.items()}
    if trace is not None:
        bound = {"lower": "tr F above d/sigma^2 (V < 0)", "upper": "V above d w^2/4 (data box of width w)"}
        record["trace"] = {"folder": str(trace_dir), "counts": dict(trace.counts), "bounds": bound}
    write_text(json.dumps(record, indent=2), Path(out).with_suffix(".json"))
    log.info("%s: %.4f bits/dim over %d images -> %s", method, float(means[method]), len(names), out)
    return table


def train_image_trace(
    model_dir: str | Path,
    images_dir: str | Path,
    out: str | Path,
    section: dict[str, Any] | None = None,
    *,
    cond: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> Path:
    """Train the positive trace net of ``model_dir`` on the images of ``images_dir`` (``section``: the ``trace``
    settings of :data:`dfcore.experiments.pretrained.DEFAULTS`) and write it to the folder ``out``
    (:func:`~dfcore.experiments.pretrained.train_trace`, which under ``torchrun`` trains on every rank and writes
    on rank 0); float32, on ``device``."""
    from dfcore.experiments.pretrained import train_trace

    model = load_for_images(model_dir, cond=cond, device=device)
    images = read_images(images_dir, model.sample_shape)[1]
    return train_trace(model_dir, out, section, images, model=model, record={"images": str(images_dir)})
