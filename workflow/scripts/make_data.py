"""Rule `make_data`: dfcore.experiments.data.prepare_dataset."""

import logging

from dfcore.experiments.data import prepare_dataset
from dfcore.logs import rule_log

with rule_log(snakemake.log[0]):  # output, progress bars, warnings and tracebacks go to the rule's log
    x = prepare_dataset(snakemake.wildcards.dataset, snakemake.params.spec, snakemake.output[0])
    logging.info("wrote %s with %d samples of dimension %d", snakemake.output[0], x.shape[0], x.shape[1])
