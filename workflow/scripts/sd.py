"""Rules `sd_*`: dfcore.experiments.sd (the tiny test pipeline: tests/fixtures/tiny_sd.py)."""

import sys
from pathlib import Path

import torch

from dfcore.experiments import sd
from dfcore.logs import rule_log

with rule_log(snakemake.log[0]):  # output, progress bars, warnings and tracebacks go to the rule's log
    torch.set_num_threads(max(1, int(snakemake.threads)))
    p, inp, out = snakemake.params, snakemake.input, snakemake.output

    def folder(name):
        """The local folder of input ``name`` (rules list each one as a one-element input), or None."""
        value = inp.get(name)
        if not value:
            return None
        return str(value) if isinstance(value, str) else str(value[0])

    if snakemake.rule == "sd_tiny_pipeline":
        # Test inputs: the tiny pipeline is not part of dfcore but a fixture of the test suite.
        sys.path.insert(0, str(Path.cwd() / "tests"))  # jobs run in the workflow directory
        from fixtures.tiny_sd import run_tiny

        run_tiny(p.sd, out.pipeline, out.clip, out.images, seed=p.seed)
    elif snakemake.rule == "sd_trace_net":
        sd.run_trace_net(
            p.sd,
            folder("pipeline"),
            folder("images"),
            out.checkpoint,
            out.loss,
            device=p.device,
            seed=p.seed,
            resume=p.resume,
        )
    elif snakemake.rule == "sd_nll":
        sd.run_nll(
            p.sd,
            folder("pipeline"),
            snakemake.input.trace,
            out.zarr,
            out.csv,
            out.guidance,
            out.seeds,
            device=p.device,
            config={"sd": p.sd},
        )
    elif snakemake.rule == "sd_adjoint":
        sd.run_adjoint(
            p.sd,
            folder("pipeline"),
            out.metrics,
            out.plot,
            clip_path=folder("clip"),
            device=p.device,
            config={"sd": p.sd},
        )
    else:
        raise ValueError(f"unknown rule {snakemake.rule}")
