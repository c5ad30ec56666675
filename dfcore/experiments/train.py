r"""The train stage: denoiser and trace network (Alg. 1) of one (data set, schedule), checkpoint and loss CSV out.

The loop, the models and their losses are in :mod:`dfcore.train` and :mod:`dfcore.models`; this module
reads the data store, writes the final checkpoint (model state, step, losses, the config it was trained
with) and the loss curve.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from dfcore.data.store import dataset_attrs, image_shape, load_dataset, load_mixture
from dfcore.device import resolve_device
from dfcore.experiments.common import calibrate_on_subset, section_seed
from dfcore.io import expect_model, save_checkpoint, write_csv
from dfcore.mixtures import GaussianMixture, Mixture
from dfcore.models.networks import (
    TRACE_TARGETS,
    LearnedDenoiser,
    LearnedTraceModel,
    load_denoiser,
    training_states,
)
from dfcore.paths import PathStates
from dfcore.schedules import Schedule
from dfcore.train import OnPathStates, build_denoiser, build_trace_model, sigma_data, train_loop

log = logging.getLogger(__name__)

__all__ = ["train_denoiser", "train_trace", "run_training", "save_trained"]


def save_trained(
    model: Any,
    losses: list[float],
    out_path: str | Path,
    loss_csv: str | Path | None,
    meta: dict[str, Any],
    dataset: str | None = None,
    state: dict[str, Any] | None = None,
) -> None:
    """Save a trained ``model`` (its checkpoint entry ``state``, by default ``model.state()``) with its step count,
    losses and ``meta`` (the checkpoint records ``dataset``), and its loss curve as a CSV of step and loss when
    ``loss_csv`` is given."""
    save_checkpoint(
        {
            "model": model.state() if state is None else state,
            "step": len(losses),
            "losses": torch.tensor(losses, dtype=torch.float64),
            "meta": meta,
        },
        out_path,
        dataset=dataset,
    )
    if loss_csv is not None:
        write_csv(pd.DataFrame({"step": range(1, len(losses) + 1), "loss": losses}), loss_csv)


@dataclass(frozen=True)
class _Run:
    """Where a training run starts from and reports to."""

    seed: int
    resume_path: str | Path | None
    loss_csv: str | Path | None
    progress: bool
    on_step: Callable[[int], None] | None
    dataset: str | None


def _fit(
    model: LearnedDenoiser | LearnedTraceModel,
    data: Tensor,
    cfg: dict[str, Any],
    out_path: str | Path,
    run: _Run,
    desc: str,
    time_power: float = 1.0,
    ema_decay: float = 0.0,
    trainee: Any = None,
    finish: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """Train ``model`` on ``data`` with the section's optimiser keys (``time_power``, ``ema_decay``: see
    :func:`~dfcore.train.train_loop`), then save it with its losses. ``trainee`` is what the loop trains in its
    place, when ``model`` trains through an adapter (:class:`~dfcore.train.OnPathStates`); ``finish()``, when
    given, runs after training and before saving, and what it returns joins the checkpoint's metadata."""
    losses = train_loop(
        model if trainee is None else trainee,
        data.float(),
        steps=int(cfg["steps"]),
        batch_size=int(cfg["batch_size"]),
        lr=float(cfg["lr"]),
        warmup_steps=int(cfg["warmup_steps"]),
        t_min=float(cfg["t_min"]),
        checkpoint_every=int(cfg["checkpoint_every"]),
        seed=run.seed,
        resume_path=run.resume_path,
        progress=run.progress,
        desc=desc,
        on_step=run.on_step,
        time_power=time_power,
        ema_decay=ema_decay,
    )
    meta = {"seed": run.seed, "config": cfg} | (finish() if finish is not None else {})
    save_trained(model, losses, out_path, run.loss_csv, meta, run.dataset)


def train_denoiser(
    data: Tensor,
    schedule: Schedule,
    cfg: dict[str, Any],
    out_path: str | Path,
    *,
    image_shape: tuple[int, ...] | None = None,
    resume_path: str | Path | None = None,
    loss_csv: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    dataset: str | None = None,
) -> LearnedDenoiser:
    """Train a denoiser on ``data`` (N, d) with the ``denoiser`` config section (overrides merged); ``dataset``
    names the data set in the checkpoint's record."""
    arch = cfg["arch"]
    if arch == "auto":
        arch = "unet" if image_shape is not None else "mlp"
    dev = resolve_device(device)
    model = build_denoiser(
        arch,
        data.shape[1],
        schedule,
        sigma_data(data),
        backbone=cfg[arch],
        prediction=cfg["prediction"],
        image_shape=image_shape,
        seed=seed,
        device=dev,
    )
    _fit(model, data, cfg, out_path, _Run(seed, resume_path, loss_csv, progress, on_step, dataset), f"denoiser[{arch}]")
    return model


