"""Snakemake wrapper of dfcore.nll.run_nll (rule `nll`, workflow/rules/nll.smk)."""

import logging

import torch

from dfcore.logs import rule_log
from dfcore.nll import run_nll

with rule_log(snakemake.log[0]):  # output, progress bars, warnings and tracebacks go to the rule's log
    torch.set_num_threads(snakemake.threads)  # no oversubscription on shared nodes
    p = snakemake.params  # exactly the config values run_nll reads (workflow/rules/nll.smk)
    config = {"nll": p.nll, "schedules": {snakemake.wildcards.schedule: p.schedule}, "seed": p.seed, "device": p.device}
    frame = run_nll(
        snakemake.wildcards.dataset,
        snakemake.wildcards.schedule,
        snakemake.wildcards.method,
        config,
        snakemake.input.data,
        snakemake.output[0],
        denoiser_path=snakemake.input.get("denoiser"),
        trace_path=snakemake.input.get("trace"),
    )
    logging.info("mean NLL %.4f nats (%.4f bits/dim)", frame["nll_nats"].mean(), frame["bpd"].mean())
