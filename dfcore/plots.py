"""Every figure of the experiments, drawn with seaborn on matplotlib's non-interactive Agg backend and
written atomically through :func:`dfcore.io.save_figure`.

All figures share one look, :data:`THEME` (seaborn's ``whitegrid`` style, ``paper`` context and
``colorblind`` palette, constrained layout), applied by the :func:`styled` decorator around each figure
function, so matplotlib's global settings are left as they were. Layout rules that every figure keeps:

- the legend sits outside the data area (to the right of the panels, :func:`legend_outside`);
- x tick labels never overlap (:func:`fit_xticklabels` thins numeric ticks and turns categorical ones);
- a log axis draws positive values only: non-positive values are left out (:func:`positive_rows`) and a
  legend entry says how many (:func:`dropped_note`);
- symbols are written in mathtext (``$...$``).
"""

from __future__ import annotations

import functools
import math
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.font_manager  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import xarray as xr  # noqa: E402
from cycler import cycler  # noqa: E402
from matplotlib.artist import Artist  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from dfcore.io import save_figure  # noqa: E402

__all__ = [
    "PALETTE",
    "THEME",
    "dropped_note",
    "fit_xticklabels",
    "legend_outside",
    "plot_digit_grid",
    "plot_image_bpd",
    "plot_lambda_agreement",
    "plot_likelihood_benchmark",
    "plot_likelihood_pareto",
    "plot_loss_vs_time",
    "plot_ot_convergence",
    "plot_ot_protocols",
    "plot_sd_adjoint",
    "plot_sd_nll_seeds",
    "plot_sd_nll_vs_guidance",
    "plot_table3_heatmap",
    "plot_trace_budget",
    "plot_trace_errors",
    "positive_rows",
    "styled",
    "thumbnail",
]

PALETTE = "colorblind"


def _theme() -> dict[str, Any]:
    rc: dict[str, Any] = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper", font_scale=1.15)}
    rc.update(
        {
            "axes.prop_cycle": cycler(color=sns.color_palette(PALETTE)),
            "figure.constrained_layout.use": True,
            "figure.facecolor": "white",
            "savefig.facecolor": "white",
            "legend.frameon": False,
            "image.cmap": "rocket_r",
        }
    )
    return rc


THEME: dict[str, Any] = _theme()
"""The matplotlib rc settings of every figure (seaborn style, context and palette in one place)."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


def styled(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``func`` with :data:`THEME` in force (``matplotlib.rc_context``); global rc settings are restored."""

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with matplotlib.rc_context(cast(Any, THEME)):
            return func(*args, **kwargs)

    return wrapper


# --- layout helpers --------------------------------------------------------------------------------


def positive_rows(frame: pd.DataFrame, column: str) -> tuple[pd.DataFrame, int]:
    """The rows of ``frame`` whose ``column`` is > 0 (what a log axis can draw) and how many non-positive
    rows were left out (NaN rows are kept: seaborn skips them, and they are no zeros)."""
    values = frame[column]
    bad = values <= 0
    return frame[~bad], int(bad.sum())


def dropped_note(count: int, what: str = "values") -> Line2D | None:
    """An empty legend handle saying that ``count`` non-positive ``what`` are not drawn (None for 0)."""
    if count == 0:
        return None
    return Line2D([], [], linestyle="none", label=f"{count} {what} $\\leq 0$ not drawn (log axis)")


