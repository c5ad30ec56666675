"""Rule `likelihood_table2` (Table 2 on a Gaussian mixture): dfcore.experiments.likelihood_benchmark.run_table2_mixture."""

import logging
import sys

import torch

from dfcore.experiments.likelihood_benchmark import run_table2_mixture

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
sys.stderr = open(snakemake.log[0], "a")
torch.set_num_threads(snakemake.threads)
out, p = snakemake.output, snakemake.params
ds = run_table2_mixture(p.table2, snakemake.input.data, snakemake.input.trace, dataset=snakemake.wildcards.dataset,
                        csv=out.csv, markdown=out.markdown, figure=out.figure, zarr=out.zarr, seed=p.seed,
                        device=p.device)
logging.info("relative errors (%%):\n%s", ds["rel_error"].to_pandas().to_string())
