"""Where a workflow trace net's held-out bits/dim error comes from: per image and per band of t, and whether its bias
on the held-out digits' likelihood paths is the same as on the training digits'.

For each trace checkpoint (``{results}/models/digits_VP_trace_<target>.pt``, calibrated or not), along the
likelihood paths of :func:`dfcore.paths.likelihood_path_states` (RK4 with ``--num-steps`` log-time steps from
``--t-min``, no grid shift):

- ``heldout_trace_error.csv``: per held-out image (the first ``--num-images`` of the test store, as the
  ``likelihood_heldout`` stage takes them), what the net's error in the posterior variance,
  :math:`V_\\theta - V` with V the model's exact :math:`(\\sigma^2/\\alpha)\\operatorname{div}\\bar y_\\theta`,
  adds to bits/dim: :math:`\\tfrac12\\int g^2 (\\alpha^2/\\sigma^4)(V_\\theta - V)\\,dt/(d\\ln 2)` (Eq. 17 inside
  Eq. 14) with RK4's own 3/8-rule weights, so that it predicts the stage's |bpd − bpd(vjp)|; per band of log t
  (``--bands`` of equal width over [t_min, 1]) and in all.
- ``heldout_trace_bias.csv``: per band, the net's bias :math:`\\overline{V_\\theta - V}/(d\\tilde\\sigma^2)` on the
  paths of ``--bias-images`` training digits and of as many held-out digits after the first ``--num-images``
  (V from ``--probes`` Rademacher probes per state).

Run: ``python benchmarks/heldout_trace_error.py --results results results/models/digits_VP_trace_divergence.pt``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
import torch

from dfcore.calibration import log_t_bins
from dfcore.data.store import load_dataset
from dfcore.io import write_csv
from dfcore.models.networks import LearnedTraceModel, divergence_target, load_trace_model
from dfcore.paths import LogTimeWarp, likelihood_path_states


def _variances(model: LearnedTraceModel, x: torch.Tensor, t: torch.Tensor, probes: int, exact: bool):
    """The net's V_theta and the model's V at the states, float64, in chunks."""
    den, gen = model.denoiser, torch.Generator().manual_seed(0)
    exact_max_dim = x[0].numel() if exact else 0
    target = [
        divergence_target(den.posterior_mean, xc, tc, model.schedule, probes, exact_max_dim, gen)
        for xc, tc in zip(x.split(256), t.split(256), strict=True)
    ]
    with torch.no_grad():
        net = [model.posterior_variance(xc, tc) for xc, tc in zip(x.split(1024), t.split(1024), strict=True)]
    return torch.cat(net).double(), torch.cat(target).double()


def _per_image_error(model: LearnedTraceModel, images: torch.Tensor, args: argparse.Namespace) -> pd.DataFrame:
    """Per image and band, the bits/dim that V_theta - V adds along the RK4 path (module docstring)."""
    x, t = likelihood_path_states(model.denoiser, images, t_min=args.t_min, num_steps=args.num_steps, offset=0.0)
    net, exact = _variances(model, x, t, 1, exact=True)
    warp = LogTimeWarp(model.denoiser, args.t_min)
    width = (1.0 - warp.s_min) / args.num_steps
    weights = torch.tensor([1 / 8, 3 / 8, 3 / 8, 1 / 8], dtype=torch.float64).repeat(args.num_steps)
    ds = (weights * width).repeat_interleave(len(images))
    alpha, sigma = model.schedule(t)
    dim = images[0].numel()
    # dt/ds = L t on the log-time grid
    added = ds * warp.schedule.rate * t * 0.5 * model.schedule.g2(t) * alpha**2 / sigma**4 * (net - exact)
    added = added / (dim * math.log(2))
    band = log_t_bins(t, args.t_min, args.bands)[0]
    image = torch.arange(len(images)).repeat(len(t) // len(images))
    frame = pd.DataFrame({"image": image.numpy(), "band": band.numpy(), "bpd_error": added.numpy()})
    return frame.groupby(["image", "band"], as_index=False).bpd_error.sum()


def _bias(model: LearnedTraceModel, points: torch.Tensor, args: argparse.Namespace) -> pd.DataFrame:
    gen = torch.Generator().manual_seed(1)
    rows = []
    for start in range(0, len(points), 16):
        offset = float(torch.rand((), generator=gen, dtype=torch.float64))
        batch = points[start : start + 16]
        x, t = likelihood_path_states(model.denoiser, batch, t_min=args.t_min, num_steps=args.num_steps, offset=offset)
        net, target = _variances(model, x, t, args.probes, exact=False)
        scale = x[0].numel() * model.sigma_tilde(t).double() ** 2
        rows.append(
            pd.DataFrame({"band": log_t_bins(t, args.t_min, args.bands)[0].numpy(), "bias": ((net - target) / scale)})
        )
    return pd.concat(rows).groupby("band", as_index=False).bias.mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traces", nargs="+", help="trace checkpoints of the workflow (digits)")
    parser.add_argument("--results", default="results", help="the workflow's results folder (its data stores)")
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--bias-images", type=int, default=64)
    parser.add_argument("--num-steps", type=int, default=20)
    parser.add_argument("--bands", type=int, default=8)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--t-min", type=float, default=1e-3)
    parser.add_argument("--out", default="results/benchmarks")
    args = parser.parse_args()
    train = load_dataset(Path(args.results) / "data" / "digits.zarr").float()
    test = load_dataset(Path(args.results) / "data" / "digitstest.zarr").float()
    errors, biases = [], []
    for path in args.traces:
        model = load_trace_model(path)
        per_band = _per_image_error(model, test[: args.num_images], args).assign(trace=path)
        errors.append(per_band)
        total = per_band.groupby("image").bpd_error.sum()
        print(f"{path}: predicted mean |bpd - bpd(vjp)| {total.abs().mean():.4f}, signed {total.mean():+.4f}")
        held_out = test[args.num_images : args.num_images + args.bias_images]
        for split, points in (("train", train[: args.bias_images]), ("heldout", held_out)):
            biases.append(_bias(model, points, args).assign(trace=path, split=split))
    out = Path(args.out)
    write_csv(pd.concat(errors, ignore_index=True), out / "heldout_trace_error.csv")
    bias = pd.concat(biases, ignore_index=True)
    write_csv(bias, out / "heldout_trace_bias.csv")
    print(bias.pivot_table(index="band", columns=["trace", "split"], values="bias").round(4).to_string())


if __name__ == "__main__":
    main()
