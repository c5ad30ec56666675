r"""The nll stage: PF-ODE likelihoods (Eq. 14, :func:`dfcore.likelihood.log_likelihood`) of stored data, CSV out.

The exact :math:`\log q_0` (Gaussian-mixture data) or :math:`\log q_{t_{min}}` (Dirac data, d <= 16) is
written next to each estimate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from dfcore.data.store import load_dataset, load_mixture
from dfcore.device import resolve_device
from dfcore.experiments.common import section_seed
from dfcore.fisher.trace import trace_estimator_from
from dfcore.io import expect_model, write_csv
from dfcore.likelihood import exact_log_densities, log_likelihood, moment_matched_prior
from dfcore.mixtures import GaussianMixture
from dfcore.models.networks import load_denoiser, load_trace_model
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
    dim = data.shape[1]
    trace_model = None
    if trace_path is not None:
        trace_model = expect_model(
            load_trace_model(trace_path, device, dataset=dataset), trace_path, schedule=schedule, dim=dim
        )
    denoiser = trace_model.denoiser if trace_model is not None else None
    if denoiser is None and denoiser_path is not None:
        denoiser = expect_model(
            load_denoiser(denoiser_path, device, dataset=dataset), denoiser_path, schedule=schedule, dim=dim
        )
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
    dim = data.shape[1]
    exact = exact_log_densities(mixture, x, t_min, schedule)
    # The headline comparison: log q_0 where it exists (Gaussian mixtures), else log q_{t_min} (NaN: none).
    label = "log_q0" if isinstance(mixture, GaussianMixture) else ("log_q_tmin" if dim <= 16 else "none")
    reference = exact["log_q0"] if label == "log_q0" else exact["log_q_tmin"]
    log_q = result.log_q.cpu()
    frame = pd.DataFrame(
        {
            "dataset": dataset,
            "schedule": schedule_name,
            "method": method,
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
            "solver": cfg["solver"],
            "t_min": t_min,
        }
    )
    write_csv(frame, out_csv)
    return frame
