"""Rule `ot_convergence`: dfcore.experiments.ot.run_convergence."""

import torch

from dfcore.experiments.ot import run_convergence
from dfcore.logs import rule_log

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
