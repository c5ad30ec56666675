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
    python -m dfcore sd trace --pipeline resources/sd-pipeline --images resources/images --out trace.pt
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from dfcore.config import dataset_section, load_config

__all__ = ["STAGES", "main"]


def _parser(stage: str, doc: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m dfcore {stage}", description=doc)
    parser.add_argument("--configfile", default="config/config.yaml", help="YAML config (validated, defaults filled)")
    return parser


def _config_main(argv: Sequence[str] | None = None) -> None:
    """``python -m dfcore config --configfile FILE [--markdown] [--readme]``: validate a config, print the key table."""
    from dfcore import config

    parser = _parser("config", _config_main.__doc__)
    parser.add_argument("--markdown", action="store_true", help="print the table of keys")
    parser.add_argument("--readme", action="store_true", help="print config/README.md")
    args = parser.parse_args(argv)
    extra = (["--markdown"] if args.markdown else []) + (["--readme"] if args.readme else [])
    config.main(["--check", args.configfile, *extra] if not extra else extra)


def _make_data_main(argv: Sequence[str] | None = None) -> None:
    """``python -m dfcore make-data --name NAME --out STORE``: build one data set of the ``datasets`` section."""
    from dfcore.experiments.data import prepare_dataset

    parser = _parser("make-data", _make_data_main.__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    cfg = load_config(args.configfile)
    prepare_dataset(args.name, cfg["datasets"].get(args.name), args.out)


def _train_main(argv: Sequence[str] | None = None) -> None:
    """``python -m dfcore train --kind {denoiser,trace} --dataset D --schedule S --data STORE --out CKPT``."""
    from dfcore.experiments.train import run_training
    from dfcore.schedules import get_schedule

    parser = _parser("train", _train_main.__doc__)
    parser.add_argument("--kind", choices=["denoiser", "trace"], required=True)
    for key in ("dataset", "schedule", "data", "out"):
        parser.add_argument(f"--{key}", required=True)
    parser.add_argument("--denoiser", help="trained denoiser checkpoint (for --kind trace)")
    parser.add_argument("--loss-csv")
    parser.add_argument("--resume", help="resume checkpoint path (written every checkpoint_every steps)")
    args = parser.parse_args(argv)
    cfg = load_config(args.configfile)
    section = dataset_section(cfg["denoiser" if args.kind == "denoiser" else "trace_net"], args.dataset)
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
    from dfcore.experiments.likelihood import run_nll
    from dfcore.schedules import get_schedule

    parser = _parser("nll", _nll_main.__doc__)
    for key in ("dataset", "schedule", "method", "data", "out"):
        parser.add_argument(f"--{key}", required=True)
    parser.add_argument("--denoiser")
    parser.add_argument("--trace")
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

    parser = _parser("trace-error", _trace_error_main.__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--trace", required=True)
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


def _ot_main(argv: Sequence[str] | None = None) -> None:
    """``python -m dfcore ot {table3,convergence,protocols} --configfile FILE --out-dir DIR``."""
    from dfcore.experiments.ot import run_convergence, run_table3
    from dfcore.experiments.ot_protocols import run_protocols

    parser = argparse.ArgumentParser(prog="python -m dfcore ot", description=_ot_main.__doc__)
    parser.add_argument("command", choices=["table3", "convergence", "protocols"])
    parser.add_argument("--configfile", default="config/config.yaml", help="YAML config (validated, defaults filled)")
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

    parser = argparse.ArgumentParser(prog="python -m dfcore adjoint", description=_adjoint_main.__doc__)
    parser.add_argument("command", choices=["classifier", "mixture", "digits"])
    parser.add_argument("--configfile", default="config/config.yaml", help="YAML config (validated, defaults filled)")
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
    from dfcore.experiments.sd import run_adjoint, run_nll, run_trace_net

    parser = argparse.ArgumentParser(prog="python -m dfcore sd", description=_sd_main.__doc__)
    parser.add_argument("command", choices=["trace", "nll", "adjoint"])
    parser.add_argument("--configfile", default="config/config.yaml")
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
        run_nll(
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


STAGES: dict[str, Callable[[Sequence[str] | None], None]] = {
    "config": _config_main,
    "make-data": _make_data_main,
    "train": _train_main,
    "nll": _nll_main,
    "trace-error": _trace_error_main,
    "ot": _ot_main,
    "adjoint": _adjoint_main,
    "sd": _sd_main,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its stage; ``--help`` lists the stages."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        names = ", ".join(STAGES)
        print(f"usage: python -m dfcore <stage> [options]; stages: {names}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    STAGES[argv[0]](argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
