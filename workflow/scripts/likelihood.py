"""Rule `likelihood_dataset`: dfcore.experiments.likelihood.run_likelihood_dataset."""

import torch

from dfcore.experiments.likelihood import run_likelihood_dataset
from dfcore.logs import rule_log

with rule_log(snakemake.log[0]):  # output, progress bars, warnings and tracebacks go to the rule's log
    torch.set_num_threads(snakemake.threads)
    p, inp = snakemake.params, snakemake.input
    traces = {key[len("trace_") :]: path for key, path in inp.items() if key.startswith("trace_")}
    run_likelihood_dataset(
        p.likelihood,
        inp.data,
        inp.denoiser,
        traces,
        snakemake.output[0],
        dataset=snakemake.wildcards.dataset,
        seed=p.seed,
        device=p.device,
    )
