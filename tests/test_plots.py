"""Layout of every figure of dfcore.plots, checked with matplotlib's own geometry on small synthetic inputs.

Each figure function is rendered from a fixture built here (no training), with ``save_figure`` replaced by one
that writes the PNG and keeps the figure open. The checks, each shown to fail on a deliberately bad figure:

(a) no legend covers data: no point of a data line (sampled along its segments) or collection lies inside a
    legend's window extent, no legend overlaps an axes' data area, and every legend lies inside the figure;
(b) x tick labels of one axes do not overlap each other;
(c) no log axis has a non-positive value plotted;
(d) no title, label or legend entry writes math in ASCII (x_0, J^-T, alpha, ...) outside mathtext, and the
    texts named per figure are mathtext.

``python tests/test_plots.py OUTDIR`` writes every fixture figure to OUTDIR, to look at.
"""

from __future__ import annotations

import itertools
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.collections import Collection, LineCollection, PathCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.legend import Legend  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from dfcore import plots  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------- #
# geometry checks (each returns a list of problems; empty = fine)


def _legends(fig: Figure) -> list[Legend]:
    return [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]


def _data_points(artist, samples: int = 24) -> np.ndarray:
    """Display coordinates of an artist's data: a line's vertices and points along its segments, a scatter's
    offsets, the vertices (and segment points) of a line or polygon collection; (n, 2), finite rows only."""
    if isinstance(artist, Line2D):
        xy = artist.get_transform().transform(np.asarray(artist.get_xydata(), dtype=float))
        pieces = [xy] if artist.get_linestyle() in ("None", "none", "") else [_along(xy, samples)]
    elif isinstance(artist, PathCollection) and len(artist.get_offsets()):
        pieces = [artist.get_offset_transform().transform(np.asarray(artist.get_offsets(), dtype=float))]
    elif isinstance(artist, LineCollection):
        pieces = [
            _along(artist.get_transform().transform(np.asarray(s, float)), samples) for s in artist.get_segments()
        ]
    elif isinstance(artist, Collection):
        pieces = [artist.get_transform().transform(p.vertices) for p in artist.get_paths()]
    else:
        return np.empty((0, 2))
    pts = np.concatenate([p for p in pieces if len(p)] or [np.empty((0, 2))])
    return pts[np.isfinite(pts).all(axis=1)]


def _along(xy: np.ndarray, samples: int) -> np.ndarray:
    """Points along the polyline ``xy`` (display coordinates), ``samples`` per segment, gaps (NaN) skipped."""
    if len(xy) < 2:
        return xy
    frac = np.linspace(0, 1, samples)[:, None, None]
    segs = xy[:-1][None] + frac * (xy[1:] - xy[:-1])[None]
    return np.concatenate([xy, segs.reshape(-1, 2)])


def _data_artists(ax):
    return [a for a in [*ax.lines, *ax.collections] if a.get_visible()]


def _texts_drawn(fig: Figure) -> list:
    """Suptitle, axes titles, axis labels and tick labels that are shown."""
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
        texts += _shown_ticklabels(ax, "x") + _shown_ticklabels(ax, "y")
    return [t for t in texts if t.get_visible() and t.get_text()]


