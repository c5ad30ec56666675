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
from dfcore.io import write_csv
from dfcore.likelihood import gaussian_mixture_log_q0, log_likelihood
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
    device: str = "auto",
    denoiser_path: str | Path | None = None,
    trace_path: str | Path | None = None,
) -> pd.DataFrame:
    """The nll stage: NLL of the first ``nll.num_points`` samples of a data set (``section`` = the ``nll``
    config section), one CSV row per point.

    ``analytic`` uses the exact mixture of the dataset (its Gaussian mixture, or the Dirac mixture
    over its samples, for which :math:`\\log q_{t_{min}}` is compared); the other methods use the
    trained networks. The exact :math:`\\log q_0` (Gaussian mixtures) or :math:`\\log q_{t_{min}}`
    (Dirac mixtures) is stored next to the estimate when it exists.
    """
    cfg = section
    data = load_dataset(data_path)
    mixture = load_mixture(data_path)
    x = data[: int(cfg["num_points"])]
    device = resolve_device(device)
    denoiser = trace_model = None
    if method == "dftm":
        trace_model = load_trace_model(trace_path, device)
        denoiser = trace_model.denoiser
    elif method != "analytic":
        denoiser = load_denoiser(denoiser_path, device)
    gen = torch.Generator().manual_seed(int(seed) + int(cfg.get("seed", 0)))
    t_min = float(cfg["t_min"])
    result = log_likelihood(
        x.to(device), method=method, schedule=schedule, denoiser=denoiser, trace_model=trace_model,
        mixture=mixture if method == "analytic" else None, t_min=t_min, solver=cfg["solver"], rtol=float(cfg["rtol"]),
        atol=float(cfg["atol"]), num_steps=int(cfg["num_steps"]), num_probes=int(cfg["num_probes"]), generator=gen,
        data_mean=data.mean(0), data_cov=torch.cov(data.T).reshape(data.shape[1], data.shape[1]),
    )
    dim = data.shape[1]
    if isinstance(mixture, GaussianMixture):
        exact, label = gaussian_mixture_log_q0(mixture, x), "log_q0"
    elif data.shape[1] <= 16:
        exact, label = mixture.log_prob(x, t_min, schedule), "log_q_tmin"
    else:
        exact, label = torch.full((len(x),), float("nan"), dtype=torch.float64), "none"
    frame = pd.DataFrame({
        "dataset": dataset, "schedule": schedule_name, "method": method, "point": range(len(x)),
        "nll_nats": (-result["log_q"]).cpu().numpy(), "bpd": result["bpd"].cpu().numpy(),
        "exact_nll_nats": (-exact).cpu().numpy(), "exact_kind": label,
        "abs_error_nats_per_dim": ((result["log_q"].cpu() - exact).abs() / dim).numpy(),
        "nfe": result["nfe"], "seconds": result["seconds"], "solver": cfg["solver"], "t_min": t_min,
    })
    write_csv(frame, out_csv)
    return frame
