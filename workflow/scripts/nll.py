"""Rule `nll`: dfcore.experiments.likelihood.run_nll."""

import logging
import sys

import torch

from dfcore.experiments.likelihood import run_nll
from dfcore.schedules import get_schedule

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
sys.stderr = open(snakemake.log[0], "a")
torch.set_num_threads(snakemake.threads)
p, w = snakemake.params, snakemake.wildcards
frame = run_nll(
    p.nll,
    snakemake.input.data,
    snakemake.output[0],
    dataset=w.dataset,
    schedule_name=w.schedule,
    schedule=get_schedule(w.schedule, **p.schedule),
    method=w.method,
    seed=p.seed,
    device=p.device,
    denoiser_path=snakemake.input.get("denoiser"),
    trace_path=snakemake.input.get("trace"),
)
logging.info("mean NLL %.4f nats (%.4f bits/dim)", frame["nll_nats"].mean(), frame["bpd"].mean())
