"""Snakemake wrapper of dfcore.experiments.sd (rules sd_*, workflow/rules/sd.smk): unpack and call."""

import logging

import torch

from dfcore.experiments import sd as sd_cli

torch.set_num_threads(max(1, int(snakemake.threads)))

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
p, out = snakemake.params, snakemake.output
if snakemake.rule == "sd_tiny_pipeline":
    from tests.fixtures.tiny_sd import run_tiny  # test inputs: the tiny pipeline is not part of dfcore

    run_tiny(p.sd, out.pipeline, out.clip, out.images, seed=p.seed)
elif snakemake.rule == "sd_trace_net":
    sd_cli.run_trace_net(p.sd, p.pipeline, p.images, out.checkpoint, out.loss, device=p.device, seed=p.seed,
                         resume=p.resume)
elif snakemake.rule == "sd_nll":
    sd_cli.run_nll(p.sd, p.pipeline, snakemake.input.trace, out.zarr, out.csv, out.guidance, out.seeds,
                   device=p.device, config={"sd": p.sd})
elif snakemake.rule == "sd_adjoint":
    sd_cli.run_adjoint(p.sd, p.pipeline, out.metrics, out.plot, clip_path=p.clip or None, device=p.device,
                       config={"sd": p.sd})
else:
    raise ValueError(f"unknown rule {snakemake.rule}")
