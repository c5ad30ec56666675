"""Snakemake wrapper of dfcore.trace_error.run_trace_error (rule `trace_error`, workflow/rules/nll.smk)."""

import logging
import sys

import torch

from dfcore.trace_error import run_trace_error

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
sys.stderr = open(snakemake.log[0], "a")  # tracebacks and progress bars go to the log too
torch.set_num_threads(snakemake.threads)  # no oversubscription on shared nodes
out, p = snakemake.output, snakemake.params  # params: exactly the config values run_trace_error reads
config = {"trace_error": p.trace_error, "seed": p.seed, "device": p.device}
ds = run_trace_error(config, snakemake.input.data, snakemake.input.trace,
                     csv=out.csv, markdown=out.markdown, figure=out.figure, zarr=out.zarr,
                     extra_trace_paths=list(snakemake.input.targets))  # one per further trace_error.trace_targets entry
logging.info("relative errors (%%):\n%s", ds["rel_error"].to_pandas().to_string())
