"""Rule `likelihood_benchmark`: dfcore.experiments.likelihood_benchmark.run_likelihood_benchmark."""

import logging
import sys

from dfcore.experiments.likelihood_benchmark import run_likelihood_benchmark

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
sys.stderr = open(snakemake.log[0], "a")
bench = run_likelihood_benchmark(snakemake.input.points, snakemake.output.csv, snakemake.output.figure)
logging.info("benchmark:\n%s", bench.to_string())
