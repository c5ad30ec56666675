"""Rules `train_denoiser`, `train_trace` and `train_trace_target`: dfcore.experiments.train.run_training."""

import logging

import torch

from dfcore.experiments.train import run_training
from dfcore.logs import rule_log
from dfcore.schedules import get_schedule

# Appends: the log of a run resumed from its checkpoint keeps the log of the interrupted run above it.
with rule_log(snakemake.log[0], mode="a"):
    torch.set_num_threads(snakemake.threads)  # no oversubscription on shared nodes
    p = snakemake.params
    if snakemake.rule == "train_denoiser":
        kind, section, schedule = "denoiser", p.denoiser, get_schedule(snakemake.wildcards.schedule, **p.schedule)
    else:
        kind, section, schedule = "trace", p.trace_net, None  # the schedule comes with the trained denoiser
    run_training(
        kind,
        section,
        snakemake.input.data,
        snakemake.output.model,
        schedule=schedule,
        denoiser_path=snakemake.input.get("denoiser"),
        loss_csv=snakemake.output.losses,
        resume_path=p.resume,
        seed=p.seed,
        device=p.device,
    )
    logging.info("wrote %s", snakemake.output.model)
