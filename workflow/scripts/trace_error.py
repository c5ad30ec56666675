"""Snakemake wrapper of dfcore.trace_error.run_trace_error (rule `trace_error`, workflow/rules/nll.smk)."""

import logging

import torch

from dfcore.logs import rule_log
from dfcore.trace_error import run_trace_error

with rule_log(snakemake.log[0]):  # output, progress bars, warnings and tracebacks go to the rule's log
    torch.set_num_threads(snakemake.threads)  # no oversubscription on shared nodes
    out, p = snakemake.output, snakemake.params  # params: exactly the config values run_trace_error reads
    config = {"trace_error": p.trace_error, "seed": p.seed, "device": p.device}
    ds = run_trace_error(config, snakemake.input.data, snakemake.input.trace,
                         csv=out.csv, markdown=out.markdown, figure=out.figure, zarr=out.zarr)
    logging.info("relative errors (%%):\n%s", ds["rel_error"].to_pandas().to_string())
