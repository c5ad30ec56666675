r"""The experiments of the ``adjoint`` stage (DF-EA, Wang et al. 2025, Sec. 5 and Eq. 20).

* :func:`run_train_classifier` — the small digit classifier whose :math:`-\log p(c \mid x_0)` is the digits loss.
* :func:`run_mixture_task` — task (a): 2-D data, exact (Dirac-mixture) denoiser, :math:`L = \tfrac12\|x_0 - c\|^2`
  pulls samples towards a target point c; the Fisher is exact, so ``analytic`` is available.
* :func:`run_digits_task` — task (b): the trained digits denoiser and :math:`L = -\log p(c \mid x_0)`.

For each task and Fisher-vector-product method the runners record the loss before and after guidance,
wall time, network evaluations (forward ε calls and VJPs), peak memory, and the agreement of the
method's adjoint :math:`\lambda_k` with the autograd ground truth at every step of a full trajectory
(cosine and relative error, at T in particular). Outputs: CSV metrics, a Zarr store of trajectories,
and seaborn figures (loss vs wall time; agreement per step; a grid of digits before/after).

Command line: ``python -m dfcore adjoint ...`` (:mod:`dfcore.cli`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import Tensor
from tqdm.auto import tqdm

from dfcore.adjoint import GuidedSample, autograd_adjoint, cosine_and_relative_error, discrete_adjoint, guided_sample
from dfcore.data.datasets import labelled_digits
from dfcore.device import resolve_device
from dfcore.experiments.common import Stopwatch
from dfcore.fisher.vp import FVP_ESTIMATORS, VJPFVP
from dfcore.io import provenance, save_checkpoint, write_csv, write_zarr
from dfcore.mixtures import DiracMixture, Mixture
from dfcore.models.base import Denoiser, ExactDenoiser
from dfcore.models.classifier import class_nll, classifier_state, load_classifier, train_classifier
from dfcore.plots import plot_digit_grid, plot_lambda_agreement, plot_loss_vs_time
from dfcore.profiling import PeakMemory
from dfcore.registries import required_dependencies
from dfcore.sampling import CountingDenoiser, sample_trajectory, with_posterior_mean
from dfcore.schedules import get_schedule
from dfcore.sde import time_grid

__all__ = [
    "run_train_classifier",
    "compare_methods",
    "exact_mean_lambda_agreement",
    "run_mixture_task",
    "run_digits_task",
]

log = logging.getLogger(__name__)
LossFn = Callable[[Tensor], Tensor]


# --- classifier ------------------------------------------------------------------------------------


def run_train_classifier(
    cfg: Mapping[str, Any], *, seed: int, checkpoint_path: str | Path, metrics_path: str | Path, progress: bool = True
) -> pd.DataFrame:
    """Train the digit classifier (config section ``adjoint.classifier``); write checkpoint and metrics CSV."""
    x, labels = labelled_digits()
    start = time.perf_counter()
    model, metrics = train_classifier(
        x,
        labels,
        hidden=cfg["hidden"],
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        lr=cfg["lr"],
        noise=cfg["noise"],
        holdout=cfg["holdout"],
        seed=seed,
        progress=progress,
    )
    metrics["train_seconds"] = time.perf_counter() - start
    save_checkpoint(classifier_state(model, metrics), checkpoint_path)
    table = pd.DataFrame([metrics])
    write_csv(table, metrics_path)
    log.info("classifier: %s", metrics)
    return table


# --- one comparison of methods -----------------------------------------------------------------------


def _agreement(method: str, lams: list[Tensor], truth: list[Tensor], times: Tensor) -> dict[int, dict[str, Any]]:
    """One row per state of the trajectory, keyed by the number of sampling steps still to go: the agreement of
    ``method``'s adjoint ``lams`` with autograd's ``truth`` there (an overflowing adjoint is counted, not averaged
    as NaN)."""
    num = len(times) - 1
    rows = {}
    for k, (lam_k, ref_k) in enumerate(zip(lams, truth)):
        cos, rel = cosine_and_relative_error(lam_k, ref_k)
        ok = torch.isfinite(cos) & torch.isfinite(rel)
        cos_f, rel_f = (cos[ok], rel[ok]) if ok.any() else (torch.full((1,), -1.0), torch.full((1,), float("inf")))
        norm_ratio = lam_k.flatten(1).double().norm(dim=1) / ref_k.flatten(1).double().norm(dim=1)
        rows[num - k] = {
            "method": method,
            "step": k,
            "steps_to_go": num - k,
            "t": times[k].item(),
            "cosine_mean": cos_f.mean().item(),
            "cosine_min": cos_f.min().item(),
            "rel_err_mean": rel_f.mean().item(),
            "rel_err_median": rel_f.median().item(),
            "finite_fraction": ok.double().mean().item(),
            "norm_ratio_median": norm_ratio.nanmedian().item(),
        }
    return rows


def _loss_columns(method: str, loss_before: Tensor, out: GuidedSample) -> dict[str, Any]:
    """The loss of the guided samples against the unguided ones; losses are averaged over the samples with a finite
    final loss, and divergence is reported in its own columns."""
    assert out.final_loss is not None and out.diverged is not None  # guided_sample sets both
    after = out.final_loss.double()
    finite = torch.isfinite(after)
    diverged = out.diverged.to(after.device)
    if diverged.any():
        log.warning(
            "%s: %d of %d guided samples diverged (non-finite adjoint: update rejected, or non-finite loss)",
            method,
            int(diverged.sum()),
            diverged.numel(),
        )
    keep = finite if finite.any() else torch.ones_like(finite)
    after_f = torch.where(finite, after, torch.zeros_like(after))
    return {
        "loss_before": loss_before.mean().item(),
        "loss_after": after_f[keep].mean().item() if finite.any() else float("inf"),
        "improvement": (loss_before - after_f)[keep].mean().item() if finite.any() else float("-inf"),
        "improved_fraction": (finite & (after < loss_before)).double().mean().item(),
        "diverged": bool(diverged.any()),
        "diverged_fraction": diverged.double().mean().item(),
        "finite_fraction": finite.double().mean().item(),
    }


def _trajectories(
    guided_paths: list[Tensor],
    loss_before: Tensor,
    lam_T: dict[str, Tensor],
    truth_T: Tensor,
    times: Tensor,
    x_T: Tensor,
) -> xr.Dataset:
    """The guided trajectories and the adjoints at x_T of every method, as a Dataset."""
    methods = list(lam_T)
    flat = lambda a: a.detach().double().cpu().reshape(*a.shape[: a.ndim - (x_T.ndim - 1)], -1).numpy()  # noqa: E731
    ds = xr.Dataset(
        {
            "x": (("guidance", "step", "sample", "dim"), np.stack([flat(p) for p in guided_paths])),
            "loss_before": (("sample",), loss_before.cpu().numpy()),
            "lambda_T": (("fvp_method", "lambda_sample", "dim"), np.stack([flat(lam_T[m]) for m in methods])),
            "lambda_T_truth": (("lambda_sample", "dim"), flat(truth_T)),
        },
        coords={
            "guidance": ["unguided"] + methods,
            "fvp_method": methods,
            "step": np.arange(len(times)),
            "t": ("step", times.cpu().numpy()),
        },
    )
    ds["x"].attrs["description"] = (
        "guided PF-ODE trajectories (states after each guidance update), 'unguided' = plain sampler"
    )
    ds["lambda_T"].attrs["description"] = "adjoint dL/dx_T of the plain trajectory by each Fisher-vector-product method"
    ds["lambda_T_truth"].attrs["description"] = "dL/dx_T by autograd through the whole discrete sampler"
    return ds


def _guided_run(
    counter: CountingDenoiser,
    x_T: Tensor,
    times: Tensor,
    loss_fn: LossFn,
    method: str,
    cfg: Mapping[str, Any],
    task_cfg: Mapping[str, Any],
    *,
    mixture: Mixture | None,
    unguided_seconds: float,
) -> tuple[GuidedSample, dict[str, Any]]:
    """Adjoint-guided sampling from ``x_T`` with ``method`` and its cost: wall time (next to the unguided
    sampler's), network forward passes and VJPs (the ``vjp`` method's Fisher-vector products), and peak memory."""
    counter.reset()
    with PeakMemory(x_T.device) as mem, Stopwatch(x_T.device) as guided:
        out = guided_sample(
            counter,
            x_T,
            times,
            loss_fn,
            method=method,
            update_steps=cfg["update_steps"],
            step_size=task_cfg["step_size"],
            iterations=cfg["iterations"],
            sampler=cfg["sampler"],
            mixture=mixture,
            dfea_endpoint=cfg["dfea_endpoint"],
            normalize=cfg["normalize"],
        )
    nfe_vjp = out.fvp_calls if "denoiser" in required_dependencies(FVP_ESTIMATORS[method]) else 0
    cost = {
        "seconds": guided.seconds,
        "unguided_seconds": unguided_seconds,
        "nfe_forward": counter.calls - nfe_vjp,
        "nfe_vjp": nfe_vjp,
        "fvp_calls": out.fvp_calls,
        "peak_mem_mb": mem.peak_bytes / 2**20,
    }
    return out, cost


def compare_methods(
    denoiser: Denoiser,
    x_T: Tensor,
    loss_fn: LossFn,
    cfg: Mapping[str, Any],
    task_cfg: Mapping[str, Any],
    *,
    mixture: Mixture | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, xr.Dataset]:
    """Guided sampling with every method of ``task_cfg['methods']`` from the same ``x_T``, and the
    agreement of each method's adjoint with autograd through the sampler on the first
    ``cfg['lambda_samples']`` samples. Returns (metrics, history, agreement, trajectories)."""
    device = x_T.device
    counter = CountingDenoiser(denoiser)
    times = time_grid(cfg["num_steps"], cfg["t_min"], t_max=1.0, dtype=x_T.dtype).to(device)
    sampler, methods, num = cfg["sampler"], list(task_cfg["methods"]), len(times) - 1
    with Stopwatch(device) as unguided:
        base = sample_trajectory(counter, x_T, times, sampler)
    with torch.no_grad():
        loss_before = loss_fn(base.x_final).double()

    # Ground truth on a subset: autograd through the whole discrete sampler (checkpointed per step).
    xl = x_T[: min(int(cfg["lambda_samples"]), x_T.shape[0])]
    truth, _ = autograd_adjoint(denoiser, xl, times, loss_fn, sampler, use_checkpoint=True)
    traj_l = sample_trajectory(denoiser, xl, times, sampler)
    with torch.enable_grad():
        x_final = traj_l.x_final.detach().requires_grad_(True)
        (lam_final,) = torch.autograd.grad(loss_fn(x_final).sum(), x_final)

    rows: list[dict[str, Any]] = []
    hist_rows: list[dict[str, Any]] = []
    agree_rows: list[dict[str, Any]] = []
    guided_paths, lam_T = [base.stack()], {}
    for method in tqdm(methods, desc="methods", disable=not progress):
        lams = discrete_adjoint(
            traj_l,
            lam_final,
            method,
            schedule=denoiser.schedule,
            denoiser=denoiser,
            mixture=mixture,
            dfea_endpoint=cfg["dfea_endpoint"],
        )
        agreement = _agreement(method, lams, truth, times)  # keyed by steps to go
        agree_rows += agreement.values()
        lam_T[method] = lams[0]

        out, cost = _guided_run(
            counter, x_T, times, loss_fn, method, cfg, task_cfg, mixture=mixture, unguided_seconds=unguided.seconds
        )
        rows.append(
            {
                "method": method,
                **_loss_columns(method, loss_before, out),
                **cost,
                # cosine with autograd at the update steps and at x_T
                "lambda_update_cosine": float(np.mean([agreement[u]["cosine_mean"] for u in cfg["update_steps"]])),
                "lambda_T_cosine": agreement[num]["cosine_mean"],
                "lambda_T_rel_err": agreement[num]["rel_err_mean"],
            }
        )
        hist_rows += [
            {"method": method, "seconds": s, "loss": v, "update": i} for i, (s, v) in enumerate(out.loss_history)
        ]
        guided_paths.append(torch.stack(out.xs))
        log.info("%s: %s", method, rows[-1])

    metrics = pd.DataFrame(rows)
    metrics["improvement_vs_best"] = metrics["improvement"] / metrics["improvement"].max()
    if VJPFVP.name in methods:  # each method's improvement as a share of the exact VJP's
        metrics["improvement_vs_vjp"] = (
            metrics["improvement"] / metrics.set_index("method").loc[VJPFVP.name, "improvement"]
        )
    ds = _trajectories(guided_paths, loss_before, lam_T, truth[0], times, x_T)
    return metrics, pd.DataFrame(hist_rows), pd.DataFrame(agree_rows), ds


# the Fisher-vector products that need no network (they run on the exact mixture's posterior mean)
EXACT_MEAN_METHODS = tuple(m for m, cls in FVP_ESTIMATORS.items() if "denoiser" not in required_dependencies(cls))


def exact_mean_lambda_agreement(
    mixture: Mixture,
    schedule: Any,
    x_T: Tensor,
    loss_fn: LossFn,
    times: Tensor,
    *,
    sampler: str = "ddim",
    dfea_endpoint: str = "denoised",
    methods: Sequence[str] = EXACT_MEAN_METHODS,
) -> pd.DataFrame:
    r"""Method error of Eq. 20 without training error: the per-step cosine between each method's adjoint
    :math:`\lambda_k` and autograd through the sampler, for the exact denoiser of ``mixture`` and with every
    :math:`\bar y` in ``dfea`` / ``dfea_centered`` the mixture's exact posterior mean (:func:`with_posterior_mean`).

    One row per (method, step): ``steps_to_go``, ``t``, ``cosine_mean``, ``cosine_median``, ``cosine_min`` over
    the samples of ``x_T`` whose cosine is finite, and ``finite_fraction``. ``analytic`` (the exact Fisher) is
    the control: its cosine is 1 up to round-off."""
    denoiser = ExactDenoiser(mixture, schedule)
    truth, _ = autograd_adjoint(denoiser, x_T, times, loss_fn, sampler, use_checkpoint=False)
    traj = with_posterior_mean(sample_trajectory(denoiser, x_T, times, sampler), mixture, schedule)
    with torch.enable_grad():
        x0 = traj.x_final.detach().requires_grad_(True)
        (lam_final,) = torch.autograd.grad(loss_fn(x0).sum(), x0)
    rows = []
    for method in methods:
        lams = discrete_adjoint(
            traj, lam_final, method, schedule=schedule, mixture=mixture, dfea_endpoint=dfea_endpoint
        )
        for k, (lam_k, ref_k) in enumerate(zip(lams, truth)):
            cos, _ = cosine_and_relative_error(lam_k, ref_k)
            ok = torch.isfinite(cos)
            finite = cos[ok] if ok.any() else torch.full((1,), float("nan"), dtype=cos.dtype)
            rows.append(
                {
                    "method": method,
                    "step": k,
                    "steps_to_go": len(times) - 1 - k,
                    "t": times[k].item(),
                    "cosine_mean": finite.mean().item(),
                    "cosine_median": finite.median().item(),
                    "cosine_min": finite.min().item(),
                    "finite_fraction": ok.double().mean().item(),
                    "num_samples": int(x_T.shape[0]),
                }
            )
    return pd.DataFrame(rows)


# --- figures -------------------------------------------------------------------------------------------


def _write_outputs(
    metrics: pd.DataFrame,
    history: pd.DataFrame,
    agreement: pd.DataFrame,
    ds: xr.Dataset,
    out: Mapping[str, Any],
    *,
    task: str,
    attrs: dict[str, Any],
    title: str,
) -> None:
    metrics.insert(0, "task", task)
    write_csv(metrics, out["metrics"])
    write_csv(agreement.assign(task=task), out["agreement"])
    write_zarr(ds, out["trajectories"], attrs=attrs)
    plot_loss_vs_time(history, out["loss_plot"], f"{title}: loss vs wall time")
    plot_lambda_agreement(agreement, out["agreement_plot"], f"{title}: adjoint vs autograd")


# --- task (a): 2-D mixtures ---------------------------------------------------------------------------


def _load_points(path: str | Path) -> Tensor:
    from dfcore.data.store import load_dataset

    return load_dataset(path)


def run_mixture_task(
    cfg: Mapping[str, Any],
    schedules_cfg: Mapping[str, Any],
    *,
    schedule_name: str,
    data_path: str | Path,
    out: Mapping[str, Any],
    seed: int,
    device: str = "auto",
    config: dict[str, Any] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Task (a): exact Dirac-mixture denoiser on 2-D data, L = ||x_0 - target||^2 / 2 (float64)."""
    task = cfg["mixture"]
    dev = resolve_device(device)
    points = _load_points(data_path)
    gen = torch.Generator().manual_seed(seed)
    if points.shape[0] > task["max_points"]:
        points = points[torch.randperm(points.shape[0], generator=gen)[: task["max_points"]]]
    mixture = DiracMixture(points.to(dev))
    schedule = get_schedule(schedule_name, **dict(schedules_cfg.get(schedule_name, {})))
    denoiser = ExactDenoiser(mixture, schedule)
    target = torch.as_tensor(task["target"], dtype=torch.float64, device=dev)
    if target.numel() != points.shape[1]:
        raise ValueError(f"adjoint.mixture.target has {target.numel()} entries; the data have d = {points.shape[1]}")

    def loss_fn(x0: Tensor) -> Tensor:
        return 0.5 * (x0 - target).pow(2).sum(1)

    one = torch.ones((), dtype=torch.float64)
    z = torch.randn(task["num_samples"], points.shape[1], generator=gen, dtype=torch.float64).to(dev)
    x_T = schedule.alpha(one).item() * points.mean(0).to(dev) + schedule.sigma(one).item() * z
    metrics, history, agreement, ds = compare_methods(
        denoiser, x_T, loss_fn, cfg, task, mixture=mixture, progress=progress
    )
    attrs = provenance(
        config,
        seed,
        task="mixture",
        schedule=schedule_name,
        sampler=cfg["sampler"],
        target=list(task["target"]),
        num_points=int(points.shape[0]),
    )
    metrics.insert(0, "schedule", schedule_name)
    _write_outputs(
        metrics, history, agreement, ds, out, task="mixture", attrs=attrs, title=f"2-D mixture ({schedule_name})"
    )
    if out.get("lambda_exact") is not None:
        # the samples of agreement.csv, with the exact posterior mean in Eq. 20
        n_lam = min(int(cfg["lambda_samples"]), x_T.shape[0])
        times = time_grid(cfg["num_steps"], cfg["t_min"], t_max=1.0, dtype=x_T.dtype).to(dev)
        exact = exact_mean_lambda_agreement(
            mixture, schedule, x_T[:n_lam], loss_fn, times, sampler=cfg["sampler"], dfea_endpoint=cfg["dfea_endpoint"]
        )
        exact.insert(0, "schedule", schedule_name)
        write_csv(exact, out["lambda_exact"])
    return metrics


