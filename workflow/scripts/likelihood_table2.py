"""Rule `likelihood_table2` (Table 2 on a Gaussian mixture): dfcore.experiments.likelihood.run_table2_mixture."""

import logging

import torch

from dfcore.experiments.likelihood import run_table2_mixture
from dfcore.logs import rule_log

with rule_log(snakemake.log[0]):  # output, progress bars, warnings and tracebacks go to the rule's log
    torch.set_num_threads(snakemake.threads)
    out, p = snakemake.output, snakemake.params
    ds = run_table2_mixture(
        p.table2,
        snakemake.input.data,
        snakemake.input.trace,
        dataset=snakemake.wildcards.dataset,
        csv=out.csv,
        markdown=out.markdown,
        figure=out.figure,
        zarr=out.zarr,
        seed=p.seed,
        device=p.device,
    )
    logging.info("relative errors (%%):\n%s", ds["rel_error"].to_pandas().to_string())
