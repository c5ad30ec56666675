"""Snakemake wrapper of dfcore.experiments.adjoint.run_train_classifier (rule `adjoint_classifier`)."""

import logging
import sys

import torch

from dfcore.experiments.adjoint import run_train_classifier

with open(snakemake.log[0], "w") as log_file:
    sys.stderr = log_file  # tqdm progress and warnings go to the rule's log
    logging.basicConfig(stream=log_file, level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(snakemake.threads)
    run_train_classifier(
        snakemake.params.cfg,
        seed=snakemake.params.seed,
        checkpoint_path=snakemake.output.checkpoint,
        metrics_path=snakemake.output.metrics,
    )