# --- task (b): digits ----------------------------------------------------------------------------------


def run_digits_task(
    cfg: Mapping[str, Any],
    *,
    denoiser_path: str | Path,
    classifier_path: str | Path,
    out: Mapping[str, Any],
    seed: int,
    device: str = "auto",
    config: dict[str, Any] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Task (b): trained digits denoiser, L = -log p(target class | x_0) under the pipeline's classifier."""
    from dfcore.models.networks import load_denoiser

    task = cfg["digits"]
    dev = resolve_device(device)
    denoiser = load_denoiser(denoiser_path, dev)
    module = getattr(denoiser, "module", None)
    if isinstance(module, torch.nn.Module):
        module.eval().requires_grad_(False)
    classifier = load_classifier(classifier_path, dev)
    dtype = next(classifier.parameters()).dtype
    if isinstance(module, torch.nn.Module):
        dtype = next(module.parameters()).dtype
    target = int(task["target_class"])

    def loss_fn(x0: Tensor) -> Tensor:
        return class_nll(classifier, x0, target)

    gen = torch.Generator().manual_seed(seed)
    x_T = torch.randn(task["num_samples"], 64, generator=gen, dtype=torch.float64)
    x_T = (denoiser.schedule.sigma(torch.ones((), dtype=torch.float64)).item() * x_T).to(device=dev, dtype=dtype)
    metrics, history, agreement, ds = compare_methods(denoiser, x_T, loss_fn, cfg, task, progress=progress)
    with torch.no_grad():
        final = torch.as_tensor(ds["x"].isel(step=-1).values, dtype=dtype, device=dev)
        probs = torch.softmax(classifier(final.reshape(-1, 64)), 1).reshape(final.shape[0], final.shape[1], -1)
    hit = (probs.argmax(-1) == target).double().mean(1).cpu().numpy()  # per method incl. unguided
    acc = dict(zip(ds["guidance"].values.tolist(), hit.tolist()))
    metrics["target_rate_before"] = acc["unguided"]
    metrics["target_rate_after"] = [acc[m] for m in metrics["method"]]
    attrs = provenance(
        config,
        seed,
        task="digits",
        sampler=cfg["sampler"],
        target_class=target,
        image_shape=[1, 8, 8],
        denoiser=str(denoiser_path),
    )
    _write_outputs(metrics, history, agreement, ds, out, task="digits", attrs=attrs, title="digits")
    plot_digit_grid(ds, out["grid_plot"], task["grid_samples"])
    return metrics