def legend_outside(
    fig: Figure,
    axes: Sequence[Axes],
    extra: Sequence[Artist | None] = (),
    wrap: int = 40,
    below: bool = False,
) -> None:
    """Move the legend of the first of ``axes`` that has one (seaborn's, section titles included) to the
    right of all panels (``loc="outside right upper"``, placed by the constrained layout; with ``below``,
    under them in one row, for a figure whose suptitle would meet a legend at its top right), drop the other
    panels' legends, and append ``extra`` handles (None entries are skipped). Labels longer than ``wrap``
    characters are wrapped."""
    handles: list[Artist] = []
    labels: list[str] = []
    for ax in axes:
        legend = ax.get_legend()
        if legend is not None:
            if not handles:
                handles, labels = ax.get_legend_handles_labels()
                if not handles:  # seaborn puts its entries on the legend only
                    pairs = [(h, t.get_text()) for h, t in zip(legend.legend_handles, legend.get_texts()) if h]
                    handles, labels = [h for h, _ in pairs], [label for _, label in pairs]
            legend.remove()
    for handle in extra:
        if handle is not None:
            handles.append(handle)
            labels.append(str(handle.get_label()))
    if handles and below:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 5))
    elif handles:
        labels = [textwrap.fill(s, wrap) for s in labels]
        rows = sum(1 + s.count("\n") for s in labels)
        ncols = math.ceil(rows / _legend_rows(fig))
        fig.legend(handles, labels, loc="outside right upper", ncols=ncols)


def _legend_rows(fig: Figure) -> int:
    """How many legend rows fit the height of ``fig`` (a row is about 1.8 font sizes high)."""
    size = matplotlib.font_manager.FontProperties(size=matplotlib.rcParams["legend.fontsize"]).get_size_in_points()
    return max(1, int(fig.get_figheight() * 72 / (1.8 * size)) - 1)


def _overlaps(boxes: list[Any], pad: float) -> bool:
    return any(a.x1 + pad > b.x0 for a, b in zip(boxes, boxes[1:]))


def fit_xticklabels(fig: Figure, pad: float = 4.0) -> None:
    """Make the x tick labels of every axes of ``fig`` keep ``pad`` pixels apart: numeric axes keep every
    other label (repeatedly, as fixed ticks) until they do; categorical axes (string labels) turn theirs by
    35 degrees instead. Minor tick labels of log axes are switched off."""
    for ax in fig.axes:
        if ax.get_xscale() == "log":
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    for ax in fig.axes:
        lo, hi = sorted(ax.get_xlim())
        ticks = [
            (loc, label)
            for loc, label in zip(ax.get_xticks(), ax.get_xticklabels())
            if lo <= loc <= hi and label.get_visible() and label.get_text()
        ]
        if len(ticks) < 2:
            continue
        boxes = [label.get_window_extent(renderer) for _, label in ticks]
        if not _overlaps(boxes, pad):
            continue
        if any(not _is_number(label.get_text()) for _, label in ticks):
            plt.setp(ax.get_xticklabels(), rotation=35, ha="right", rotation_mode="anchor")
            continue
        texts = [label.get_text() for _, label in ticks]
        locs = [loc for loc, _ in ticks]
        step = 1
        while step < len(ticks) and _overlaps(boxes[::step], pad):
            step *= 2
        ax.set_xticks(locs[::step], texts[::step])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _is_number(text: str) -> bool:
    """Whether a tick label shows a number: digits, or mathtext such as the log formatter's ``$\\mathdefault{10^{-2}}$``."""
    if text.startswith("$"):
        return True
    return text.replace("\u2212", "-").lstrip("-").replace(".", "", 1).isdigit()


def _log_x_ticks(ax: Axes) -> None:
    """Major ticks at 1, 2 and 5 times powers of ten, labelled as plain numbers (enough labels on a log range
    shorter than a decade; :func:`fit_xticklabels` thins them on a long one)."""
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _log_y_labels(ax: Axes) -> None:
    """Tick labels of a log y axis as plain numbers (``%g``), minor ones too where the range is short of a
    decade (matplotlib's default writes those as powers of ten, e.g. 1.775×10⁰)."""
    ax.yaxis.set_major_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def _step_ticks(ax: Axes, steps: Sequence[Any]) -> None:
    """Ticks at exactly the step counts of a log x axis, labelled as integers."""
    steps = sorted(steps)
    ax.set_xticks(steps, [str(int(s)) for s in steps])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def _finish(fig: Figure, path: str | Path, dpi: int) -> None:
    fit_xticklabels(fig)
    save_figure(fig, path, dpi=dpi)