def _shown_ticklabels(ax, which: str, minor: bool = False) -> list:
    """The major (or minor) tick labels of axis ``which`` that are drawn: inside the view limits, visible, not
    empty."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    scale = axis.get_transform()  # compared in scaled units (log10 on a log axis)
    lo, hi = sorted(scale.transform(np.asarray(axis.get_view_interval(), dtype=float)))
    tol = 1e-9 * (hi - lo)
    raw = axis.get_minorticklocs() if minor else axis.get_majorticklocs()
    labels = axis.get_minorticklabels() if minor else axis.get_majorticklabels()
    locs = scale.transform(np.asarray(raw, dtype=float))
    return [
        label
        for loc, label in zip(locs, labels)
        if lo - tol <= loc <= hi + tol and label.get_visible() and label.get_text()
    ]


def legend_problems(fig: Figure) -> list[str]:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    problems = []
    fig_box = fig.bbox
    for legend in _legends(fig):
        box = legend.get_window_extent(renderer)
        if box.x0 < fig_box.x0 - 1 or box.y0 < fig_box.y0 - 1 or box.x1 > fig_box.x1 + 1 or box.y1 > fig_box.y1 + 1:
            problems.append(f"legend {box} sticks out of the figure {fig_box}")
        for text in _texts_drawn(fig):
            if box.overlaps(text.get_window_extent(renderer)):
                problems.append(f"legend overlaps the text {text.get_text()!r}")
        for ax in fig.axes:
            if not ax.has_data():
                continue
            if box.overlaps(ax.get_window_extent(renderer)):
                problems.append(f"legend {box.bounds} overlaps the data area of axes {ax.get_title()!r}")
            for artist in _data_artists(ax):
                pts = _data_points(artist)
                inside = (pts[:, 0] > box.x0) & (pts[:, 0] < box.x1) & (pts[:, 1] > box.y0) & (pts[:, 1] < box.y1)
                if inside.any():
                    problems.append(f"legend covers {inside.sum()} points of {artist} in axes {ax.get_title()!r}")
    return problems


def xtick_problems(fig: Figure) -> list[str]:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    problems = []
    for ax in fig.axes:
        labels = _shown_ticklabels(ax, "x") + _shown_ticklabels(ax, "x", minor=True)
        boxes = sorted(((label.get_window_extent(renderer), label) for label in labels), key=lambda b: b[0].x0)
        for (a, la), (b, lb) in zip(boxes, boxes[1:]):
            angle = math.radians(la.get_rotation() % 180)
            if angle == 0:
                clash = a.overlaps(b)
            else:  # parallel rotated labels: apart when their horizontal spacing times sin(angle) exceeds a line
                height = la.get_fontsize() * fig.dpi / 72
                spacing = abs(b.x1 - a.x1)
                clash = spacing * abs(math.sin(angle)) < height
            if clash:
                problems.append(f"x tick labels {la.get_text()!r} and {lb.get_text()!r} overlap in {ax.get_title()!r}")
    return problems


def _data_values(artist) -> np.ndarray:
    """An artist's data in data coordinates (n, 2) (lines, scatter offsets, collection vertices)."""
    if isinstance(artist, Line2D):
        xy = np.asarray(artist.get_xydata(), dtype=float)
    elif isinstance(artist, PathCollection) and len(artist.get_offsets()):
        xy = np.asarray(artist.get_offsets(), dtype=float)
    elif isinstance(artist, LineCollection):
        segs = [np.asarray(s, float) for s in artist.get_segments()]
        xy = np.concatenate(segs) if segs else np.empty((0, 2))
    elif isinstance(artist, Collection):
        paths = [p.vertices for p in artist.get_paths()]
        xy = np.concatenate(paths) if paths else np.empty((0, 2))
    else:
        xy = np.empty((0, 2))
    return xy.reshape(-1, 2)


def log_axis_problems(fig: Figure) -> list[str]:
    """Non-positive values in data coordinates on a log axis (a dimension drawn in axes coordinates, such as the
    x of ``axhline``, is not data)."""
    problems = []
    for ax in fig.axes:
        logs = [i for i, scale in enumerate((ax.get_xscale(), ax.get_yscale())) if scale == "log"]
        for artist, i in itertools.product(_data_artists(ax), logs):
            transform = artist.get_offset_transform() if isinstance(artist, PathCollection) else artist.get_transform()
            if not transform.contains_branch_seperately(ax.transData)[i]:
                continue
            values = _data_values(artist)[:, i]
            if (values[np.isfinite(values)] <= 0).any():
                problems.append(f"non-positive {'xy'[i]} value on the log axis of {ax.get_title()!r} ({artist})")
    return problems


# ASCII math: a symbol name, a power (x^2, )^2, J^-T), or a one-letter subscript (x_0, alpha_{k+1}) outside $...$.
_ASCII_MATH = re.compile(
    r"(?<![A-Za-z])(alpha|sigma|lambda|nabla|log10|sqrt)(?![A-Za-z])|(?<![A-Za-z])[A-Za-z)]\^|(?<![A-Za-z_])[A-Za-z]_(\{|[0-9A-Za-z](?![A-Za-z0-9]))"
)


