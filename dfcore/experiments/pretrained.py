r"""The in-project diffusers model and its likelihood measurement (config in, files out).

* :func:`train_model`: a small ``UNet2DModel`` DDPM (``DDPMScheduler``, ε prediction) trained on the training
  split of scikit-learn's 8x8 digits as 8-bit images (:func:`digits_uint8`), written with ``save_pretrained``
  as a ``DDPMPipeline`` folder, with its loss curve.
* :func:`convert_model`: the same model as an exactly equivalent ``v_prediction`` or ``sample`` folder.
* :func:`measure`: bits/dim on the [0, 256) scale with uniform dequantisation (:mod:`dfcore.dequantize`) of
  held-out digits for each trace method, through :func:`dfcore.likelihood.log_likelihood` with the adapter of
  :mod:`dfcore.integrations.pretrained`; the ODE evaluations and the error of each solver setting against a
  tight-tolerance reference; the three prediction types' agreement.

The digits hold values 0..16; as 8-bit images they are :math:`k = \mathrm{round}(255 v/16)`.

Run as ``python -m dfcore.experiments.pretrained train|convert|measure ...`` (``--help``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from dfcore import distributed
from dfcore.data.datasets import labelled_digits, split_digits
from dfcore.dequantize import dequantize_images, image_bits_per_dim
from dfcore.experiments.common import calibrate_on_subset
from dfcore.fisher.trace import DFTMTrace, HutchinsonTrace, VJPTrace
from dfcore.integrations.pretrained import (
    PositiveTraceModel,
    PretrainedModel,
    load_model,
)
from dfcore.integrations.pretrained_likelihood import model_anchored_log_likelihood, model_log_likelihood
from dfcore.io import write_csv, write_text
from dfcore.models.base import TraceModel
from dfcore.models.trace_output import calibration_from_lists, calibration_to_lists

__all__ = [
    "DEFAULTS",
    "digits_uint8",
    "split_of",
    "train_model",
    "convert_model",
    "train_trace",
    "load_trace",
    "measure",
    "main",
]

log = logging.getLogger(__name__)

# The trace estimators this module names (their registry names, dfcore.fisher.TRACE_ESTIMATORS).
VJP, HUTCHINSON, DFTM = VJPTrace.name, HutchinsonTrace.name, DFTMTrace.name
DFTM_ANCHORED = f"{DFTM}_anchored"  # the dftm row rescaled by exact anchors (measure key anchors)


def _schema_defaults(name: str) -> dict[str, Any]:
    """The defaults of config section ``pretrained.<name>`` (``train``, ``trace``, ``measure``), read from the
    config schema, their one home."""
    from dfcore.config import SCHEMA_PATH, load_yaml

    props = load_yaml(SCHEMA_PATH)["properties"]["pretrained"]["properties"][name]["properties"]
    return {key: sub["default"] for key, sub in props.items()}


_MEASURE = _schema_defaults("measure")

DEFAULTS: dict[str, Any] = {
    "train": _schema_defaults("train"),
    "trace": _schema_defaults("trace"),
    # measure(): the workflow's solver keys; its own trace folder, solver study and methods (no trace net unless asked)
    "measure": {
        **{key: _MEASURE[key] for key in ("num_images", "num_draws", "solver", "num_steps", "time_warp")},
        "trace_dir": None,
        "methods": [VJP, HUTCHINSON],
        "solver_study": {
            "method": HUTCHINSON,
            "reference": {"solver": "rk4", "num_steps": 320, "time_warp": "log"},
            "settings": [{"solver": "rk4", "num_steps": n, "time_warp": "log"} for n in (10, 20, 40, 80, 160)]
            + [
                {"solver": "rk4", "num_steps": 100, "time_warp": "none"},
                {"solver": "dopri5", "rtol": 1e-3, "atol": 1e-3, "time_warp": "log"},
                {"solver": "dopri5", "rtol": 1e-5, "atol": 1e-5, "time_warp": "log"},
                {"solver": "dopri5", "rtol": 1e-5, "atol": 1e-5, "time_warp": "none"},
            ],
        },
        "dtype": _MEASURE["dtype"],
        "seed": _MEASURE["seed"],
        "anchors": _MEASURE["anchors"],
    },
}


def _merged(section: dict[str, Any] | None, defaults: dict[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    for key, value in (section or {}).items():
        if key not in defaults:
            raise ValueError(f"unknown pretrained config key {key!r}; choose one of {sorted(defaults)}")
        out[key] = value
    return out


def digits_uint8(split: str, holdout: float = 0.1, seed: int = 0) -> Tensor:
    """One side of the seeded digits split (:func:`dfcore.data.datasets.split_digits`) as uint8 images (N, 1, 8, 8),
    :math:`k = \\mathrm{round}(255 v / 16)` for the pixel values v = 0..16."""
    x = split_digits(labelled_digits()[0], holdout, split, seed)
    values = (x + 1.0) * 8.0  # back to 0..16
    return torch.round(values * 255.0 / 16.0).clamp(0, 255).to(torch.uint8).reshape(-1, 1, 8, 8)


def _save_atomically(unet: Any, scheduler: Any, out: Path) -> None:
    """``unet/`` and ``scheduler/`` by ``save_pretrained`` (and a ``DDPMPipeline`` ``model_index.json`` when both are
    diffusers classes) into a sibling folder, then swap it in."""
    import diffusers

    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    unet.save_pretrained(str(tmp / "unet"))
    scheduler.save_pretrained(str(tmp / "scheduler"))
    names = {"unet": type(unet).__name__, "scheduler": type(scheduler).__name__}
    if all(hasattr(diffusers, name) for name in names.values()):
        index: dict[str, Any] = {"_class_name": "DDPMPipeline", "_diffusers_version": diffusers.__version__}
        index |= {key: ["diffusers", name] for key, name in names.items()}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    old = out.parent / f".{out.name}.old{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def train_model(section: dict[str, Any] | None, out: str | Path, loss_csv: str | Path | None = None) -> Path:
    """Train the in-project DDPM with the ``train`` settings (defaults :data:`DEFAULTS`) and write it as a
    ``DDPMPipeline`` folder ``out`` (``unet/``, ``scheduler/``, ``model_index.json``) and the loss curve."""
    from dfcore.integrations.pretrained_train import build_unet, ddpm_scheduler, train_ddpm

    cfg = _merged(section, DEFAULTS["train"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    images = digits_uint8("train", float(cfg["holdout"]), int(cfg["seed"]))
    unet = build_unet(
        (1, 8, 8),
        cfg["block_out_channels"],
        int(cfg["layers_per_block"]),
        int(cfg["norm_num_groups"]),
        int(cfg["seed"]),
    )
    scheduler = ddpm_scheduler(int(cfg["num_train_timesteps"]), str(cfg["prediction_type"]))
    start = time.perf_counter()
    losses = train_ddpm(
        unet,
        scheduler,
        images,
        steps=int(cfg["steps"]),
        batch_size=int(cfg["batch_size"]),
        lr=float(cfg["lr"]),
        warmup_steps=int(cfg["warmup_steps"]),
        seed=int(cfg["seed"]),
        ema_decay=float(cfg["ema_decay"]),
    )
    seconds = time.perf_counter() - start
    if distributed.is_main():  # under a process group of world size > 1, rank 0 writes while the others wait
        _save_atomically(unet, scheduler, out)
        meta = {"train": cfg, "seconds": seconds, "num_images": len(images)}
        write_text(json.dumps(meta, indent=2), out / "dfcore.json")
        if loss_csv is not None:
            write_csv(pd.DataFrame({"step": range(1, len(losses) + 1), "loss": losses}), loss_csv)
        log.info("trained %s in %.0f s (final loss %.4f)", out, seconds, losses[-1])
    distributed.barrier()
    return out


def convert_model(src: str | Path, out: str | Path, prediction_type: str) -> Path:
    """Write the ε model folder ``src`` as the exactly equivalent ``prediction_type`` folder ``out``."""
    from dfcore.integrations.pretrained_train import convert_prediction_type

    model = load_model(src)
    unet, scheduler = convert_prediction_type(model.unet, model.scheduler, prediction_type)
    _save_atomically(unet, scheduler, Path(out))
    return Path(out)


def _data_stats(images: Tensor) -> tuple[Tensor, float]:
    """Mean image and mean per-coordinate variance of uint8 ``images`` on the [-1, 1] model scale, dequantised
    (the uniform noise adds 1/(12 * 127.5^2) to each variance)."""
    x = images.to(torch.float64) / 127.5 - 1.0 + 0.5 / 127.5
    return x.mean(0), float(x.var(0).mean()) + 1.0 / (12 * 127.5**2)


BOX_WIDTH = 256.0 / 127.5  # dequantised data fill [-1, 1 + 1/127.5) on the model scale


def train_trace(
    model_dir: str | Path,
    out: str | Path,
    section: dict[str, Any] | None = None,
    images: Tensor | None = None,
    *,
    model: PretrainedModel | None = None,
    record: dict[str, Any] | None = None,
) -> Path:
    """Train a :class:`PositiveTraceModel` on the model of ``model_dir`` by Alg. 1 on uint8 ``images`` (N, C, H, W)
    (default: the model's training digits) and write its network with ``save_pretrained`` to ``out/unet``, with
    ``out/trace.json`` (settings, sigma_data, the box width, t_min, time, the number of processes, and ``record``)
    and ``out/loss.csv``. ``model`` is the already loaded ``model_dir`` (a conditional UNet needs its conditioning);
    the trace net trains on the device of its UNet. Under a process group of world size > 1
    (:mod:`dfcore.distributed`) the ranks train together and rank 0 alone writes, the others waiting for it."""
    from dfcore.integrations.pretrained_train import build_trace_unet, train_trace_model

    cfg = _merged(section, DEFAULTS["trace"])
    out = Path(out)
    model = load_model(model_dir) if model is None else model
    if images is None:
        holdout, split_seed = split_of(Path(model_dir))
        images = digits_uint8("train", holdout, split_seed)
    sigma_data = math.sqrt(_data_stats(images)[1])
    unet = build_trace_unet(
        model.sample_shape,
        cfg["block_out_channels"],
        int(cfg["norm_num_groups"]),
        int(cfg["seed"]),
        bool(cfg["denoiser_input"]),
    )
    unet = unet.to(device=next(model.unet.parameters()).device)
    if cfg["init"] is not None:
        _load_trace_weights(unet, Path(cfg["init"]))
    trace = PositiveTraceModel(
        unet,
        model.denoiser,
        sigma_data,
        BOX_WIDTH,
        str(cfg["target"]),
        int(cfg["divergence_probes"]),
        int(cfg["divergence_exact_max_dim"]),
        bool(cfg["likelihood_weight"]),
        str(cfg["parameterization"]),
        bool(cfg["denoiser_input"]),
    )
    t_min = 1.0 / model.schedule.num_steps
    start = time.perf_counter()
    losses = train_trace_model(
        trace,
        images,
        steps=int(cfg["steps"]),
        t_min=t_min,
        batch_size=int(cfg["batch_size"]),
        lr=float(cfg["lr"]),
        warmup_steps=int(cfg["warmup_steps"]),
        seed=int(cfg["seed"]),
        ema_decay=float(cfg["ema_decay"]),
        states=str(cfg["states"]),
        ode_num_steps=int(cfg["ode_num_steps"]),
    )
    seconds = time.perf_counter() - start
    if distributed.is_main():
        meta = {"trace": cfg, "sigma_data": sigma_data, "box_width": BOX_WIDTH, "t_min": t_min, "seconds": seconds}
        meta |= {"model_dir": str(model_dir), "num_images": len(images), "processes": distributed.world_size()}
        bins = _calibrate(trace, images, cfg, t_min, meta) if int(cfg["calibration_images"]) > 0 else None
        _write_trace(unet, meta | (record or {}), losses, out, bins)
    distributed.barrier()
    return out


def _trace_unet(trace_dir: Path, dtype: torch.dtype | None = None) -> Any:
    """The network of the trace folder ``trace_dir`` (``unet/`` from :func:`train_trace`), in ``dtype``."""
    from diffusers import UNet2DModel

    return UNet2DModel.from_pretrained(str(trace_dir / "unet"), local_files_only=True, dtype=dtype)


def _load_trace_weights(unet: Any, trace_dir: Path) -> None:
    """Copy the network of the trace folder ``trace_dir`` (from :func:`train_trace`) into ``unet``; ValueError
    when the folder is missing or its architecture differs from ``unet``'s."""
    if not (trace_dir / "unet").is_dir():
        raise ValueError(f"init: {trace_dir} holds no trace net (expected {trace_dir}/unet from train-trace)")
    source = _trace_unet(trace_dir)
    try:
        unet.load_state_dict(source.state_dict())
    except RuntimeError as err:
        raise ValueError(f"init: the trace net of {trace_dir} has another architecture than this one: {err}") from err


def _calibrate(
    trace: PositiveTraceModel, images: Tensor, cfg: dict[str, Any], t_min: float, meta: dict[str, Any]
) -> pd.DataFrame:
    """Calibrate ``trace`` on the likelihood paths of ``cfg["calibration_images"]`` of the uint8 ``images`` (drawn
    with the trace seed, dequantised; :func:`~dfcore.experiments.common.calibrate_on_subset`), record the
    table and the time under ``meta["calibration"]``, and return the per-bin records."""
    from dfcore.dequantize import dequantize

    records, count, seconds = calibrate_on_subset(
        trace, images, cfg, t_min=t_min, seed=int(cfg["seed"]) + 1, prepare=lambda x, gen: dequantize(x, generator=gen)
    )
    lists = calibration_to_lists(trace.calibration)
    assert lists is not None
    knots, offsets = lists
    meta["calibration"] = {"log_t": knots, "offset": offsets, "images": count, "seconds": seconds}
    return pd.DataFrame(records)


def _write_trace(
    unet: Any, meta: dict[str, Any], losses: list[float], out: Path, calibration: pd.DataFrame | None = None
) -> None:
    """The trace folder of :func:`train_trace`: ``unet/`` (replaced atomically), ``trace.json``, ``loss.csv`` and,
    for a calibrated net, ``calibration.csv`` (one row per bin of log t)."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".unet.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    unet.save_pretrained(str(tmp))
    shutil.rmtree(out / "unet", ignore_errors=True)
    os.replace(tmp, out / "unet")
    write_text(json.dumps(meta, indent=2), out / "trace.json")
    write_csv(pd.DataFrame({"step": range(1, len(losses) + 1), "loss": losses}), out / "loss.csv")
    if calibration is not None:
        write_csv(calibration, out / "calibration.csv")
    log.info("trained the trace net %s in %.0f s (final loss %.4f)", out, meta["seconds"], losses[-1])


def load_trace(trace_dir: str | Path, model: PretrainedModel) -> PositiveTraceModel:
    """The :class:`PositiveTraceModel` saved by :func:`train_trace`, on ``model``'s denoiser and dtype."""
    trace_dir = Path(trace_dir)
    meta = json.loads((trace_dir / "trace.json").read_text())
    unet = _trace_unet(trace_dir, next(model.unet.parameters()).dtype)
    unet.eval().requires_grad_(False)
    settings = meta.get("trace", {})
    trace = PositiveTraceModel(
        unet,
        model.denoiser,
        float(meta["sigma_data"]),
        float(meta["box_width"]),
        parameterization=str(settings.get("parameterization", "variance")),
        denoiser_input=bool(settings.get("denoiser_input", False)),
    )
    if meta.get("calibration"):
        table = meta["calibration"]
        trace.calibration = calibration_from_lists([table["log_t"], table["offset"]])
    return trace


def calibrate_trace(
    model_dir: str | Path,
    trace_dir: str | Path,
    out: str | Path,
    section: dict[str, Any] | None = None,
    images: Tensor | None = None,
) -> Path:
    """Calibrate the trace net of ``trace_dir`` (from :func:`train_trace`) along the likelihood paths of uint8
    ``images`` (default: the model's training digits) with the ``calibration_*`` settings of ``section`` (over those
    the net was trained with), and write it, calibrated, as a trace folder to ``out``."""
    trace_dir, out = Path(trace_dir), Path(out)
    meta = json.loads((trace_dir / "trace.json").read_text())
    cfg = _merged({**meta.get("trace", {}), **(section or {})}, DEFAULTS["trace"])
    if int(cfg["calibration_images"]) < 1:
        raise ValueError(f"calibration_images must be positive to calibrate; got {cfg['calibration_images']}")
    model = load_model(model_dir)
    if images is None:
        holdout, split_seed = split_of(Path(model_dir))
        images = digits_uint8("train", holdout, split_seed)
    trace = load_trace(trace_dir, model)
    records = _calibrate(trace, images, cfg, float(meta["t_min"]), meta)
    losses = pd.read_csv(trace_dir / "loss.csv")["loss"].tolist()
    _write_trace(trace.module, meta | {"trace": cfg}, losses, out, records)
    return out


def split_of(model_dir: Path) -> tuple[float, int]:
    """The digits split (holdout fraction, seed) that the in-project DDPM of ``model_dir`` trained on, from its
    ``dfcore.json`` (the defaults for another folder)."""
    info = json.loads((model_dir / "dfcore.json").read_text()) if (model_dir / "dfcore.json").is_file() else {}
    train = info.get("train", {})
    return float(train.get("holdout", DEFAULTS["train"]["holdout"])), int(train.get("seed", 0))


def method_solves(
    model: PretrainedModel,
    x: Tensor,
    method: str,
    *,
    trace: TraceModel | None,
    anchors: int,
    seed: int,
    **settings: Any,
) -> dict[str, tuple[Tensor, int, float]]:
    """Log q, evaluations and seconds of ``method`` on ``x`` per row name, from :func:`model_log_likelihood` with
    ``settings`` (Hutchinson probes seeded ``seed``): one row, or for ``dftm`` with ``anchors`` > 0 two rows from one
    solve, ``dftm`` (its time without the anchors) and ``dftm_anchored`` (:func:`model_anchored_log_likelihood`)."""
    clock = time.perf_counter()
    if method == DFTM and anchors > 0:
        if trace is None:
            raise ValueError(f"method {DFTM!r} with anchors needs its trace net")
        both = model_anchored_log_likelihood(model, x, trace_model=trace, anchors=anchors, **settings)
        total = time.perf_counter() - clock
        return {
            DFTM: (both.plain.log_q, both.plain.nfe, total - both.anchor_seconds),
            DFTM_ANCHORED: (both.anchored.log_q, both.anchored.nfe, total),
        }
    generator = torch.Generator().manual_seed(int(seed))  # probes are drawn on the CPU
    trace_model = trace if method == DFTM else None
    res = model_log_likelihood(model, x, method=method, generator=generator, trace_model=trace_model, **settings)
    return {method: (res.log_q, int(res.nfe), time.perf_counter() - clock)}


def measure(model_dir: str | Path, out_dir: str | Path, section: dict[str, Any] | None = None) -> dict[str, Any]:
    """The likelihood measurement on held-out digits (module docstring); writes ``bpd.csv`` (per image and
    method; none when ``methods`` is empty), ``solvers.csv`` (per solver setting, unless ``solver_study`` is empty), ``prediction_types.csv`` when converted folders sit next to
    the model (``<model_dir>_v_prediction``, ``<model_dir>_sample``) and ``summary.json``; returns the summary."""
    cfg = _merged(section, DEFAULTS["measure"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = {"float64": torch.float64, "float32": torch.float32}[cfg["dtype"]]
    model = load_model(model_dir, dtype=dtype)
    holdout, split_seed = split_of(Path(model_dir))
    test = digits_uint8("test", holdout, split_seed)[: int(cfg["num_images"])]
    data_mean, data_var = _data_stats(digits_uint8("train", holdout, split_seed))
    trace = load_trace(cfg["trace_dir"], model) if cfg["trace_dir"] else None
    gen = torch.Generator().manual_seed(int(cfg["seed"]))
    deq = dequantize_images(test, gen, int(cfg["num_draws"]))
    t_min = 1.0 / model.schedule.num_steps
    common: dict[str, Any] = {"t_min": t_min, "data_mean": data_mean, "data_var": data_var}
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"protocol": {}, "methods": {}, "solvers": [], "model_dir": str(model_dir)}
    for method in cfg["methods"]:
        if method == DFTM and trace is None:
            raise ValueError(f"method {DFTM!r} needs the measure key trace_dir (a folder written by train_trace)")
        settings = {key: cfg[key] for key in ("solver", "time_warp")} | {"num_steps": int(cfg["num_steps"])}
        solves = method_solves(
            model,
            deq.x,
            method,
            trace=trace,
            anchors=int(cfg["anchors"]),
            seed=int(cfg["seed"]) + 1,
            **settings,
            **common,
        )
        for name, (log_q, nfe, seconds) in solves.items():
            bpd = image_bits_per_dim(log_q, deq, t_min)
            summary["protocol"] = bpd.protocol() | {"solver": cfg["solver"], "num_steps": int(cfg["num_steps"])}
            summary["protocol"]["time_warp"] = cfg["time_warp"]
            per_image = seconds / len(test)
            summary["methods"][name] = {"bpd_mean": float(bpd.bpd.mean()), "seconds_per_image": per_image, "nfe": nfe}
            for i, value in enumerate(bpd.bpd.tolist()):
                rows.append({"image": i, "method": name, "bpd": value, "seconds_per_image": per_image, "nfe": nfe})
            log.info("%s: %.4f bits/dim, %.2f s/image", name, float(bpd.bpd.mean()), per_image)
    if trace is not None:
        summary["dftm_bounds"] = dict(trace.counts) | {"upper_bound": "d w^2/4", "box_width": trace.box_width}
        by = pd.DataFrame(rows).pivot(index="image", columns="method", values="bpd")
        for name in (DFTM, DFTM_ANCHORED):
            if {name, VJP} <= set(by.columns):
                gap = (by[name] - by[VJP]).abs()
                summary[f"{name}_vs_vjp"] = {
                    "mean_abs_diff_bpd": float(gap.mean()),
                    "max_abs_diff_bpd": float(gap.max()),
                    "time_ratio": summary["methods"][name]["seconds_per_image"]
                    / summary["methods"][VJP]["seconds_per_image"],
                }
    if rows:
        write_csv(pd.DataFrame(rows), out_dir / "bpd.csv")
    if cfg["solver_study"]:
        summary["solvers"] = solver_study(model, deq, cfg["solver_study"], common)
        write_csv(pd.DataFrame(summary["solvers"]), out_dir / "solvers.csv")
    types = prediction_type_check(Path(model_dir), deq.x[:4], dtype)
    if types:
        write_csv(pd.DataFrame(types), out_dir / "prediction_types.csv")
        summary["prediction_types"] = types
    write_text(json.dumps(summary, indent=2), out_dir / "summary.json")
    return summary


def solver_study(
    model: PretrainedModel, deq: Any, study: dict[str, Any], common: dict[str, Any]
) -> list[dict[str, Any]]:
    """ODE evaluations, time and the bits/dim error of each solver setting against the reference setting,
    all with the same trace method and fixed probes."""

    def run(setting: dict[str, Any]) -> tuple[Tensor, int, float]:
        start = time.perf_counter()
        res = model_log_likelihood(
            model,
            deq.x,
            method=study["method"],
            generator=torch.Generator().manual_seed(12345),
            **{k: v for k, v in setting.items()},
            **common,
        )
        return image_bits_per_dim(res.log_q, deq, common["t_min"]).bpd, int(res.nfe), time.perf_counter() - start

    ref, ref_nfe, ref_s = run(study["reference"])
    rows = [{**study["reference"], "role": "reference", "nfe": ref_nfe, "seconds": ref_s, "max_abs_err_bpd": 0.0}]
    rows[0]["bpd_mean"] = float(ref.mean())
    for setting in study["settings"]:
        bpd, nfe, seconds = run(setting)
        err = (bpd - ref).abs()
        rows.append(
            {
                **setting,
                "role": "candidate",
                "nfe": nfe,
                "seconds": seconds,
                "bpd_mean": float(bpd.mean()),
                "max_abs_err_bpd": float(err.max()),
                "mean_abs_err_bpd": float(err.mean()),
            }
        )
        log.info("solver %s: nfe %d, max |err| %.2e bits/dim", setting, nfe, float(err.max()))
    return rows


def prediction_type_check(model_dir: Path, x: Tensor, dtype: torch.dtype) -> list[dict[str, Any]]:
    """Largest |ε difference| between the ε folder and its converted siblings at a few times in [1/T, 1]."""
    base = load_model(model_dir, dtype=dtype)
    num = base.schedule.num_steps
    times = torch.tensor([1, 2, max(2, num // 10), max(2, num // 2), num], dtype=torch.float64) / num  # t >= 1/T
    rows = []
    for kind in ("v_prediction", "sample"):
        folder = model_dir.parent / f"{model_dir.name}_{kind}"
        if not folder.is_dir():
            continue
        other = load_model(folder, dtype=dtype)
        worst = 0.0
        for t in times:
            ref = base.denoiser.eps(x.to(torch.float64), t)
            got = other.denoiser.eps(x.to(torch.float64), t)
            worst = max(worst, float((got - ref).abs().max()))
        rows.append({"prediction_type": other.prediction_type, "folder": str(folder), "max_abs_eps_diff": worst})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dfcore.experiments.pretrained", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train the in-project DDPM and save it with save_pretrained")
    p_train.add_argument("--out", required=True)
    p_train.add_argument("--config", help="JSON file with the 'train' settings")
    p_conv = sub.add_parser("convert", help="write an equivalent v_prediction / sample folder")
    p_conv.add_argument("--model", required=True)
    p_conv.add_argument("--out", required=True)
    p_conv.add_argument("--prediction-type", required=True, choices=["v_prediction", "sample"])
    p_trace = sub.add_parser("train-trace", help="train the positive trace network (Alg. 1) on the model")
    p_trace.add_argument("--model", required=True)
    p_trace.add_argument("--out", required=True)
    p_trace.add_argument("--config", help="JSON file with the 'trace' settings")
    p_cal = sub.add_parser("calibrate-trace", help="calibrate a trained trace net along the likelihood's paths")
    p_cal.add_argument("--model", required=True)
    p_cal.add_argument("--trace", required=True, help="the trace folder written by train-trace")
    p_cal.add_argument("--out", required=True)
    p_cal.add_argument("--config", help="JSON file with the 'trace' calibration_* settings")
    p_cal.add_argument(
        "--split",
        choices=["train", "test"],
        default="train",
        help="the digits whose paths calibrate: the model's training split, or its held-out split after the first "
        "--skip images (those that measure evaluates)",
    )
    p_cal.add_argument("--skip", type=int, default=0, help="leave out the split's first SKIP images")
    p_meas = sub.add_parser("measure", help="bits/dim table and solver study on held-out digits")
    p_meas.add_argument("--model", required=True)
    p_meas.add_argument("--out", required=True)
    p_meas.add_argument("--config", help="JSON file with the 'measure' settings")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    section = json.loads(Path(args.config).read_text()) if getattr(args, "config", None) else None
    if args.command == "train":
        train_model(section, args.out, Path(args.out).parent / f"{Path(args.out).name}_loss.csv")
    elif args.command == "train-trace":
        train_trace(args.model, args.out, section)
    elif args.command == "calibrate-trace":
        holdout, split_seed = split_of(Path(args.model))
        images = digits_uint8(args.split, holdout, split_seed)[args.skip :]
        calibrate_trace(args.model, args.trace, args.out, section, images)
    elif args.command == "convert":
        convert_model(args.model, args.out, args.prediction_type)
    else:
        measure(args.model, args.out, section)


if __name__ == "__main__":
    main()
