"""Snakemake wrapper of dfcore.experiments.ot.run_convergence (rule `ot_convergence`, workflow/rules/ot.smk)."""

import logging
import sys

import torch

from dfcore.experiments.ot import run_convergence

with open(snakemake.log[0], "w") as log_file:
    sys.stderr = log_file  # tqdm progress and warnings go to the rule's log
    logging.basicConfig(stream=log_file, level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(snakemake.threads)
    run_convergence(
        snakemake.params.ot,
        snakemake.params.schedules,
        seed=snakemake.params.seed,
        device=snakemake.params.device,
        csv_path=snakemake.output.csv,
        plot_path=snakemake.output.plot,
    )
