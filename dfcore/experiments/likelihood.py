r"""The likelihood stage: NLL error against time per estimator on Gaussian mixtures with a closed-form density.

For a data set whose exact :math:`q_0` is a Gaussian mixture (kind ``gaussian_mixture_lowrank``), every method
integrates the same PF-ODE of the same trained denoiser from :math:`t_{min}` to 1 with the same solver and
tolerance (Wang et al., 2025, Eq. 14):

.. math:: \log q_{t_{min}}(x) = \log p_T(x_T) + \int_{t_{min}}^{1} \big(f d + \tfrac12 g^2 \operatorname{tr}F_t(x_t)\big)\,dt ,

and differs only in the trace :math:`\operatorname{tr}F_t` (:func:`dfcore.fisher.trace.fisher_trace`):

* ``analytic`` — the exact mixture's own drift and trace (sanity row: it checks the solver, prior and
  :math:`t_{min}` against the exact :math:`\log q_0`);
* ``vjp`` — the exact trace of the learned model (d vector-Jacobian products per step);
* ``hutchinson1`` / ``hutchinson4`` / ``hutchinson16`` — 1, 4 or 16 Rademacher probes, held fixed along the solve;
* ``dftm`` — Eq. 17 with the trace network trained by Alg. 1 on samples with the target ``sq_norm``
  (:math:`\|x_0\|^2`, the paper's); ``dftm_residual`` the same with ``residual``; ``dftm_mixture_posterior`` a
  labelled ablation whose regression target is the exact mixture's :math:`\operatorname{tr}\mathrm{Cov}[x_0|x_t]`
  (:meth:`dfcore.mixtures.GaussianMixture.posterior_variance`), which real data never offers;
* the peers (:mod:`dfcore.integrations.peers`): ``kdiffusion_hutchinson``, ``flow_matching_exact`` and
  ``flow_matching_hutchinson``, skipped with a logged reason when the package is not installed.
* ``floor`` — :math:`\operatorname{tr}F_t \equiv 0` (:class:`~dfcore.fisher.trace.ZeroTrace`), so its
  :math:`\log q = \log p_T(x_T) + \int f d\,dt` is a full method's less
  :math:`\int \tfrac12 g^2 \operatorname{tr}F_t\,dt`: the cost of the ODE solve alone, run on every data set,
  and the unit of ``time_vs_floor`` :math:`= s_{method}/s_{floor}`.

The error of a point is :math:`|\widehat{\mathrm{NLL}} - (-\log q_0(x))|/d` in nats per dimension, with
:math:`\log q_0` from ``torch.distributions`` (:func:`dfcore.likelihood.gaussian_mixture_log_q0`). Every method
and peer is measured alike (:func:`measure_method`): in a process of its own, one untimed warm-up on the same
points, then the median wall time of ``repeats`` solves of the whole batch (divided by the number of points for
the per-sample time) and the peak memory above the level after loading (:class:`dfcore.profiling.PeakMemory`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from dfcore.data.store import dataset_attrs, load_dataset, load_mixture
from dfcore.device import resolve_device
from dfcore.experiments.common import median_seconds, section_seed
from dfcore.experiments.likelihood_methods import (
    FLOOR_METHOD,
    HUTCHINSON_PROBES,
    PEER_METHODS,
    PEER_REFERENCE,
    method_role,
    own_estimator,
    trace_target,
)
from dfcore.experiments.train import run_training
from dfcore.fisher.trace import VJPTrace
from dfcore.integrations.peers import PeerUnavailable, flow_matching_log_likelihood, kdiffusion_log_likelihood
from dfcore.io import load_checkpoint, write_csv, write_text
from dfcore.likelihood import LogPrior, bits_per_dim, gaussian_mixture_log_q0, log_likelihood, moment_matched_prior
from dfcore.mixtures import GaussianMixture
from dfcore.models.networks import (
    LearnedDenoiser,
    LearnedTraceModel,
    load_denoiser,
    same_weights,
    trace_model_from_state,
)
from dfcore.plots import plot_likelihood_benchmark, plot_likelihood_pareto
from dfcore.profiling import PeakMemory, run_isolated

__all__ = [
    "train_target_trace",
    "likelihood_points",
    "MethodJob",
    "measure_method",
    "run_likelihood_dataset",
    "run_heldout_likelihood",
    "summarize_heldout",
    "summarize_benchmark",
    "run_likelihood_benchmark",
    "run_table2_mixture",
]

log = logging.getLogger(__name__)


def train_target_trace(
    section: dict[str, Any],
    data_path: str | Path,
    denoiser_path: str | Path,
    target: str,
    out: str | Path,
    *,
    loss_csv: str | Path | None = None,
    resume_path: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
) -> LearnedTraceModel:
    """Train the trace network of ``target`` (a key of :data:`~dfcore.models.networks.TRACE_TARGETS`) on a frozen
    denoiser; a target whose reference is the exact mixture (``mixture_posterior``, an ablation) regresses onto
    the data set's Gaussian mixture. ``section`` is the ``trace_net`` section as the data set sees it; its own
    ``target`` is replaced by ``target``."""
    return cast(
        LearnedTraceModel,
        run_training(
            "trace",
            {**section, "target": target},
            data_path,
            out,
            denoiser_path=denoiser_path,
            loss_csv=loss_csv,
            resume_path=resume_path,
            seed=seed,
            device=device,
            progress=False,
        ),
    )


def _trace_model_on(path: str | Path, denoiser: LearnedDenoiser, device: torch.device) -> LearnedTraceModel:
    """The trace net of ``path`` on the already-loaded ``denoiser``, after checking it was trained on those weights."""
    state = load_checkpoint(path)["model"]
    if not same_weights(state["denoiser"]["state_dict"], denoiser.module):
        raise ValueError(f"{path}: the trace net was trained on another denoiser than the one evaluated")
    return trace_model_from_state(state, device, denoiser=denoiser)


def _peer_log_q(
    x: torch.Tensor,
    method: str,
    *,
    denoiser: LearnedDenoiser,
    cfg: dict[str, Any],
    log_prior: LogPrior,
    seed: int,
    common: dict[str, Any],
) -> dict[str, Any]:
    """``log_q`` and ``nfe`` of the peer ``method`` (:mod:`dfcore.integrations.peers`) on the points ``x``."""
    if method == "kdiffusion_hutchinson":
        if cfg["solver"] != "dopri5":
            raise ValueError("kdiffusion_hutchinson runs dopri5 only: set likelihood.solver to dopri5")
        return kdiffusion_log_likelihood(x, denoiser, seed=seed, **common)
    return flow_matching_log_likelihood(
        x,
        denoiser,
        log_prior=log_prior,
        exact=method.endswith("exact"),
        solver=cfg["solver"],
        num_steps=int(cfg["num_steps"]),
        seed=seed,
        **common,
    )


def likelihood_points(
    x: torch.Tensor,
    method: str,
    *,
    denoiser: LearnedDenoiser,
    mixture: GaussianMixture | None,
    trace_model: LearnedTraceModel | None,
    cfg: dict[str, Any],
    log_prior: LogPrior,
    seed: int,
) -> dict[str, Any]:
    """One method on the points ``x`` (B, d): ``log_q`` (B,) and ``nfe``, untimed. Raises :class:`PeerUnavailable`
    for a peer that is not installed."""
    common = dict(t_min=float(cfg["t_min"]), rtol=float(cfg["rtol"]), atol=float(cfg["atol"]))
    if method in PEER_METHODS:
        out = _peer_log_q(x, method, denoiser=denoiser, cfg=cfg, log_prior=log_prior, seed=seed, common=common)
    else:
        pool = {
            "mixture": mixture,
            "schedule": denoiser.schedule,  # every method, analytic included, runs on the denoiser's schedule
            "denoiser": denoiser,
            "trace_model": trace_model,
            "generator": torch.Generator().manual_seed(int(seed)),
        }
        estimator = own_estimator(method, pool)
        result = log_likelihood(
            x,
            estimator,
            log_prior=log_prior,
            solver=cfg["solver"],
            num_steps=int(cfg["num_steps"]),
            step_control=str(cfg["step_control"]),
            **common,
        )
        out = {"log_q": result.log_q, "nfe": result.nfe}
    return {"log_q": out["log_q"].detach().cpu().to(torch.float64), "nfe": int(out["nfe"])}


@dataclass(frozen=True)
class MethodJob:
    """What one method's measurement needs, all of it picklable (it crosses into a fresh process): the points, the
    checkpoints, the data set whose moments give the prior, and the config section (``repeats`` included)."""

    method: str
    x: torch.Tensor
    cfg: dict[str, Any]
    denoiser_path: str
    trace_path: str | None
    train_path: str
    mixture: GaussianMixture | None
    seed: int
    device: str
    threads: int


def measure_method(job: MethodJob) -> dict[str, Any]:
    r""":func:`likelihood_points` of ``job``, after loading its models and data, with one untimed warm-up call on
    the same points and ``cfg['repeats']`` timed ones: ``log_q`` and ``nfe`` of the last call, ``seconds`` the
    median wall time of the whole batch (:func:`~dfcore.experiments.common.median_seconds`), ``seconds_repeats``
    each one, and ``peak_mem_mb`` (:class:`~dfcore.profiling.PeakMemory` above the level after loading, warm-up
    included, MiB). Meant to run in its own process (:func:`~dfcore.profiling.run_isolated`)."""
    torch.set_num_threads(job.threads)
    device = torch.device(job.device)
    denoiser = load_denoiser(job.denoiser_path, device)
    trace_model = _trace_model_on(job.trace_path, denoiser, device) if job.trace_path else None
    log_prior = moment_matched_prior(denoiser.schedule, load_dataset(job.train_path))
    x = job.x.to(device)

    def run() -> dict[str, Any]:
        return likelihood_points(
            x,
            job.method,
            denoiser=denoiser,
            mixture=job.mixture,
            trace_model=trace_model,
            cfg=job.cfg,
            log_prior=log_prior,
            seed=job.seed,
        )

    with PeakMemory(device) as mem:
        out, seconds, each = median_seconds(run, device, int(job.cfg["repeats"]))
    return {**out, "seconds": seconds, "seconds_repeats": each, "peak_mem_mb": mem.peak_bytes / 2**20}


def _method_results(
    x: torch.Tensor,
    methods: Sequence[str],
    *,
    cfg: dict[str, Any],
    denoiser_path: str | Path,
    trace_paths: dict[str, str | Path],
    mixture: GaussianMixture | None,
    train_path: str | Path,
    seed: int,
    device: torch.device,
    label: str,
    isolate: bool = True,
) -> dict[str, dict[str, Any]]:
    """:func:`measure_method` of each method on ``x``, each in a fresh process when ``isolate`` (so its peak memory
    is its own), with the prior moment-matched to the data set of ``train_path``; skips (with a logged reason) a
    dftm method whose trace net is not in ``trace_paths`` and a peer that is not installed."""
    results = {}
    for method in methods:
        target = trace_target(method)
        if target and target not in trace_paths:
            log.warning("likelihood: skipping %s on %s: no trace net with target %s", method, label, target)
            continue
        job = MethodJob(
            method=method,
            x=x,
            cfg=dict(cfg),
            denoiser_path=str(denoiser_path),
            trace_path=str(trace_paths[target]) if target else None,
            train_path=str(train_path),
            mixture=mixture,
            seed=seed,
            device=str(device),
            threads=torch.get_num_threads(),
        )
        try:
            results[method] = run_isolated(measure_method, job) if isolate else measure_method(job)
        except PeerUnavailable as err:
            log.warning("likelihood: skipping the %s rows: %s", method, err)
            print(f"likelihood: skipping the {method} rows: {err}")
            continue
        res = results[method]
        log.info("%s %s: %.3g s/sample, %d NFE", label, method, res["seconds"] / len(x), res["nfe"])
    return results


def _solver_columns(cfg: dict[str, Any]) -> dict[str, Any]:
    return {
        "solver": cfg["solver"],
        "rtol": float(cfg["rtol"]),
        "atol": float(cfg["atol"]),
        "step_control": str(cfg["step_control"]),
        "t_min": float(cfg["t_min"]),
        "repeats": int(cfg["repeats"]),
    }


def run_likelihood_dataset(
    section: dict[str, Any],
    data_path: str | Path,
    denoiser_path: str | Path,
    trace_paths: dict[str, str | Path],
    out_csv: str | Path,
    *,
    dataset: str,
    seed: int = 0,
    device: str = "auto",
) -> pd.DataFrame:
    """Every method of ``section['methods']`` on ``num_points`` fresh draws of the exact mixture of ``dataset``; one
    CSV row per (method, point). ``trace_paths`` maps a trace target (``sq_norm``, ``residual``,
    ``mixture_posterior``) to its checkpoint."""
    cfg = section
    dev = resolve_device(device)
    data = load_dataset(data_path)
    mixture = load_mixture(data_path)
    if not isinstance(mixture, GaussianMixture):
        raise ValueError(
            f"likelihood: dataset {dataset!r} has no exact Gaussian mixture (kind gaussian_mixture[_lowrank])"
        )
    dim = data.shape[1]
    num_points = int(cfg["num_points"])
    # Points from a generator of their own, so they are fresh draws of q_0 (not training samples).
    x = mixture.sample(num_points, generator=torch.Generator().manual_seed(int(seed) + 7919)).to(torch.float64)
    exact = gaussian_mixture_log_q0(mixture, x)
    # the floor runs first and always: every row's time_vs_floor divides by its seconds
    methods = [FLOOR_METHOD, *(m for m in cfg["methods"] if m != FLOOR_METHOD)]
    results = _method_results(
        x,
        methods,
        cfg=cfg,
        denoiser_path=denoiser_path,
        trace_paths=trace_paths,
        mixture=mixture,
        train_path=data_path,
        seed=section_seed(seed, cfg),
        device=dev,
        label=f"{dataset} (d = {dim})",
    )
    rows = []
    for method, res in results.items():
        nll = -res["log_q"]
        rows.append(
            pd.DataFrame(
                {
                    "dataset": dataset,
                    "dim": dim,
                    "method": method,
                    "role": method_role(method),
                    "trace_target": trace_target(method),
                    "point": np.arange(num_points),
                    "nll_nats": nll.numpy(),
                    "exact_nll_nats": (-exact).numpy(),
                    "abs_error": ((nll + exact).abs() / dim).numpy(),
                    "seconds_per_sample": res["seconds"] / num_points,
                    "nfe": res["nfe"],
                    "peak_mem_mb": res["peak_mem_mb"],
                    **_solver_columns(cfg),
                }
            )
        )
        log.info("%s d=%d %s: mean |error| %.3g nats/dim", dataset, dim, method, rows[-1]["abs_error"].mean())
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    write_csv(frame, out_csv)
    return frame


def run_heldout_likelihood(
    section: dict[str, Any],
    train_path: str | Path,
    test_path: str | Path,
    denoiser_path: str | Path,
    trace_paths: dict[str, str | Path],
    *,
    points_csv: str | Path,
    summary_csv: str | Path,
    markdown: str | Path,
    seed: int = 0,
    device: str = "auto",
) -> pd.DataFrame:
    r"""Bits per dimension of held-out images, :math:`-\log q_{t_{min}}(x)/(d \ln 2)` (Eq. 14 through
    :func:`dfcore.likelihood.log_likelihood`), by each method of ``section['heldout']['methods']`` on the first
    ``num_points`` images of ``test_path`` from the subsection's ``t_min``, with the models trained on ``train_path``
    (whose mean and covariance also give the prior). The other solver keys are those of ``section`` (the
    ``likelihood`` section).

    Writes one row per (method, image) to ``points_csv`` and one per method to ``summary_csv`` and ``markdown``:
    mean bits/dim and its standard error, the mean per-image |difference| to ``vjp`` (the exact trace of the same
    model, so the estimator's own error) in bits/dim, seconds per image and the speed-up over ``vjp``.
    Densities are those of the images as stored (no dequantisation), so the numbers compare estimators, not
    models from the literature."""
    heldout = section["heldout"]
    cfg = {**section, "t_min": float(heldout["t_min"])}
    attrs = {split: dataset_attrs(path) for split, path in (("train", train_path), ("test", test_path))}
    for split, path in (("train", train_path), ("test", test_path)):
        if attrs[split].get("split") != split:
            raise ValueError(f"{path}: not the {split!r} side of a split (its split is {attrs[split].get('split')!r})")
    if attrs["train"].get("holdout") != attrs["test"].get("holdout"):
        raise ValueError(f"{train_path} and {test_path} come from different splits (their holdout differs)")
    dev = resolve_device(device)
    x = load_dataset(test_path)[: int(heldout["num_points"])].to(torch.float64)
    num_points, dim = x.shape
    results = _method_results(
        x,
        heldout["methods"],
        cfg=cfg,
        denoiser_path=denoiser_path,
        trace_paths=trace_paths,
        mixture=None,
        train_path=train_path,
        seed=section_seed(seed, heldout),
        device=dev,
        label=f"held-out {Path(test_path).stem}",
    )
    points = pd.concat(
        [
            pd.DataFrame(
                {
                    "method": method,
                    "trace_target": trace_target(method),
                    "image": np.arange(num_points),
                    "nll_nats": (-res["log_q"]).numpy(),
                    "bpd": bits_per_dim(res["log_q"], dim).numpy(),
                    "seconds_per_image": res["seconds"] / num_points,
                    "nfe": res["nfe"],
                    "peak_mem_mb": res["peak_mem_mb"],
                    **_solver_columns(cfg),
                }
            )
            for method, res in results.items()
        ],
        ignore_index=True,
    )
    summary = summarize_heldout(points)
    write_csv(points, points_csv)
    write_csv(summary, summary_csv)
    write_text(summary.to_markdown(index=False, floatfmt=".4g") + "\n", markdown)
    return summary


def summarize_heldout(points: pd.DataFrame) -> pd.DataFrame:
    """One row per method of :func:`run_heldout_likelihood`'s per-image rows; the columns relative to ``vjp`` are NaN
    when ``vjp`` did not run."""
    vjp = points[points["method"] == VJPTrace.name].set_index("image")
    rows = []
    for method, grp in points.groupby("method", sort=False):
        bpd = grp.set_index("image")["bpd"]
        row = {
            "method": method,
            "trace_target": grp["trace_target"].iloc[0],
            "num_images": len(grp),
            "bpd_mean": bpd.mean(),
            "bpd_sem": bpd.std(ddof=1) / math.sqrt(len(bpd)) if len(bpd) > 1 else math.nan,
            "abs_diff_to_vjp_bpd": math.nan,
            "seconds_per_image": grp["seconds_per_image"].iloc[0],
            "speedup_over_vjp": math.nan,
            "nfe": int(grp["nfe"].iloc[0]),
            "peak_mem_mb": grp["peak_mem_mb"].iloc[0],
        }
        if len(vjp):
            row["abs_diff_to_vjp_bpd"] = float((bpd - vjp["bpd"].reindex(bpd.index)).abs().mean())
            row["speedup_over_vjp"] = float(vjp["seconds_per_image"].iloc[0] / row["seconds_per_image"])
        rows.append(row)
    return pd.DataFrame(rows)


def summarize_benchmark(points: pd.DataFrame) -> pd.DataFrame:
    r"""One row per (dim, method): mean and std of the per-point |error| (nats/dim), seconds per sample, NFE, peak
    memory; ``time_vs_floor`` :math:`s_{method}/s_{floor}`, the seconds per sample over those of the floor row of
    the same data set (NaN without one); for a peer, the mean per-point |NLL difference| (nats/dim) to the method
    of ours computing the same quantity (``agreement_with``, ``agreement_nats_per_dim``; for Hutchinson peers the
    probes differ, so this is the spread of two independent estimates, and ``mean_nll_difference`` compares their
    means)."""
    floor = points[points["method"] == FLOOR_METHOD].groupby("dataset")["seconds_per_sample"].first()
    rows = []
    for (dataset, dim, method), grp in points.groupby(["dataset", "dim", "method"], sort=False):
        row = {
            "dataset": dataset,
            "dim": int(dim),
            "method": method,
            "role": grp["role"].iloc[0],
            "abs_error_mean": grp["abs_error"].mean(),
            "abs_error_std": grp["abs_error"].std(ddof=1),
            "seconds_per_sample": grp["seconds_per_sample"].iloc[0],
            "time_vs_floor": grp["seconds_per_sample"].iloc[0] / floor.get(dataset, math.nan),
            "nfe": int(grp["nfe"].iloc[0]),
            "peak_mem_mb": grp["peak_mem_mb"].iloc[0],
            "num_points": len(grp),
            "agreement_with": "",
            "agreement_nats_per_dim": math.nan,
            "mean_nll_difference": math.nan,
        }
        ref = PEER_REFERENCE.get(method)
        if ref is not None:
            other = points[(points["dataset"] == dataset) & (points["method"] == ref)]
            if len(other):
                mine = grp.set_index("point")["nll_nats"]
                theirs = other.set_index("point")["nll_nats"].reindex(mine.index)
                row.update(
                    agreement_with=ref,
                    agreement_nats_per_dim=float(((mine - theirs).abs() / dim).mean()),
                    mean_nll_difference=float((mine - theirs).mean() / dim),
                )
        rows.append(row)
    return pd.DataFrame(rows)


def run_likelihood_benchmark(
    point_csvs: Sequence[str | Path], csv: str | Path, figure: str | Path, pareto: str | Path
) -> pd.DataFrame:
    """Collect the per-point CSVs of every data set into ``benchmark.csv``, its figure of error against time (the
    floor, whose error is that of omitting the trace, left out) and the Pareto figure (the floor as a line)."""
    frames = [pd.read_csv(p) for p in point_csvs]
    points = pd.concat([f for f in frames if len(f)], ignore_index=True)
    bench = summarize_benchmark(points).sort_values(["dim", "role", "method"], kind="stable")
    write_csv(bench, csv)
    plot_likelihood_benchmark(bench[bench["method"] != FLOOR_METHOD], figure)
    plot_likelihood_pareto(bench, pareto, HUTCHINSON_PROBES)
    return bench


def run_table2_mixture(
    section: dict[str, Any],
    data_path: str | Path,
    trace_path: str | Path,
    *,
    dataset: str,
    csv: str | Path,
    markdown: str | Path,
    figure: str | Path,
    zarr: str | Path,
    seed: int = 0,
    device: str = "auto",
) -> Any:
    """Table 2 on a Gaussian-mixture data set (``section`` = ``likelihood.table2``): relative trace error of each
    estimator against the exact mixture's Fisher trace, with the trace net of ``trace_path`` (target sq_norm,
    trained on samples) and its denoiser; :func:`dfcore.experiments.trace_error.run_trace_error` without the
    paper's rows."""
    from dfcore.experiments.trace_error import run_trace_error

    mixture = load_mixture(data_path)
    if not isinstance(mixture, GaussianMixture):
        raise ValueError(f"likelihood.table2: dataset {dataset!r} has no exact Gaussian mixture")
    return run_trace_error(
        section,
        data_path,
        trace_path,
        csv=csv,
        markdown=markdown,
        figure=figure,
        zarr=zarr,
        seed=seed,
        device=device,
        heading=f"Relative trace error against the exact Gaussian mixture, {dataset} (d = {mixture.dim})",
        paper_rows=False,
    )
