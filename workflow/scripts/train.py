"""Snakemake wrapper of dfcore.training.run_training (rules `train_denoiser`, `train_trace`, workflow/rules/train.smk)."""

import logging

import torch

from dfcore.logs import rule_log
from dfcore.training import run_training

# Appends: the log of a run resumed from its checkpoint keeps the log of the interrupted run above it.
with rule_log(snakemake.log[0], mode="a"):  # output, progress bars, warnings and tracebacks go to the rule's log
    torch.set_num_threads(snakemake.threads)  # no oversubscription on shared nodes
    kind = "trace" if snakemake.rule == "train_trace" else "denoiser"
    p = snakemake.params  # exactly the config values run_training reads (workflow/rules/train.smk)
    config = {"seed": p.seed, "device": p.device}
    if kind == "denoiser":
        config.update(denoiser=p.denoiser, schedules={snakemake.wildcards.schedule: p.schedule})
    else:
        config.update(trace_net=p.trace_net)  # the schedule comes with the trained denoiser
    run_training(
        kind,
        snakemake.wildcards.dataset,
        snakemake.wildcards.schedule,
        config,
        snakemake.input.data,
        snakemake.output.model,
        denoiser_path=snakemake.input.get("denoiser"),
        loss_csv=snakemake.output.losses,
        resume_path=snakemake.params.resume,
    )
    logging.info("wrote %s", snakemake.output.model)
