"""Rules `sd_*`: dfcore.experiments.sd (the tiny test pipeline: dfcore.integrations.tiny_sd)."""

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
        sd.run_tiny_pipeline(p.sd, out.pipeline, out.clip, out.images, seed=p.seed)
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
        sd.run_sd_nll(
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
