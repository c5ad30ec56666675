"""Rule `adjoint_mixture`: dfcore.experiments.adjoint.run_mixture_task."""

import torch

from dfcore.experiments.adjoint import run_mixture_task
from dfcore.logs import rule_log

with rule_log(snakemake.log[0]):  # output, progress bars, warnings and tracebacks go to the rule's log
    torch.set_num_threads(snakemake.threads)
    schedules = {snakemake.wildcards.schedule: snakemake.params.schedule}
    run_mixture_task(
        snakemake.params.adjoint,
        schedules,
        schedule_name=snakemake.wildcards.schedule,
        data_path=snakemake.input.data,
        out=dict(snakemake.output.items()),
        seed=snakemake.params.seed,
        device=snakemake.params.device,
        config=dict(snakemake.params.items()),  # provenance: the config values the rule declares
    )
