"""Where on the likelihood's path a DF-TM trace net is off: its tr F against the model's exact (``vjp``) trace at
every state that the likelihood solves of held-out digits visit.

The states are those of :func:`dfcore.paths.likelihood_path_states` (RK4 with
``--num-steps`` log-time steps from t_min = 1/T, no grid shift), from the first ``--num-images`` held-out digits of
the model's split, dequantised with seed 0. Per solver evaluation (one time t) and trace folder the CSV holds the
mean over images of the exact trace over its bound d/sigma^2 (``exact_over_bound``), and of the relative error
(net - exact)/|exact|: its mean (``rel_error``, the bias) and mean absolute value (``abs_rel_error``).

Writes results/benchmarks/trace_path_error.csv, and with ``--per-image`` also trace_path_error_per_image.csv: the
relative error per state, one row per (trace folder, evaluation, image), which shows whether a net's error on one
image keeps its sign along the path. Run, with a model folder and one or more trace folders of
``python -m dfcore.experiments.pretrained train-trace``:
``python benchmarks/trace_path_error.py --model R/ddpm8k R/trace8k_var_ode R/trace8k_fisher_p4``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from dfcore.dequantize import dequantize
from dfcore.experiments.pretrained import digits_uint8, load_trace, split_of
from dfcore.fisher import fisher_trace
from dfcore.integrations.pretrained import load_model
from dfcore.io import write_csv
from dfcore.paths import likelihood_path_states


def _traces(method: str, states: torch.Tensor, t: torch.Tensor, chunk: int = 128, **deps: object) -> torch.Tensor:
    return torch.cat([fisher_trace(method, s, tt, **deps) for s, tt in zip(states.split(chunk), t.split(chunk))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the pipeline folder")
    parser.add_argument("traces", nargs="+", help="trace folders (train-trace's --out)")
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--num-steps", type=int, default=20)
    parser.add_argument("--out", default="results/benchmarks/trace_path_error.csv")
    parser.add_argument("--per-image", action="store_true", help="also write the error per image and state")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    holdout, seed = split_of(Path(args.model))
    images = digits_uint8("test", holdout, seed)[: args.num_images]
    x = dequantize(images, torch.Generator().manual_seed(0)).to(torch.float32)
    t_min = 1.0 / model.schedule.num_steps
    states, t = likelihood_path_states(model.denoiser, x, t_min=t_min, num_steps=args.num_steps, offset=0.0)
    exact = _traces("vjp", states, t, denoiser=model.denoiser).view(-1, len(x))
    _, sigma = model.schedule(t)
    bound = (states[0].numel() / sigma**2).view(-1, len(x))
    times = t.view(-1, len(x))[:, 0]
    rows, per_image = [], []
    for folder in args.traces:
        net = _traces("dftm", states, t, denoiser=model.denoiser, trace_model=load_trace(folder, model))
        rel = (net.view(-1, len(x)) - exact) / exact.abs()
        if args.per_image:
            frame = pd.DataFrame(rel.numpy(), index=times.numpy()).rename_axis("t").reset_index()
            frame = frame.melt(id_vars="t", var_name="image", value_name="rel_error")
            per_image.append(frame.assign(trace=folder, evaluation=frame.index % len(times)))
        for k, tk in enumerate(times.tolist()):
            rows.append(
                {
                    "trace": folder,
                    "evaluation": k,
                    "t": tk,
                    "exact_over_bound": float((exact[k] / bound[k]).mean()),
                    "rel_error": float(rel[k].mean()),
                    "abs_rel_error": float(rel[k].abs().mean()),
                }
            )
    frame = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_csv(frame, args.out)
    if per_image:
        write_csv(pd.concat(per_image), Path(args.out).with_name(Path(args.out).stem + "_per_image.csv"))
    print(frame.pivot_table(index="t", columns="trace", values="abs_rel_error").iloc[::4].to_string())


if __name__ == "__main__":
    main()
