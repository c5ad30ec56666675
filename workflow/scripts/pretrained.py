"""Rules `pretrained_*`: dfcore.experiments.pretrained_stage."""

import torch

from dfcore.experiments import pretrained_stage as stage
from dfcore.logs import rule_log

with rule_log(snakemake.log[0]):  # output, progress bars, warnings and tracebacks go to the rule's log
    torch.set_num_threads(max(1, int(snakemake.threads)))
    p, inp, out = snakemake.params, snakemake.input, snakemake.output

    if snakemake.rule == "pretrained_model":
        stage.run_model(p.train, out.model, out.loss, seed=p.seed)
    elif snakemake.rule == "pretrained_digits":
        stage.write_digits(p.train, p.num_images, out.train, out.test, seed=p.seed)
    elif snakemake.rule == "pretrained_trace":
        stage.run_trace(
            p.trace,
            inp.model,
            inp.images,
            out.trace,
            cond=p.cond,
            device=p.device,
            seed=p.seed,
        )
    elif snakemake.rule == "pretrained_bpd":
        stage.run_bpd(
            p.measure,
            inp.model,
            inp.images,
            inp.get("trace"),
            out.csv,
            out.summary,
            out.plot,
            cond=p.cond,
            device=p.device,
            seed=p.seed,
        )
    else:
        raise ValueError(f"unknown rule {snakemake.rule}")
