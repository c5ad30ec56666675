"""Snakemake wrapper of dfcore.experiments.summary.write_summary (rule `summary`, workflow/rules/report.smk)."""

import logging

from dfcore.experiments.summary import write_summary

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(message)s")
table = write_summary(snakemake.input.outputs, snakemake.output[0], root=snakemake.params.root)
logging.info("summarised %d outputs into %s", len(table), snakemake.output[0])
