"""Snakemake wrapper of dfcore.training.run_training (rules `train_denoiser`, `train_trace`, `train_trace_target`,
workflow/rules/train.smk)."""

import logging
import sys

import torch

from dfcore.training import run_training

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
sys.stderr = open(snakemake.log[0], "a")  # tracebacks and progress bars go to the log too
torch.set_num_threads(snakemake.threads)  # no oversubscription on shared nodes
kind = "denoiser" if snakemake.rule == "train_denoiser" else "trace"
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
