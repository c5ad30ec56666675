"""Snakemake wrapper of dfcore.summary.write_summary (rule `summary`, workflow/rules/report.smk)."""

import logging

from dfcore.logs import rule_log
from dfcore.summary import write_summary

with rule_log(snakemake.log[0]):  # output, warnings and tracebacks go to the rule's log
    table = write_summary(snakemake.input.outputs, snakemake.output[0], root=snakemake.params.root)
    logging.info("summarised %d outputs into %s", len(table), snakemake.output[0])
