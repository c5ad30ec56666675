r"""The nll stage: PF-ODE likelihoods (Eq. 14, :func:`dfcore.likelihood.log_likelihood`) of stored data, CSV out.

The exact :math:`\log q_0` (Gaussian-mixture data) or :math:`\log q_{t_{min}}` (Dirac data, d <= 16) is
written next to each estimate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from dfcore.data.store import load_dataset, load_mixture
from dfcore.device import resolve_device
from dfcore.experiments.common import section_seed
from dfcore.fisher.trace import trace_estimator_from
from dfcore.io import expect_model, write_csv
from dfcore.likelihood import LikelihoodResult, exact_log_densities, log_likelihood, moment_matched_prior
from dfcore.mixtures import GaussianMixture, Mixture
from dfcore.models.networks import LearnedDenoiser, LearnedTraceModel, load_denoiser, load_trace_model
from dfcore.schedules import Schedule

__all__ = ["run_nll"]


def run_nll(
    section: dict[str, Any],
    data_path: str | Path,
    out_csv: str | Path,
    *,
    dataset: str,
    schedule_name: str,
    schedule: Schedule,
    method: str,
    seed: int = 0,
    device: str | torch.device = "auto",
    denoiser_path: str | Path | None = None,
    trace_path: str | Path | None = None,
) -> pd.DataFrame:
    """The nll stage: NLL of the first ``nll.num_points`` samples of a data set (``section`` = the ``nll``
    config section), one CSV row per point.

    ``analytic`` uses the exact mixture of the dataset (its Gaussian mixture, or the Dirac mixture
    over its samples, for which :math:`\\log q_{t_{min}}` is compared); the other methods use the
    trained networks of ``trace_path`` (the trace net and its denoiser) or ``denoiser_path``. The exact densities of :func:`~dfcore.likelihood.exact_log_densities` are stored next to
    the estimate (columns ``log_q0`` and ``log_q_tmin``, NaN where unknown), with the error per dimension
    against each (``abs_error_q0_nats_per_dim``: solver plus t_min truncation; ``abs_error_tmin_nats_per_dim``:
    solver only). ``exact_nll_nats`` / ``abs_error_nats_per_dim`` repeat the comparison named by ``exact_kind``.
    """
    cfg = section
    data = load_dataset(data_path, dataset=dataset)
    mixture = load_mixture(data_path, dataset=dataset)
    x = data[: int(cfg["num_points"])]
    device = resolve_device(device)
    denoiser, trace_model = _networks(denoiser_path, trace_path, device, dataset, schedule, data.shape[1])
    pool = {
        "mixture": mixture,
        "schedule": schedule,
        "denoiser": denoiser,
        "trace_model": trace_model,
        "num_probes": int(cfg["num_probes"]),
        "generator": torch.Generator().manual_seed(section_seed(seed, cfg)),
    }
    t_min = float(cfg["t_min"])
    result = log_likelihood(
        x.to(device),
        trace_estimator_from(method, pool),
        log_prior=moment_matched_prior(schedule, data),
        t_min=t_min,
        solver=cfg["solver"],
        rtol=float(cfg["rtol"]),
        atol=float(cfg["atol"]),
        num_steps=int(cfg["num_steps"]),
    )
    frame = _nll_frame(result, mixture, x, t_min, schedule)
    frame.insert(0, "method", method)
    frame.insert(0, "schedule", schedule_name)
    frame.insert(0, "dataset", dataset)
    frame["solver"] = cfg["solver"]
    frame["t_min"] = t_min
    write_csv(frame, out_csv)
    return frame


def _networks(
    denoiser_path: str | Path | None,
    trace_path: str | Path | None,
    device: torch.device,
    dataset: str,
    schedule: Schedule,
    dim: int,
) -> tuple[LearnedDenoiser | None, LearnedTraceModel | None]:
    """The denoiser and trace net a method uses, each checked against the data set, schedule and dimension:
    the trace net's own denoiser when ``trace_path`` is given, else the one at ``denoiser_path`` (or none)."""
    if trace_path is not None:
        trace_model = expect_model(
            load_trace_model(trace_path, device, dataset=dataset), trace_path, schedule=schedule, dim=dim
        )
        return trace_model.denoiser, trace_model
    if denoiser_path is None:
        return None, None
    denoiser = expect_model(
        load_denoiser(denoiser_path, device, dataset=dataset), denoiser_path, schedule=schedule, dim=dim
    )
    return denoiser, None


def _nll_frame(result: LikelihoodResult, mixture: Mixture, x: Tensor, t_min: float, schedule: Schedule) -> pd.DataFrame:
    """One row per point: the estimate, the exact densities of :func:`exact_log_densities` and the errors."""
    dim = x.shape[1]
    exact = exact_log_densities(mixture, x, t_min, schedule)
    # The headline comparison: log q_0 where it exists (Gaussian mixtures), else log q_{t_min} (NaN: none).
    label = "log_q0" if isinstance(mixture, GaussianMixture) else ("log_q_tmin" if dim <= 16 else "none")
    reference = exact["log_q0"] if label == "log_q0" else exact["log_q_tmin"]
    log_q = result.log_q.cpu()
    return pd.DataFrame(
        {
            "point": range(len(x)),
            "nll_nats": (-log_q).numpy(),
            "bpd": result.bpd.cpu().numpy(),
            "exact_nll_nats": (-reference).numpy(),
            "exact_kind": label,
            "abs_error_nats_per_dim": ((log_q - reference).abs() / dim).numpy(),
            "log_q0": exact["log_q0"].numpy(),
            "log_q_tmin": exact["log_q_tmin"].numpy(),
            "abs_error_q0_nats_per_dim": ((log_q - exact["log_q0"]).abs() / dim).numpy(),
            "abs_error_tmin_nats_per_dim": ((log_q - exact["log_q_tmin"]).abs() / dim).numpy(),
            "nfe": result.nfe,
            "seconds": result.seconds,
        }
    )
