"""Every figure of the experiments, drawn with seaborn on matplotlib's non-interactive Agg backend and
written atomically through :func:`dfcore.io.save_figure`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402, F401  (NullFormatter)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import xarray as xr  # noqa: E402

from dfcore.io import save_figure  # noqa: E402

__all__ = [
    "plot_likelihood_benchmark",
    "plot_ot_protocols",
    "plot_sd_adjoint",
    "plot_trace_errors",
    "thumbnail",
    "plot_sd_nll_vs_guidance",
    "plot_sd_nll_seeds",
    "plot_table3_heatmap",
    "plot_ot_convergence",
    "plot_loss_vs_time",
    "plot_lambda_agreement",
    "plot_digit_grid",
]


def plot_trace_errors(ds: xr.Dataset, path: str | Path, title: str = "") -> None:
    """Seaborn line plot of the relative error against t, one line per method (log scale)."""

    frame = ds["rel_error"].to_dataframe().reset_index()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    sns.lineplot(data=frame, x="t", y="rel_error", hue="estimator", marker="o", ax=ax)
    ax.set(yscale="log", ylabel="relative trace error (%)", xlabel="t", title=title)
    fig.tight_layout()
    save_figure(fig, path, dpi=150)


def thumbnail(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC))


def plot_sd_nll_vs_guidance(frame: pd.DataFrame, path: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    sns.lineplot(data=frame, x="guidance_scale", y="bpd", hue="prompt", marker="o", errorbar="sd", ax=ax)
    ax.set(xlabel="guidance scale w", ylabel="NLL (bits/dim, DF-TM)", title="NLL vs guidance scale")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_sd_nll_seeds(
    frame: pd.DataFrame, thumbs: np.ndarray, prompts: list[str], scales: list[float], seeds: list[int], path: str
) -> None:
    """NLL of each seed (first prompt, largest guidance scale), each bar with its image underneath."""
    j = len(scales) - 1
    sub = frame[(frame.prompt == prompts[0]) & (frame.guidance_scale == scales[j])]
    fig = plt.figure(figsize=(max(4, 1.3 * len(seeds)), 4.2))
    grid = fig.add_gridspec(2, len(seeds), height_ratios=[3, 1])
    ax = fig.add_subplot(grid[0, :])
    sns.barplot(data=sub, x="seed", y="bpd", color="tab:blue", ax=ax)
    ax.set(ylabel="NLL (bits/dim)", title=f"NLL across seeds: {prompts[0]!r}, w = {scales[j]:g}")
    for k in range(len(seeds)):
        tax = fig.add_subplot(grid[1, k])
        tax.imshow(thumbs[0, j, k])
        tax.set_axis_off()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_table3_heatmap(table: pd.DataFrame, path: str | Path) -> None:

    order_d = list(dict.fromkeys(table["dataset"]))
    order_s = list(dict.fromkeys(table["schedule"]))
    asym = (
        table.pivot(index="dataset", columns="schedule", values="asym_mean").reindex(index=order_d, columns=order_s)
        * 100
    )
    gap = table.pivot(index="dataset", columns="schedule", values="pot_rel_gap").reindex(index=order_d, columns=order_s)
    log_gap = np.log10(gap.clip(lower=1e-16))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.6 * len(order_d) + 2.2))
    sns.heatmap(
        asym, annot=True, fmt=".2f", cmap="rocket_r", vmin=0, ax=axes[0], cbar_kws={"label": "mean asymmetry (%)"}
    )
    axes[0].set_title("Alg. 2 asymmetry index (%)")
    sns.heatmap(
        log_gap, annot=True, fmt=".1f", cmap="mako_r", vmin=-16, ax=axes[1], cbar_kws={"label": "log10 relative gap"}
    )
    axes[1].set_title("POT: log10 (pairing cost / optimal cost - 1)")
    for ax in axes:
        ax.set_xlabel("schedule")
        ax.set_ylabel("data")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_ot_convergence(table: pd.DataFrame, path: str | Path) -> None:

    data = table.assign(asym_pct=100 * table["asym_mean"], err=table["autograd_rel_err"].clip(lower=1e-17))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    kw = dict(x="num_steps", hue="schedule", style="update", markers=True, dashes=True, data=data)
    sns.lineplot(y="asym_pct", ax=axes[0], **kw)
    axes[0].set(xscale="log", xlabel="Euler steps", ylabel="mean asymmetry (%)", title="Asymmetry vs step count")
    sns.lineplot(y="err", ax=axes[1], legend=False, **kw)
    axes[1].set(
        xscale="log",
        yscale="log",
        xlabel="Euler steps",
        ylabel="max relative error",
        title="Alg. 2 vs (alpha ratio)^2 J^-T by autograd",
    )
    steps = sorted(data["num_steps"].unique())
    for ax in axes:
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_loss_vs_time(history: pd.DataFrame, path: str | Path, title: str) -> None:
    """Mean loss of the current look-ahead x_0 against wall time, one line per method."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    sns.lineplot(data=history, x="wall_s", y="loss", hue="method", marker="o", ax=ax)
    ax.set(xlabel="wall time (s)", ylabel="mean loss L(x_0)", title=title)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_lambda_agreement(agreement: pd.DataFrame, path: str | Path, title: str) -> None:
    """Cosine and relative error of each method's lambda_k against autograd, per step (steps to go)."""
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    sns.lineplot(data=agreement, x="steps_to_go", y="cosine_mean", hue="method", marker="o", ax=axes[0])
    sns.lineplot(data=agreement, x="steps_to_go", y="rel_err_mean", hue="method", marker="o", ax=axes[1])
    axes[0].set(xlabel="steps to go (T at the right)", ylabel="cosine to ground truth")
    axes[1].set(xlabel="steps to go (T at the right)", ylabel="relative error", yscale="log")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_digit_grid(ds: xr.Dataset, path: str | Path, num_show: int = 8, image_shape: Sequence[int] = (8, 8)) -> None:
    """Final samples x_0, one row per method ('unguided' first), ``num_show`` columns."""
    methods = list(ds["guidance"].values)
    n = min(num_show, ds.sizes["sample"])
    fig, axes = plt.subplots(len(methods), n, figsize=(1.1 * n, 1.2 * len(methods)), squeeze=False)
    final = ds["x"].isel(step=-1)
    for r, method in enumerate(methods):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(
                final.sel(guidance=method).isel(sample=c).values.reshape(image_shape), cmap="gray_r", vmin=-1, vmax=1
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(method, rotation=0, ha="right", va="center")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_sd_adjoint(frame: pd.DataFrame, path: str | Path, reward: str) -> None:
    """Bars of the reward gain and the seconds per image of each adjoint-guidance method."""
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
    sns.barplot(data=frame, x="method", y="improvement", ax=axes[0])
    axes[0].set(ylabel=f"{reward} score gain", title="reward improvement")
    sns.barplot(data=frame, x="method", y="seconds", ax=axes[1])
    axes[1].set(ylabel="seconds per image", title="wall time")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_ot_protocols(table: pd.DataFrame, path: str | Path, paper: dict[str, float]) -> None:
    """Mean asymmetry against steps per schedule and protocol, one panel per data set; dotted: the paper's values."""
    data_sets = list(dict.fromkeys(table["data"]))
    schedules = list(dict.fromkeys(table["schedule"]))
    palette = dict(zip(schedules, sns.color_palette("deep", len(schedules))))
    fig, axes = plt.subplots(1, len(data_sets), figsize=(5.5 * len(data_sets), 4), squeeze=False, sharey=True)
    for ax, d_name in zip(axes[0], data_sets):
        part = table[table["data"] == d_name].assign(pct=lambda t: 100 * t["asymmetry_mean"])
        sns.lineplot(
            data=part,
            x="num_steps",
            y="pct",
            hue="schedule",
            style="protocol",
            markers=True,
            palette=palette,
            ax=ax,
            legend=ax is axes[0][0],
        )
        for s_name, value in paper.items():
            if s_name in palette:
                ax.axhline(value, color=palette[s_name], lw=0.8, ls=":")
        steps = sorted(part["num_steps"].unique())
        ax.set(
            xscale="log",
            xlabel="steps",
            ylabel="mean asymmetry (%)",
            title=f"{d_name} (dotted: paper, non-affine data)",
        )
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_likelihood_benchmark(bench: pd.DataFrame, path: str | Path) -> None:
    """Seaborn log-log plot of mean |error| against seconds per sample, one marker per method, one panel per d."""
    frame = bench.copy()
    frame["abs_error_mean"] = frame["abs_error_mean"].clip(lower=1e-7)
    grid = sns.relplot(
        data=frame,
        x="seconds_per_sample",
        y="abs_error_mean",
        hue="method",
        style="role",
        col="dim",
        kind="scatter",
        s=80,
        height=3.2,
        aspect=1.0,
        facet_kws={"sharex": False, "sharey": False},
    )
    for dim, ax in grid.axes_dict.items():
        sub = frame[frame["dim"] == dim]
        ax.errorbar(
            sub["seconds_per_sample"],
            sub["abs_error_mean"],
            yerr=sub["abs_error_std"],
            fmt="none",
            ecolor="0.6",
            lw=0.8,
            zorder=0,
        )
        ax.set(xscale="log", yscale="log", title=f"d = {dim}")
    grid.set_axis_labels("seconds per sample", "mean |NLL - exact| (nats/dim)")
    save_figure(grid.figure, path, dpi=150)
