"""Snakemake wrapper of dfcore.ot_cli.run_convergence (rule `ot_convergence`, workflow/rules/ot.smk)."""

import torch

from dfcore.logs import rule_log
from dfcore.ot_cli import run_convergence

with rule_log(snakemake.log[0]):  # output, progress bars, warnings and tracebacks go to the rule's log
    torch.set_num_threads(snakemake.threads)
    run_convergence(
        snakemake.params.ot,
        snakemake.params.schedules,
        seed=snakemake.params.seed,
        device=snakemake.params.device,
        csv_path=snakemake.output.csv,
        plot_path=snakemake.output.plot,
    )