def _texts(fig: Figure) -> list[str]:
    texts = [fig._suptitle.get_text()] if fig._suptitle is not None else []
    for ax in fig.axes:
        texts += [ax.get_title(loc) for loc in ("left", "center", "right")]
        texts += [ax.get_xlabel(), ax.get_ylabel()]
    for legend in _legends(fig):
        texts += [t.get_text() for t in legend.get_texts()] + [legend.get_title().get_text()]
    return [t for t in texts if t]


def ascii_math_problems(fig: Figure, must_be_math: tuple[str, ...] = ()) -> list[str]:
    problems = []
    texts = _texts(fig)
    for text in texts:
        plain = re.sub(r"\$[^$]*\$", "", text)
        if _ASCII_MATH.search(plain):
            problems.append(f"ASCII math in {text!r}")
    math_parts = " ".join(m for text in texts for m in re.findall(r"\$[^$]*\$", text))
    problems += [f"{name!r} is not in mathtext ({texts})" for name in must_be_math if name not in math_parts]
    return problems


def all_problems(fig: Figure, must_be_math: tuple[str, ...] = ()) -> list[str]:
    return legend_problems(fig) + xtick_problems(fig) + log_axis_problems(fig) + ascii_math_problems(fig, must_be_math)


# --------------------------------------------------------------------------------------------- #
# small synthetic inputs of each figure function


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _trace_errors(path: Path) -> None:
    estimators = ["VJP", "DF-TM", "Hutchinson (1)", "DF-TM [residual]"]
    t = [0.001, 0.1, 0.2, 0.5, 0.8, 1.0]
    err = 10 ** _rng().uniform(-2, 2, (len(estimators), len(t)))
    err[0, 0] = 0.0  # an exact zero: left out of the log axis
    ds = xr.Dataset({"rel_error": (("estimator", "t"), err)}, coords={"estimator": estimators, "t": t})
    plots.plot_trace_errors(ds, path, "Table 2: checkerboard, VE")


