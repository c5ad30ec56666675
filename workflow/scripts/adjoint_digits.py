"""Rule `adjoint_digits`: dfcore.experiments.adjoint.run_digits_task."""

import torch

from dfcore.experiments.adjoint import run_digits_task
from dfcore.logs import rule_log

with rule_log(snakemake.log[0]):  # output, progress bars, warnings and tracebacks go to the rule's log
    torch.set_num_threads(snakemake.threads)
    run_digits_task(
        snakemake.params.adjoint,
        denoiser_path=snakemake.input.denoiser,
        classifier_path=snakemake.input.classifier,
        out=dict(snakemake.output.items()),
        seed=snakemake.params.seed,
        device=snakemake.params.device,
        config=dict(snakemake.params.items()),  # provenance: the config values the rule declares
    )
