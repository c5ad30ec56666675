"""Rule `nll`: dfcore.experiments.nll.run_nll."""

import logging

import torch

from dfcore.experiments.nll import run_nll
from dfcore.logs import rule_log
from dfcore.schedules import get_schedule

with rule_log(snakemake.log[0]):  # output, progress bars, warnings and tracebacks go to the rule's log
    torch.set_num_threads(snakemake.threads)
    p, w = snakemake.params, snakemake.wildcards
    frame = run_nll(
        p.nll,
        snakemake.input.data,
        snakemake.output[0],
        dataset=w.dataset,
        schedule_name=w.schedule,
        schedule=get_schedule(w.schedule, **p.schedule),
        method=w.method,
        seed=p.seed,
        device=p.device,
        denoiser_path=snakemake.input.get("denoiser"),
        trace_path=snakemake.input.get("trace"),
    )
    logging.info("mean NLL %.4f nats (%.4f bits/dim)", frame["nll_nats"].mean(), frame["bpd"].mean())
