"""Command line: ``python -m dfcore.cli <subcommand> --configfile config/config.yaml [options]``.

The dispatcher maps each subcommand to a handler taking ``(args, config)`` (a callable or a
``"module:function"`` string) in :data:`COMMANDS`. Stages with a command line of their own are
reached through :data:`GROUPS`: ``python -m dfcore.cli ot table3 ...`` calls ``dfcore.ot_cli.main``
with the remaining arguments (one line per stage; imported lazily). Each handler is a thin
wrapper around a ``dfcore`` entry point that the Snakemake rules call too.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any, Callable

from dfcore.config import load_config

__all__ = ["COMMANDS", "GROUPS", "main"]


def _make_data(args: argparse.Namespace, config: dict[str, Any]) -> None:
    from dfcore.data import prepare_dataset

    prepare_dataset(args.name, config, args.out)


def _train(args: argparse.Namespace, config: dict[str, Any]) -> None:
    from dfcore.training import run_training

    run_training(args.kind, args.dataset, args.schedule, config, args.data, args.out, denoiser_path=args.denoiser,
                 loss_csv=args.loss_csv, resume_path=args.resume)


def _nll(args: argparse.Namespace, config: dict[str, Any]) -> None:
    from dfcore.nll import run_nll

    run_nll(args.dataset, args.schedule, args.method, config, args.data, args.out, denoiser_path=args.denoiser,
            trace_path=args.trace)


def _trace_error(args: argparse.Namespace, config: dict[str, Any]) -> None:
    from dfcore.trace_error import run_trace_error

    run_trace_error(config, args.data, args.trace, csv=args.csv, markdown=args.markdown, figure=args.figure, zarr=args.zarr,
                    extra_trace_paths=args.extra_trace)


def _arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "make-data":
        parser.add_argument("--name", required=True)
        parser.add_argument("--out", required=True)
    elif name == "train":
        parser.add_argument("--kind", choices=["denoiser", "trace"], required=True)
        parser.add_argument("--dataset", required=True)
        parser.add_argument("--schedule", required=True)
        parser.add_argument("--data", required=True)
        parser.add_argument("--out", required=True)
        parser.add_argument("--denoiser", help="trained denoiser checkpoint (for --kind trace)")
        parser.add_argument("--loss-csv")
        parser.add_argument("--resume", help="resume checkpoint path (written every checkpoint_every steps)")
    elif name == "nll":
        for key in ("dataset", "schedule", "method", "data", "out"):
            parser.add_argument(f"--{key}", required=True)
        parser.add_argument("--denoiser")
        parser.add_argument("--trace")
    elif name == "trace-error":
        for key in ("data", "trace", "csv", "markdown", "figure", "zarr"):
            parser.add_argument(f"--{key}", required=True)
        parser.add_argument("--extra-trace", nargs="*", default=[],
                            help="further trace-net checkpoints (other trace_net.target), rows dftm_<target>")


COMMANDS: dict[str, str | Callable[[argparse.Namespace, dict[str, Any]], None]] = {
    "make-data": _make_data,
    "train": _train,
    "nll": _nll,
    "trace-error": _trace_error,
}


# Whole sub-command lines of other stages: name -> "module:main(argv)".
GROUPS: dict[str, str] = {
    "ot": "dfcore.ot_cli:main",
    "adjoint": "dfcore.adjoint_cli:main",
    "sd": "dfcore.sd_cli:main",
}


def _resolve(handler: str | Callable) -> Callable:
    if callable(handler):
        return handler
    module, _, func = handler.partition(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in GROUPS:
        _resolve(GROUPS[argv[0]])(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m dfcore.cli", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True,
                                help=f"also: {', '.join(GROUPS)} (their own sub-commands)")
    for name in COMMANDS:
        p = sub.add_parser(name)
        p.add_argument("--configfile", default="config/config.yaml")
        _arguments(name, p)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    _resolve(COMMANDS[args.command])(args, load_config(args.configfile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