def train_trace(
    data: Tensor,
    denoiser: LearnedDenoiser,
    cfg: dict[str, Any],
    out_path: str | Path,
    *,
    resume_path: str | Path | None = None,
    loss_csv: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    reference: Mixture | None = None,
    dataset: str | None = None,
) -> LearnedTraceModel:
    """Train a trace network (Alg. 1) for a trained, frozen ``denoiser`` with the ``trace_net`` section
    (``reference``: see :func:`dfcore.train.build_trace_model`); with ``ema_decay`` > 0 the saved network is the
    moving average of its weights. ``states: ode`` trains a net whose target reads no x0 (``divergence``) on the
    states of likelihood solves (:class:`~dfcore.train.OnPathStates`); a target that reads x0 trains on noised
    data whatever ``states`` says."""
    model = build_trace_model(
        denoiser,
        target=cfg["target"],
        share_trunk=bool(cfg["share_trunk"]),
        head_hidden=int(cfg["head_hidden"]),
        backbone=cfg["backbone"],
        seed=seed,
        data=data,
        reference=reference,
        divergence_probes=int(cfg["divergence_probes"]),
        divergence_exact_max_dim=int(cfg["divergence_exact_max_dim"]),
        parameterization=str(cfg["parameterization"]),
    )
    run = _Run(seed, resume_path, loss_csv, progress, on_step, dataset)
    trainee: LearnedTraceModel | OnPathStates = model
    if training_states(model.target, cfg.get("states", "noised")) == "ode":
        steps = int(cfg.get("ode_num_steps", 20))
        paths = PathStates(denoiser, data, torch.Generator(), t_min=float(cfg["t_min"]), num_steps=steps)
        trainee = OnPathStates(model, paths)
    _fit(
        model,
        data,
        cfg,
        out_path,
        run,
        "trace_net",
        time_power=float(cfg["time_power"]),
        ema_decay=float(cfg["ema_decay"]),
        trainee=trainee,
        finish=(lambda: {"calibration": _calibrate(model, data, cfg, seed)}) if cfg.get("calibration_images") else None,
    )
    return model


def _calibrate(model: LearnedTraceModel, data: Tensor, cfg: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """Calibrate the trained ``model`` on the likelihood paths of ``cfg["calibration_images"]`` training points
    drawn with ``seed`` + 1 (:func:`~dfcore.experiments.common.calibrate_on_subset`); log and return the per-bin
    table."""
    records, count, seconds = calibrate_on_subset(model, data, cfg, t_min=float(cfg["t_min"]), seed=int(seed) + 1)
    table = pd.DataFrame(records).to_string(index=False, float_format="%.4g")
    log.info("calibrated on the paths of %d points in %.1f s:\n%s", count, seconds, table)
    return records


def run_training(
    kind: str,
    section: dict[str, Any],
    data_path: str | Path,
    out: str | Path,
    *,
    schedule: Schedule | None = None,
    denoiser_path: str | Path | None = None,
    loss_csv: str | Path | None = None,
    resume_path: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> Any:
    """The train stage: ``kind`` = ``denoiser`` (needs ``schedule``) or ``trace`` (needs ``denoiser_path``; the
    schedule comes with the denoiser). ``section`` is the ``denoiser`` or ``trace_net`` config section as the
    data set sees it (its ``overrides`` entry merged in, :func:`dfcore.config.dataset_section`)."""
    data = load_dataset(data_path)
    dataset = dataset_attrs(data_path).get("dataset")
    seed = section_seed(seed, section)
    if kind == "denoiser":
        if schedule is None:
            raise ValueError("training a denoiser needs its schedule")
        return train_denoiser(
            data,
            schedule,
            section,
            out,
            image_shape=image_shape(data_path),
            resume_path=resume_path,
            loss_csv=loss_csv,
            seed=seed,
            device=device,
            progress=progress,
            dataset=dataset,
        )
    if kind == "trace":
        if denoiser_path is None:
            raise ValueError("training a trace network needs the trained denoiser (denoiser_path)")
        den = expect_model(
            load_denoiser(denoiser_path, resolve_device(device), dataset=dataset), denoiser_path, dim=data.shape[1]
        )
        return train_trace(
            data,
            den,
            section,
            out,
            resume_path=resume_path,
            loss_csv=loss_csv,
            seed=seed,
            progress=progress,
            reference=_exact_reference(str(section["target"]), data_path),
            dataset=dataset,
        )
    raise ValueError(f"unknown training kind {kind!r}; choose 'denoiser' or 'trace'")


def _exact_reference(target: str, data_path: str | Path) -> GaussianMixture | None:
    """The data set's exact Gaussian mixture when ``target`` regresses onto it (``mixture_posterior``, an
    ablation: real data never offers it), else None."""
    if TRACE_TARGETS[target].reference != "exact_mixture":
        return None
    reference = load_mixture(data_path)
    if not isinstance(reference, GaussianMixture):
        raise ValueError(f"{data_path}: trace target {target!r} needs a Gaussian-mixture data set")
    return reference