def _trace_budget(path: Path) -> None:
    times = [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
    rows = [
        {"trace_target": target, "steps": steps, "t": t, "rel_error": 100 * (1 + j) / steps**0.5 + t}
        for j, target in enumerate(("sq_norm", "residual", "divergence"))
        for steps in (2000, 4000, 8000, 16000, 32000)
        for t in times
    ]
    rows[0]["rel_error"] = 0.0  # an exact zero: left out of the log axis
    plots.plot_trace_budget(pd.DataFrame(rows), path, "DF-TM trace error against training steps, checkerboard / VE")


def _sd_nll_vs_guidance(path: Path) -> None:
    rows = [
        {"prompt": p, "guidance_scale": w, "seed": s, "bpd": 3 + 0.1 * w + 0.05 * s + i}
        for i, p in enumerate(["a cat", "a photograph of an astronaut riding a horse on the moon"])
        for w in (1.0, 3.0, 7.5)
        for s in range(3)
    ]
    plots.plot_sd_nll_vs_guidance(pd.DataFrame(rows), str(path))


def _sd_nll_seeds(path: Path) -> None:
    prompts, scales, seeds = ["a cat", "a dog"], [1.0, 7.5], [0, 1, 2, 3, 4, 5]
    rows = [
        {"prompt": p, "guidance_scale": w, "seed": s, "bpd": 3 + 0.01 * s}
        for p in prompts
        for w in scales
        for s in seeds
    ]
    thumbs = _rng().integers(0, 255, (len(prompts), len(scales), len(seeds), 16, 16, 3), dtype=np.uint8)
    plots.plot_sd_nll_seeds(pd.DataFrame(rows), thumbs, prompts, scales, seeds, str(path))


def _ot_table(path: Path) -> None:
    rows = [
        {"schedule": s, "dataset": d, "asym_mean": a, "pot_rel_gap": g}
        for s in ("VE", "VP", "subVP", "EDM")
        for d, a, g in (("single_gaussian", 3e-16, 0.0), ("affine", 0.0, -1.6e-16), ("non_affine", 0.25, 1e-3))
    ]
    plots.plot_table3_heatmap(pd.DataFrame(rows), path)


def _ot_convergence(path: Path) -> None:
    rows = [
        {
            "schedule": s,
            "update": u,
            "num_steps": n,
            "asym_mean": 0.2 + 0.1 * j + (0.5 / n if u == "euler" else 0.0),
            "autograd_rel_err": (1.0 / n if u == "euler" else (0.0 if n == 10 else 1e-15 * n)),
        }
        for j, s in enumerate(("VE", "VP", "subVP", "EDM"))
        for u in ("adjoint", "euler")
        for n in (10, 20, 40, 80, 160, 320, 640, 1280)
    ]
    plots.plot_ot_convergence(pd.DataFrame(rows), path)


def _ot_protocols(path: Path) -> None:
    rows = [
        {
            "protocol": p,
            "schedule": s,
            "data": d,
            "num_steps": n,
            "asymmetry_mean": 0 if d == "affine" else 0.1 + 0.02 * j,
        }
        for p in ("official", "ours")
        for j, s in enumerate(("VE", "VP", "subVP", "EDM"))
        for d in ("affine", "non_affine")
        for n in (10, 20, 50, 100, 200, 500, 1000)
    ]
    paper = {"VE": 25.28, "VP": 23.36, "subVP": 13.84, "EDM": 27.09}
    plots.plot_ot_protocols(pd.DataFrame(rows), path, paper)


_METHODS = ["analytic", "dfea", "dfea_centered", "vjp"]


def _loss_vs_time(path: Path) -> None:
    rows = [
        {"method": m, "seconds": 0.1 * (i + 1) * (k + 1), "loss": 2.0 - 0.3 * i - 0.1 * k, "update": i}
        for k, m in enumerate(_METHODS)
        for i in range(4)
    ]
    plots.plot_loss_vs_time(pd.DataFrame(rows), path, "mixture checkerboard VP: loss vs wall time")


def _lambda_agreement(path: Path) -> None:
    rows = [
        {
            "method": m,
            "steps_to_go": k,
            "cosine_mean": 1.0 - 0.1 * j * k / 8,
            "rel_err_mean": 0.0 if m in ("analytic", "vjp") and k == 8 else 10.0 ** (-12 + 3 * j) * (1 + k),
        }
        for j, m in enumerate(_METHODS)
        for k in range(1, 9)
    ]
    plots.plot_lambda_agreement(pd.DataFrame(rows), path, "mixture checkerboard VP: adjoint vs autograd")


def _digit_grid(path: Path) -> None:
    methods = ["unguided", *_METHODS]
    x = _rng().uniform(-1, 1, (len(methods), 6, 3, 64))
    ds = xr.Dataset({"x": (("guidance", "sample", "step", "dim"), x)}, coords={"guidance": methods})
    plots.plot_digit_grid(ds, path, num_show=4)


def _sd_adjoint(path: Path) -> None:
    rows = [
        {"prompt": "a cat", "seed": s, "method": m, "improvement": 1e-6 * (k + 1) * (s + 1), "seconds": 0.5 + k}
        for s in range(2)
        for k, m in enumerate(("dfea", "vjp"))
    ]
    plots.plot_sd_adjoint(pd.DataFrame(rows), path, "clip")


def _image_bpd(path: Path) -> None:
    rows = [
        {"image": f"img{i}.png", "method": m, "bpd": 3.0 + 0.1 * k + 0.01 * i, "seconds": 0.05 * 10**-k}
        for i in range(4)
        for k, m in enumerate(("vjp", "hutchinson", "dftm"))
    ]
    plots.plot_image_bpd(pd.DataFrame(rows), path)


def _likelihood_benchmark(path: Path) -> None:
    methods = [
        ("analytic", "sanity", 5e-4, 4e-4, 0.05),
        ("vjp", "ours", 1.36, 0.98, 0.152),
        ("hutchinson1", "ours", 2.09, 3.0, 0.121),  # sd > mean: no lower whisker
        ("hutchinson4", "ours", 1.5, 0.5, 0.131),
        ("dftm", "ours", 32.7, 0.8, 0.039),
        ("dftm_residual", "ours", 0.0, 0.0, 0.041),  # an exact zero: left out
        ("dftm_mixture_posterior", "ablation", 0.2, 0.1, 0.043),
        ("flow_matching_exact", "peer", 1.36, 0.98, 0.1),
        ("k_diffusion_hutchinson", "peer", 2.0, 1.0, 0.125),
    ]
    rows = [
        {
            "dataset": name,
            "dim": dim,
            "method": m,
            "role": r,
            "abs_error_mean": e,
            "abs_error_std": sd,
            "seconds_per_sample": s * dim / 4,
        }
        for dim, name in ((4, "lowrank4"), (16, "lowrank16"))
        for m, r, e, sd, s in methods
    ]
    plots.plot_likelihood_benchmark(pd.DataFrame(rows), path)


def _likelihood_pareto(path: Path) -> None:
    methods = [
        ("floor", "floor", 3.1, 0.4, 0.011),  # a line, not a marker
        ("analytic", "sanity", 5e-4, 4e-4, 0.05),
        ("vjp", "ours", 1.36, 0.98, 0.152),
        ("hutchinson1", "ours", 2.09, 3.0, 0.021),
        ("hutchinson4", "ours", 1.5, 0.5, 0.031),
        ("hutchinson16", "ours", 1.4, 0.3, 0.071),
        ("dftm", "ours", 32.7, 0.8, 0.013),
        ("dftm_residual", "ours", 0.0, 0.0, 0.014),  # an exact zero: left out
        ("flow_matching_exact", "peer", 1.36, 0.98, 0.1),
        ("kdiffusion_hutchinson", "peer", 2.0, 1.0, 0.125),
    ]
    rows = [
        {
            "dataset": name,
            "dim": dim,
            "method": m,
            "role": r,
            "abs_error_mean": e,
            "abs_error_std": sd,
            "seconds_per_sample": s * dim / 4,
        }
        for dim, name in ((4, "lowrank4"), (16, "lowrank16"))
        for m, r, e, sd, s in methods
    ]
    probes = {"hutchinson1": 1, "hutchinson4": 4, "hutchinson16": 16}
    plots.plot_likelihood_pareto(pd.DataFrame(rows), path, probes)


# figure function -> (fixture, texts that must be mathtext)
FIGURES: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "plot_trace_errors": (_trace_errors, ("t",)),
    "plot_sd_nll_vs_guidance": (_sd_nll_vs_guidance, ("w",)),
    "plot_sd_nll_seeds": (_sd_nll_seeds, ("w = 7.5",)),
    "plot_table3_heatmap": (_ot_table, (r"\log_{10}",)),
    "plot_ot_convergence": (_ot_convergence, (r"\alpha", r"J^{-\top}", r"\leq 0")),
    "plot_ot_protocols": (_ot_protocols, ()),
    "plot_trace_budget": (_trace_budget, ("t = 0+", r"\leq 0")),
    "plot_loss_vs_time": (_loss_vs_time, ("L(x_0)",)),
    "plot_lambda_agreement": (_lambda_agreement, (r"\lambda_k", "T", r"\leq 0")),
    "plot_digit_grid": (_digit_grid, ()),
    "plot_sd_adjoint": (_sd_adjoint, ()),
    "plot_image_bpd": (_image_bpd, ()),
    "plot_likelihood_benchmark": (_likelihood_benchmark, (r"\log q_0", "d = 4", r"\leq 0")),
    "plot_likelihood_pareto": (_likelihood_pareto, (r"\log q_0", "d = 4", r"\leq 0")),
}

