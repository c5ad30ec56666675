"""Rule `trace_budget` (training-budget study of the trace net): dfcore.experiments.trace_budget.run_trace_budget."""

import logging

import torch

from dfcore.experiments.trace_budget import run_trace_budget
from dfcore.logs import rule_log

with rule_log(snakemake.log[0]):  # output, progress bars, warnings and tracebacks go to the rule's log
    torch.set_num_threads(snakemake.threads)
    out, p = snakemake.output, snakemake.params
    frame = run_trace_budget(
        p.trace_error,
        snakemake.input.data,
        p.runs,
        list(snakemake.input.nets),  # one per entry of p.runs, in its order
        csv=out.csv,
        figure=out.figure,
        seed=p.seed,
        device=p.device,
    )
    table = frame.pivot_table(index=["trace_target", "steps"], columns="t", values="rel_error")
    logging.info("relative errors (%%):\n%s", table.to_string())