# --- figures ----------------------------------------------------------------------------------------


@styled
def plot_trace_errors(ds: xr.Dataset, path: str | Path, title: str = "") -> None:
    """Relative error (%) of each Fisher-trace estimator against the exact trace, against t, one line per
    estimator, log y axis (Table 2 of Wang et al., 2025)."""
    frame, dropped = positive_rows(ds["rel_error"].to_dataframe().reset_index(), "rel_error")
    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    sns.lineplot(data=frame, x="t", y="rel_error", hue="estimator", marker="o", ax=ax)
    ax.set(yscale="log", ylabel="relative trace error (%)", xlabel="$t$", title=title)
    legend_outside(fig, [ax], [dropped_note(dropped)])
    _finish(fig, path, dpi=150)


@styled
def plot_trace_budget(frame: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """DF-TM relative trace error (%) against the trace net's training steps, log-log, one line per training
    target: one panel per evaluation time t (0.0 stands for t_zero) and a last panel with the mean over t."""
    mean = frame.groupby(["trace_target", "steps"], as_index=False, sort=False)["rel_error"].mean()
    times = sorted(frame["t"].unique(), reverse=True)
    panels = [(f"$t = {t:g}{'+' if t == 0 else ''}$", frame[frame["t"] == t]) for t in times]
    panels.append(("mean over $t$", mean))
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols + 1.6, 2.7 * nrows + 0.4), squeeze=False)
    hue_order = list(dict.fromkeys(frame["trace_target"]))
    steps = sorted(frame["steps"].unique())
    dropped = 0
    for ax, (label, data) in zip(axes.flat, panels):
        data, count = positive_rows(data, "rel_error")
        dropped += count
        sns.lineplot(data=data, x="steps", y="rel_error", hue="trace_target", hue_order=hue_order, marker="o", ax=ax)
        ax.set(xscale="log", yscale="log", xlabel="training steps", ylabel="relative trace error (%)", title=label)
        _step_ticks(ax, steps)
        _log_y_labels(ax)
    for ax in axes.flat[len(panels) :]:
        ax.remove()
    fig.suptitle(title)
    legend_outside(fig, list(axes.flat[: len(panels)]), [dropped_note(dropped, "errors")], below=True)
    _finish(fig, path, dpi=120)


def thumbnail(img: np.ndarray, size: int) -> np.ndarray:
    """``img`` (H, W, 3 uint8) resized to ``size`` x ``size`` with bicubic interpolation."""
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC))


