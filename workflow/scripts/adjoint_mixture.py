"""Snakemake wrapper of dfcore.experiments.adjoint.run_mixture_task (rule `adjoint_mixture`)."""

import logging
import sys

import torch

from dfcore.experiments.adjoint import run_mixture_task

with open(snakemake.log[0], "w") as log_file:
    sys.stderr = log_file  # tqdm progress and warnings go to the rule's log
    logging.basicConfig(stream=log_file, level=logging.INFO, format="%(asctime)s %(message)s")
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