# File name of each figure the workflow writes (workflow/rules/*.smk, dfcore/experiments/*.py) -> its function.
WORKFLOW_FIGURES = {
    "benchmark.png": "plot_likelihood_benchmark",
    "pareto.png": "plot_likelihood_pareto",
    "table2_{dataset}.png": "plot_trace_errors",
    "{TRACE_ERROR}.png": "plot_trace_errors",
    "table3_heatmap.png": "plot_table3_heatmap",
    "convergence.png": "plot_ot_convergence",
    "protocols.png": "plot_ot_protocols",
    "convergence_steps.png": "plot_trace_budget",
    "loss_vs_time.png": "plot_loss_vs_time",
    "agreement.png": "plot_lambda_agreement",
    "samples.png": "plot_digit_grid",
    "nll_vs_guidance.png": "plot_sd_nll_vs_guidance",
    "nll_seeds.png": "plot_sd_nll_seeds",
    "scores.png": "plot_sd_adjoint",
    "bpd.png": "plot_image_bpd",
}


class _Kept:
    """Stand-in for dfcore.io.save_figure: writes the PNG, keeps the figure open for the checks."""

    def __init__(self) -> None:
        self.figures: list[Figure] = []

    def __call__(self, fig: Figure, path, dpi: int = 120) -> None:
        fig.savefig(path, dpi=dpi)
        self.figures.append(fig)


