"""Rule `likelihood_heldout`: dfcore.experiments.likelihood.run_heldout_likelihood."""

import torch

from dfcore.experiments.likelihood import run_heldout_likelihood
from dfcore.logs import rule_log

with rule_log(snakemake.log[0]):  # output, progress bars, warnings and tracebacks go to the rule's log
    torch.set_num_threads(snakemake.threads)
    p, inp, out = snakemake.params, snakemake.input, snakemake.output
    traces = {key[len("trace_") :]: path for key, path in inp.items() if key.startswith("trace_")}
    run_heldout_likelihood(
        p.likelihood,
        inp.train,
        inp.test,
        inp.denoiser,
        traces,
        points_csv=out.points,
        summary_csv=out.summary,
        markdown=out.markdown,
        seed=p.seed,
        device=p.device,
    )