@styled
def plot_sd_nll_vs_guidance(frame: pd.DataFrame, path: str) -> None:
    """NLL (bits/dim) of generated latents against the guidance scale w, mean and sd over seeds, per prompt."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    sns.lineplot(data=frame, x="guidance_scale", y="bpd", hue="prompt", marker="o", errorbar="sd", ax=ax)
    ax.set(xlabel="guidance scale $w$", ylabel="NLL (bits/dim, DF-TM)", title="NLL vs guidance scale")
    legend_outside(fig, [ax])
    _finish(fig, path, dpi=120)


@styled
def plot_sd_nll_seeds(
    frame: pd.DataFrame, thumbs: np.ndarray, prompts: list[str], scales: list[float], seeds: list[int], path: str
) -> None:
    """NLL of each seed (first prompt, largest guidance scale), each bar with its image underneath."""
    j = len(scales) - 1
    sub = frame[(frame.prompt == prompts[0]) & (frame.guidance_scale == scales[j])]
    fig = plt.figure(figsize=(max(4.5, 1.3 * len(seeds)), 4.4))
    grid = fig.add_gridspec(2, len(seeds), height_ratios=[3, 1])
    ax = fig.add_subplot(grid[0, :])
    sns.barplot(data=sub, x="seed", y="bpd", color=sns.color_palette(PALETTE)[0], ax=ax)
    title = textwrap.fill(f"NLL across seeds: {prompts[0]!r}, $w = {scales[j]:g}$", 60)
    ax.set(ylabel="NLL (bits/dim)", title=title)
    for k in range(len(seeds)):
        tax = fig.add_subplot(grid[1, k])
        tax.imshow(thumbs[0, j, k])
        tax.set_axis_off()
    _finish(fig, path, dpi=120)


@styled
def plot_table3_heatmap(table: pd.DataFrame, path: str | Path) -> None:
    """Left: mean asymmetry index (%) of Alg. 2, data set x schedule. Right: log10 of the relative gap between
    the PF-ODE pairing cost and the optimal transport cost (a gap of 0 is drawn at the round-off floor -16)."""
    order_d = list(dict.fromkeys(table["dataset"]))
    order_s = list(dict.fromkeys(table["schedule"]))
    asym = (
        table.pivot(index="dataset", columns="schedule", values="asym_mean").reindex(index=order_d, columns=order_s)
        * 100
    )
    gap = table.pivot(index="dataset", columns="schedule", values="pot_rel_gap").reindex(index=order_d, columns=order_s)
    log_gap = np.log10(gap.clip(lower=1e-16))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.6 * len(order_d) + 2.4))
    sns.heatmap(
        asym, annot=True, fmt=".2f", cmap="rocket_r", vmin=0, ax=axes[0], cbar_kws={"label": "mean asymmetry (%)"}
    )
    axes[0].set_title("Alg. 2 asymmetry index (%)")
    sns.heatmap(
        log_gap,
        annot=True,
        fmt=".1f",
        cmap="mako_r",
        vmin=-16,
        ax=axes[1],
        cbar_kws={"label": r"$\log_{10}$ relative gap (floor $-16$)"},
    )
    axes[1].set_title(r"POT: $\log_{10}(C_{\mathrm{PF\text{-}ODE}} / C_{\mathrm{OT}} - 1)$")
    for ax in axes:
        ax.set_xlabel("schedule")
        ax.set_ylabel("data")
        ax.tick_params(axis="y", labelrotation=0)
    _finish(fig, path, dpi=120)


@styled
def plot_ot_convergence(table: pd.DataFrame, path: str | Path) -> None:
    """Left: mean asymmetry (%) against the Euler step count per schedule (colour) and update (line style).
    Right: the largest relative difference between Alg. 2's A and (alpha_tmin / alpha_1)^2 J^{-T} with J the
    autograd Jacobian of the same Euler map (log axis; exact zeros are left out and counted in the legend)."""
    data = table.assign(asym_pct=100 * table["asym_mean"])
    err, dropped = positive_rows(data, "autograd_rel_err")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    kw: dict[str, Any] = dict(x="num_steps", hue="schedule", style="update", markers=True, dashes=True)
    hue_order = list(dict.fromkeys(data["schedule"]))
    style_order = list(dict.fromkeys(data["update"]))
    kw.update(hue_order=hue_order, style_order=style_order)
    sns.lineplot(data=data, y="asym_pct", ax=axes[0], **kw)
    axes[0].set(xscale="log", xlabel="Euler steps", ylabel="mean asymmetry (%)", title="Asymmetry vs step count")
    sns.lineplot(data=err, y="autograd_rel_err", ax=axes[1], legend=False, **kw)
    axes[1].set(
        xscale="log",
        yscale="log",
        xlabel="Euler steps",
        ylabel="max relative error",
        title=r"Alg. 2 vs $(\alpha_{t_{\min}} / \alpha_1)^2 J^{-\top}$ (autograd)",
    )
    steps = sorted(data["num_steps"].unique())
    for ax in axes:
        _step_ticks(ax, steps)
    legend_outside(fig, list(axes), [dropped_note(dropped, "errors")])
    _finish(fig, path, dpi=120)


@styled
def plot_loss_vs_time(history: pd.DataFrame, path: str | Path, title: str) -> None:
    """Mean loss of the current look-ahead x_0 against wall time, one line per method."""
    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    sns.lineplot(data=history, x="seconds", y="loss", hue="method", marker="o", ax=ax)
    ax.set(xlabel="wall time (s)", ylabel="mean loss $L(x_0)$", title=title)
    legend_outside(fig, [ax])
    _finish(fig, path, dpi=120)


@styled
def plot_lambda_agreement(agreement: pd.DataFrame, path: str | Path, title: str) -> None:
    """Cosine and relative error of each method's lambda_k against autograd, per step (steps to go); the relative
    error on a log axis, exact zeros (a method that is autograd to round-off) left out and counted in the legend."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    methods = list(dict.fromkeys(agreement["method"]))
    palette = dict(zip(methods, sns.color_palette(PALETTE, len(methods))))
    kw: dict[str, Any] = dict(x="steps_to_go", hue="method", hue_order=methods, palette=palette, marker="o")
    sns.lineplot(data=agreement, y="cosine_mean", ax=axes[0], **kw)
    err, dropped = positive_rows(agreement, "rel_err_mean")
    sns.lineplot(data=err, y="rel_err_mean", ax=axes[1], legend=False, **kw)
    xlabel = "steps to go ($T$ at the right)"
    axes[0].set(xlabel=xlabel, ylabel=r"cosine of $\lambda_k$ to autograd")
    axes[1].set(
        xlabel=xlabel,
        ylabel=r"$\|\lambda_k - \lambda_k^{\mathrm{auto}}\| \,/\, \|\lambda_k^{\mathrm{auto}}\|$",
        yscale="log",
    )
    for ax in axes:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.suptitle(title)
    legend_outside(fig, list(axes), [dropped_note(dropped, "errors")], below=True)
    _finish(fig, path, dpi=120)


