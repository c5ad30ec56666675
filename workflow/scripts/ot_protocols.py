"""Rule `ot_protocols`: dfcore.experiments.ot_protocols.run_protocols."""

import torch

from dfcore.experiments.ot_protocols import run_protocols
from dfcore.logs import rule_log

with rule_log(snakemake.log[0]):  # output, progress bars, warnings and tracebacks go to the rule's log
    torch.set_num_threads(snakemake.threads)
    run_protocols(
        snakemake.params.ot,
        snakemake.params.schedules,
        seed=snakemake.params.seed,
        device=snakemake.params.device,
        csv_path=snakemake.output.csv,
        plot_path=snakemake.output.plot,
    )
