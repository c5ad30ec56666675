"""Rule `trace_error` (Table 2): dfcore.experiments.trace_error.run_trace_error."""

import logging

import torch

from dfcore.experiments.trace_error import run_trace_error
from dfcore.logs import rule_log

with rule_log(snakemake.log[0]):  # output, progress bars, warnings and tracebacks go to the rule's log
    torch.set_num_threads(snakemake.threads)
    out, p = snakemake.output, snakemake.params
    ds = run_trace_error(
        p.trace_error,
        snakemake.input.data,
        snakemake.input.trace,
        csv=out.csv,
        markdown=out.markdown,
        figure=out.figure,
        zarr=out.zarr,
        seed=p.seed,
        device=p.device,
        extra_trace_paths=list(snakemake.input.targets),
    )  # one per further trace_targets entry
    logging.info("relative errors (%%):\n%s", ds["rel_error"].to_pandas().to_string())
