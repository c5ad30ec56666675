"""Command line: ``python -m dfcore <stage> --configfile FILE [options]`` (also the ``dfcore`` console script).

One tree for every stage of the workflow, each calling the same :mod:`dfcore.experiments` function as its
Snakemake rule. Every stage reads ``--configfile`` (validated against the schema, defaults filled); a stage
that writes one file takes ``--out``, a stage that writes several takes ``--out-dir`` (default: under the
config's ``results`` folder, laid out as the workflow lays it out).

    python -m dfcore config --configfile config/config.yaml          # validate a config
    python -m dfcore make-data --name checkerboard --out results/data/checkerboard.zarr
    python -m dfcore train --kind denoiser --dataset checkerboard --schedule VE --data D --out M
    python -m dfcore nll --dataset gmm --schedule VP --method analytic --data D --out nll.csv
    python -m dfcore trace-error --data D --trace T --out-dir results/trace_error
    python -m dfcore ot table3 --out-dir results/ot
    python -m dfcore adjoint mixture --schedule VP
    python -m dfcore likelihood benchmark --configfile config/paper.yaml
    python -m dfcore sd trace --pipeline resources/sd-pipeline --images resources/images --out trace.pt
    python -m dfcore likelihood --model my-model --images my-images --method vjp --out vjp.csv
    python -m dfcore train-trace --model my-model --images my-images --out my-trace

``python -m dfcore --help`` lists the stages with one line each (:data:`STAGES`); ``--version`` prints the
installed version. Help texts are plain text: each stage's parser gets its description from :data:`STAGES`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from dfcore.config import dataset_section, load_config, target_section

__all__ = ["STAGES", "Stage", "main"]

CONFIG_HELP = "YAML config, read on top of the schema defaults and validated (default: %(default)s)"


def _parser(stage: str, config: bool = True) -> argparse.ArgumentParser:
    """The parser of ``stage`` with its plain-text description and (unless ``config`` is False) the
    ``--configfile`` option."""
    parser = argparse.ArgumentParser(prog=f"python -m dfcore {stage}", description=STAGES[stage].description)
    if config:
        parser.add_argument("--configfile", default="config/config.yaml", help=CONFIG_HELP)
    return parser


def _without(section: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in section.items() if key not in keys}


def _config_main(argv: Sequence[str] | None = None) -> None:
    """``python -m dfcore config --configfile FILE [--markdown] [--readme]``: validate a config, print the key table."""
    from dfcore import config

    parser = _parser("config")
    parser.add_argument("--markdown", action="store_true", help="print the table of every key instead")
    parser.add_argument("--readme", action="store_true", help="print config/README.md (generated from the schema)")
    args = parser.parse_args(argv)
    extra = (["--markdown"] if args.markdown else []) + (["--readme"] if args.readme else [])
    config.main(["--check", args.configfile, *extra] if not extra else extra)


def _make_data_main(argv: Sequence[str] | None = None) -> None:
    """``python -m dfcore make-data --name NAME --out STORE``: build one data set of the ``datasets`` section."""
    from dfcore.experiments.data import prepare_dataset

    parser = _parser("make-data")
    parser.add_argument("--name", required=True, help="a data set of the config's datasets section")
    parser.add_argument("--out", required=True, help="Zarr store to write")
    args = parser.parse_args(argv)
    cfg = load_config(args.configfile)
    prepare_dataset(args.name, cfg["datasets"].get(args.name), args.out)


def _train_main(argv: Sequence[str] | None = None) -> None:
    """``python -m dfcore train --kind {denoiser,trace} --dataset D --schedule S --data STORE --out CKPT``."""
    from dfcore.experiments.train import run_training
    from dfcore.schedules import get_schedule

    parser = _parser("train")
    parser.add_argument("--kind", choices=["denoiser", "trace"], required=True, help="the network to train")
    parser.add_argument("--dataset", required=True, help="data set name (selects its overrides in the config)")
    parser.add_argument("--schedule", required=True, help="noise schedule: VE, VP, subVP or EDM")
    parser.add_argument("--data", required=True, help="Zarr store of the data set (from make-data)")
    parser.add_argument("--out", required=True, help="checkpoint to write")
    parser.add_argument("--denoiser", help="trained denoiser checkpoint (for --kind trace)")
    parser.add_argument("--loss-csv", help="CSV of the loss at every step (default: none)")
    parser.add_argument("--resume", help="resume checkpoint path (written every checkpoint_every steps)")
    parser.add_argument("--target", help="--kind trace only: replace trace_net.target (as rule train_trace_target)")
    parser.add_argument(
        "--steps",
        type=int,
        help="--kind trace only: replace trace_net.steps, warmup_steps scaled alike (as rule train_trace_budget)",
    )
    args = parser.parse_args(argv)
    cfg = load_config(args.configfile)
    section = dataset_section(cfg["denoiser" if args.kind == "denoiser" else "trace_net"], args.dataset)
    if args.kind == "trace":  # as rules train_trace, train_trace_target and train_trace_budget see it
        target = args.target or section["target"]
        if args.steps:
            from dfcore.experiments.trace_budget import budget_section

            section = budget_section(section, target, args.steps)
        else:
            section = target_section(section, target)
    schedule = get_schedule(args.schedule, **cfg["schedules"].get(args.schedule, {}))
    run_training(
        args.kind,
        section,
        args.data,
        args.out,
        schedule=schedule,
        denoiser_path=args.denoiser,
        loss_csv=args.loss_csv,
        resume_path=args.resume,
        seed=cfg["seed"],
        device=cfg["device"],
    )


def _nll_main(argv: Sequence[str] | None = None) -> None:
    """``python -m dfcore nll --dataset D --schedule S --method M --data STORE --out CSV [--denoiser|--trace CKPT]``."""
    from dfcore.experiments.nll import run_nll
    from dfcore.schedules import get_schedule

    parser = _parser("nll")
    parser.add_argument("--dataset", required=True, help="data set name")
    parser.add_argument("--schedule", required=True, help="noise schedule: VE, VP, subVP or EDM")
    parser.add_argument("--method", required=True, help="trace estimator: analytic, dftm, vjp or hutchinson")
    parser.add_argument("--data", required=True, help="Zarr store of the data set")
    parser.add_argument("--out", required=True, help="CSV of the per-point log-likelihoods to write")
    parser.add_argument("--denoiser", help="trained denoiser checkpoint (methods vjp and hutchinson)")
    parser.add_argument("--trace", help="trained trace-net checkpoint (method dftm)")
    args = parser.parse_args(argv)
    cfg = load_config(args.configfile)
    run_nll(
        cfg["nll"],
        args.data,
        args.out,
        dataset=args.dataset,
        schedule_name=args.schedule,
        schedule=get_schedule(args.schedule, **cfg["schedules"].get(args.schedule, {})),
        method=args.method,
        seed=cfg["seed"],
        device=cfg["device"],
        denoiser_path=args.denoiser,
        trace_path=args.trace,
    )


def _trace_error_main(argv: Sequence[str] | None = None) -> None:
    """``python -m dfcore trace-error --data STORE --trace CKPT [--out-dir DIR]``: Table 2."""
    from dfcore.experiments.trace_error import run_trace_error

    parser = _parser("trace-error")
    parser.add_argument("--data", required=True, help="Zarr store of the data set of trace_error.dataset")
    parser.add_argument("--trace", required=True, help="trained trace-net checkpoint (the dftm row)")
    parser.add_argument(
        "--extra-trace",
        nargs="*",
        default=[],
        help="further trace-net checkpoints (other trace_net.target), rows dftm_<target>",
    )
    parser.add_argument("--out-dir", default=None, help="output folder (default: <results>/trace_error)")
    args = parser.parse_args(argv)
    cfg = load_config(args.configfile)
    section = cfg["trace_error"]
    out = Path(args.out_dir or Path(cfg["results"]) / "trace_error")
    stem = out / f"{section['dataset']}_{section['schedule']}"
    run_trace_error(
        section,
        args.data,
        args.trace,
        csv=stem.with_suffix(".csv"),
        markdown=stem.with_suffix(".md"),
        figure=stem.with_suffix(".png"),
        zarr=stem.with_suffix(".zarr"),
        seed=cfg["seed"],
        device=cfg["device"],
        extra_trace_paths=args.extra_trace,
    )


def _trace_budget_main(argv: Sequence[str] | None = None) -> None:
    """``python -m dfcore trace-budget --data STORE --nets CKPT... [--out-dir DIR]``: the training-budget study."""
    from dfcore.experiments.trace_budget import budget_runs, run_trace_budget

    parser = _parser("trace-budget")
    parser.add_argument("--data", required=True, help="Zarr store of the data set of trace_error.dataset")
    parser.add_argument(
        "--nets",
        nargs="+",
        required=True,
        help="trace-net checkpoints, one per target and budget of trace_budget (targets outermost, as the rule)",
    )
    parser.add_argument("--out-dir", default=None, help="output folder (default: <results>/trace_error)")
    args = parser.parse_args(argv)
    cfg = load_config(args.configfile)
    section = cfg["trace_error"]
    steps = dataset_section(cfg["trace_net"], section["dataset"])["steps"]
    out = Path(args.out_dir or Path(cfg["results"]) / "trace_error")
    run_trace_budget(
        section,
        args.data,
        budget_runs(cfg["trace_budget"], steps),
        args.nets,
        csv=out / "convergence.csv",
        figure=out / "convergence_steps.png",
        seed=cfg["seed"],
        device=cfg["device"],
    )


def _ot_main(argv: Sequence[str] | None = None) -> None:
    """``python -m dfcore ot {table3,convergence,protocols} --configfile FILE --out-dir DIR``."""
    from dfcore.experiments.ot import run_convergence, run_table3
    from dfcore.experiments.ot_protocols import run_protocols

    parser = _parser("ot")
    parser.add_argument(
        "command",
        choices=["table3", "convergence", "protocols"],
        help="table3: Table 3 with the checks; convergence: index against the step count; "
        "protocols: our protocol and the authors' side by side",
    )
    parser.add_argument("--out-dir", default=None, help="output folder (default: <results>/ot)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    cfg = load_config(args.configfile)
    out = Path(args.out_dir or Path(cfg["results"]) / "ot")
    common = dict(seed=cfg["seed"], device=cfg["device"], progress=not args.quiet)
    if args.command == "table3":
        table = run_table3(
            cfg["ot"],
            cfg["schedules"],
            csv_path=out / "table3.csv",
            markdown_path=out / "table3.md",
            heatmap_path=out / "table3_heatmap.png",
            fundamental_zarr=out / "fundamental.zarr",
            paths_zarr=out / "paths.zarr",
            config=cfg,
            **common,
        )
    elif args.command == "convergence":
        table = run_convergence(
            cfg["ot"], cfg["schedules"], csv_path=out / "convergence.csv", plot_path=out / "convergence.png", **common
        )
    else:
        table = run_protocols(
            cfg["ot"], cfg["schedules"], csv_path=out / "protocols.csv", plot_path=out / "protocols.png", **common
        )
    print(table.to_string(index=False, max_colwidth=14))


def _adjoint_main(argv: Sequence[str] | None = None) -> None:
    """``python -m dfcore adjoint {classifier,mixture,digits} --configfile FILE [--out-dir DIR]``."""
    from dfcore.experiments.adjoint import run_digits_task, run_mixture_task, run_train_classifier

    parser = _parser("adjoint")
    parser.add_argument(
        "command",
        choices=["classifier", "mixture", "digits"],
        help="classifier: train the digit classifier; mixture, digits: guided sampling on that task",
    )
    parser.add_argument("--out-dir", default=None, help="output folder (default: <results>/adjoint)")
    parser.add_argument(
        "--schedule", default=None, help="mixture task: schedule (default: first of adjoint.mixture.schedules)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    cfg = load_config(args.configfile)
    res = Path(cfg["results"])
    out_dir = Path(args.out_dir or res / "adjoint")
    adj = cfg["adjoint"]
    common = dict(seed=cfg["seed"], progress=not args.quiet)
    if args.command == "classifier":
        table = run_train_classifier(
            adj["classifier"],
            checkpoint_path=res / "models" / "digits_classifier.pt",
            metrics_path=out_dir / "classifier.csv",
            **common,
        )
    else:
        sched = args.schedule or adj["mixture"]["schedules"][0]
        sub = out_dir / (f"mixture_{adj['mixture']['dataset']}_{sched}" if args.command == "mixture" else "digits")
        out = {
            key: sub / name
            for key, name in [
                ("metrics", "metrics.csv"),
                ("agreement", "agreement.csv"),
                ("trajectories", "trajectories.zarr"),
                ("loss_plot", "loss_vs_time.png"),
                ("agreement_plot", "agreement.png"),
                ("grid_plot", "samples.png"),
                ("lambda_exact", "lambda_exact.csv"),
            ]
        }
        if args.command == "mixture":
            table = run_mixture_task(
                adj,
                cfg["schedules"],
                schedule_name=sched,
                data_path=res / "data" / f"{adj['mixture']['dataset']}.zarr",
                out=out,
                device=cfg["device"],
                config=cfg,
                **common,
            )
        else:
            table = run_digits_task(
                adj,
                denoiser_path=res / "models" / f"digits_{adj['digits']['schedule']}_denoiser.pt",
                classifier_path=res / "models" / "digits_classifier.pt",
                out=out,
                device=cfg["device"],
                config=cfg,
                **common,
            )
    print(table.to_string(index=False))


def _sd_main(argv: Sequence[str] | None = None) -> None:
    """``python -m dfcore sd {trace,nll,adjoint} --configfile FILE --out PATH``."""
    from dfcore.experiments.sd import run_adjoint, run_sd_nll, run_trace_net

    parser = _parser("sd")
    parser.add_argument(
        "command",
        choices=["trace", "nll", "adjoint"],
        help="trace: train the latent trace net; nll: DF-TM likelihoods; adjoint: DF-EA guidance",
    )
    parser.add_argument("--pipeline", help="local Stable Diffusion folder (default: config sd.pipeline)")
    parser.add_argument("--images", help="image folder for the trace net (default: sd.trace_net.image_dir)")
    parser.add_argument("--trace", help="trained trace-net checkpoint (nll)")
    parser.add_argument("--clip", help="local CLIPModel folder (default: sd.adjoint.clip_path)")
    parser.add_argument("--out", required=True, help="output folder (nll, adjoint) or checkpoint (trace)")
    args = parser.parse_args(argv)
    config = load_config(args.configfile)
    cfg, out = config["sd"], Path(args.out)
    pipeline = args.pipeline or cfg["pipeline"]
    if args.command == "trace":
        run_trace_net(
            cfg,
            pipeline,
            args.images or cfg["trace_net"]["image_dir"],
            str(out),
            str(out.with_suffix(".loss.csv")),
            device=config["device"],
            seed=config["seed"],
        )
    elif args.command == "nll":
        out.mkdir(parents=True, exist_ok=True)
        run_sd_nll(
            cfg,
            pipeline,
            args.trace,
            str(out / "nll.zarr"),
            str(out / "nll.csv"),
            str(out / "nll_vs_guidance.png"),
            str(out / "nll_seeds.png"),
            device=config["device"],
            config=config,
        )
    else:
        out.mkdir(parents=True, exist_ok=True)
        run_adjoint(
            cfg,
            pipeline,
            str(out / "metrics.csv"),
            str(out / "scores.png"),
            clip_path=args.clip,
            device=config["device"],
            config=config,
        )


def _likelihood_trace_targets() -> dict[str, str]:
    """Trace-net target of each dftm method of the likelihood stage (from its method registry)."""
    from dfcore.experiments.likelihood_methods import OWN_METHODS

    return {name: method.trace_target for name, method in OWN_METHODS.items() if method.trace_target}


def _model_options(parser: argparse._ActionsContainer, required: bool) -> None:
    """``--model``, ``--images`` and ``--cond``: a diffusers pipeline folder and an image folder."""
    parser.add_argument(
        "--model",
        required=required,
        help="diffusers pipeline folder saved with save_pretrained (unet/ with a UNet2DModel or "
        "UNet2DConditionModel, and scheduler/)",
    )
    parser.add_argument(
        "--images",
        required=required,
        help="folder of 8-bit PNG or JPEG images of the model's sample size (grayscale or RGB, converted to the "
        "model's channels; other sizes are refused)",
    )
    parser.add_argument(
        "--cond",
        default=None,
        help="conditional UNet only: a torch file with the encoder hidden states (1, L, D) to condition on "
        "(default: zeros of shape (1, 1, cross_attention_dim))",
    )


def _pretrained_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``likelihood --model DIR --images DIR``, in their own group of the help."""
    group = parser.add_argument_group(
        "bits/dim of an image folder under your diffusers model",
        "likelihood --model DIR --images DIR --method M [options]: no command, and --configfile is not read",
    )
    _model_options(group, required=False)
    group.add_argument(
        "--method",
        choices=list(_image_methods()),
        default=None,
        help="with --model: Fisher-trace estimator: vjp (exact, one VJP per coordinate), hutchinson (one "
        "Rademacher probe per image) or dftm (the trace net of --trace)",
    )
    group.add_argument("--trace", default=None, help="with --method dftm: trace net folder written by train-trace")
    group.add_argument(
        "--anchors",
        type=int,
        default=0,
        help="with --method dftm: also write the rows dftm_anchored, DF-TM rescaled per image by the exact trace at "
        "this many solver steps (fixed-step solvers; default: 0, none)",
    )
    group.add_argument("--out", default=None, help="with --model: CSV to write (default: bpd_<method>.csv)")
    group.add_argument("--t-min", type=float, default=None, help="with --model: lowest time (default: 1/T)")
    group.add_argument("--num-draws", type=int, default=1, help="dequantisation draws per image (default: 1)")
    group.add_argument("--solver", default="rk4", help="ODE solver: rk4, euler or dopri5 (default: rk4)")
    group.add_argument("--num-steps", type=int, default=20, help="fixed solver steps (default: 20)")
    group.add_argument(
        "--time-warp", choices=["log", "none"], default="log", help="steps uniform in log t or in t (default: log)"
    )
    group.add_argument("--batch-size", type=int, default=8, help="images per solve (default: 8)")
    group.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="UNet dtype")
    group.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    group.add_argument("--seed", type=int, default=0, help="seed of the dequantisation noise and probes")
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def _likelihood_pretrained(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``likelihood --model DIR --images DIR --method M``: bits/dim of an image folder (one CSV row per image)."""
    from dfcore.experiments.pretrained_images import image_likelihood
    from dfcore.fisher.trace import DFTMTrace

    if args.command is not None:
        parser.error(f"give either the command {args.command!r} or --model, not both")
    if args.images is None or args.method is None:
        parser.error("likelihood --model needs --images and --method")
    dftm = DFTMTrace.name
    if args.method == dftm and args.trace is None:
        parser.error(f"--method {dftm} needs --trace DIR (a trace net folder written by python -m dfcore train-trace)")
    if args.method != dftm and args.trace is not None:
        parser.error(f"--trace is used by --method {dftm} only; got --method {args.method}")
    if args.anchors < 0 or (args.anchors > 0 and args.method != dftm):
        parser.error(f"--anchors takes a count >= 0 and is used by --method {dftm} only")
    table = image_likelihood(
        args.model,
        args.images,
        args.method,
        args.out or f"bpd_{args.method}.csv",
        trace_dir=args.trace,
        cond=args.cond,
        t_min=args.t_min,
        num_draws=args.num_draws,
        solver=args.solver,
        num_steps=args.num_steps,
        time_warp=args.time_warp,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        seed=args.seed,
        progress=not args.quiet,
        anchors=args.anchors,
    )
    print(table[["image", "method", "bpd", "seconds"]].to_string(index=False))


def _image_methods() -> tuple[str, ...]:
    """The trace estimators of ``likelihood --model``."""
    from dfcore.experiments.pretrained_images import METHODS

    return METHODS


def _likelihood_parser() -> argparse.ArgumentParser:
    parser = _parser("likelihood")
    parser.add_argument(
        "command",
        nargs="?",
        choices=list(_LIKELIHOOD_COMMANDS),
        help="workflow command (not with --model): trace: train a trace net of --target on --dataset; dataset: "
        "every method on --dataset (points CSV); benchmark: the summary over likelihood.datasets; table2: "
        "Table 2 on --dataset; heldout: held-out bits/dim",
    )
    parser.add_argument("--dataset", help="a Gaussian-mixture data set (trace, dataset, table2)")
    parser.add_argument(
        "--target",
        choices=sorted(_likelihood_trace_targets().values()),
        default="sq_norm",
        help="trace-net target (trace)",
    )
    parser.add_argument(
        "--results",
        default=None,
        help="folder with the workflow's layout that inputs are read from and outputs written to "
        "(default: the config's results)",
    )
    _pretrained_options(parser)
    return parser


@dataclass(frozen=True)
class _LikelihoodRun:
    """What every workflow command of ``likelihood`` reads: its arguments, the config and the results folder."""

    args: argparse.Namespace
    cfg: dict[str, Any]
    res: Path

    @property
    def schedule(self) -> str:
        return str(self.cfg["likelihood"]["schedule"])

    @property
    def common(self) -> dict[str, Any]:
        return {"seed": self.cfg["seed"], "device": self.cfg["device"]}

    def data(self, dataset: str) -> Path:
        return self.res / "data" / f"{dataset}.zarr"

    def model(self, dataset: str, kind: str) -> Path:
        return self.res / "models" / f"{dataset}_{self.schedule}_{kind}.pt"

    def traces(self, dataset: str, methods: Sequence[str]) -> dict[str, str | Path]:
        return {t: self.model(dataset, f"trace_{t}") for m, t in _likelihood_trace_targets().items() if m in methods}


def _likelihood_trace(run: _LikelihoodRun) -> None:
    from dfcore.experiments import likelihood as bench

    dataset, target = run.args.dataset, run.args.target
    name = f"{dataset}_{run.schedule}_trace_{target}"
    bench.train_target_trace(
        _without(dataset_section(run.cfg["trace_net"], dataset), "target"),
        run.data(dataset),
        run.model(dataset, "denoiser"),
        target,
        run.res / "models" / f"{name}.pt",
        loss_csv=run.res / "models" / f"{name}_loss.csv",
        resume_path=run.res / "models" / "resume" / f"{name}.pt",
        **run.common,
    )


def _likelihood_dataset(run: _LikelihoodRun) -> None:
    from dfcore.experiments import likelihood as bench

    lik, dataset = run.cfg["likelihood"], run.args.dataset
    table = bench.run_likelihood_dataset(
        _without(lik, "datasets", "table2", "schedule", "heldout"),
        run.data(dataset),
        run.model(dataset, "denoiser"),
        run.traces(dataset, lik["methods"]),
        run.res / "likelihood" / f"points_{dataset}.csv",
        dataset=dataset,
        **run.common,
    )
    print(table.to_string(index=False))


def _likelihood_benchmark(run: _LikelihoodRun) -> None:
    from dfcore.experiments import likelihood as bench

    out = run.res / "likelihood"
    points = [out / f"points_{name}.csv" for name in run.cfg["likelihood"]["datasets"]]
    table = bench.run_likelihood_benchmark(points, out / "benchmark.csv", out / "benchmark.png", out / "pareto.png")
    print(table.to_string(index=False))


def _likelihood_table2(run: _LikelihoodRun) -> None:
    from dfcore.experiments import likelihood as bench

    dataset = run.args.dataset
    stem = run.res / "likelihood" / f"table2_{dataset}"
    bench.run_table2_mixture(
        _without(run.cfg["likelihood"]["table2"], "datasets"),
        run.data(dataset),
        run.model(dataset, "trace_sq_norm"),
        dataset=dataset,
        csv=stem.with_suffix(".csv"),
        markdown=stem.with_suffix(".md"),
        figure=stem.with_suffix(".png"),
        zarr=stem.with_suffix(".zarr"),
        **run.common,
    )
    print(stem.with_suffix(".md").read_text())


def _likelihood_heldout(run: _LikelihoodRun) -> None:
    from dfcore.experiments import likelihood as bench

    lik = run.cfg["likelihood"]
    held, out = lik["heldout"], run.res / "likelihood"
    table = bench.run_heldout_likelihood(
        _without(lik, "datasets", "table2", "schedule", "methods", "num_points", "seed", "t_min"),
        run.data(held["train"]),
        run.data(held["test"]),
        run.model(held["train"], "denoiser"),
        run.traces(held["train"], held["methods"]),
        points_csv=out / "heldout_points.csv",
        summary_csv=out / "heldout.csv",
        markdown=out / "heldout.md",
        **run.common,
    )
    print(table.to_string(index=False))


# The workflow commands of ``likelihood``; the ones that work on one data set need --dataset.
_LIKELIHOOD_COMMANDS: dict[str, Callable[[_LikelihoodRun], None]] = {
    "trace": _likelihood_trace,
    "dataset": _likelihood_dataset,
    "benchmark": _likelihood_benchmark,
    "table2": _likelihood_table2,
    "heldout": _likelihood_heldout,
}
_NEEDS_DATASET = ("trace", "dataset", "table2")


def _likelihood_main(argv: Sequence[str] | None = None) -> None:
    """``python -m dfcore likelihood {trace,dataset,benchmark,table2,heldout}``: the likelihood stage, or
    ``python -m dfcore likelihood --model DIR --images DIR --method M``: bits/dim of an image folder."""
    parser = _likelihood_parser()
    args = parser.parse_args(argv)
    if args.model is not None:
        _likelihood_pretrained(parser, args)
        return
    if args.command is None:
        parser.error("give a command (trace, dataset, benchmark, table2, heldout) or --model with --images")
    if args.images is not None or args.method is not None or args.trace is not None:
        parser.error(f"--images, --method and --trace go with --model, not with the command {args.command!r}")
    if args.command in _NEEDS_DATASET and not args.dataset:
        parser.error(f"likelihood {args.command} needs --dataset")
    cfg = load_config(args.configfile)
    _LIKELIHOOD_COMMANDS[args.command](_LikelihoodRun(args, cfg, Path(args.results or cfg["results"])))


def _trace_target_options(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """The options of ``train-trace`` that choose the regression target, its states, its weighting and the calibration."""
    from dfcore.integrations.pretrained import POSITIVE_TRACE_TARGETS
    from dfcore.models.trace_output import TRACE_PARAMETERIZATIONS
    from dfcore.paths import TRACE_STATES

    parser.add_argument(
        "--target",
        choices=list(POSITIVE_TRACE_TARGETS),
        default=defaults["target"],
        help="regression target: sq_norm (Alg. 1, |x0|^2 - |E[x0|xt]|^2), residual (|x0 - E[x0|xt]|^2, the "
        "same optimum with less noise at small t) or divergence (sigma^2/alpha times a probe estimate of "
        "div E[x0|xt], the model's own posterior variance; no x0 needed) (default: %(default)s)",
    )
    parser.add_argument(
        "--divergence-probes",
        type=int,
        default=defaults["divergence_probes"],
        help="Rademacher probes per sample of --target divergence (default: %(default)s)",
    )
    parser.add_argument(
        "--divergence-exact-max-dim",
        type=int,
        default=defaults["divergence_exact_max_dim"],
        help="--target divergence: the exact Jacobian trace (d Jacobian-vector products per sample) instead of "
        "probes for images of up to this many values (default: %(default)s)",
    )
    parser.add_argument(
        "--parameterization",
        choices=list(TRACE_PARAMETERIZATIONS),
        default=defaults["parameterization"],
        help="what the net's output sets: variance (c softplus(h)) or fisher (the logit of tr F sigma^2/d, "
        "accurate where the trace is far below its bound d/sigma^2) (default: %(default)s)",
    )
    parser.add_argument(
        "--ema-decay",
        type=float,
        default=defaults["ema_decay"],
        help="moving average of the weights over the steps, saved instead of the last iterate (default: %(default)s)",
    )
    parser.add_argument(
        "--likelihood-weight",
        action="store_true",
        help="weigh each sample's loss as the likelihood integrand weighs its error (small at large t)",
    )
    parser.add_argument("--init", default=None, help="a trace folder whose net starts the training (fine-tuning)")
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=defaults["calibration_images"],
        help="after training, calibrate the net on the likelihood paths of this many training images: per bin of "
        "log t, an offset that makes its mean equal the model's own posterior variance; 0: none (default: %(default)s)",
    )
    parser.add_argument(
        "--calibration-bins",
        type=int,
        default=defaults["calibration_bins"],
        help="bins of equal width in log t for --calibration-images (default: %(default)s)",
    )
    parser.add_argument(
        "--calibration-probes",
        type=int,
        default=defaults["calibration_probes"],
        help="Rademacher probes per state of the calibration's target (default: %(default)s)",
    )
    parser.add_argument(
        "--states",
        choices=list(TRACE_STATES),
        default=defaults["states"],
        help="training states: noised data (Alg. 1) or ode, the states a likelihood solve visits (the model's "
        "probability-flow ODE from the training images; --target divergence only) (default: %(default)s)",
    )
    parser.add_argument(
        "--ode-num-steps",
        type=int,
        default=defaults["ode_num_steps"],
        help="--states ode: RK4 steps of the training paths; match likelihood --num-steps (default: %(default)s)",
    )


def _train_trace_main(argv: Sequence[str] | None = None) -> None:
    """``python -m dfcore train-trace --model DIR --images DIR --out DIR``: the positive trace net (DF-TM)."""
    from dfcore import distributed
    from dfcore.experiments.pretrained import DEFAULTS
    from dfcore.experiments.pretrained_images import train_image_trace

    defaults = DEFAULTS["trace"]
    parser = _parser("train-trace", config=False)
    _model_options(parser, required=True)
    parser.add_argument("--out", required=True, help="folder to write the trace net to (unet/, trace.json, loss.csv)")
    parser.add_argument("--steps", type=int, default=defaults["steps"], help="training steps (default: %(default)s)")
    _trace_target_options(parser, defaults)
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"], help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=defaults["lr"], help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults["seed"], help="seed of the net and the batches")
    parser.add_argument(
        "--denoiser-input",
        action="store_true",
        help="the net also sees the denoiser's posterior mean E[x0|xt], from the pass the likelihood's drift makes",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda, cuda:N or auto; under torchrun, auto and cuda mean GPU LOCAL_RANK (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    section = {
        "steps": args.steps,
        "target": args.target,
        "divergence_probes": args.divergence_probes,
        "divergence_exact_max_dim": args.divergence_exact_max_dim,
        "ema_decay": args.ema_decay,
        "init": args.init,
        "likelihood_weight": args.likelihood_weight,
        "parameterization": args.parameterization,
        "denoiser_input": args.denoiser_input,
        "states": args.states,
        "ode_num_steps": args.ode_num_steps,
        "calibration_images": args.calibration_images,
        "calibration_bins": args.calibration_bins,
        "calibration_probes": args.calibration_probes,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup_steps": min(defaults["warmup_steps"], max(args.steps // 10, 0)),
        "seed": args.seed,
    }
    with distributed.process_group(args.device) as device:  # one process unless started by torchrun
        # rank 0 logs the folder it wrote, with the training time and final loss
        train_image_trace(args.model, args.images, args.out, section, cond=args.cond, device=device)


def _pretrained_main(argv: Sequence[str] | None = None) -> None:
    """``python -m dfcore pretrained {model,digits,trace,bpd} --configfile FILE``: the rules ``pretrained_*``."""
    from dfcore.experiments import pretrained_stage as stage

    parser = _parser("pretrained")
    parser.add_argument(
        "command",
        choices=["model", "digits", "trace", "bpd"],
        help="model: train the in-project DDPM (pretrained.model null); digits: write the digits split as PNG "
        "folders (pretrained.images null); trace: train the trace net; bpd: bits/dim table, summary and figure",
    )
    parser.add_argument("--results", default=None, help="results folder (default: the config's results)")
    args = parser.parse_args(argv)
    cfg = load_config(args.configfile)
    pre, seed, device = cfg["pretrained"], cfg["seed"], cfg["device"]
    out = Path(args.results or cfg["results"]) / "pretrained"
    model = pre["model"] or out / "model"
    digits = out / "digits"
    images = pre["images"] or digits / "test"
    train_images = pre["trace_images"] or pre["images"] or digits / "train"
    if args.command == "model":
        stage.run_model(pre["train"], out / "model", out / "model_loss.csv", seed=seed)
    elif args.command == "digits":
        stage.write_digits(pre["train"], pre["measure"]["num_images"], digits / "train", digits / "test", seed=seed)
    elif args.command == "trace":
        stage.run_trace(pre["trace"], model, train_images, out / "trace", cond=pre["cond"], device=device, seed=seed)
    else:
        trace = out / "trace" if "dftm" in pre["measure"]["methods"] else None
        csv, summary, plot = out / "bpd.csv", out / "summary.json", out / "bpd.png"
        stage.run_bpd(
            pre["measure"], model, images, trace, csv, summary, plot, cond=pre["cond"], device=device, seed=seed
        )


class Stage(NamedTuple):
    """One stage of the command line: its entry point and the plain-text line that ``--help`` shows."""

    run: Callable[[Sequence[str] | None], None]
    description: str


STAGES: dict[str, Stage] = {
    "config": Stage(_config_main, "validate a config file (or print the table of every key, or config/README.md)"),
    "make-data": Stage(_make_data_main, "build one data set of the datasets section as a Zarr store"),
    "train": Stage(_train_main, "train a denoiser or a DF-TM trace network (Alg. 1) on a data set, with resume"),
    "nll": Stage(_nll_main, "PF-ODE log-likelihoods (Eq. 14) of a data set with one trace estimator"),
    "trace-error": Stage(_trace_error_main, "Table 2: relative error of each Fisher-trace estimator"),
    "trace-budget": Stage(_trace_budget_main, "Table 2's DF-TM error against the trace net's training steps"),
    "likelihood": Stage(
        _likelihood_main,
        "mixture likelihood benchmark, Table 2, held-out digits; with --model: bits/dim of an image folder",
    ),
    "train-trace": Stage(
        _train_trace_main, "train the DF-TM trace net of a diffusers pipeline folder on an image folder"
    ),
    "adjoint": Stage(_adjoint_main, "adjoint guidance with DF-EA (Eq. 20): digit classifier, mixture and digits tasks"),
    "ot": Stage(_ot_main, "the optimal-transport test (Alg. 2): Table 3, convergence, the authors' protocol"),
    "sd": Stage(_sd_main, "Stable Diffusion: latent trace net, DF-TM likelihoods, DF-EA guidance (local weights)"),
    "pretrained": Stage(
        _pretrained_main, "the pretrained section: trace net and bits/dim table of a diffusers pipeline folder"
    ),
}


def _version() -> str:
    from dfcore import __version__

    return __version__


def _usage() -> str:
    width = max(len(name) for name in STAGES) + 2
    lines = [
        "usage: python -m dfcore [-h] [--version] STAGE [options]",
        "",
        "Run one stage of the diffusion-fisher workflow, with the same function as its Snakemake rule.",
        "Every workflow stage reads --configfile (default config/config.yaml), validated against the schema;",
        "likelihood --model and train-trace work on a diffusers pipeline folder and an image folder instead.",
        "",
        "stages:",
        *(f"  {name:<{width}}{stage.description}" for name, stage in STAGES.items()),
        "",
        "options:",
        "  -h, --help  show this message and exit",
        "  --version   show the version of dfcore and exit",
        "",
        "python -m dfcore STAGE --help lists the options of a stage.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its stage; ``--help`` lists the stages, ``--version`` prints the version."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv and argv[0] == "--version":
        print(f"dfcore {_version()}")
        return 0
    if not argv or argv[0] not in STAGES:
        problem = "no stage given" if not argv else f"unknown stage {argv[0]!r}"
        print(f"{_usage()}\n\nerror: {problem}; choose one of {', '.join(STAGES)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    STAGES[argv[0]].run(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
