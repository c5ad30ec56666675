"""Rule `summary`: dfcore.experiments.summary.write_summary."""

import logging

from dfcore.experiments.summary import write_summary
from dfcore.logs import rule_log

with rule_log(snakemake.log[0]):  # output, warnings and tracebacks go to the rule's log
    table = write_summary(snakemake.input.outputs, snakemake.output[0], root=snakemake.params.root)
    logging.info("summarised %d outputs into %s", len(table), snakemake.output[0])