def render(name: str, path: Path, monkeypatch: pytest.MonkeyPatch) -> Figure:
    kept = _Kept()
    monkeypatch.setattr(plots, "save_figure", kept)
    FIGURES[name][0](path)
    assert len(kept.figures) == 1 and path.read_bytes()[:4] == b"\x89PNG"
    return kept.figures[0]


# --------------------------------------------------------------------------------------------- #
# tests


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figure_layout(name, tmp_path, monkeypatch):
    fig = render(name, tmp_path / f"{name}.png", monkeypatch)
    try:
        assert all_problems(fig, FIGURES[name][1]) == []
    finally:
        plt.close(fig)


def test_every_figure_function_has_a_fixture():
    functions = {name for name in plots.__all__ if name.startswith("plot_")}
    assert functions == set(FIGURES)


def test_every_figure_the_workflow_writes_is_covered():
    """Every .png the rules or experiments name maps to a figure function that the layout test renders."""
    sources = [*(REPO / "workflow" / "rules").glob("*.smk"), *(REPO / "dfcore" / "experiments").glob("*.py")]
    names = set()
    for source in sources:
        for literal in re.findall(r"[\"']([^\"'\s]+\.png)[\"']", source.read_text()):
            names.add(re.sub(r"\{\{(\w+)\}\}", r"{\1}", literal.rsplit("/", 1)[-1]))
    for source in sources:  # ADJOINT_FILES-style lists and f"{...}.{ext}" patterns
        names |= {n for n in re.findall(r"\"(\w+\.png)\"", source.read_text())}
    names |= {"{TRACE_ERROR}.png"} if any("TRACE_ERROR}.png" in s.read_text() for s in sources) else set()
    names.discard("image_{:03d}.png")
    unknown = {n for n in names if n not in WORKFLOW_FIGURES and not n.startswith("image_")}
    assert not unknown, f"figures written by the workflow without a layout check: {unknown}"
    assert set(WORKFLOW_FIGURES.values()) <= set(FIGURES)


def test_the_theme_leaves_global_settings_alone(tmp_path, monkeypatch):
    before = dict(matplotlib.rcParams)
    plt.close(render("plot_loss_vs_time", tmp_path / "f.png", monkeypatch))
    assert dict(matplotlib.rcParams) == before


def test_every_figure_uses_the_theme_palette(tmp_path, monkeypatch):
    """The first line of each line plot has the theme palette's first colour."""
    first = matplotlib.colors.to_hex(plots.THEME["axes.prop_cycle"].by_key()["color"][0])
    for name in ("plot_trace_errors", "plot_ot_convergence"):
        fig = render(name, tmp_path / f"{name}.png", monkeypatch)
        lines = [ln for ln in fig.axes[0].lines if len(ln.get_xdata())]
        assert matplotlib.colors.to_hex(lines[0].get_color()) == first, name
        plt.close(fig)


def test_log_axes_leave_out_non_positive_values_and_say_how_many(tmp_path, monkeypatch):
    fig = render("plot_lambda_agreement", tmp_path / "a.png", monkeypatch)
    log_ax = fig.axes[1]
    drawn = sum(len(ln.get_xdata()) for ln in log_ax.lines)
    assert drawn == 4 * 8 - 2  # two zeros of the fixture left out
    labels = [t.get_text().replace("\n", " ") for t in fig.legends[0].get_texts()]
    assert "2 errors $\\leq 0$ not drawn (log axis)" in labels
    plt.close(fig)


