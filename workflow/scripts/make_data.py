"""Rule `make_data`: dfcore.experiments.data.prepare_dataset."""

import logging
import sys

from dfcore.experiments.data import prepare_dataset

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
sys.stderr = open(snakemake.log[0], "a")
x = prepare_dataset(snakemake.wildcards.dataset, snakemake.params.spec, snakemake.output[0])
logging.info("wrote %s with %d samples of dimension %d", snakemake.output[0], x.shape[0], x.shape[1])
