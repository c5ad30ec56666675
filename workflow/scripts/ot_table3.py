"""Snakemake wrapper of dfcore.experiments.ot.run_table3 (rule `ot_table3`, workflow/rules/ot.smk)."""

import logging
import sys

import torch

from dfcore.experiments.ot import run_table3

with open(snakemake.log[0], "w") as log_file:
    sys.stderr = log_file  # tqdm progress and warnings go to the rule's log
    logging.basicConfig(stream=log_file, level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(snakemake.threads)
    run_table3(
        snakemake.params.ot,
        snakemake.params.schedules,
        seed=snakemake.params.seed,
        device=snakemake.params.device,
        csv_path=snakemake.output.csv,
        markdown_path=snakemake.output.markdown,
        heatmap_path=snakemake.output.heatmap,
        fundamental_zarr=snakemake.output.fundamental,
        paths_zarr=snakemake.output.paths,
        config=dict(snakemake.params.items()),  # provenance: the config values the rule declares
    )
