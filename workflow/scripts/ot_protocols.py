"""Snakemake wrapper of dfcore.ot_protocols.run_protocols (rule `ot_protocols`, workflow/rules/ot.smk)."""

import logging
import sys

import torch

from dfcore.ot_protocols import run_protocols

with open(snakemake.log[0], "w") as log_file:
    sys.stderr = log_file  # tqdm progress and warnings go to the rule's log
    logging.basicConfig(stream=log_file, level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(snakemake.threads)
    run_protocols(
        snakemake.params.ot,
        snakemake.params.schedules,
        seed=snakemake.params.seed,
        device=snakemake.params.device,
        csv_path=snakemake.output.csv,
        plot_path=snakemake.output.plot,
    )
