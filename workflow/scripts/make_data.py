"""Snakemake wrapper of dfcore.data.prepare_dataset (rule `make_data`, workflow/rules/data.smk)."""

import logging

from dfcore.data import prepare_dataset
from dfcore.logs import rule_log

with rule_log(snakemake.log[0]):  # output, progress bars, warnings and tracebacks go to the rule's log
    name, spec = snakemake.wildcards.dataset, snakemake.params.spec  # the rule's params: this dataset's entry only
    x = prepare_dataset(name, {"datasets": {} if spec is None else {name: spec}}, snakemake.output[0])
    logging.info("wrote %s with %d samples of dimension %d", snakemake.output[0], x.shape[0], x.shape[1])