@styled
def plot_digit_grid(ds: xr.Dataset, path: str | Path, num_show: int = 8, image_shape: Sequence[int] = (8, 8)) -> None:
    """Final samples x_0, one row per method ('unguided' first), ``num_show`` columns."""
    methods = list(ds["guidance"].values)
    n = min(num_show, ds.sizes["sample"])
    fig, axes = plt.subplots(len(methods), n, figsize=(1.1 * n + 1.2, 1.2 * len(methods)), squeeze=False)
    final = ds["x"].isel(step=-1)
    for r, method in enumerate(methods):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(
                final.sel(guidance=method).isel(sample=c).values.reshape(image_shape), cmap="gray_r", vmin=-1, vmax=1
            )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if c == 0:
                ax.set_ylabel(method, rotation=0, ha="right", va="center")
    save_figure(fig, path, dpi=120)


@styled
def plot_sd_adjoint(frame: pd.DataFrame, path: str | Path, reward: str) -> None:
    """Bars of the reward gain and the seconds per image of each adjoint-guidance method."""
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.4))
    methods = list(dict.fromkeys(frame["method"]))
    palette = dict(zip(methods, sns.color_palette(PALETTE, len(methods))))
    kw: dict[str, Any] = dict(x="method", hue="method", order=methods, palette=palette, legend=False)
    sns.barplot(data=frame, y="improvement", ax=axes[0], **kw)
    axes[0].set(ylabel=f"{reward} score gain", title="reward improvement")
    sns.barplot(data=frame, y="seconds", ax=axes[1], **kw)
    axes[1].set(ylabel="seconds per image", title="wall time")
    _finish(fig, path, dpi=120)