# the checks themselves: each flags a deliberately bad figure


def _bad_figure() -> Figure:
    fig, ax = plt.subplots(figsize=(4, 3))
    x = np.linspace(0.1, 1, 50)
    for k in range(3):
        ax.plot(x, x + k, label=f"line {k}")
    ax.legend(loc="center")
    return fig


def test_the_legend_check_flags_a_legend_over_the_data():
    fig = _bad_figure()
    problems = legend_problems(fig)
    assert any("covers" in p for p in problems) and any("data area" in p for p in problems)
    plt.close(fig)


def test_the_legend_check_flags_a_legend_over_a_title():
    fig, ax = plt.subplots(figsize=(4, 3), layout="constrained")
    ax.plot([0, 1], [0, 1], label="a line with a long label")
    fig.suptitle("a suptitle long enough to reach the legend at the top right")
    fig.legend(loc="upper right")
    assert any("overlaps the text 'a suptitle" in p for p in legend_problems(fig))
    plt.close(fig)


def test_the_legend_check_passes_a_legend_outside():
    fig, ax = plt.subplots(figsize=(4, 3), layout="constrained")
    ax.plot([0, 1], [0, 1], label="a")
    fig.legend(loc="outside right upper")
    assert legend_problems(fig) == []
    plt.close(fig)


def test_the_tick_check_flags_overlapping_labels():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.set_xticks(range(30), [f"label number {k}" for k in range(30)])
    assert len(xtick_problems(fig)) == 29
    plt.setp(ax.get_xticklabels(), rotation=35, ha="right")
    assert xtick_problems(fig)  # turned, but still too dense
    plt.close(fig)


def test_fit_xticklabels_removes_overlaps():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot(np.arange(1000), np.arange(1000))
    ax.set_xticks(np.arange(0, 1000, 50), [str(k) for k in range(0, 1000, 50)])
    assert xtick_problems(fig)
    plots.fit_xticklabels(fig)
    assert xtick_problems(fig) == []
    assert len(ax.get_xticks()) < 20
    plt.close(fig)


def test_the_tick_check_sees_minor_labels_of_a_log_axis():
    fig, ax = plt.subplots(figsize=(2.5, 2))
    ax.plot([0.031, 0.15], [1, 2])
    ax.set_xscale("log")  # less than a decade: matplotlib labels the minor ticks, and they touch
    ax.xaxis.set_minor_formatter(matplotlib.ticker.LogFormatterSciNotation(labelOnlyBase=False))
    assert xtick_problems(fig)
    plots.fit_xticklabels(fig)
    assert xtick_problems(fig) == []
    plt.close(fig)


def test_the_log_check_flags_a_zero():
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [0.0, 1.0, 10.0])
    ax.set_yscale("log")
    assert len(log_axis_problems(fig)) == 1
    ax.set_yscale("linear")
    assert log_axis_problems(fig) == []
    plt.close(fig)


@pytest.mark.parametrize(
    "text, flagged",
    [
        ("Alg. 2 vs (alpha ratio)^2 J^-T by autograd", True),
        ("mean loss L(x_0)", True),
        ("relative error of lambda_k", True),
        (r"Alg. 2 vs $(\alpha\ \mathrm{ratio})^2 J^{-\top}$", False),
        (r"mean loss $L(x_0)$", False),
        ("dftm_residual", False),
        ("steps_to_go", False),
        ("single_gaussian", False),
    ],
)
def test_the_math_check(text, flagged):
    fig, ax = plt.subplots()
    ax.set_title(text)
    assert bool(ascii_math_problems(fig)) == flagged
    plt.close(fig)


def main(outdir: str) -> None:
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in sorted(FIGURES):
            fig = render(name, out / f"{name}.png", monkeypatch)
            print(name, all_problems(fig, FIGURES[name][1]) or "ok")
            plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1])
