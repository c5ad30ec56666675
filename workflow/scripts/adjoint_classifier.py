"""Rule `adjoint_classifier`: dfcore.experiments.adjoint.run_train_classifier."""

import torch

from dfcore.experiments.adjoint import run_train_classifier
from dfcore.logs import rule_log

with rule_log(snakemake.log[0]):  # output, progress bars, warnings and tracebacks go to the rule's log
    torch.set_num_threads(snakemake.threads)
    run_train_classifier(
        snakemake.params.cfg,
        seed=snakemake.params.seed,
        checkpoint_path=snakemake.output.checkpoint,
        metrics_path=snakemake.output.metrics,
    )
