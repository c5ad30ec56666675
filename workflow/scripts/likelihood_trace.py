"""Rule `likelihood_trace`: dfcore.experiments.likelihood_benchmark.train_target_trace."""

import logging
import sys

import torch

from dfcore.experiments.likelihood_benchmark import train_target_trace

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
sys.stderr = open(snakemake.log[0], "a")
torch.set_num_threads(snakemake.threads)
p, out = snakemake.params, snakemake.output
train_target_trace(p.trace_net, snakemake.input.data, snakemake.input.denoiser, snakemake.wildcards.target, out.model,
                   loss_csv=out.losses, resume_path=p.resume, seed=p.seed, device=p.device)