@styled
def plot_image_bpd(frame: pd.DataFrame, path: str | Path) -> None:
    """Bits/dim of an image folder per trace method (bars: mean over the images; dots: each image) and the
    seconds per image of each method (log axis)."""
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.4))
    methods = list(dict.fromkeys(frame["method"]))
    palette = dict(zip(methods, sns.color_palette(PALETTE, len(methods))))
    kw: dict[str, Any] = dict(x="method", hue="method", order=methods, palette=palette, legend=False)
    sns.barplot(data=frame, y="bpd", errorbar=None, alpha=0.6, ax=axes[0], **kw)
    sns.stripplot(data=frame, y="bpd", size=3, ax=axes[0], **kw)
    axes[0].set(ylabel="bits/dim", title=f"bits/dim of {frame['image'].nunique()} images")
    times, dropped = positive_rows(frame, "seconds")
    sns.barplot(data=times, y="seconds", errorbar=None, ax=axes[1], **kw)
    axes[1].set(yscale="log", ylabel="seconds per image", title="wall time")
    if dropped:
        legend_outside(fig, [axes[1]], [dropped_note(dropped)])
    _finish(fig, path, dpi=120)


@styled
def plot_ot_protocols(table: pd.DataFrame, path: str | Path, paper: dict[str, float]) -> None:
    """Mean asymmetry against steps per schedule and protocol, one panel per data set; dotted: the paper's values."""
    data_sets = list(dict.fromkeys(table["data"]))
    schedules = list(dict.fromkeys(table["schedule"]))
    protocols = list(dict.fromkeys(table["protocol"]))
    palette = dict(zip(schedules, sns.color_palette(PALETTE, len(schedules))))
    fig, axes = plt.subplots(1, len(data_sets), figsize=(4.6 * len(data_sets) + 1.8, 4), squeeze=False, sharey=True)
    for ax, d_name in zip(axes[0], data_sets):
        part = table[table["data"] == d_name].assign(pct=lambda t: 100 * t["asymmetry_mean"])
        sns.lineplot(
            data=part,
            x="num_steps",
            y="pct",
            hue="schedule",
            style="protocol",
            hue_order=schedules,
            style_order=protocols,
            markers=True,
            palette=palette,
            ax=ax,
        )
        for s_name, value in paper.items():
            if s_name in palette:
                ax.axhline(value, color=palette[s_name], lw=0.9, ls=":")
        ax.set(xscale="log", xlabel="Euler steps", ylabel="mean asymmetry (%)", title=d_name)
        _step_ticks(ax, part["num_steps"].unique())
    paper_line = Line2D([], [], color="0.4", lw=0.9, ls=":", label="paper, non-affine data")
    legend_outside(fig, list(axes[0]), [paper_line])
    _finish(fig, path, dpi=120)


@styled
def plot_likelihood_benchmark(bench: pd.DataFrame, path: str | Path) -> None:
    """Log-log plot of the mean |NLL - (-log q_0)| (nats/dim, error bar: sd over points) against seconds per
    sample, one marker per method, one panel per dimension d. Zero errors are left out, and so is the lower
    whisker where mean - sd <= 0; the legend counts both."""
    dims = list(dict.fromkeys(bench["dim"]))
    methods = list(dict.fromkeys(bench["method"]))
    roles = list(dict.fromkeys(bench["role"]))
    palette = dict(zip(methods, sns.color_palette(PALETTE, len(methods))))
    frame, dropped = positive_rows(bench, "abs_error_mean")
    fig, axes = plt.subplots(1, len(dims), figsize=(3.6 * len(dims) + 2.6, 3.6), squeeze=False)
    cut = 0
    for ax, dim in zip(axes[0], dims):
        sub = frame[frame["dim"] == dim]
        y = sub["abs_error_mean"].to_numpy(dtype=float)
        sd = np.nan_to_num(sub["abs_error_std"].to_numpy(dtype=float))
        lower = np.where(y - sd > 0, sd, 0.0)
        cut += int(np.count_nonzero((y - sd <= 0) & (sd > 0)))
        ax.errorbar(sub["seconds_per_sample"], y, yerr=[lower, sd], fmt="none", ecolor="0.6", elinewidth=0.8, zorder=0)
        _error_time_scatter(ax, sub, methods, roles, palette)
        ax.set(xscale="log", yscale="log", title=f"$d = {dim}$")
        ax.set(xlabel="seconds per sample", ylabel=r"mean $|\mathrm{NLL} - (-\log q_0)|$ (nats/dim)")
        _log_x_ticks(ax)
    whisker = (
        Line2D([], [], linestyle="none", label=f"{cut} lower whiskers (mean $-$ sd $\\leq 0$) not drawn")
        if cut
        else None
    )
    legend_outside(fig, list(axes[0]), [dropped_note(dropped, "errors"), whisker])
    _finish(fig, path, dpi=150)


