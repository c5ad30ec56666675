"""Rule `likelihood_benchmark`: dfcore.experiments.likelihood.run_likelihood_benchmark."""

import logging

from dfcore.experiments.likelihood import run_likelihood_benchmark
from dfcore.logs import rule_log

with rule_log(snakemake.log[0]):  # output, warnings and tracebacks go to the rule's log
    bench = run_likelihood_benchmark(
        snakemake.input.points, snakemake.output.csv, snakemake.output.figure, snakemake.output.pareto
    )
    logging.info("benchmark:\n%s", bench.to_string())
