"""Snakemake wrapper of dfcore.data.prepare_dataset_entry (rule `make_data`, workflow/rules/data.smk)."""

import logging
import sys

from dfcore.data import prepare_dataset_entry

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
sys.stderr = open(snakemake.log[0], "a")  # tracebacks and progress bars go to the log too
name, spec = snakemake.wildcards.dataset, snakemake.params.spec  # the rule's params: this dataset's entry only
x = prepare_dataset_entry(name, spec, snakemake.output[0])
logging.info("wrote %s with %d samples of dimension %d", snakemake.output[0], x.shape[0], x.shape[1])
