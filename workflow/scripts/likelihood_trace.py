"""Rule `likelihood_trace`: dfcore.experiments.likelihood.train_target_trace."""

import torch

from dfcore.experiments.likelihood import train_target_trace
from dfcore.logs import rule_log

with rule_log(snakemake.log[0], mode="a"):  # appends: a resumed run keeps the interrupted run's log
    torch.set_num_threads(snakemake.threads)
    p, out = snakemake.params, snakemake.output
    train_target_trace(
        p.trace_net,
        snakemake.input.data,
        snakemake.input.denoiser,
        snakemake.wildcards.target,
        out.model,
        loss_csv=out.losses,
        resume_path=p.resume,
        seed=p.seed,
        device=p.device,
    )