def _error_time_scatter(
    ax: Axes, sub: pd.DataFrame, methods: list[str], roles: list[str], palette: dict[str, Any], zorder: int = 1
) -> None:
    """One marker per likelihood method: mean error against seconds per sample, coloured by method, shaped by role."""
    sns.scatterplot(
        data=sub,
        x="seconds_per_sample",
        y="abs_error_mean",
        hue="method",
        style="role",
        hue_order=methods,
        style_order=roles,
        palette=palette,
        s=70,
        zorder=zorder,
        ax=ax,
    )


@styled
def plot_likelihood_pareto(bench: pd.DataFrame, path: str | Path, probes: dict[str, int] | None = None) -> None:
    r"""Pareto view of the likelihood benchmark, one panel per dimension d: the mean error
    :math:`|\widehat{\mathrm{NLL}} - (-\log q_0)|/d` (nats/dim, log) against seconds per sample (log), one marker per
    estimator and peer; the Hutchinson rows (``probes``: method -> probe count) joined in probe order; the floor
    (role ``floor``, the ODE solve without a trace) a vertical line at its seconds, not a marker. Zero errors are
    left out and the legend counts them."""
    probes = probes if probes is not None else {}
    dims = list(dict.fromkeys(bench["dim"]))
    floor = bench[bench["role"] == "floor"]
    markers = bench[bench["role"] != "floor"]
    methods = list(dict.fromkeys(markers["method"]))
    roles = list(dict.fromkeys(markers["role"]))
    palette = dict(zip(methods, sns.color_palette(PALETTE, len(methods))))
    frame, dropped = positive_rows(markers, "abs_error_mean")
    fig, axes = plt.subplots(1, len(dims), figsize=(3.6 * len(dims) + 2.6, 3.6), squeeze=False)
    for ax, dim in zip(axes[0], dims):
        sub = frame[frame["dim"] == dim]
        chain = sub[sub["method"].isin(list(probes))]
        chain = chain.assign(probes=chain["method"].map(probes)).sort_values("probes")
        ax.plot(chain["seconds_per_sample"], chain["abs_error_mean"], color="0.55", lw=1.0, zorder=1)
        _error_time_scatter(ax, sub, methods, roles, palette, zorder=2)
        for seconds in floor.loc[floor["dim"] == dim, "seconds_per_sample"]:
            ax.axvline(seconds, color="0.3", ls="--", lw=1.0, zorder=0)
        ax.set(xscale="log", yscale="log", title=f"$d = {dim}$")
        ax.set(xlabel="seconds per sample", ylabel=r"mean $|\mathrm{NLL} - (-\log q_0)|$ (nats/dim)")
        _log_x_ticks(ax)
    counts = sorted({k for method, k in probes.items() if method in methods})
    joined = Line2D([], [], color="0.55", lw=1.0, label=f"Hutchinson, {', '.join(map(str, counts))} probes")
    floor_key = Line2D([], [], color="0.3", ls="--", lw=1.0, label="floor: the ODE solve without a trace")
    extra = [joined if counts else None, floor_key if len(floor) else None, dropped_note(dropped, "errors")]
    legend_outside(fig, list(axes[0]), extra)
    _finish(fig, path, dpi=150)
